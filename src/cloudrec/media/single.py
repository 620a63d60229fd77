"""`SinglePipeline`: one participant's tracks recorded into sinks (single-stream mode).

The thread body `run(stop)` polls the sources every `poll_seconds`, orders what arrived by time
and writes it to the sinks:

- **Start.** The sinks are created lazily, by `sinks_factory(streams, begin_unix_ms)`, at the first
  video keyframe (the first audio unit when there is no video source). Units before it are dropped.
  When there is an audio source whose parameters are still unknown, the start waits up to
  `START_WAIT_SECONDS` of media for its first unit, so both streams are declared together.
- **Time.** The file zero is the starting keyframe (its dts when lower than its pts, so reordered
  frames never get a negative dts); every unit is shifted by it, so output starts at 0, and
  `begin_ms` is the wall-clock time of that zero.
- **Stream copy / transcode.** A track whose codec is the target one (`video_encoding.codec`,
  `audio_encoding.codec`) is copied; any other is decoded (`media.decode.Decoder`) and encoded
  (`media.encoder`): video at the source size (rounded to even), audio at the requested rate.
- **Stream changes.** A unit with a new, different `StreamInfo` closes the current sinks and starts
  a new set (new zero and begin time) at the next video keyframe; until then the changed track's
  units are dropped.
- **Bad data.** Decode and mux errors are logged once at WARNING, counted in `errors`, skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction

import av

from cloudrec.core.media import MediaUnit, PacketSink, StreamInfo, UnitSource
from cloudrec.core.spec import AudioEncoding, VideoEncoding
from cloudrec.media import timing
from cloudrec.media.decode import Decoder
from cloudrec.core.aac import adts_audio_config, is_adts
from cloudrec.core.h264 import is_annexb
from cloudrec.media.encoder import AudioEncoder, VideoEncoder

logger = logging.getLogger(__name__)

START_WAIT_SECONDS = 1.0
# Sources are drained this often: units reach the files up to this much later, and the thread wakes
# 10 times a second instead of 100 (bench/whip_single: the recording's share of a core per 720p30
# stream went from 1.0 % to 0.4 % when this went from 10 ms to 100 ms).
POLL_SECONDS = 0.1


def plausible_h264(data: bytes, extradata: bytes | None) -> bool:
    """Whether an H.264 unit is well-formed Annex-B or AVCC (its NAL lengths add up exactly)."""
    if is_annexb(data):
        return True
    size = (extradata[4] & 0x03) + 1 if extradata and extradata[0] == 1 and len(extradata) > 4 else 4
    pos = 0
    while pos + size <= len(data):
        length = int.from_bytes(data[pos : pos + size], "big")
        if length == 0:
            return False
        pos += size + length
    return pos == len(data)


class _Transcoder:
    """Decode one track and encode it to the target codec."""

    def __init__(self, info: StreamInfo, video_encoding: VideoEncoding, audio_encoding: AudioEncoding) -> None:
        self.decoder = Decoder(info)
        self.video: VideoEncoder | None = None
        self.audio: AudioEncoder | None = None
        if info.kind.is_video:
            width = (info.width or video_encoding.width) // 2 * 2
            height = (info.height or video_encoding.height) // 2 * 2
            encoding = replace(video_encoding, width=width, height=height)
            self.video = VideoEncoder(encoding, time_base=info.time_base)
            self.info = self.video.stream_info()
        else:
            self.audio = AudioEncoder(audio_encoding)
            self.info = self.audio.stream_info()

    def push(self, unit: MediaUnit) -> list[MediaUnit]:
        out: list[MediaUnit] = []
        for frame in self.decoder.decode(unit):
            out.extend(self._encode(frame))
        return out

    def _encode(self, frame: av.VideoFrame | av.AudioFrame) -> list[MediaUnit]:
        if self.video is not None and isinstance(frame, av.VideoFrame):
            return self.video.encode(frame)
        if self.audio is not None and isinstance(frame, av.AudioFrame):
            return self.audio.encode(frame)
        return []

    def flush(self) -> list[MediaUnit]:
        out: list[MediaUnit] = []
        for frame in self.decoder.flush():
            out.extend(self._encode(frame))
        if self.video is not None:
            out.extend(self.video.flush())
        if self.audio is not None:
            out.extend(self.audio.flush())
        return out


class _Track:
    """One source and what the current sink set knows of it."""

    def __init__(self, source: UnitSource, video: bool) -> None:
        self.source = source
        self.video = video
        self.raw: StreamInfo | None = None  # latest source parameters seen, as sent
        self.info: StreamInfo | None = None  # the same, completed (AAC config from ADTS)
        self.active: StreamInfo | None = None  # `raw` when the current sinks were built
        self.index = -1  # stream index in the current sink set; -1: not in it
        self.transcoder: _Transcoder | None = None


class SinglePipeline:
    def __init__(
        self,
        *,
        video: UnitSource | None,
        audio: UnitSource | None,
        sinks_factory: Callable[[list[StreamInfo], int], list[PacketSink]],
        video_encoding: VideoEncoding,
        audio_encoding: AudioEncoding,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._tracks = [_Track(s, v) for s, v in ((video, True), (audio, False)) if s is not None]
        self._factory = sinks_factory
        self._video_encoding = video_encoding
        self._audio_encoding = audio_encoding
        self._clock = clock
        self._wall_clock = wall_clock
        self._poll = poll_seconds
        self._sinks: list[PacketSink] = []
        self._zero: Fraction | None = None  # room-clock seconds of the file zero
        self._pending: list[tuple[_Track, MediaUnit]] = []  # waiting for the start
        self._restart = False  # a stream changed: new sink set at the next keyframe
        self._warned = False
        self.begin_ms: int | None = None  # wall-clock ms of the first set's zero
        self.sets = 0  # sink sets created
        self.units_written = 0
        self.dropped = 0
        self.errors = 0

    @property
    def has_video(self) -> bool:
        return any(t.video for t in self._tracks)

    # -- thread body -------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        try:
            while True:
                ended = all(t.source.ended for t in self._tracks)
                batch: list[tuple[_Track, MediaUnit]] = []
                for track in self._tracks:
                    batch.extend((track, u) for u in track.source.drain())
                batch.sort(key=lambda tu: float(tu[1].dts * tu[1].info.time_base))
                for track, unit in batch:
                    self._handle(track, unit)
                if ended or stop.is_set():
                    break
                stop.wait(self._poll)
            if self._pending:
                self._start(self._pending[0][1])
        finally:
            self._close_sinks()
            logger.info(
                "single-stream recording finished",
                extra={"units": self.units_written, "dropped": self.dropped, "errors": self.errors},
            )

    # -- per unit ----------------------------------------------------------------------------------
    def _handle(self, track: _Track, unit: MediaUnit) -> None:
        if unit.info is not track.raw:
            appeared = track.raw is None
            changed = track.raw is not None and unit.info != track.raw
            track.raw = unit.info
            if appeared or changed:
                track.info = self._completed(unit.info, unit)
            if self._zero is not None and (changed or appeared) and unit.info != track.active:
                self._restart = True
                logger.info("stream parameters changed", extra={"video": track.video})
        if self._zero is None and not self._pending:
            if not self._starts_here(track, unit):
                self.dropped += 1
                return
            self._pending.append((track, unit))
            self._maybe_start()
            return
        if self._pending:
            self._pending.append((track, unit))
            self._maybe_start()
            return
        if self._restart and self._starts_here(track, unit):
            self._close_sinks()
            self._zero = None
            self._pending.append((track, unit))
            self._maybe_start()
            return
        if track.index < 0 or unit.info != track.active:
            self.dropped += 1  # not in this set, or its parameters no longer match it
            return
        self._write(track, unit)

    def _starts_here(self, track: _Track, unit: MediaUnit) -> bool:
        if self.has_video:
            return track.video and unit.key
        return True

    def _completed(self, info: StreamInfo, unit: MediaUnit) -> StreamInfo:
        if info.codec == "aac" and not info.extradata and is_adts(unit.data):
            return replace(info, extradata=adts_audio_config(unit.data))
        return info

    def _maybe_start(self) -> None:
        first = self._pending[0][1]
        waiting = [t for t in self._tracks if t.info is None and not t.source.ended]
        span = float(self._pending[-1][1].pts * self._pending[-1][1].info.time_base) - float(
            first.pts * first.info.time_base
        )
        if waiting and span < START_WAIT_SECONDS:
            return
        self._start(first)

    def _start(self, first: MediaUnit) -> None:
        pending, self._pending = self._pending, []
        self._restart = False
        self._zero = min(Fraction(first.pts), Fraction(first.dts)) * first.info.time_base
        now = self._clock()
        begin_ms = round(self._wall_clock() * 1000 - (now - float(self._zero)) * 1000)
        streams: list[StreamInfo] = []
        for track in self._tracks:
            track.index = -1
            track.active = track.raw
            track.transcoder = None
            if track.info is None:
                continue
            target = self._video_encoding.codec if track.video else self._audio_encoding.codec
            if track.info.codec != target:
                try:
                    track.transcoder = _Transcoder(track.info, self._video_encoding, self._audio_encoding)
                except Exception as exc:  # an unsupported codec must not stop the other track
                    self._warn("track cannot be transcoded", exc)
                    continue
                out_info = track.transcoder.info
            else:
                out_info = track.info
            track.index = len(streams)
            streams.append(out_info)
        if not streams:
            return
        self._sinks = []
        try:
            sinks = self._factory(streams, begin_ms)
            for sink in sinks:
                sink.open(streams)
                self._sinks.append(sink)
        except Exception:
            logger.exception("sinks could not be created")
            for sink in self._sinks:
                sink.close()
            self._sinks = []
            raise
        self.sets += 1
        if self.begin_ms is None:
            self.begin_ms = begin_ms
        logger.info("recording started", extra={"begin_ms": begin_ms, "streams": len(streams)})
        for track, unit in pending:
            if track.index >= 0 and unit.info == track.active:
                self._write(track, unit)
            else:
                self.dropped += 1

    def _write(self, track: _Track, unit: MediaUnit) -> None:
        assert self._zero is not None
        tb = unit.info.time_base
        shift = round(self._zero / tb)
        rel = replace(unit, pts=unit.pts - shift, dts=unit.dts - shift)
        if rel.dts < 0 or rel.pts < 0:
            self.dropped += 1
            return
        if track.transcoder is not None:
            self._emit_all(track, track.transcoder.push(rel), count=True)
            return
        if track.info is not None and track.info.codec == "h264" and not plausible_h264(unit.data, track.info.extradata):
            self._warn("malformed unit skipped", ValueError("not Annex-B or AVCC"))
            return
        if track.info is not None and track.info is not unit.info:
            rel = replace(rel, info=track.info)
        self._emit(track, rel, count=True)

    def _emit_all(self, track: _Track, units: list[MediaUnit], *, count: bool) -> None:
        for unit in units:
            self._emit(track, unit, count=count)

    def _emit(self, track: _Track, unit: MediaUnit, *, count: bool) -> None:
        for sink in self._sinks:
            try:
                sink.write(track.index, unit)
            except Exception as exc:  # one bad unit or sink must not end the recording
                self._warn("unit not written", exc)
        if count:
            self.units_written += 1

    def _warn(self, message: str, exc: Exception) -> None:
        self.errors += 1
        if not self._warned:
            self._warned = True
            logger.warning(message, extra={"error": str(exc)})
        else:
            logger.debug(message, extra={"error": str(exc)})

    def _close_sinks(self) -> None:
        for track in self._tracks:
            if track.transcoder is not None and self._sinks:
                self._emit_all(track, track.transcoder.flush(), count=False)
            track.transcoder = None
            track.index = -1
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            try:
                sink.close()
            except Exception as exc:
                self._warn("sink not closed cleanly", exc)

    def close(self) -> None:
        """Flush and close the current sinks (`run` does this itself when it returns)."""
        self._close_sinks()

    @property
    def elapsed_seconds(self) -> float:
        """Room-clock seconds since the current file zero (0 before the start)."""
        return 0.0 if self._zero is None else timing.task_time(self._clock(), float(self._zero))
