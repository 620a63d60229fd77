"""How many 4-user 2×2 720p15 mixed recordings one machine sustains in real time.

Each recording has its own room with four real-time pull ingests of 1280×720 15 fps H.264/AAC
files (what a room of four camera publishers looks like to the recorder) and its own
`MixedPipeline` (decode, scale, composite, mix, x264 veryfast, AAC) writing fragmented MP4, all in
this one process, as `cloudrec serve` runs them. A step is "sustained" when every recording wrote
all its frames on time: no video ticks skipped for falling behind, no units dropped in queues, and
the file holds duration × fps frames (±2).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import av

from bench.inputs import camera_like
from bench.results_file import save
from bench.mix_cpu import FPS, H, W, process_cpu, mix_room
from cloudrec.core.ingest import IngestSpec
from cloudrec.core.rooms import RoomKey
from cloudrec.media.mixed import MixedPipeline
from cloudrec.output.mp4 import Mp4Sink
from cloudrec.rooms.ingest import IngestPublisher
from cloudrec.rooms.registry import RoomRegistry

SECONDS = 30.0
STEPS = (1, 3, 5, 6, 7, 8)  # up to the first step that is not sustained


def _frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for p in c.demux(c.streams.video[0]) if p.size)


def run_step(n: int, inputs: list[Path], root: Path) -> dict[str, Any]:
    registry = RoomRegistry()
    stop_ingest = threading.Event()
    ingests: list[threading.Thread] = []
    rooms = [registry.room(RoomKey(1, f"bench{r}")) for r in range(n)]
    for r, room in enumerate(rooms):
        for i, p in enumerate(inputs):
            pub = IngestPublisher(room, IngestSpec(room=room.key, user_id=f"u{i}", urls=(str(p),), repeat=-1))
            ingests.append(threading.Thread(target=pub.run, args=(stop_ingest,), daemon=True, name=f"ingest-{r}-{i}"))
    for t in ingests:
        t.start()
    deadline = time.monotonic() + 20
    while any(len(room.snapshot().participants) < len(inputs) or any(len(p.tracks) < 2 for p in room.snapshot().participants)
              for room in rooms):
        if time.monotonic() > deadline:
            raise RuntimeError("ingests did not start")
        time.sleep(0.01)
    pipelines: list[tuple[MixedPipeline, threading.Thread, Mp4Sink]] = []
    stop_mix = threading.Event()
    cpu0, wall0 = process_cpu(), time.monotonic()
    for r, room in enumerate(rooms):
        pipeline, sink = mix_room(room, root, f"mix{n}_{r}")
        thread = threading.Thread(target=pipeline.run, args=(stop_mix,), daemon=True, name=f"mix-{r}")
        thread.start()
        pipelines.append((pipeline, thread, sink))
    time.sleep(SECONDS)
    stop_mix.set()
    for _, thread, _ in pipelines:
        thread.join(30)
    cpu, wall = process_cpu() - cpu0, time.monotonic() - wall0
    stop_ingest.set()
    for t in ingests:
        t.join(10)
    recordings = []
    for pipeline, _, sink in pipelines:
        stats = pipeline.stats
        frames = sum(_frames(root / f) for f in sink.files)
        recordings.append({"frames_out": stats.frames_out, "frames_in_file": frames, "skipped_frames": stats.skipped_frames,
                           "dropped": stats.dropped, "late_units": stats.late_units})
    expected = SECONDS * FPS
    sustained = all(r["skipped_frames"] == 0 and r["dropped"] == 0 and abs(r["frames_in_file"] - expected) <= 2 + FPS * 0.5
                    for r in recordings)
    return {"n": n, "cpu_seconds": cpu, "wall_seconds": wall, "recordings": recordings, "sustained": sustained}


def main(results: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = [camera_like(root / f"in{i}.mp4", i, seconds=10, width=W, height=H, fps=FPS) for i in range(4)]
        steps = []
        for n in STEPS:
            step = run_step(n, inputs, root)
            print(json.dumps({k: step[k] for k in ("n", "cpu_seconds", "wall_seconds", "sustained")}))
            steps.append(step)
            for f in root.glob("mix*"):
                f.unlink()
            if not step["sustained"]:
                break
    result = {
        "name": "mix_capacity",
        "title": f"concurrent 4-user 2×2 720p15 mixed recordings ({SECONDS:.0f} s each, in one process)",
        "steps": steps,
        "max_sustained": max((s["n"] for s in steps if s["sustained"]), default=0),
        "goal": "≥ 5 concurrent (issue 4)",
    }
    return save(results, result)


if __name__ == "__main__":
    main(Path(__file__).resolve().parent / "results")
