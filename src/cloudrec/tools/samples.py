"""Sample media: a test pattern with a visible name and clock, and a distinct tone, per user.

Used by the demo, the tests and the benchmarks, so every run generates its own inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

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
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    # faststart puts the index first, so the file can be streamed over HTTP without range requests
    options = {"movflags": "faststart"} if spec.path.suffix == ".mp4" else {}
    with av.open(str(spec.path), "w", options=options) as out:
        vs = out.add_stream("libx264", rate=spec.fps) if spec.video else None
        if vs is not None:
            vs.width, vs.height, vs.pix_fmt = spec.width, spec.height, "yuv420p"
            vs.codec_context.gop_size = spec.gop or spec.fps
            vs.codec_context.options = {"preset": "veryfast", "bf": "0"}
            vs.bit_rate = 800_000
        as_ = out.add_stream("aac", rate=spec.sample_rate) if spec.audio else None
        if as_ is not None:
            as_.codec_context.layout = "mono"
            as_.bit_rate = 64_000
        n_frames = int(round(spec.seconds * spec.fps))
        font = ImageFont.load_default(size=max(12, spec.height // 8)) if spec.text else None
        base = np.empty((spec.height, spec.width, 3), dtype=np.uint8)
        base[:] = spec.color
        total = int(spec.seconds * spec.sample_rate)
        t = np.arange(total) / spec.sample_rate
        tone = (0.3 * np.sin(2 * np.pi * spec.tone_hz * t)).astype(np.float32)
        chunk = 1024
        audio_pos = 0
        # Video and audio are produced in time order, so the file is interleaved like a real
        # recording (a pull over plain HTTP reads it front to back).
        for i in range(n_frames if vs is not None else 0):
            frame = _frame(spec, base, font, i)
            assert vs is not None
            for p in vs.encode(frame):
                out.mux(p)
            while as_ is not None and audio_pos < min(total, (i + 1) * spec.sample_rate // spec.fps):
                audio_pos = _encode_tone(out, as_, tone, audio_pos, chunk, spec.sample_rate)
        if vs is not None:
            for p in vs.encode(None):
                out.mux(p)
        while as_ is not None and audio_pos < total:
            audio_pos = _encode_tone(out, as_, tone, audio_pos, chunk, spec.sample_rate)
        if as_ is not None:
            for p in as_.encode(None):
                out.mux(p)
    return spec.path


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
    frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
    frame.pts = i
    frame.time_base = Fraction(1, spec.fps)
    return frame


def _encode_tone(out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, tone: np.ndarray, pos: int,
                 chunk: int, rate: int) -> int:
    part = tone[pos : pos + chunk]
    if len(part) < chunk:
        part = np.pad(part, (0, chunk - len(part)))
    frame = av.AudioFrame.from_ndarray(part.reshape(1, -1), format="fltp", layout="mono")
    frame.sample_rate = rate
    frame.pts = pos
    frame.time_base = Fraction(1, rate)
    for p in stream.encode(frame):
        out.mux(p)
    return pos + chunk
