"""Room registry: who is in which room, which tracks they publish, and fan-out to subscribers.

Publishers run in threads (ingest) or on the event loop (WHIP, RTMP); recorders read from threads.
So everything here is guarded by one lock per room and subscriber queues are thread-safe.
Recorders notice joins and leaves by watching `Room.version`.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from cloudrec.core.layout import Participant as LayoutParticipant
from cloudrec.core.rooms import RoomKey
from cloudrec.core.spec import TrackKind
from cloudrec.core.media import MediaUnit

logger = logging.getLogger(__name__)

_END = None  # sentinel put in a subscriber queue when its track ends


class TrackSubscriber:
    """A bounded queue of one track's units; on overflow the oldest unit is dropped and counted."""

    def __init__(self, track: Track, maxsize: int) -> None:
        self.track = track
        self._queue: queue.Queue[MediaUnit | None] = queue.Queue(maxsize=maxsize)
        self.dropped = 0
        self.ended = False

    def put(self, unit: MediaUnit | None) -> None:
        while True:
            try:
                self._queue.put_nowait(unit)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def drain(self) -> list[MediaUnit]:
        """Every unit waiting now (never blocks); marks `ended` when the track is gone."""
        out: list[MediaUnit] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return out
            if item is None:
                self.ended = True
            else:
                out.append(item)

    def get(self, timeout: float) -> MediaUnit | None:
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is None:
            self.ended = True
        return item

    def close(self) -> None:
        self.track.unsubscribe(self)


class Track:
    """One published track. It keeps the units since the last keyframe (video) or the last few
    seconds (audio) so that a new subscriber starts at once instead of at the next keyframe."""

    CACHE_MAX_UNITS = 1200  # a GOP longer than this is not cached (the subscriber waits for a keyframe)
    AUDIO_CACHE_SECONDS = 3.0

    def __init__(self, participant: Participant, kind: TrackKind) -> None:
        self.participant = participant
        self.kind = kind
        self._subscribers: list[TrackSubscriber] = []
        self._lock = threading.Lock()
        self._cache: deque[MediaUnit] = deque()
        self.closed = False
        self.units = 0
        self.last_unit_at: float | None = None  # monotonic

    def subscribe(self, maxsize: int = 1024) -> TrackSubscriber:
        sub = TrackSubscriber(self, maxsize)
        with self._lock:
            if self.closed:
                sub.put(_END)
            else:
                for unit in self._cache:
                    sub.put(unit)
                self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: TrackSubscriber) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    def publish(self, unit: MediaUnit) -> None:
        with self._lock:
            self._remember(unit)
            subs = list(self._subscribers)
        self.units += 1
        self.last_unit_at = time.monotonic()
        for sub in subs:
            sub.put(unit)

    def _remember(self, unit: MediaUnit) -> None:
        cache = self._cache
        if self.kind.is_video:
            if unit.key:
                cache.clear()
            if cache or unit.key:
                cache.append(unit)
            if len(cache) > self.CACHE_MAX_UNITS:
                cache.clear()
        else:
            cache.append(unit)
            horizon = unit.seconds - self.AUDIO_CACHE_SECONDS
            while cache and (cache[0].seconds < horizon or len(cache) > self.CACHE_MAX_UNITS):
                cache.popleft()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._cache.clear()
            subs, self._subscribers = self._subscribers, []
        for sub in subs:
            sub.put(_END)


class Participant:
    def __init__(self, room: Room, user_id: str, seq: int) -> None:
        self.room = room
        self.user_id = user_id
        self.seq = seq  # room-entry order
        self.joined_at = time.monotonic()
        self.tracks: dict[TrackKind, Track] = {}
        # Set by a publisher that holds a connection (RTMP, WebRTC): called when the user is
        # removed or the room dismissed, so the connection is closed too.
        self.on_removed: Callable[[], None] | None = None

    def add_track(self, kind: TrackKind) -> Track:
        with self.room.lock:
            old = self.tracks.get(kind)
            track = Track(self, kind)
            self.tracks[kind] = track
            self.room.version += 1
        if old is not None:
            old.close()
        logger.info("track published", extra={"room": str(self.room.key), "user_id": self.user_id, "track": kind.value})
        return track

    def remove_track(self, kind: TrackKind) -> None:
        with self.room.lock:
            track = self.tracks.pop(kind, None)
            self.room.version += 1
        if track is not None:
            track.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomSnapshot:
    version: int
    participants: tuple[Participant, ...]  # entry order

    @property
    def user_ids(self) -> frozenset[str]:
        return frozenset(p.user_id for p in self.participants)

    def layout_participants(self, video_ok: set[tuple[str, TrackKind]]) -> list[LayoutParticipant]:
        return [
            LayoutParticipant(user_id=p.user_id, video=frozenset(k for k in p.tracks if k.is_video and (p.user_id, k) in video_ok))
            for p in self.participants
        ]


