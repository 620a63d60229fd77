"""`Mp4Sink`: fragmented MP4 files with rotation, plus the stream-copy helpers every sink shares.

A file is written as fragmented MP4 (`frag_keyframe+empty_moov+default_base_moof`, fragments of at
most `FRAGMENT_SECONDS`), so a recorder killed mid-way leaves a file that plays up to its last
complete fragment. A file that grows beyond `max_seconds` or `max_bytes` is closed at the next video
keyframe (any packet when there is no video) and the recording continues in `<base>_<index+1>.mp4`.

Time in rotated files restarts at 0: every file is self-contained and its `FileEvent.begin_ms`
says where it sits on the wall clock.

Stream copy needs the codec configuration before the header: H.264 extradata (avcC, or Annex-B
SPS/PPS which the mp4 muxer turns into avcC; taken from the first keyframe when missing) and the
AAC AudioSpecificConfig (derived from the ADTS header when the packets come as ADTS, whose headers
are then stripped).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
from av.container import OutputContainer
from av.audio.codeccontext import AudioCodecContext
from av.stream import Stream
from av.video.codeccontext import VideoCodecContext

from cloudrec.core.aac import adts_audio_config, adts_sample_rate, is_adts, strip_adts
from cloudrec.core.h264 import annexb_nals, is_annexb
from cloudrec.core.media import MediaUnit, PacketSink, StreamInfo
from cloudrec.output.target import SinkTarget, track_type_of

logger = logging.getLogger(__name__)

FRAGMENT_SECONDS = 1.0
MAX_FILE_BYTES = 2 * 1024**3 - 64 * 1024**2  # 2 GiB minus one generous GOP of margin
# Hand every muxed byte to the OS at once: FFmpeg's 32 KiB write buffer would otherwise hold whole
# fragments of a low-bitrate recording, and a kill -9 would lose them (measured: 8 s of a mix, gone).
FLUSH_OPTIONS = {"flush_packets": "1"}
MP4_OPTIONS = {
    "movflags": "frag_keyframe+empty_moov+default_base_moof",
    "frag_duration": str(int(FRAGMENT_SECONDS * 1_000_000)),
    **FLUSH_OPTIONS,  # movenc writes a fragment at once, so this is one write() per fragment
}

# ---------------------------------------------------------------------------------------------
# Bitstream helpers (H.264 Annex-B / AVCC, AAC ADTS / AudioSpecificConfig)

_START4 = b"\x00\x00\x00\x01"


def h264_parameter_sets(data: bytes) -> bytes | None:
    """Annex-B extradata (SPS + PPS with start codes) found in an Annex-B access unit, if any."""
    if not is_annexb(data):
        return None
    sets = [n for n in annexb_nals(data) if n[0] & 0x1F in (7, 8)]
    if not any(n[0] & 0x1F == 7 for n in sets) or not any(n[0] & 0x1F == 8 for n in sets):
        return None
    return b"".join(_START4 + n for n in sets)


def complete_info(info: StreamInfo, unit: MediaUnit) -> StreamInfo:
    """`info` with the codec configuration filled in from an in-band unit when it lacks one."""
    if info.extradata:
        return info
    if info.codec == "h264" and unit.key:
        sets = h264_parameter_sets(unit.data)
        return replace(info, extradata=sets) if sets else info
    if info.codec == "aac" and is_adts(unit.data):
        rate = info.sample_rate or adts_sample_rate(unit.data)
        return replace(info, extradata=adts_audio_config(unit.data), sample_rate=rate)
    return info


# ---------------------------------------------------------------------------------------------
# Declaring streams and building packets (no codec is opened: stream copy only)

_TEMPLATE_ENCODERS = {"h264": "libx264", "hevc": "libx265", "aac": "aac", "mp3": "libmp3lame", "opus": "libopus", "vp8": "libvpx"}


def declare_stream(container: OutputContainer, info: StreamInfo) -> Stream:
    """A stream-copy output stream for `info`: codec parameters copied, no encoder opened."""
    holder = av.open(io.BytesIO(), "w", format="nut")
    try:
        template = holder.add_stream(_TEMPLATE_ENCODERS.get(info.codec, info.codec))
        stream = container.add_stream_from_template(template, opaque=True)
    finally:
        holder.close()
    ctx = stream.codec_context
    if isinstance(ctx, VideoCodecContext):
        ctx.width = info.width
        ctx.height = info.height
        ctx.pix_fmt = info.pix_fmt or "yuv420p"
    elif isinstance(ctx, AudioCodecContext):
        ctx.sample_rate = info.sample_rate or 48_000
        ctx.layout = info.layout or ("mono" if info.channels == 1 else "stereo")
    if info.extradata:
        ctx.extradata = info.extradata
    if info.codec == "hevc" and container.format.name == "mp4":
        ctx.codec_tag = "hvc1"  # what Apple players require (FFmpeg's default is hev1)
    if info.bit_rate:
        ctx.bit_rate = info.bit_rate
    stream.time_base = info.time_base
    ctx.time_base = info.time_base
    return stream


def make_packet(unit: MediaUnit, stream: Stream, data: bytes | None = None) -> av.Packet[Stream]:
    packet = av.Packet(unit.data if data is None else data)
    packet.pts = unit.pts
    packet.dts = unit.dts
    packet.duration = unit.duration
    packet.time_base = unit.info.time_base
    packet.is_keyframe = unit.key
    packet.stream = stream
    return packet


def unit_seconds(unit: MediaUnit) -> float:
    return float(unit.pts * unit.info.time_base)


def unit_end_seconds(unit: MediaUnit) -> float:
    return float((unit.pts + max(unit.duration, 0)) * unit.info.time_base)


# ---------------------------------------------------------------------------------------------
# Rotating file sinks


class RotatingFileSink(PacketSink):
    """A `PacketSink` writing `<base>[_<type>]_<index>.<ext>` files, rotating on duration or size.

    Subclasses choose the format, the extension and which of the declared streams they take.
    Time restarts at 0 in every file.
    """

    format_name = ""
    extension = ""
    container_options: dict[str, str] = {}

    def __init__(
        self,
        target: SinkTarget,
        *,
        max_seconds: float,
        max_bytes: int = MAX_FILE_BYTES,
        first_index: int = 1,
    ) -> None:
        self.target = target
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self.index = first_index - 1
        self.files: list[str] = []
        self.dropped = 0
        self.errors = 0
        self._streams: list[StreamInfo] = []
        self._map: dict[int, int] = {}  # declared stream index → our stream index
        self._has_video = False
        self._container: OutputContainer | None = None
        self._out: list[Stream] = []
        self._name = ""
        self._pending = ""  # see `FileNamer.pending`
        self._track = ""
        self._offset = 0.0  # seconds subtracted in the current file
        self._begin_ms = 0
        self._end_s = 0.0
        self._bytes = 0
        self._last_dts: dict[int, int] = {}
        self._closed = False
        self._warned = False

    # -- what the subclass takes -------------------------------------------------------------
    def accepts(self, info: StreamInfo) -> bool:
        return True

    def payload(self, info: StreamInfo, unit: MediaUnit) -> bytes:
        return strip_adts(unit.data) if info.codec == "aac" and info.extradata else unit.data

    # -- PacketSink ------------------------------------------------------------------------------
    def open(self, streams: Sequence[StreamInfo]) -> None:
        self.target.directory.mkdir(parents=True, exist_ok=True)
        for i, info in enumerate(streams):
            if self.accepts(info):
                self._map[i] = len(self._streams)
                self._streams.append(info)
        self._has_video = any(s.kind.is_video for s in self._streams)
        if not self._streams:
            raise ValueError("no stream this sink can write")

    def write(self, stream_index: int, unit: MediaUnit) -> None:
        if self._closed:
            return
        ours = self._map.get(stream_index)
        if ours is None:
            return
        info = self._streams[ours]
        t = min(unit_seconds(unit), float(unit.dts * unit.info.time_base))
        cut_point = unit.key and (info.kind.is_video or not self._has_video)
        if self._container is None:
            if self._has_video and not (info.kind.is_video and unit.key):
                self.dropped += 1  # a file starts at a video keyframe
                return
            self._start_file(t, ours, unit)
        elif cut_point and self._due(t):
            self._finish_file()
            self._start_file(t, ours, unit)
        self._mux(ours, unit)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._finish_file()

    # -- internals -------------------------------------------------------------------------------
    def _due(self, t: float) -> bool:
        return t - self._offset >= self.max_seconds or self._bytes >= self.max_bytes

    def _start_file(self, t: float, ours: int, unit: MediaUnit) -> None:
        self._streams[ours] = complete_info(self._streams[ours], unit)
        self.index += 1
        self._track = track_type_of(self._streams, self.target.track_type)
        self._name = self.target.names.file(self._track, self.index, self.target.unix_ms(t), self.extension)
        path = self.target.directory / self._name
        path.parent.mkdir(parents=True, exist_ok=True)
        container = av.open(str(path), "w", format=self.format_name, options=dict(self.container_options))
        assert isinstance(container, OutputContainer)
        self._out = [declare_stream(container, info) for info in self._streams]
        self._container = container
        self._offset = t
        self._begin_ms = self.target.unix_ms(t)
        self._end_s = t
        self._bytes = 0
        self._last_dts = {}
        self.files.append(self._name)
        logger.info("file started", extra={"file": self._name, "begin_ms": self._begin_ms})
        # A name with the end time is provisional until the file closes; its record keeps how to
        # name it then, so that a file cut short by a crash is named (and stored) too.
        self._pending = self.target.names.pending(self._track, self.index, self._begin_ms, self.extension)
        self._emit(end_ms=None, final=False, pending=self._pending)

    def _mux(self, ours: int, unit: MediaUnit) -> None:
        container = self._container
        assert container is not None
        info = self._streams[ours]
        tb = unit.info.time_base
        shift = round(Fraction(self._offset) / tb) if self._offset else 0
        shifted = replace(unit, pts=unit.pts - shift, dts=unit.dts - shift)
        last = self._last_dts.get(ours)
        if shifted.dts < 0 or shifted.pts < 0 or (last is not None and shifted.dts <= last):
            self.dropped += 1
            return
        try:
            container.mux(make_packet(shifted, self._out[ours], self.payload(info, unit)))
        except (av.error.FFmpegError, ValueError) as exc:
            self.errors += 1
            if not self._warned:
                self._warned = True
                logger.warning("packet not written", extra={"file": self._name, "error": str(exc)})
            return
        self._last_dts[ours] = shifted.dts
        self._bytes += len(unit.data)
        self._end_s = max(self._end_s, unit_end_seconds(unit))

    def _finish_file(self) -> None:
        container, self._container = self._container, None
        if container is None:
            return
        try:
            container.close()
        except (av.error.FFmpegError, OSError) as exc:
            logger.warning("file not finalized", extra={"file": self._name, "error": str(exc)})
        end_ms = self.target.unix_ms(self._end_s)
        provisional = ""
        if self._pending:
            final = self.target.names.file(self._track, self.index, self._begin_ms, self.extension, end_ms)
            final_path = self.target.directory / final
            final_path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.target.directory / self._name, final_path)
            provisional, self.files[-1], self._name = self._name, final, final
        logger.info("file finished", extra={"file": self._name, "end_ms": end_ms})
        self._emit(end_ms=end_ms, final=True, replaces=provisional)

    def _emit(self, *, end_ms: int | None, final: bool, pending: str = "", replaces: str = "") -> None:
        self.target.report(self._streams, self._name, "file", self._begin_ms, end_ms, final=final, pending=pending,
                           replaces=replaces)

    @property
    def path(self) -> Path | None:
        """The file being written now."""
        return self.target.directory / self._name if self._container is not None else None


class Mp4Sink(RotatingFileSink):
    """Fragmented MP4: `<base>[_<type>]_<index>.mp4`; rotation as in `RotatingFileSink`."""

    format_name = "mp4"
    extension = "mp4"
    container_options = MP4_OPTIONS

