"""Start latency: from `CreateCloudRecording` to the first encoded mixed picture showing a publisher.

`cloudrec serve` runs as its own process; four ffmpeg RTMP publishers (camera-like 720p15 files,
looped, `-c copy`) are in the room. Each round calls CreateCloudRecording (2×2 mix, 1280×720 15 fps)
through the official SDK, waits until `/metrics` counts the task's first frame
(`cloudrec_start_seconds_sum/_count`, measured by the server from the task's creation time), then
DeleteCloudRecording. The figure includes the API call, the worker's claim, subscribing, decoding
from the rooms' keyframe caches, compositing and the mixer's latency window (`[media] latency_ms`).
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import imageio_ffmpeg

from bench.inputs import camera_like
from bench.results_file import save
from bench.whip_single import APP_ID, KEY, Service
from cloudrec.dialects.tencent.usersig import make_usersig

ROUNDS = 9
W, H, FPS = 1280, 720, 15


def _start_metrics(port: int) -> tuple[float, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    values = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(cloudrec_start_seconds_(?:sum|count))\S* (\S+)$", text, re.M)}
    return values.get("cloudrec_start_seconds_sum", 0.0), values.get("cloudrec_start_seconds_count", 0.0)


def main(results: Path) -> dict[str, Any]:
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = [camera_like(root / f"in{i}.mp4", i, seconds=10, width=W, height=H, fps=FPS) for i in range(4)]
        service = Service(root)
        room = "7700"
        pushers = [subprocess.Popen(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1",
             "-i", str(p), "-c", "copy", "-f", "flv",
             f"rtmp://127.0.0.1:{service.rtmp_port}/push/{room}?sdkappid={APP_ID}&userid=u{i}"
             f"&usersig={make_usersig(APP_ID, KEY, f'u{i}')}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i, p in enumerate(inputs)]
        try:
            time.sleep(4)  # publishers connected, a keyframe cached per room track
            for n in range(ROUNDS):
                before = _start_metrics(service.port)
                task = str(service.call("CreateCloudRecording", {
                    "SdkAppId": APP_ID, "RoomId": room, "UserId": f"rec{n}", "UserSig": make_usersig(APP_ID, KEY, f"rec{n}"),
                    "RecordParams": {"RecordMode": 2, "OutputFormat": 3, "MaxIdleTime": 5},
                    "MixTranscodeParams": {"VideoParams": {"Width": W, "Height": H, "Fps": FPS, "BitRate": 1500000, "Gop": 2},
                                           "AudioParams": {"SampleRate": 1, "Channel": 2, "BitRate": 64000}},
                    "MixLayoutParams": {"MixLayoutMode": 3},
                    "StorageParams": {"CloudStorage": {"Vendor": 1, "Region": "r", "Bucket": "bench", "AccessKey": "a",
                                                       "SecretKey": "s"}}}).TaskId)
                deadline = time.monotonic() + 10
                while (now := _start_metrics(service.port))[1] <= before[1]:
                    if time.monotonic() > deadline:
                        raise RuntimeError("no first frame within 10 s")
                    time.sleep(0.02)
                latencies.append(now[0] - before[0])
                print(json.dumps({"round": n, "start_ms": round(latencies[-1] * 1000)}))
                service.call("DeleteCloudRecording", {"SdkAppId": APP_ID, "TaskId": task})
                time.sleep(1.5)
        finally:
            for p in pushers:
                p.kill()
                p.wait()
            service.stop()
    result = {
        "name": "start_latency",
        "title": "CreateCloudRecording → first encoded mixed picture of a publisher (4 RTMP publishers, 2×2 720p15)",
        "rounds_ms": [round(x * 1000) for x in latencies],
        "median_ms": round(statistics.median(latencies) * 1000),
        "goal": "≤ 300 ms median (issue 4)",
    }
    return save(results, result)


if __name__ == "__main__":
    main(Path(__file__).resolve().parent / "results")
