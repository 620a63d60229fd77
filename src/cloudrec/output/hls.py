"""`HlsSink`: our own HLS segmenter (MPEG-TS segments with TRTC names, a growing EVENT playlist).

FFmpeg's hls muxer cannot produce the TRTC object names, so each segment is its own MPEG-TS
container. A segment starts at the first video keyframe at or after the target duration (audio
only: at the target). The playlist lists complete segments only: it is rewritten atomically
(temporary file + `os.replace`) whenever a segment closes, and gets `#EXT-X-ENDLIST` on close.

Timestamps are continuous across segments (pts as given, i.e. task time), as players expect.
The mpegts muxer takes H.264 as Annex-B or AVCC (it inserts `h264_mp4toannexb` itself and then
repeats SPS/PPS before every IDR) and AAC as ADTS or raw with an AudioSpecificConfig (it writes
the ADTS headers itself); both were checked against FFmpeg 8 and are covered by the tests.
H.265 from our encoder (Annex-B, parameter sets only in the extradata) works the same way: the
muxer puts VPS/SPS/PPS before each IRAP, so every segment decodes on its own (tests/test_overlays.py).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import av
from av.container import OutputContainer
from av.stream import Stream

from cloudrec.core.media import MediaUnit, PacketSink, StreamInfo
from cloudrec.output.mp4 import declare_stream, make_packet, unit_end_seconds, unit_seconds
from cloudrec.output.target import SinkTarget, track_type_of

logger = logging.getLogger(__name__)

TS_OFFSET_SECONDS = "1.4"  # added to every segment's timestamps; covers any B-frame dts delay


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """A complete segment as listed in the playlist."""

    name: str
    begin_ms: int  # unix ms
    duration: float  # seconds
    discontinuity: bool = False  # the stream parameters or timeline changed before this segment


def program_date_time(unix_ms: int) -> str:
    dt = datetime.fromtimestamp(unix_ms / 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{unix_ms % 1000:03d}Z"


def render_playlist(segments: Sequence[Segment], *, start_ms: int, target: float, ended: bool) -> str:
    """The text of an EVENT playlist listing `segments`."""
    longest = max((s.duration for s in segments), default=target)
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        f"#EXT-X-TARGETDURATION:{max(1, math.ceil(target), round(longest))}",  # RFC 8216 4.3.3.1
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:EVENT",
        f"#EXT-X-TRTC-START-REC-TIME:{start_ms}",
    ]
    for s in segments:
        if s.discontinuity:
            lines.append("#EXT-X-DISCONTINUITY")
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{program_date_time(s.begin_ms)}")
        lines.append(f"#EXTINF:{s.duration:.3f},")
        uri = s.name.rsplit("/", 1)[-1]  # segments sit next to their playlist
        # RFC 3986 4.2: a relative reference whose first segment has a ":" would read as a scheme.
        lines.append(f"./{uri}" if ":" in uri else uri)
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


class HlsSink(PacketSink):
    """MPEG-TS segments `<base>[_<type>]_<UTC>.ts` and the playlist `<base>[_<type>].m3u8`."""

    def __init__(
        self,
        target: SinkTarget,
        *,
        segment_seconds: float = 4.0,
        continue_from: HlsSink | None = None,
    ) -> None:
        """`continue_from`: a closed sink of the same playlist whose segments this one extends
        (after a stream change); the first new segment is marked as a discontinuity."""
        self.target = target
        self.segment_seconds = segment_seconds
        self.playlist = ""  # named when the first segment starts (names may hold the start time)
        self.segments: list[Segment] = []
        self.dropped = 0
        self.errors = 0
        self._streams: list[StreamInfo] = []
        self._has_video = False
        self._container: OutputContainer | None = None
        self._out: list[Stream] = []
        self._seg_name = ""
        self._seg_start = 0.0  # seconds (task time)
        self._seg_end = 0.0
        self._start_ms: int | None = None  # the recording's first media, unix ms
        self._last_dts: dict[int, int] = {}
        self._closed = False
        self._warned = False
        self._discontinuity = False
        self._seg_discontinuity = False
        self._announced = False  # this sink reported its playlist as live
        if continue_from is not None and continue_from.segments:
            self.segments = list(continue_from.segments)
            self._start_ms = continue_from._start_ms
            self.playlist = continue_from.playlist
            self._discontinuity = True

    def open(self, streams: Sequence[StreamInfo]) -> None:
        self.target.directory.mkdir(parents=True, exist_ok=True)
        self._streams = list(streams)
        self._has_video = any(s.kind.is_video for s in self._streams)

    def write(self, stream_index: int, unit: MediaUnit) -> None:
        if self._closed or not 0 <= stream_index < len(self._streams):
            return
        video = self._streams[stream_index].kind.is_video
        t = unit_seconds(unit)
        if self._container is None:
            if self._has_video and not (video and unit.key):
                self.dropped += 1  # the first segment starts at a video keyframe
                return
            self._start_segment(t)
        elif t - self._seg_start >= self.segment_seconds and (unit.key and video or not self._has_video):
            self._finish_segment(t)
            self._start_segment(t)
        self._mux(stream_index, unit)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._finish_segment(None)
        if self._start_ms is not None:
            self._write_playlist(ended=True)
            end_ms = self.target.unix_ms(self._seg_end) if self.segments else self._start_ms
            logger.info("playlist finished", extra={"file": self.playlist, "segments": len(self.segments)})
            self._emit(self.playlist, "playlist", self._start_ms, end_ms, final=True)

    # -- internals -------------------------------------------------------------------------------
    def _start_segment(self, t: float) -> None:
        begin_ms = self.target.unix_ms(t)
        track = track_type_of(self._streams, self.target.track_type)
        if not self.playlist:
            self.playlist = self.target.names.playlist(track, begin_ms)
        self._seg_name = self.target.names.segment(track, begin_ms, len(self.segments), self.playlist)
        (self.target.directory / self._seg_name).parent.mkdir(parents=True, exist_ok=True)
        # A constant offset for every segment (as FFmpeg's HLS muxer does): the first units of a mix have
        # negative dts (B-frame delay), and the muxer would shift only the first segment to avoid them,
        # putting a jump of a few frames into the timeline at the first segment boundary.
        container = av.open(str(self.target.directory / self._seg_name), "w", format="mpegts",
                            options={"output_ts_offset": TS_OFFSET_SECONDS})
        assert isinstance(container, OutputContainer)
        self._out = [declare_stream(container, info) for info in self._streams]
        self._container = container
        self._seg_start = t
        self._seg_end = t
        self._last_dts = {}
        self._seg_discontinuity, self._discontinuity = self._discontinuity, False
        if not self._announced:  # the first segment of this sink: the playlist is live (again, when continued)
            self._announced = True
            if self._start_ms is None:
                self._start_ms = begin_ms
            self._write_playlist(ended=False)
            logger.info("playlist started", extra={"file": self.playlist, "begin_ms": self._start_ms})
            self._emit(self.playlist, "playlist", self._start_ms, None, final=False)

    def _mux(self, index: int, unit: MediaUnit) -> None:
        assert self._container is not None
        last = self._last_dts.get(index)
        if last is not None and unit.dts <= last:
            self.dropped += 1
            return
        try:
            self._container.mux(make_packet(unit, self._out[index]))
        except (av.error.FFmpegError, ValueError) as exc:
            self.errors += 1
            if not self._warned:
                self._warned = True
                logger.warning("packet not written", extra={"file": self._seg_name, "error": str(exc)})
            return
        self._last_dts[index] = unit.dts
        self._seg_end = max(self._seg_end, unit_end_seconds(unit))

    def _finish_segment(self, next_start: float | None) -> None:
        container, self._container = self._container, None
        if container is None:
            return
        try:
            container.close()
        except (av.error.FFmpegError, OSError) as exc:
            logger.warning("segment not finalized", extra={"file": self._seg_name, "error": str(exc)})
        end = next_start if next_start is not None else self._seg_end
        self._seg_end = end
        begin_ms = self.target.unix_ms(self._seg_start)
        end_ms = self.target.unix_ms(end)
        self.segments.append(
            Segment(
                name=self._seg_name,
                begin_ms=begin_ms,
                duration=max(0.0, end - self._seg_start),
                discontinuity=self._seg_discontinuity,
            )
        )
        self._write_playlist(ended=False)
        logger.debug("segment finished", extra={"file": self._seg_name, "end_ms": end_ms})
        self._emit(self._seg_name, "segment", begin_ms, end_ms, final=True)

    def _write_playlist(self, *, ended: bool) -> None:
        assert self._start_ms is not None
        text = render_playlist(self.segments, start_ms=self._start_ms, target=self.segment_seconds, ended=ended)
        path = self.target.directory / self.playlist
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

    def _emit(self, name: str, kind: str, begin_ms: int, end_ms: int | None, *, final: bool) -> None:
        self.target.report(self._streams, name, kind, begin_ms, end_ms, final=final)
