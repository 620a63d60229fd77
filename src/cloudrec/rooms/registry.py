"""Room registry: who is in which room, which tracks they publish, and fan-out to subscribers.

Publishers run in threads (ingest) or on the event loop (WHIP, RTMP); recorders read from threads.
So everything here is guarded by one lock per room and subscriber queues are thread-safe.
Recorders notice joins and leaves by watching `Room.version`, and are woken at once by a room's
watchers: a recorder that only polled would subscribe to a newcomer up to a poll late, after a mix
had already gone past the newcomer's first moments.
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
        self.first_seconds: float | None = None  # room-clock time of the first unit
        self.last_unit_at: float | None = None  # monotonic

    def subscribe(self, maxsize: int = 1024) -> TrackSubscriber:
        sub = TrackSubscriber(self, maxsize)
        with self._lock:
            if self.closed:
                sub.put(_END)
            else:
                # A replay longer than the queue would lose its head — the keyframe — and count
                # overflows: video then waits for the next keyframe, audio keeps its newest units.
                replay = list(self._cache)
                if len(replay) > maxsize:
                    replay = [] if self.kind.is_video else replay[-maxsize:]
                for unit in replay:
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
        if self.units == 1:  # a recording waiting for media starts now
            self.first_seconds = unit.seconds
            self.participant.room.notify()
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


CAMERA_KINDS = frozenset({TrackKind.MAIN, TrackKind.AUDIO})  # a camera connection: main video + audio
SCREEN_KINDS = frozenset({TrackKind.AUX})  # a screen-share connection: the auxiliary video


class Connection:
    """One publisher's hold on some of a user's tracks: a WebRTC session, an RTMP stream, an ingest.

    A user may hold several at once (camera and screen share, as TRTC's main and sub streams); a new
    connection displaces only the connections that claim one of the same track kinds. The user stays
    in the room while any of their connections does.
    """

    def __init__(self, participant: Participant, kinds: frozenset[TrackKind], on_removed: Callable[[], None] | None) -> None:
        self.participant = participant
        self.room = participant.room
        self.user_id = participant.user_id
        self.kinds = kinds
        # Called (from any thread) when the connection is displaced, its user removed or the room
        # dismissed, so that the publisher closes its network connection too.
        self.on_removed = on_removed
        self.closed = False

    @property
    def tracks(self) -> dict[TrackKind, Track]:
        with self.room.lock:
            return {k: t for k, t in self.participant.tracks.items() if k in self.kinds} if not self.closed else {}

    @property
    def present(self) -> bool:
        """False once displaced, removed or left."""
        return not self.closed

    def add_track(self, kind: TrackKind) -> Track:
        if kind not in self.kinds:
            raise ValueError(f"this connection does not publish {kind.value}")
        with self.room.lock:
            if self.closed:  # displaced meanwhile: a track nobody can subscribe to
                track = Track(self.participant, kind)
                track.close()
                return track
            old = self.participant.tracks.get(kind)
            track = Track(self.participant, kind)
            self.participant.tracks[kind] = track
            self.room.changed()
        if old is not None:
            old.close()
        logger.info("track published", extra={"room": str(self.room.key), "user_id": self.user_id, "track": kind.value})
        return track

    def remove_track(self, kind: TrackKind) -> None:
        with self.room.lock:
            track = self.participant.tracks.pop(kind, None) if kind in self.kinds and not self.closed else None
            self.room.changed()
        if track is not None:
            track.close()

    def leave(self) -> None:
        self.room.disconnect(self)

    def notify_removed(self) -> None:
        if self.on_removed is not None:
            try:
                self.on_removed()
            except Exception:
                logger.exception("publisher disconnect failed", extra={"room": str(self.room.key), "user_id": self.user_id})


class Participant:
    """A user in a room: entry order, their published tracks (from all their connections)."""

    def __init__(self, room: Room, user_id: str, seq: int) -> None:
        self.room = room
        self.user_id = user_id
        self.seq = seq  # room-entry order
        self.joined_at = time.monotonic()
        self.tracks: dict[TrackKind, Track] = {}
        self.connections: list[Connection] = []


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
        self._watchers: list[Callable[[], None]] = []

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (from any thread, maybe under the room lock: it must only schedule work)
        whenever the room changes or a track gets its first unit; returns the function that stops it."""
        with self.lock:
            self._watchers.append(callback)

        def unwatch() -> None:
            with self.lock:
                if callback in self._watchers:
                    self._watchers.remove(callback)
        return unwatch

    def changed(self) -> None:
        """Under the lock: who is in the room or what they publish changed."""
        self.version += 1
        self.notify()

    def notify(self) -> None:
        with self.lock:
            watchers = list(self._watchers)
        for callback in watchers:
            try:
                callback()
            except Exception:
                logger.exception("room watcher failed", extra={"room": str(self.key)})

    def connect(self, user_id: str, kinds: frozenset[TrackKind] = CAMERA_KINDS,
                on_removed: Callable[[], None] | None = None) -> Connection:
        """Enter the room (or add a connection to a user already in it). Connections of the same
        user that claim any of `kinds` are displaced: their tracks end and they are told to go."""
        if not kinds:
            raise ValueError("a connection publishes at least one track kind")
        with self.lock:
            p = self._participants.get(user_id)
            if p is None:
                p = self._participants[user_id] = Participant(self, user_id, next(self._seq))
            displaced = [c for c in p.connections if c.kinds & kinds]
            closing = [self._detach(c, keep_user=True) for c in displaced]
            conn = Connection(p, kinds, on_removed)
            p.connections.append(conn)
            self.changed()
            self.dismissed = False
        for tracks in closing:
            for t in tracks:
                t.close()
        for c in displaced:  # displaced by a newer connection of the same user
            c.notify_removed()
        logger.info("user joined", extra={"room": str(self.key), "user_id": user_id,
                                          "tracks": ",".join(sorted(k.value for k in kinds))})
        return conn

    def _detach(self, conn: Connection, *, keep_user: bool = False) -> list[Track]:
        """Under the lock: drop `conn` and its tracks (returned, to be closed outside the lock);
        the user leaves with their last connection, unless a new one is replacing it."""
        conn.closed = True
        p = conn.participant
        if conn in p.connections:
            p.connections.remove(conn)
        tracks = [p.tracks.pop(k) for k in list(p.tracks) if k in conn.kinds]
        if not p.connections and not keep_user and self._participants.get(p.user_id) is p:
            del self._participants[p.user_id]
            tracks += list(p.tracks.values())
            p.tracks = {}
        self.changed()
        return tracks

    def disconnect(self, conn: Connection) -> None:
        """A publisher went away (or ended): its tracks end; the user leaves with their last connection."""
        with self.lock:
            if conn.closed:
                return
            tracks = self._detach(conn)
            gone = conn.participant.user_id not in self._participants
        for t in tracks:
            t.close()
        logger.info("user left" if gone else "connection left", extra={"room": str(self.key), "user_id": conn.user_id})

    def remove(self, user_id: str) -> bool:
        """Kick a user: every connection's tracks end and each publisher is told to disconnect."""
        with self.lock:
            p = self._participants.get(user_id)
            if p is None:
                return False
            conns = list(p.connections)
            tracks = [t for c in conns for t in self._detach(c)]
        for t in tracks:
            t.close()
        for c in conns:
            c.notify_removed()
        logger.info("user removed", extra={"room": str(self.key), "user_id": user_id})
        return True

    def set_blocked(self, user_id: str, blocked: bool) -> None:
        with self.lock:
            (self.blocked.add if blocked else self.blocked.discard)(user_id)
            self.changed()

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
