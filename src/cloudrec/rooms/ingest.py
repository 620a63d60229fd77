"""Pull a media URL (file, HTTP, HLS, RTMP, RTSP) into a room as a user, paced in real time.

Packets are published as they are (no decode): each recorder decides whether to copy or transcode.
One offset per pass maps the source's timestamps onto the room clock for all its tracks, so the
source's own audio/video alignment is kept (MEDIA.md §1); loops continue seamlessly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from enum import Enum
from fractions import Fraction

import av
import av.audio.stream
import av.error
import av.video.stream

from cloudrec.core.ingest import IngestSpec
from cloudrec.core.media import MediaUnit, StreamInfo
from cloudrec.core.spec import TrackKind
from cloudrec.rooms.registry import Connection, Room, Track

logger = logging.getLogger(__name__)

OPEN_TIMEOUT = 10.0  # seconds to open a URL and between reads
LIVE_SCHEMES = frozenset({"rtmp", "rtmps", "rtsp"})
LIVE_PROBE_MICROSECONDS = 1_000_000
# A packet is published once it is due within this many seconds: the thread wakes ~10 times a second
# instead of once per packet (audio alone is ~47 a second); units carry their own timestamps, so a
# recorder sees the same times, only up to this much earlier.
PACE_SECONDS = 0.1


class IngestEnd(Enum):
    FINISHED = "finished"  # every repeat played
    STOPPED = "stopped"  # asked to stop
    MAX_DURATION = "max_duration"
    FAILED = "failed"  # the URL could not be opened or read
    REMOVED = "removed"  # the user was removed from the room or displaced by another connection


def _stream_info(stream: av.stream.Stream, kind: TrackKind) -> StreamInfo:
    tb = Fraction(stream.time_base) if stream.time_base else Fraction(1, 90000)
    if isinstance(stream, av.audio.stream.AudioStream):
        actx = stream.codec_context
        return StreamInfo(
            kind=kind, codec=actx.name, time_base=tb, extradata=actx.extradata,
            sample_rate=actx.sample_rate or 0, channels=actx.channels or 0,
            layout=actx.layout.name if actx.layout else None, bit_rate=actx.bit_rate or 0,
        )
    assert isinstance(stream, av.video.stream.VideoStream)
    vctx = stream.codec_context
    return StreamInfo(
        kind=kind, codec=vctx.name, time_base=tb, extradata=vctx.extradata, width=vctx.width or 0,
        height=vctx.height or 0, pix_fmt=vctx.pix_fmt, bit_rate=vctx.bit_rate or 0,
    )


class IngestPublisher:
    def __init__(self, room: Room, spec: IngestSpec, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.room = room
        self.spec = spec
        self.clock = clock
        self.connection: Connection | None = None
        self.units = 0
        self.started_at: float | None = None
        self._infos: dict[TrackKind, StreamInfo] = {}

    def run(self, stop: threading.Event) -> IngestEnd:
        """Thread body: play every URL `repeat` times (or forever), then leave the room."""
        self.started_at = self.clock()
        deadline = self.started_at + self.spec.max_duration_seconds
        next_start = self.started_at
        plays = 0
        try:
            while self.spec.repeat < 0 or plays < self.spec.repeat:
                for url in self.spec.urls:
                    end = self._play(url, next_start, stop, deadline, seek=self.spec.seek_seconds if plays == 0 else 0.0)
                    if isinstance(end, IngestEnd):
                        return end
                    next_start = end
                plays += 1
            return IngestEnd.FINISHED
        finally:
            if self.connection is not None:
                self.connection.leave()

    def _play(self, url: str, start: float, stop: threading.Event, deadline: float, seek: float) -> float | IngestEnd:
        """Play one URL once; returns the room time at which it ended (where the next pass starts)."""
        options = {"rw_timeout": str(int(OPEN_TIMEOUT * 1e6))}
        if url.split(":", 1)[0].lower() in LIVE_SCHEMES:
            # A live source is probed in real time: keep the probe short so the user joins quickly.
            options.update(analyzeduration=str(LIVE_PROBE_MICROSECONDS), probesize="500000")
        try:
            container = av.open(url, timeout=(OPEN_TIMEOUT, OPEN_TIMEOUT), options=options)
        except (av.error.FFmpegError, OSError) as exc:
            logger.warning("ingest source cannot be opened", extra={"user_id": self.spec.user_id, "error": str(exc)})
            return IngestEnd.FAILED
        with container:
            chosen: dict[int, TrackKind] = {}
            video = next((s for s in container.streams.video if s.codec_context.name), None)
            audio = next((s for s in container.streams.audio if s.codec_context.name), None)
            if video is not None:
                chosen[video.index] = TrackKind.MAIN
            if audio is not None:
                chosen[audio.index] = TrackKind.AUDIO
            if not chosen:
                logger.warning("ingest source has no audio or video", extra={"user_id": self.spec.user_id})
                return IngestEnd.FAILED
            if seek > 0:
                try:
                    container.seek(int(seek * av.time_base))
                except av.error.FFmpegError:
                    logger.warning("ingest seek failed", extra={"user_id": self.spec.user_id})
            tracks = self._tracks({container.streams[i]: k for i, k in chosen.items()})
            origin: float | None = None  # source seconds that map to `start`
            end = start
            # Per stream: (seconds per tick, room-clock shift in ticks, track, info); float arithmetic,
            # since Fractions cost more than the rest of a packet's handling.
            timing: dict[int, tuple[float, int, Track, StreamInfo]] = {}
            try:
                for packet in container.demux([container.streams[i] for i in chosen]):
                    if stop.is_set():
                        return IngestEnd.STOPPED
                    if self.connection is not None and not self.connection.present:
                        logger.info("ingest user left the room", extra={"user_id": self.spec.user_id})
                        return IngestEnd.REMOVED
                    now = self.clock()
                    if now >= deadline:
                        return IngestEnd.MAX_DURATION
                    dts = packet.dts if packet.dts is not None else packet.pts
                    if packet.size == 0 or dts is None:
                        continue
                    index = packet.stream.index
                    stream_timing = timing.get(index)
                    if stream_timing is None:
                        tb = packet.time_base
                        if tb is None:
                            continue
                        if origin is None:
                            origin = float(dts * tb)
                        kind = chosen[index]
                        stream_timing = timing[index] = (float(tb), round((start - origin) / tb), tracks[kind], self._infos[kind])
                    tick, shift, track, info = stream_timing
                    assert origin is not None
                    pts = packet.pts if packet.pts is not None else dts
                    wait = start + dts * tick - origin - now
                    if wait > PACE_SECONDS and stop.wait(wait):
                        return IngestEnd.STOPPED
                    duration = packet.duration or 0
                    track.publish(MediaUnit(data=bytes(packet), pts=pts + shift, dts=dts + shift, duration=duration,
                                            key=packet.is_keyframe, info=info))
                    self.units += 1
                    end = max(end, start + (pts + duration) * tick - origin)
            except av.error.FFmpegError as exc:
                logger.warning("ingest source read error", extra={"user_id": self.spec.user_id, "error": str(exc)})
                if origin is None:
                    return IngestEnd.FAILED
            return end

    def _tracks(self, streams: dict[av.stream.Stream, TrackKind]) -> dict[TrackKind, Track]:
        if self.connection is None:
            self.connection = self.room.connect(self.spec.user_id)
        out: dict[TrackKind, Track] = {}
        for stream, kind in streams.items():
            info = _stream_info(stream, kind)
            same = self._infos.get(kind) == info
            if not same:
                self._infos[kind] = info  # a new object tells recorders the parameters changed
            track = self.connection.tracks.get(kind)
            out[kind] = track if track is not None and not track.closed else self.connection.add_track(kind)
        for kind in list(self.connection.tracks):
            if kind not in out:
                self.connection.remove_track(kind)
        return out
