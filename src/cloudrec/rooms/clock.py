"""Publisher clocks → the room clock, with bounded, slewing drift correction (MEDIA.md §1 "Drift").

A publisher stamps media on its own clock; ours is `time.monotonic()`. The two run at slightly
different rates (0.01–0.2 % is common; 0.2 % is 7 s an hour), so one fixed offset lets a
publisher's media slide against the room and against other publishers, until it is dropped as late
or piles up ahead of the mix.

`DriftTracker` keeps `room = src + offset` for ALL tracks of one publisher (so their audio and video
stay exactly as aligned as it sent them) and moves `offset` so that the publisher's media keeps
arriving when its room time says:

- Observation: every unit gives `lag = arrival − src` (independent of the current offset). Network
  and encoder delay only ever add to it, so the minimum over a window (`WINDOW` of arrival time,
  kept as per-bucket minima) is the cleanest view of the clock relation; jitter and bursts vanish.
- Error: `raw = min_lag − offset` is how late the least-delayed unit of the window arrived against
  its room time. Its level at the start says nothing about drift (ffmpeg `-re` sends its first
  0.5 s at once, a first keyframe may be slow), so the first window after `SETTLE` seconds sets a
  `baseline`, and `err = raw − baseline` is the drift since. Positive: the publisher's clock is slow
  (its media would turn up later and later, then be dropped as late); negative: fast (media piles
  up ahead of the room).
- Correction: inside ±`BAND` nothing moves (no jitter in the timestamps). Outside it, `offset` moves
  towards the band edge by at most `MAX_SLEW` × the media time that passed since the last unit
  (0.5 % → 0.5 ms per 100 ms of media, inside MEDIA.md's 1 ms bound, and slower than the audio mixer
  can stretch), never in a jump. With `MAX_SLEW` < 1 the room time of a track can never go
  backwards, and a constant drift up to 0.5 % is followed with a lag of about `BAND`.

`SenderReportMap` is the WebRTC half: one track's RTP timestamps → the sender's NTP clock, from its
RTCP sender reports. The first SR fixes the mapping; later SRs update the rate (slope between the
first and the latest SR, once they are `MIN_SPAN` apart) and the position (the lower envelope of the
last `RECENT_REPORTS`: an SR stamped late is only ever late), but the mapping in use
only slews towards the SR line at `MAX_SLEW` of media time (an SR's NTP is stamped at send time, so
single reports jitter by a few ms and must not make the timestamps jump).
"""

from __future__ import annotations

import math
from collections import deque

WINDOW = 2.0  # seconds of arrival time the minimum lag is taken over
BUCKET = 0.25  # the window is kept as minima of buckets this long
BAND = 0.010  # seconds of error left alone
MAX_SLEW = 0.005  # offset change per second of media time, at most
SETTLE = 2.0  # seconds after the first unit before the baseline window starts
MIN_SPAN = 5.0  # seconds between SRs before their slope is trusted
RECENT_REPORTS = 10  # SRs whose lower envelope places the line
MAX_RATE_ERROR = 0.01  # SR slopes further than this from nominal are ignored (a broken sender)


