"""Start latency: from `CreateCloudRecording` to the first mixed picture showing a publisher.

`cloudrec serve` runs as its own process; four ffmpeg RTMP publishers (camera-like 720p15 files,
looped, `-c copy`) are in the room. Each round calls CreateCloudRecording (2×2 mix, 1280×720 15 fps)
through the official SDK, waits until `/metrics` counts the task's first frame
(`cloudrec_start_seconds_sum/_count`, measured by the server from the task's creation time), then
DeleteCloudRecording. The figure includes the API call, the worker's claim, subscribing, decoding
from the rooms' keyframe caches, waiting until every publisher has sent media past task time 0 (the
mixer's `[media] latency_ms` window is only the limit) and compositing. A second figure is when that
picture's encoded packet was written (`cloudrec_start_written_seconds`): x264's lookahead adds ~10
frames.
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


def _start_metrics(port: int) -> dict[str, float]:
    """`cloudrec_start_seconds_*` and `cloudrec_start_written_seconds_*` of the server."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^cloudrec_(start(?:_written)?_seconds_(?:sum|count))\S* (\S+)$", text, re.M)}


def main(results: Path) -> dict[str, Any]:
    latencies: list[float] = []
    written: list[float] = []
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
                while (now := _start_metrics(service.port)).get("start_seconds_count", 0) <= before.get("start_seconds_count", 0):
                    if time.monotonic() > deadline:
                        raise RuntimeError("no first frame within 10 s")
                    time.sleep(0.02)
                latencies.append(now["start_seconds_sum"] - before.get("start_seconds_sum", 0.0))
                written.append(now["start_written_seconds_sum"] - before.get("start_written_seconds_sum", 0.0))
                print(json.dumps({"round": n, "start_ms": round(latencies[-1] * 1000), "written_ms": round(written[-1] * 1000)}))
                service.call("DeleteCloudRecording", {"SdkAppId": APP_ID, "TaskId": task})
                time.sleep(1.5)
        finally:
            for p in pushers:
                p.kill()
                p.wait()
            service.stop()
    result = {
        "name": "start_latency",
        "title": "CreateCloudRecording → first composed mixed picture of a publisher (4 RTMP publishers, 2×2 720p15)",
        "rounds_ms": [round(x * 1000) for x in latencies],
        "median_ms": round(statistics.median(latencies) * 1000),
        "written_rounds_ms": [round(x * 1000) for x in written],
        "written_median_ms": round(statistics.median(written) * 1000),
        "goal": "≤ 300 ms median (issue 4)",
    }
    return save(results, result)


if __name__ == "__main__":
    main(Path(__file__).resolve().parent / "results")
