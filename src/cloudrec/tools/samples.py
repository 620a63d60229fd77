"""Sample media: a test pattern with a visible name and clock, and a distinct tone, per user.

Used by the demo, the tests and the benchmarks, so every run generates its own inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

AUDIO_CHUNK = 1024  # samples per AAC frame
PALETTE = [(200, 40, 40), (40, 160, 60), (40, 80, 200), (210, 180, 30), (150, 50, 170), (30, 170, 170)]


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleSpec:
    path: Path
    label: str
    color: tuple[int, int, int]
    tone_hz: float = 440.0
    seconds: float = 10.0
    width: int = 640
    height: int = 360
    fps: int = 15
    sample_rate: int = 48_000
    video: bool = True
    audio: bool = True
    text: bool = True  # draw the label and clock (solid colour only when False: exact pixel checks)
    gop: int | None = None


def write_sample(spec: SampleSpec) -> Path:
    """Write an MP4 (H.264 + AAC) or, by extension, FLV/TS with the same content."""
    font = ImageFont.load_default(size=max(12, spec.height // 8)) if spec.text else None
    base = np.empty((spec.height, spec.width, 3), dtype=np.uint8)
    base[:] = spec.color
    total = int(spec.seconds * spec.sample_rate)
    t = np.arange(total) / spec.sample_rate
    tone = (0.3 * np.sin(2 * np.pi * spec.tone_hz * t)).astype(np.float32)
    return write_media(
        spec.path, width=spec.width, height=spec.height, fps=spec.fps, n_frames=int(round(spec.seconds * spec.fps)),
        frame=(lambda i: _frame(spec, base, font, i)) if spec.video else None,
        sample_rate=spec.sample_rate, n_samples=total,
        samples=(lambda pos, n: tone[pos : pos + n]) if spec.audio else None,
        gop=spec.gop or spec.fps, video_options={"preset": "veryfast", "bf": "0"},
        video_bit_rate=800_000, audio_bit_rate=64_000,
    )


def write_media(path: Path, *, width: int, height: int, fps: int, n_frames: int,
                frame: Callable[[int], av.VideoFrame] | None, sample_rate: int, n_samples: int,
                samples: Callable[[int, int], np.ndarray] | None, gop: int, video_options: dict[str, str],
                video_bit_rate: int, audio_bit_rate: int) -> Path:
    """H.264 + mono AAC into MP4 / FLV / TS (by extension): `frame(i)` is video frame i, `samples(pos, n)`
    the float samples [pos, pos+n). Video and audio are written in time order, so the file is
    interleaved like a real recording (a pull over plain HTTP reads it front to back)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # faststart puts the index first, so the file can be streamed over HTTP without range requests
    options = {"movflags": "faststart"} if path.suffix == ".mp4" else {}
    with av.open(str(path), "w", options=options) as out:
        vs = out.add_stream("libx264", rate=fps) if frame is not None else None
        if vs is not None:
            vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
            vs.codec_context.gop_size = gop
            vs.codec_context.options = video_options
            vs.bit_rate = video_bit_rate
        as_ = out.add_stream("aac", rate=sample_rate) if samples is not None else None
        if as_ is not None:
            as_.codec_context.layout = "mono"
            as_.bit_rate = audio_bit_rate
        audio_pos = 0

        def audio_until(end: int) -> None:
            nonlocal audio_pos
            while as_ is not None and samples is not None and audio_pos < end:
                n = min(AUDIO_CHUNK, n_samples - audio_pos)
                _encode_samples(out, as_, samples(audio_pos, n), audio_pos, sample_rate)
                audio_pos += n

        for i in range(n_frames if vs is not None else 0):
            assert vs is not None and frame is not None
            picture = frame(i)
            picture.pts = i
            picture.time_base = Fraction(1, fps)
            for p in vs.encode(picture):
                out.mux(p)
            audio_until(min(n_samples, (i + 1) * sample_rate // fps))
        if vs is not None:
            for p in vs.encode(None):
                out.mux(p)
        audio_until(n_samples)
        if as_ is not None:
            for p in as_.encode(None):
                out.mux(p)
    return path


def _frame(spec: SampleSpec, base: np.ndarray, font: ImageFont.FreeTypeFont | ImageFont.ImageFont | None, i: int) -> av.VideoFrame:
    img = base.copy()
    if spec.text:
        bar = (i * 8) % spec.width  # a moving bar shows motion in the contact sheet
        img[:, bar : bar + 8] = 255
        pil = Image.fromarray(img)
        draw = ImageDraw.Draw(pil)
        draw.text((16, 12), spec.label, fill=(255, 255, 255), font=font)
        draw.text((16, spec.height // 2), f"t={i / spec.fps:5.1f}s", fill=(255, 255, 255), font=font)
        img = np.asarray(pil)
    return av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")


def _encode_samples(out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, data: np.ndarray,
                    pos: int, rate: int) -> None:
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data, dtype=np.float32).reshape(1, -1), format="fltp",
                                       layout="mono")
    frame.sample_rate = rate
    frame.pts = pos
    frame.time_base = Fraction(1, rate)
    for p in stream.encode(frame):
        out.mux(p)
