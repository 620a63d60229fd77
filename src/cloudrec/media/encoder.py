"""Encoders for one output rendition: H.264 (libx264) or H.265 (libx265) video and AAC / MP3 audio.

Encode once, write the same `MediaUnit`s to every sink. Input frames carry pts in the encoder's time
base, counted from the task zero (video: 1/fps by default; audio: 1/sample_rate); output units carry
pts/dts in the same time base, so they are task time as `PacketSink` expects.
"""

from __future__ import annotations

import logging
from typing import Any
from fractions import Fraction

import av
import numpy as np
from av.audio.codeccontext import AudioCodecContext
from av.codec.context import Flags
from av.video.codeccontext import VideoCodecContext

from cloudrec.core.media import MediaUnit, StreamInfo
from cloudrec.core.spec import AudioEncoding, TrackKind, VideoEncoding

logger = logging.getLogger(__name__)

X264_PRESET = "veryfast"
VBV_BUFFER_SECONDS = 2  # bufsize = bitrate × this; maxrate = bitrate

# VideoEncoding.codec → (FFmpeg encoder, codec name in StreamInfo / containers)
_VIDEO_CODECS = {"h264": ("libx264", "h264"), "h265": ("libx265", "hevc")}
_AUDIO_CODECS = {"aac": "aac", "mp3": "libmp3lame"}


# Up to this many pixels per second one x264 thread encodes (veryfast) in well under a third of a
# core here (720p15: ~15 %, 720p30: ~30 %). Below it a recording's encoder runs on one thread: x264's
# frame threads cost ~7 % more CPU for the same frames (bench/mix_cpu, A/B over 4 rounds) and hold
# frames back; recordings run in parallel with each other instead. Above it FFmpeg picks the count.
SINGLE_THREAD_PIXEL_RATE = 1280 * 720 * 30


def encoder_threads(encoding: VideoEncoding) -> int:
    """Encoder threads for one recording's rendition (0: FFmpeg's choice); `VideoEncoder`'s default."""
    if encoding.codec == "h264" and encoding.width * encoding.height * encoding.fps <= SINGLE_THREAD_PIXEL_RATE:
        return 1
    return 0


class EncoderError(RuntimeError):
    """The requested codec or parameters cannot be encoded here (internal blame)."""


def _packet_units(packets: list[av.Packet[Any]], info: StreamInfo) -> list[MediaUnit]:
    out: list[MediaUnit] = []
    for p in packets:
        pts = p.pts if p.pts is not None else 0
        out.append(
            MediaUnit(
                data=bytes(p),
                pts=pts,
                dts=p.dts if p.dts is not None else pts,
                duration=p.duration or 0,
                key=p.is_keyframe,
                info=info,
            )
        )
    return out


class VideoEncoder:
    """libx264 `veryfast`, yuv420p, CBR-ish (bit_rate = maxrate, VBV buffer), fixed GOP, no scene cuts.

    `encode(frame)`: `frame.pts` is in `time_base` (default 1/fps) from the task zero; frames of
    another size or pixel format are scaled with swscale. Non-increasing pts are dropped (counted).
    """

    def __init__(self, encoding: VideoEncoding, *, time_base: Fraction | None = None, threads: int | None = None) -> None:
        """`threads`: encoder threads (0: FFmpeg's choice); by default `encoder_threads(encoding)`."""
        if encoding.codec not in _VIDEO_CODECS:
            raise EncoderError(f"unsupported video codec {encoding.codec!r}")
        codec, stream_codec = _VIDEO_CODECS[encoding.codec]
        if encoding.width % 2 or encoding.height % 2 or encoding.width <= 0 or encoding.height <= 0:
            raise EncoderError("video size must be positive and even")
        self.encoding = encoding
        self.time_base = time_base if time_base is not None else Fraction(1, encoding.fps)
        ctx = av.CodecContext.create(codec, "w")
        assert isinstance(ctx, VideoCodecContext)
        ctx.width = encoding.width
        ctx.height = encoding.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = self.time_base
        ctx.framerate = Fraction(encoding.fps, 1)
        ctx.bit_rate = encoding.bitrate
        gop = max(1, encoding.gop_seconds * encoding.fps)
        ctx.gop_size = gop
        ctx.flags |= Flags.global_header
        ctx.thread_count = encoder_threads(encoding) if threads is None else threads
        options = {
            "preset": X264_PRESET,
            "maxrate": str(encoding.bitrate),
            "bufsize": str(encoding.bitrate * VBV_BUFFER_SECONDS),
        }
        if codec == "libx265":  # x265 takes GOP and scene-cut settings in its own parameter string
            options["x265-params"] = f"scenecut=0:min-keyint={gop}:open-gop=0:log-level=error"
        else:
            options.update({"sc_threshold": "0", "keyint_min": str(gop)})
        ctx.options = options
        ctx.open()
        self._ctx = ctx
        self._info = StreamInfo(
            kind=TrackKind.MAIN,
            codec=stream_codec,
            time_base=self.time_base,
            extradata=bytes(ctx.extradata) if ctx.extradata else None,
            width=encoding.width,
            height=encoding.height,
            pix_fmt="yuv420p",
            bit_rate=encoding.bitrate,
        )
        self._next_pts = 0
        self._last_pts: int | None = None
        self.frames_in = 0
        self.dropped = 0
        self._flushed = False

    def stream_info(self) -> StreamInfo:
        return self._info

    def encode(self, frame: av.VideoFrame) -> list[MediaUnit]:
        if self._flushed:
            return []
        pts = frame.pts if frame.pts is not None else self._next_pts
        if self._last_pts is not None and pts <= self._last_pts:
            self.dropped += 1
            logger.debug("video frame dropped: pts not increasing", extra={"pts": pts})
            return []
        if frame.format.name != "yuv420p" or frame.width != self.encoding.width or frame.height != self.encoding.height:
            frame = frame.reformat(width=self.encoding.width, height=self.encoding.height, format="yuv420p")
        frame.pts = pts
        frame.time_base = self.time_base
        frame.pict_type = 0  # let x264 choose (a decoded I frame would otherwise force a keyframe)
        self._last_pts = pts
        self._next_pts = pts + 1
        self.frames_in += 1
        return _packet_units(self._ctx.encode(frame), self._info)

    def flush(self) -> list[MediaUnit]:
        if self._flushed:
            return []
        self._flushed = True
        return _packet_units(self._ctx.encode(None), self._info)


