"""Time conversions: room clock ⇄ task time ⇄ output pts. The only module that does this arithmetic.

- Room clock: a unit's `pts × time_base` is a `time.monotonic()` reading (see `core.media.MediaUnit`).
- Task time: seconds since the task zero `t0` (a monotonic reading taken at task start).
- Output pts: integer task time in an output time base (`Fraction`), e.g. 1/fps or 1/sample_rate.
"""

from __future__ import annotations

import math
from fractions import Fraction

from cloudrec.core.media import MediaUnit


def room_seconds(pts: int, time_base: Fraction) -> float:
    """A room-clock pts as monotonic seconds."""
    return pts * time_base.numerator / time_base.denominator  # no Fraction objects: called per unit


def unit_task_time(unit: MediaUnit, t0: float) -> float:
    """Task time (seconds since `t0`) of a room-clock unit."""
    return room_seconds(unit.pts, unit.info.time_base) - t0


def task_time(monotonic: float, t0: float) -> float:
    """Task time of a monotonic reading."""
    return monotonic - t0


def monotonic_at(task_seconds: float, t0: float) -> float:
    """The monotonic reading of a task time."""
    return t0 + task_seconds


def to_pts(task_seconds: float, time_base: Fraction) -> int:
    """Task time → nearest integer pts in `time_base`."""
    return round(task_seconds * time_base.denominator / time_base.numerator)


def from_pts(pts: int, time_base: Fraction) -> float:
    """Output pts in `time_base` → task time."""
    return pts * time_base.numerator / time_base.denominator


def rescale(pts: int, src: Fraction, dst: Fraction) -> int:
    """A pts from one time base to another, rounded to nearest."""
    return round(Fraction(pts) * src / dst)


def tick_time(n: int, fps: int) -> float:
    """Task time of output video tick `n` (T_n = n / fps)."""
    return n / fps


def ticks_until(task_seconds: float, fps: int) -> int:
    """How many ticks T_0 … T_{k-1} lie at or before `task_seconds` (0 before the task starts)."""
    if task_seconds < 0:
        return 0
    return math.floor(task_seconds * fps + 1e-9) + 1


def samples_until(task_seconds: float, sample_rate: int) -> int:
    """Audio sample count covering task time [0, task_seconds): elapsed × rate."""
    if task_seconds <= 0:
        return 0
    return math.floor(task_seconds * sample_rate + 1e-9)


def sample_position(task_seconds: float, sample_rate: int) -> int:
    """The sample index nearest a task time (may be negative)."""
    return round(task_seconds * sample_rate)