class Room:
    def __init__(self, key: RoomKey) -> None:
        self.key = key
        self.lock = threading.RLock()
        self.version = 0
        self._participants: dict[str, Participant] = {}
        self._seq = itertools.count()
        self.blocked: set[str] = set()
        self.dismissed = False

    def join(self, user_id: str) -> Participant:
        """Enter the room; an existing participant with the same id is displaced (its tracks end)."""
        with self.lock:
            old = self._participants.pop(user_id, None)
            p = Participant(self, user_id, next(self._seq))
            self._participants[user_id] = p
            self.version += 1
            self.dismissed = False
        if old is not None:  # displaced by a newer connection of the same user
            for t in list(old.tracks.values()):
                t.close()
            if old.on_removed is not None:
                try:
                    old.on_removed()
                except Exception:
                    logger.exception("publisher disconnect failed", extra={"room": str(self.key), "user_id": user_id})
        logger.info("user joined", extra={"room": str(self.key), "user_id": user_id})
        return p

    def leave(self, participant: Participant) -> None:
        with self.lock:
            if self._participants.get(participant.user_id) is participant:
                del self._participants[participant.user_id]
                self.version += 1
            tracks = list(participant.tracks.values())
            participant.tracks = {}
        for t in tracks:
            t.close()
        logger.info("user left", extra={"room": str(self.key), "user_id": participant.user_id})

    def remove(self, user_id: str) -> bool:
        """Kick a user: their tracks end and their publisher is told to disconnect."""
        participant = self.participant(user_id)
        if participant is None:
            return False
        self.leave(participant)
        if participant.on_removed is not None:
            try:
                participant.on_removed()
            except Exception:
                logger.exception("publisher disconnect failed", extra={"room": str(self.key), "user_id": user_id})
        return True

    def set_blocked(self, user_id: str, blocked: bool) -> None:
        with self.lock:
            (self.blocked.add if blocked else self.blocked.discard)(user_id)
            self.version += 1

    def snapshot(self) -> RoomSnapshot:
        with self.lock:
            ps = sorted(self._participants.values(), key=lambda p: p.seq)
            return RoomSnapshot(version=self.version, participants=tuple(ps))

    def participant(self, user_id: str) -> Participant | None:
        with self.lock:
            return self._participants.get(user_id)


class RoomRegistry:
    def __init__(self) -> None:
        self._rooms: dict[RoomKey, Room] = {}
        self._lock = threading.Lock()

    def room(self, key: RoomKey) -> Room:
        with self._lock:
            room = self._rooms.get(key)
            if room is None:
                room = self._rooms[key] = Room(key)
            return room

    def find(self, key: RoomKey) -> Room | None:
        with self._lock:
            return self._rooms.get(key)

    def rooms(self) -> list[Room]:
        with self._lock:
            return list(self._rooms.values())

    # --- control.rooms.RoomDirectory ----------------------------------------------------------
    def exists(self, key: RoomKey) -> bool:
        """A room exists while someone is in it (or tasks watch it) and has not been dismissed."""
        room = self.find(key)
        return room is not None and not room.dismissed
    def dismiss(self, key: RoomKey) -> int:
        room = self.find(key)
        if room is None:
            return 0
        users = [p.user_id for p in room.snapshot().participants]
        for user_id in users:
            room.remove(user_id)
        room.dismissed = True
        return len(users)

    def remove_users(self, key: RoomKey, user_ids: list[str]) -> int:
        room = self.find(key)
        return sum(room.remove(u) for u in user_ids) if room is not None else 0

    def set_blocked(self, key: RoomKey, user_id: str, blocked: bool) -> None:
        self.room(key).set_blocked(user_id, blocked)
