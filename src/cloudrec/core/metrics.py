"""Process metrics: a tiny thread-safe registry and the Prometheus text exposition format (0.0.4).

Workers, pipelines and the notifier count into one `Metrics` handed out by the composition root;
the API renders it together with gauges read from the store at scrape time.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]


@dataclass(slots=True, kw_only=True)
class Family:
    name: str
    type: str  # counter | gauge
    help: str
    samples: dict[Labels, float] = field(default_factory=dict)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, Family] = {}

    def declare(self, name: str, type_: str, help_: str, *label_sets: Mapping[str, str]) -> None:
        """Make a family and its known series appear at 0 before anything was counted."""
        with self._lock:
            fam = self._families.setdefault(name, Family(name=name, type=type_, help=help_))
            for labels in label_sets or ({},):
                fam.samples.setdefault(tuple(sorted(labels.items())), 0.0)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        with self._lock:
            fam = self._families.setdefault(name, Family(name=name, type="counter", help=name))
            key = tuple(sorted(labels.items()))
            fam.samples[key] = fam.samples.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        """A gauge's current value (declare it first so it has its type)."""
        with self._lock:
            fam = self._families.setdefault(name, Family(name=name, type="gauge", help=name))
            fam.samples[tuple(sorted(labels.items()))] = value

    def families(self) -> list[Family]:
        with self._lock:
            return [Family(name=f.name, type=f.type, help=f.help, samples=dict(f.samples)) for f in self._families.values()]


def gauge(name: str, help_: str, samples: Mapping[Labels, float]) -> Family:
    return Family(name=name, type="gauge", help=help_, samples=dict(samples))


def _value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for fam in sorted(families, key=lambda f: f.name):
        lines.append(f"# HELP {fam.name} {fam.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for labels, value in sorted(fam.samples.items()):
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels)
            lines.append(f"{fam.name}{{{text}}} {_value(value)}" if text else f"{fam.name} {_value(value)}")
    return "\n".join(lines) + "\n"
