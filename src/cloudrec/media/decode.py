"""`Decoder`: one published track's encoded units → decoded PyAV frames.

Frames keep the unit's room-clock pts and time base (`frame.pts × frame.time_base` is a monotonic
reading). The codec context is rebuilt when a unit carries a new `StreamInfo` object (the publisher
changed codec parameters); bad data is logged once, counted and skipped.
"""

from __future__ import annotations

import logging
from typing import Any

import av
from av.audio.codeccontext import AudioCodecContext
from av.video.codeccontext import VideoCodecContext

from cloudrec.core.media import MediaUnit, StreamInfo

logger = logging.getLogger(__name__)

DecodedFrame = av.VideoFrame | av.AudioFrame


class Decoder:
    """Decodes one track. `threads=0` lets FFmpeg pick the thread count, `thread_type="AUTO"`
    uses frame and slice threads, as the ffmpeg CLI does (frame threads add a few frames of delay)."""

    def __init__(self, info: StreamInfo, *, threads: int = 0, thread_type: str = "AUTO") -> None:
        self._threads = threads
        self._thread_type = thread_type
        self.errors = 0  # units the codec rejected
        self.skipped = 0  # video units dropped while waiting for a keyframe
        self.rebuilds = 0
        self._warned = False
        self.info = info
        self._ctx = self._open(info)
        self._need_key = info.kind.is_video

    def _open(self, info: StreamInfo) -> VideoCodecContext | AudioCodecContext:
        ctx = av.CodecContext.create(info.codec, "r")
        if not isinstance(ctx, (VideoCodecContext, AudioCodecContext)):
            raise ValueError(f"not an audio or video codec: {info.codec}")
        if info.extradata:
            ctx.extradata = info.extradata
        if isinstance(ctx, VideoCodecContext):
            if info.width and info.height:
                ctx.width = info.width
                ctx.height = info.height
            ctx.thread_count = self._threads
            ctx.thread_type = self._thread_type
        elif isinstance(ctx, AudioCodecContext):
            if info.sample_rate:
                ctx.sample_rate = info.sample_rate
            if info.layout:
                ctx.layout = info.layout
            elif info.channels:
                ctx.layout = "mono" if info.channels == 1 else "stereo"
        ctx.open()
        return ctx

    def _warn(self, exc: Exception) -> None:
        self.errors += 1
        if not self._warned:
            self._warned = True
            logger.warning("undecodable media skipped", extra={"codec": self.info.codec, "error": str(exc)})
        else:
            logger.debug("undecodable media skipped", extra={"codec": self.info.codec, "error": str(exc)})

    def _run(self, packet: av.Packet[Any] | None) -> list[DecodedFrame]:
        frames: list[DecodedFrame] = []
        try:
            frames.extend(self._ctx.decode(packet))
        except (av.FFmpegError, ValueError) as exc:
            self._warn(exc)
        return frames

    def decode(self, unit: MediaUnit) -> list[DecodedFrame]:
        out: list[DecodedFrame] = []
        if unit.info is not self.info:
            out = self.flush()
            try:
                self._ctx = self._open(unit.info)
            except (av.FFmpegError, ValueError) as exc:
                self._warn(exc)
                return out
            self.info = unit.info
            self.rebuilds += 1
            self._need_key = unit.info.kind.is_video
            logger.info("decoder rebuilt for new stream parameters", extra={"codec": unit.info.codec})
        if self._need_key:
            if not unit.key:
                self.skipped += 1
                return out
            self._need_key = False
        packet = av.Packet(unit.data)
        packet.pts = unit.pts
        packet.dts = unit.dts
        packet.time_base = unit.info.time_base
        if unit.duration:
            packet.duration = unit.duration
        for frame in self._run(packet):
            if frame.time_base is None:
                frame.time_base = unit.info.time_base
            out.append(frame)
        return out

    def flush(self) -> list[DecodedFrame]:
        """Frames still inside the codec (frame threads / reordering); the decoder stays usable."""
        out = self._run(None)
        try:
            self._ctx.flush_buffers()
        except av.FFmpegError:
            pass
        return out