class AudioEncoder:
    """AAC-LC (FFmpeg's native encoder) or MP3 (libmp3lame) at the requested rate/channels/bitrate.

    `encode(frame)` takes any decoded audio: it is converted once to the codec's sample format and
    cut into `frame_size` chunks. The output is a continuous sample timeline starting at the first
    frame's pts (or 0); a forward jump of more than one codec frame is filled with silence.
    """

    def __init__(self, encoding: AudioEncoding) -> None:
        codec = _AUDIO_CODECS.get(encoding.codec)
        if codec is None:
            raise EncoderError(f"unsupported audio codec {encoding.codec!r}")
        if encoding.channels not in (1, 2):
            raise EncoderError("audio channels must be 1 or 2")
        self.encoding = encoding
        self.time_base = Fraction(1, encoding.sample_rate)
        self.layout = "mono" if encoding.channels == 1 else "stereo"
        ctx = av.CodecContext.create(codec, "w")
        assert isinstance(ctx, AudioCodecContext)
        ctx.sample_rate = encoding.sample_rate
        ctx.layout = self.layout
        ctx.format = "fltp"  # native to aac; libmp3lame takes it too
        ctx.bit_rate = encoding.bitrate
        ctx.time_base = self.time_base
        ctx.flags |= Flags.global_header
        if codec == "aac":
            ctx.profile = "LC"
        ctx.open()
        self._ctx = ctx
        self.sample_format = ctx.format.name
        self.frame_size = ctx.frame_size or 1024
        self._info = StreamInfo(
            kind=TrackKind.AUDIO,
            codec=encoding.codec,
            time_base=self.time_base,
            extradata=bytes(ctx.extradata) if ctx.extradata else None,
            sample_rate=encoding.sample_rate,
            channels=encoding.channels,
            layout=self.layout,
            bit_rate=encoding.bitrate,
        )
        self._resampler = av.AudioResampler(format=self.sample_format, layout=self.layout, rate=encoding.sample_rate)
        self._fifo = av.AudioFifo()
        self._start: int | None = None  # pts of the first sample
        self._queued = 0  # samples written to the fifo so far
        self._encoded = 0  # samples handed to the codec so far
        self._flushed = False

    def stream_info(self) -> StreamInfo:
        return self._info

    def _position(self, frame: av.AudioFrame) -> int | None:
        if frame.pts is None:
            return None
        tb = frame.time_base if frame.time_base is not None else Fraction(1, frame.sample_rate)
        return round(frame.pts * tb / self.time_base)

    def _silence(self, samples: int) -> av.AudioFrame:
        dtype = np.float32 if self.sample_format.startswith("flt") else np.int16
        chans = self.encoding.channels
        shape = (chans, samples) if self.sample_format.endswith("p") else (1, samples * chans)
        out = av.AudioFrame.from_ndarray(np.zeros(shape, dtype=dtype), format=self.sample_format, layout=self.layout)
        out.sample_rate = self.encoding.sample_rate
        return out

    def _push(self, frame: av.AudioFrame) -> None:
        frame.pts = None
        self._fifo.write(frame)
        self._queued += frame.samples

    def encode(self, frame: av.AudioFrame) -> list[MediaUnit]:
        if self._flushed:
            return []
        pos = self._position(frame)
        if self._start is None:
            self._start = pos if pos is not None else 0
        elif pos is not None:
            gap = pos - (self._start + self._queued)
            if gap > self.frame_size:
                self._push(self._silence(gap))
        for converted in self._resampler.resample(frame):
            self._push(converted)
        return self._drain(final=False)

    def _drain(self, *, final: bool) -> list[MediaUnit]:
        assert self._start is not None or self._fifo.samples == 0
        packets: list[av.Packet[Any]] = []
        while self._fifo.samples >= self.frame_size or (final and self._fifo.samples > 0):
            chunk = self._fifo.read(min(self.frame_size, self._fifo.samples))
            if chunk is None:
                break
            chunk.pts = (self._start or 0) + self._encoded
            chunk.time_base = self.time_base
            self._encoded += chunk.samples
            packets.extend(self._ctx.encode(chunk))
        return _packet_units(packets, self._info)

    def flush(self) -> list[MediaUnit]:
        if self._flushed:
            return []
        out: list[MediaUnit] = []
        if self._start is not None:
            for converted in self._resampler.resample(None):
                self._push(converted)
            out = self._drain(final=True)
        self._flushed = True
        return out + _packet_units(self._ctx.encode(None), self._info)