class DriftTracker:
    """Source seconds of one publisher → room seconds (`room(src, arrival)`)."""

    def __init__(self, *, window: float = WINDOW, band: float = BAND, max_slew: float = MAX_SLEW,
                 settle: float = SETTLE) -> None:
        self.window = window
        self.settle = settle
        self.baseline: float | None = None  # raw error of the first window after `settle`
        self.band = band
        self.max_slew = max_slew
        self.offset: float | None = None
        self.corrected = 0.0  # total offset change so far (seconds; a metric)
        self._buckets: deque[tuple[int, float]] = deque()  # (bucket index, min lag)
        self._first_arrival: float | None = None
        self._media_max: float | None = None

    def start(self, offset: float) -> None:
        """Fix the initial offset (e.g. to continue an arrival-anchored track without a jump)."""
        if self.offset is None:
            self.offset = offset

    def room(self, src: float, arrival: float) -> float:
        """Room seconds of source time `src`, for a unit that arrived at `arrival`."""
        if self.offset is None:
            self.offset = arrival - src
        self._observe(arrival - src, arrival)
        advance = 0.0
        if self._media_max is None or src > self._media_max:
            advance = 0.0 if self._media_max is None else src - self._media_max
            self._media_max = src
        if advance > 0:
            self._slew(advance)
        return src + self.offset

    @property
    def error(self) -> float | None:
        """Drift since the baseline (seconds late); None until the baseline is known."""
        if self.offset is None or not self._buckets or self._first_arrival is None:
            return None
        first, last = self._buckets[0][0], self._buckets[-1][0]
        if (last - first + 1) * BUCKET < self.window or first * BUCKET < self._first_arrival + self.settle:
            return None
        raw = min(lag for _, lag in self._buckets) - self.offset
        if self.baseline is None:
            self.baseline = raw
        return raw - self.baseline

    def _observe(self, lag: float, arrival: float) -> None:
        if self._first_arrival is None:
            self._first_arrival = arrival
        b = math.floor(arrival / BUCKET)
        if self._buckets and self._buckets[-1][0] == b:
            if lag < self._buckets[-1][1]:
                self._buckets[-1] = (b, lag)
        else:
            self._buckets.append((b, lag))
        horizon = b - math.ceil(self.window / BUCKET) + 1
        while self._buckets and self._buckets[0][0] < horizon:
            self._buckets.popleft()

    def _slew(self, advance: float) -> None:
        err = self.error
        assert self.offset is not None
        if err is None or abs(err) <= self.band:
            return
        want = err - math.copysign(self.band, err)  # to the band edge, not its centre: no hunting
        step = max(-self.max_slew * advance, min(self.max_slew * advance, want))
        self.offset += step
        self.corrected += step


class SenderReportMap:
    """RTP timestamps (extended) of one track → sender NTP seconds, following its SRs smoothly."""

    def __init__(self, rate: int, *, max_slew: float = MAX_SLEW, min_span: float = MIN_SPAN) -> None:
        self.rate = rate
        self.max_slew = max_slew
        self.min_span = min_span
        self._first: tuple[int, float] | None = None  # (ext rtp, ntp) of the first SR
        self._target: tuple[int, float, float] | None = None  # the SR line: (ext, ntp, seconds per tick)
        self._base: tuple[int, float] | None = None  # the mapping in use: (ext, ntp) …
        self._scale = 1.0 / rate  # … and its seconds per RTP tick
        self._last_ext: int | None = None
        self._recent: deque[tuple[int, float]] = deque(maxlen=RECENT_REPORTS)

    @property
    def ready(self) -> bool:
        return self._base is not None

    def on_report(self, ext: int, ntp: float) -> None:
        if self._first is None:
            self._first = (ext, ntp)
            self._recent.append((ext, ntp))
            self._target = (ext, ntp, 1.0 / self.rate)
            self._base = (ext, ntp)
            return
        scale = 1.0 / self.rate
        first_ext, first_ntp = self._first
        span = (ext - first_ext) / self.rate
        if span >= self.min_span:
            fitted = (ntp - first_ntp) / (ext - first_ext)
            if abs(fitted * self.rate - 1) <= MAX_RATE_ERROR:
                scale = fitted
        self._recent.append((ext, ntp))
        # An SR's NTP is taken when it is sent, at or after the RTP instant it names: the lowest of the
        # recent reports (on the fitted slope) is the least delayed one.
        intercept = min(n - (e - ext) * scale for e, n in self._recent)
        self._target = (ext, intercept, scale)

    def ntp(self, ext: int) -> float:
        """Sender NTP seconds of `ext`; between calls the mapping moves ≤ max_slew of media time."""
        assert self._base is not None and self._target is not None
        base_ext, base_ntp = self._base
        current = base_ntp + (ext - base_ext) * self._scale
        t_ext, t_ntp, t_scale = self._target
        target = t_ntp + (ext - t_ext) * t_scale
        if self._last_ext is not None and ext > self._last_ext:
            advance = (ext - self._last_ext) / self.rate
            limit = self.max_slew * advance
            current += max(-limit, min(limit, target - current))
            self._base = (ext, current)
            self._scale = t_scale
        if self._last_ext is None or ext > self._last_ext:
            self._last_ext = ext
        return current
