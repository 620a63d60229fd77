"""One place that stamps and writes a benchmark's result (`bench/results/<name>.json`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def save(results: Path, result: dict[str, Any]) -> dict[str, Any]:
    result = {**result, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{result['name']}.json").write_text(json.dumps(result, indent=2))
    return result
