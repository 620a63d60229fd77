"""`AudioMixer`: per-source audio placed on the task timeline by task time, summed on demand.

Each source's decoded frames are resampled once to the mix format (float planar at the mix rate)
and written at the sample position of their task time; a frame starting within `snap_seconds` of
where the previous one ended is made contiguous (timestamp jitter would otherwise click); when the
two disagree by more than `DRIFT_DEADBAND_SECONDS` (a source whose sample clock runs fast or slow
against its timestamps, e.g. after the room's drift correction), the frame is stretched or squeezed
by at most `MAX_STRETCH` (linear interpolation; ≤ 1 % only while converging) so the audio converges to its
timestamps without a gap or a cut, and stays within the snap distance of them. `pull(n)`
returns the next `n` samples of the mix: the sum of the sources, silence where one has nothing,
the peak soft-limited. The mixer's cursor only moves by what is pulled, so output sample count is
exactly what the caller asks for (elapsed × rate).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt

from cloudrec.media.timing import sample_position

logger = logging.getLogger(__name__)

SNAP_SECONDS = 0.03
DRIFT_DEADBAND_SECONDS = 0.002  # timestamp rounding (RTMP: 1 ms) is left alone
MAX_STRETCH = 0.01  # a frame's length changes by at most this fraction (> the room's drift slew)
MAX_AHEAD_SECONDS = 10.0  # audio further ahead of the cursor than this is dropped
LIMIT_KNEE = 0.8  # soft limiter: linear below, compressed above, never beyond 1.0

Samples = npt.NDArray[np.float32]


@dataclass(slots=True)
class _Chunk:
    start: int  # sample position on the task timeline
    data: Samples  # (channels, n) float32


@dataclass(slots=True)
class _Source:
    resampler: av.AudioResampler
    chunks: deque[_Chunk] = field(default_factory=deque)
    end: int | None = None  # position just after the last sample written


def soft_limit(mix: Samples) -> None:
    """In place: samples above LIMIT_KNEE in magnitude are squeezed into (knee, 1.0) with tanh."""
    peak = float(np.max(np.abs(mix))) if mix.size else 0.0
    if peak <= LIMIT_KNEE:
        return
    mag = np.abs(mix)
    over = mag > LIMIT_KNEE
    room = 1.0 - LIMIT_KNEE
    squeezed = LIMIT_KNEE + room * np.tanh((mag[over] - LIMIT_KNEE) / room)
    mix[over] = np.sign(mix[over]) * squeezed


class AudioMixer:
    def __init__(self, sample_rate: int = 48_000, channels: int = 2, *, snap_seconds: float = SNAP_SECONDS) -> None:
        if channels not in (1, 2):
            raise ValueError("channels must be 1 or 2")
        self.sample_rate = sample_rate
        self.channels = channels
        self.layout = "mono" if channels == 1 else "stereo"
        self.time_base = Fraction(1, sample_rate)
        self._snap = round(snap_seconds * sample_rate)
        self._deadband = round(DRIFT_DEADBAND_SECONDS * sample_rate)
        self.stretched = 0  # samples added or removed to follow drifting timestamps
        self._max_ahead = round(MAX_AHEAD_SECONDS * sample_rate)
        self._sources: dict[str, _Source] = {}
        self.cursor = 0  # next sample position pull() returns
        self.late_samples = 0  # samples that arrived after their position was pulled
        self.dropped_samples = 0  # samples too far ahead

    def sources(self) -> list[str]:
        return list(self._sources)

    def remove(self, source_id: str) -> None:
        self._sources.pop(source_id, None)

    def _source(self, source_id: str) -> _Source:
        src = self._sources.get(source_id)
        if src is None:
            src = self._sources[source_id] = _Source(resampler=self._resampler())
        return src

    def _resampler(self) -> av.AudioResampler:
        return av.AudioResampler(format="fltp", layout=self.layout, rate=self.sample_rate)

    def push(self, source_id: str, frame: av.AudioFrame, task_seconds: float) -> None:
        """Add one decoded frame of `source_id` whose first sample is at `task_seconds`."""
        src = self._source(source_id)
        try:
            converted = src.resampler.resample(frame)
        except ValueError:  # the source changed format/rate/layout: start a fresh resampler
            src.resampler = self._resampler()
            converted = src.resampler.resample(frame)
        pos = sample_position(task_seconds, self.sample_rate)
        for out in converted:
            data = out.to_ndarray().astype(np.float32, copy=False).reshape(self.channels, -1)
            self._place(src, pos, data)
            pos += data.shape[1]

    def _place(self, src: _Source, pos: int, data: Samples) -> None:
        if src.end is not None:
            if abs(pos - src.end) <= self._snap:
                data = self._stretch(data, pos - src.end)
                pos = src.end
            elif pos < src.end:  # overlaps what is already there: keep the older samples
                cut = src.end - pos
                data = data[:, cut:]
                pos = src.end
        if pos < self.cursor:  # partly or wholly already pulled
            cut = min(self.cursor - pos, data.shape[1])
            self.late_samples += cut
            data = data[:, cut:]
            pos += cut
        n = data.shape[1]
        if n == 0:
            src.end = max(src.end or pos, pos)
            return
        if pos - self.cursor > self._max_ahead:
            self.dropped_samples += n
            return
        src.chunks.append(_Chunk(start=pos, data=data))
        src.end = pos + n

    def _stretch(self, data: Samples, error: int) -> Samples:
        """`data` resampled to move `error` samples (timestamp − contiguous position) closer to 0."""
        excess = abs(error) - self._deadband
        n = data.shape[1]
        change = min(excess, int(n * MAX_STRETCH))
        if change <= 0 or n < 2:
            return data
        m = n + change if error > 0 else n - change  # late timestamps: play longer; early: shorter
        grid = np.linspace(0, n - 1, m)
        out = np.empty((data.shape[0], m), dtype=np.float32)
        for ch in range(data.shape[0]):
            out[ch] = np.interp(grid, np.arange(n), data[ch])
        self.stretched += change
        return out

    def buffered_until(self, source_id: str) -> int | None:
        """Sample position just after the last sample `source_id` delivered (None: nothing yet)."""
        src = self._sources.get(source_id)
        return src.end if src is not None else None

    def pending(self, source_id: str) -> int:
        """Samples of `source_id` buffered at or after the cursor."""
        src = self._sources.get(source_id)
        if src is None:
            return 0
        return sum(c.data.shape[1] for c in src.chunks)

    def pull(self, n_samples: int) -> av.AudioFrame:
        """The next `n_samples` of the mix as a float-planar frame with pts = cursor (1/rate)."""
        start, stop = self.cursor, self.cursor + n_samples
        mix: Samples = np.zeros((self.channels, n_samples), dtype=np.float32)
        for src in self._sources.values():
            chunks = src.chunks
            while chunks and chunks[0].start + chunks[0].data.shape[1] <= start:
                chunks.popleft()  # fully in the past (only possible through late placement)
            for chunk in chunks:
                if chunk.start >= stop:
                    break
                a = max(start, chunk.start)
                b = min(stop, chunk.start + chunk.data.shape[1])
                mix[:, a - start:b - start] += chunk.data[:, a - chunk.start:b - chunk.start]
            while chunks and chunks[0].start + chunks[0].data.shape[1] <= stop:
                chunks.popleft()
        soft_limit(mix)
        frame = av.AudioFrame.from_ndarray(mix, format="fltp", layout=self.layout)
        frame.sample_rate = self.sample_rate
        frame.pts = start
        frame.time_base = self.time_base
        self.cursor = stop
        return frame
