"""A sync source and an A/V offset checker (MEDIA.md §1 "Checking").

**Source.** Every second, on the second, the picture turns white for `flash_frames` frames and a
`beep_hz` tone plays for `beep_ms`; the rest is a dark picture and silence. The signal is a pure
function of time (`flash_at`, `beep_samples`), so a file writer and a live publisher (which renders
frames at wall-clock instants) produce the same events.

**Checker.** `measure()` decodes with PyAV and finds:

- Flash onsets: the mean luma of one region per frame (by default the cell of a 16×16 grid whose luma
  varies most, so a tile of a mixed picture is found without knowing the layout); an onset is the
  pts of the first frame above the midpoint between the dark and bright levels after ≥ 0.3 s below.
  Precision: a flash is seen only at frame instants, so the video onset is quantized to the file's
  frame interval. We report the pts of the first bright frame — the instant a viewer first sees the
  flash — and the interval itself (`video_interval_ms`). For a file whose frames are the source's own
  (stream copy, a source at the mix's frame rate) the onset is exact; in a mix at F fps that resamples a
  source by nearest frame, the displayed onset can be off by up to ±1/(2F) from the event, and that is
  part of what a viewer sees, so it stays in the figure (test mixes use 30 fps: ±17 ms).
- Beep onsets: the signal is demodulated at `beep_hz` (×e^{−jωt}) and low-passed with a symmetric
  triangle window (two centred 3 ms boxes; nulls at multiples of 333 Hz, so other users' tones in a mix
  are rejected). A tone that starts at t has a symmetric envelope ramp centred on t, so the onset is
  the crossing of half the beep level, linearly interpolated between samples (sub-sample precision,
  independent of the signal's amplitude; AAC/Opus pre-echo stays far below half level).

Offsets are `audio − video` in ms (positive: the sound comes after the picture), paired nearest
within ±0.5 s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

from cloudrec.tools.samples import write_media

DARK_Y, BRIGHT_Y = 16, 235
BEEP_HZ = 1000.0
BEEP_MS = 80
BEEP_AMPLITUDE = 0.5
FLASH_FRAMES = 3
GRID = 16
REFRACTORY_SECONDS = 0.3  # an onset needs this long below threshold before it
PAIR_WINDOW = 0.5
BOX_SECONDS = 0.003

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]


# --------------------------------------------------------------------------------------------
# The signal


def flash_at(t: float, fps: int, flash_frames: int = FLASH_FRAMES, phase: float = 0.0) -> bool:
    """Whether the frame at time `t` (seconds, a multiple of 1/fps) is a flash frame."""
    frame_in_second = round(((t - phase) % 1.0) * fps) % fps
    return frame_in_second < flash_frames


def beep_samples(start: int, n: int, rate: int, *, beep_hz: float = BEEP_HZ, beep_ms: int = BEEP_MS,
                 phase: float = 0.0, amplitude: float = BEEP_AMPLITUDE) -> F32:
    """Samples [start, start+n) of the audio: a tone from each whole second (+ phase) for beep_ms."""
    idx = np.arange(start, start + n, dtype=np.int64) - round(phase * rate)
    pos = np.mod(idx, rate)  # sample position within its second
    on = pos < round(beep_ms * rate / 1000)
    tone = np.sin(2 * np.pi * beep_hz * pos / rate)  # zero phase at each onset: the step is exact
    return (amplitude * tone * on).astype(np.float32)


def sync_frame(width: int, height: int, bright: bool) -> av.VideoFrame:
    """A yuv420p frame: all white or all dark."""
    frame = av.VideoFrame(width, height, "yuv420p")
    y = BRIGHT_Y if bright else DARK_Y
    for plane, value in zip(frame.planes, (y, 128, 128)):
        plane.update(bytes([value]) * plane.buffer_size)
    return frame


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncSourceSpec:
    path: Path
    seconds: float = 10.0
    width: int = 640
    height: int = 360
    fps: int = 30
    sample_rate: int = 48_000
    flash_frames: int = FLASH_FRAMES
    beep_ms: int = BEEP_MS
    audio_shift_ms: float = 0.0  # deliberately move the beeps (to check the checker)
    gop_seconds: float = 1.0


def write_sync_source(spec: SyncSourceSpec) -> Path:
    """Write MP4 / FLV / TS (by extension) with H.264 + AAC, interleaved in time order."""
    fps = spec.fps
    frames = {b: sync_frame(spec.width, spec.height, b) for b in (False, True)}
    return write_media(
        spec.path, width=spec.width, height=spec.height, fps=fps, n_frames=round(spec.seconds * fps),
        frame=lambda i: frames[flash_at(i / fps, fps, spec.flash_frames)],
        sample_rate=spec.sample_rate, n_samples=round(spec.seconds * spec.sample_rate),
        samples=lambda pos, n: beep_samples(pos, n, spec.sample_rate, beep_ms=spec.beep_ms,
                                            phase=spec.audio_shift_ms / 1000),
        gop=max(1, round(spec.gop_seconds * fps)), video_options={"preset": "veryfast", "bf": "0", "sc_threshold": "0"},
        video_bit_rate=500_000, audio_bit_rate=96_000,
    )


# --------------------------------------------------------------------------------------------
# Measuring


@dataclass(frozen=True, slots=True, kw_only=True)
class VideoTrace:
    times: F64  # frame pts in seconds
    cells: F64  # (frames, GRID, GRID) mean luma per cell

    @property
    def interval(self) -> float:
        return float(np.median(np.diff(self.times))) if len(self.times) > 1 else 0.0


@dataclass(slots=True, kw_only=True)
class OffsetReport:
    offsets_ms: list[float] = field(default_factory=list)
    video_onsets: list[float] = field(default_factory=list)  # seconds (file time)
    audio_onsets: list[float] = field(default_factory=list)
    video_interval_ms: float = 0.0
    region: tuple[int, int, int, int] | None = None  # x, y, w, h in pixels of the chosen region

    @property
    def count(self) -> int:
        return len(self.offsets_ms)

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.offsets_ms)) if self.offsets_ms else math.nan

    @property
    def max_abs_ms(self) -> float:
        return float(np.max(np.abs(self.offsets_ms))) if self.offsets_ms else math.nan

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out.update(count=self.count, mean_ms=_nan_none(self.mean_ms), max_abs_ms=_nan_none(self.max_abs_ms))
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)


def _nan_none(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 2)


def video_trace(path: str | Path, grid: int = GRID) -> tuple[VideoTrace, tuple[int, int]]:
    """Mean luma of each cell of a grid×grid split, per decoded frame; and the picture size."""
    times: list[float] = []
    cells: list[F64] = []
    size = (0, 0)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in c.decode(stream):
            if frame.pts is None or frame.time_base is None:
                continue
            y = _luma(frame)
            size = (frame.width, frame.height)
            h, w = (y.shape[0] // grid) * grid, (y.shape[1] // grid) * grid
            block = y[:h, :w].reshape(grid, h // grid, grid, w // grid)
            cells.append(block.mean(axis=(1, 3)))
            times.append(float(frame.pts * frame.time_base))
    order = np.argsort(times, kind="stable")
    arr = np.array(cells, dtype=np.float64).reshape(-1, grid, grid)
    return VideoTrace(times=np.array(times, dtype=np.float64)[order], cells=arr[order]), size


def _luma(frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    if frame.format.name not in ("yuv420p", "yuvj420p", "yuv422p", "yuv444p", "nv12"):
        frame = frame.reformat(format="yuv420p")
    plane = frame.planes[0]
    buf: npt.NDArray[np.uint8] = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(plane.height, plane.line_size)
    return buf[:, : plane.width]


def _rising(series: F64, times: F64, threshold: float) -> list[int]:
    """Indices where `series` rises above `threshold` after ≥ REFRACTORY_SECONDS below it."""
    above = series > threshold
    out: list[int] = []
    last_above = -math.inf
    for i in np.flatnonzero(above):
        t = float(times[i])
        if i > 0 and not above[i - 1] and t - last_above >= REFRACTORY_SECONDS:
            out.append(int(i))
        last_above = t
    return out


def flash_onsets(trace: VideoTrace, size: tuple[int, int], region: tuple[int, int, int, int] | None = None,
                 grid: int = GRID) -> tuple[list[float], tuple[int, int, int, int]]:
    """Flash onsets (seconds) in `region` (pixels) or, by default, the most varying grid cell."""
    if len(trace.times) == 0:
        return [], region or (0, 0, 0, 0)
    width, height = size
    cw, ch = width // grid, height // grid
    if region is None:
        spread = np.percentile(trace.cells, 99, axis=0) - np.percentile(trace.cells, 1, axis=0)
        gy, gx = np.unravel_index(int(np.argmax(spread)), spread.shape)
        series = trace.cells[:, gy, gx]
        region = (int(gx) * cw, int(gy) * ch, cw, ch)
    else:
        x, y, w, h = region
        gx0, gy0 = max(0, x // cw), max(0, y // ch)
        gx1, gy1 = min(grid, max(gx0 + 1, (x + w) // cw)), min(grid, max(gy0 + 1, (y + h) // ch))
        series = trace.cells[:, gy0:gy1, gx0:gx1].mean(axis=(1, 2))
    lo, hi = float(np.percentile(series, 5)), float(np.percentile(series, 99.5))
    if hi - lo < 40:  # no flash here (a flash is ~200 luma levels above the dark picture)
        return [], region
    return [float(trace.times[i]) for i in _rising(series, trace.times, (lo + hi) / 2)], region


def _audio_chunks(path: str | Path) -> Iterator[tuple[float, F32, int]]:
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        for frame in c.decode(stream):
            if frame.pts is None or frame.time_base is None:
                continue
            data = frame.to_ndarray().astype(np.float32)
            if frame.format.is_planar:
                mono = data.mean(axis=0)
            else:
                mono = data.reshape(-1, len(frame.layout.channels)).mean(axis=1)
            yield float(frame.pts * frame.time_base), mono.astype(np.float32), frame.sample_rate


def beep_onsets(path: str | Path, beep_hz: float = BEEP_HZ) -> list[float]:
    """Beep onsets (seconds, file time) with sub-sample precision."""
    starts: list[float] = []
    parts: list[F32] = []
    rate = 0
    for t, mono, r in _audio_chunks(path):
        starts.append(t)
        parts.append(mono)
        rate = r
    if not parts:
        return []
    x = np.concatenate(parts)
    index = np.cumsum([0] + [len(p) for p in parts])  # sample index where each frame starts
    env = _envelope(x, rate, beep_hz)
    level = float(np.percentile(env, 99))
    if level < 1e-3:
        return []
    threshold = level / 2
    above = env > threshold
    out: list[float] = []
    last_above = -math.inf
    for i in np.flatnonzero(above):
        if i > 0 and not above[i - 1] and (i - last_above) / rate >= REFRACTORY_SECONDS:
            frac = (threshold - env[i - 1]) / (env[i] - env[i - 1])  # linear interpolation
            k = int(np.searchsorted(index, i, side="right")) - 1
            out.append(starts[k] + (i - 1 + frac - index[k]) / rate)
        last_above = float(i)
    return out


def _envelope(x: F32, rate: int, beep_hz: float, block: int = 1 << 20) -> F64:
    """|x demodulated at beep_hz, triangle-filtered|, computed in blocks to bound memory."""
    box = max(1, round(BOX_SECONDS * rate))
    pad = 2 * box
    env = np.empty(len(x), dtype=np.float64)
    for start in range(0, len(x), block):
        a, b = max(0, start - pad), min(len(x), start + block + pad)
        n = np.arange(a, b, dtype=np.float64)
        base = (x[a:b] * np.exp(-2j * np.pi * beep_hz * n / rate)).astype(np.complex64)
        part = np.abs(_box(_box(base, box), box))
        env[start:min(len(x), start + block)] = part[start - a:start - a + min(block, len(x) - start)]
    return env


def _box(x: npt.NDArray[np.complex64], width: int) -> npt.NDArray[np.complex64]:
    """Centred moving average (zero phase) of odd length ≥ width, O(n)."""
    half = width // 2
    c = np.concatenate(([0], np.cumsum(x, dtype=np.complex128)))
    lo = np.clip(np.arange(len(x)) - half, 0, len(x))
    hi = np.clip(np.arange(len(x)) + half + 1, 0, len(x))
    return ((c[hi] - c[lo]) / (2 * half + 1)).astype(np.complex64)


def pair(audio: list[float], video: list[float], window: float = PAIR_WINDOW) -> list[float]:
    """audio − video (ms) for each video onset with an unused audio onset within `window`."""
    used: set[int] = set()
    out: list[float] = []
    a = np.array(audio)
    for v in video:
        if not len(a):
            break
        order = np.argsort(np.abs(a - v))
        for j in order:
            if abs(a[j] - v) > window:
                break
            if int(j) not in used:
                used.add(int(j))
                out.append(round(float(a[j] - v) * 1000, 2))
                break
    return out


def measure(video_file: str | Path, audio_file: str | Path | None = None,
            region: tuple[int, int, int, int] | None = None, *, audio_begin_ms: float | None = None,
            beep_hz: float = BEEP_HZ) -> OffsetReport:
    """Offsets between the flashes of `video_file` and the beeps of `audio_file` (default: the same).
    `audio_begin_ms`: how much later the audio file's zero is than the video file's, for separate
    files that are not playlists (e.g. the difference of their BeginTimeStamps)."""
    trace, size = video_trace(video_file)
    video, chosen = flash_onsets(trace, size, region)
    audio = beep_onsets(audio_file if audio_file is not None else video_file, beep_hz)
    if audio_file is not None:
        shift = audio_begin_ms / 1000 if audio_begin_ms is not None else _timeline_shift(audio_file, video_file)
        audio = [t + shift for t in audio]
    return OffsetReport(offsets_ms=pair(audio, video), video_onsets=video, audio_onsets=audio,
                        video_interval_ms=round(trace.interval * 1000, 3), region=chosen)


def _wall_origin(path: str | Path) -> float | None:
    """Unix seconds of file time 0 for an HLS playlist: its first EXT-X-PROGRAM-DATE-TIME belongs to
    the first sample of the first segment (the container's start time)."""
    if not str(path).endswith(".m3u8"):
        return None
    for line in Path(path).read_text().splitlines():
        if line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            wall = datetime.fromisoformat(line.split(":", 1)[1].strip().replace("Z", "+00:00")).timestamp()
            with av.open(str(path)) as c:
                start = (c.start_time or 0) / av.time_base
            return wall - start
    return None


def _timeline_shift(audio_file: str | Path, video_file: str | Path) -> float:
    """Seconds to add to audio-file times to get video-file times. Separate files of one recording
    may start at different instants (audio at its first packet, video at a keyframe); playlists
    say when (to the ms). Other files are taken to share their zero."""
    a, v = _wall_origin(audio_file), _wall_origin(video_file)
    return a - v if a is not None and v is not None else 0.0


def parse_region(text: str) -> tuple[int, int, int, int]:
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 4 or parts[2] <= 0 or parts[3] <= 0:
        raise ValueError("region is x,y,w,h in pixels")
    return parts[0], parts[1], parts[2], parts[3]
