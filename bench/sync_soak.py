"""Long-run lip sync: the sync source into a 2×2 mixed recording for a given time, offsets over time.

Not part of `make test` or `make bench` (it runs for as long as you ask). Usage:

    .venv/bin/python -m bench.sync_soak --minutes 60 [--out bench/results/sync_soak.json]

`make bench` shows the saved result in docs/BENCHMARKS.md.

A `cloudrec serve` process is started on loopback; ffmpeg (imageio-ffmpeg) pushes the sync source
over RTMP in real time (`-re -stream_loop -1`), three sample users are pulled in by StartStreamIngest
(repeating), and one CreateCloudRecording mixes them 2×2 at 640×360 30 fps into MP4 + HLS. At the
end the MP4 is measured with `cloudrec.tools.sync`: per minute, the count, mean and max |audio −
video| offset, and over the whole run the spacing of the beeps on the output timeline (1.000 s
when the output follows the wall clock) and the recording's length against the wall-clock time it
covered.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np

from cloudrec.tools.samples import SampleSpec, write_sample
from cloudrec.tools.sync import SyncSourceSpec, beep_onsets, flash_onsets, pair, video_trace, write_sync_source
from tests.support import APP_ID, COLORS, TONES, call, client, http_files, running_server, storage_params, usersig

ROOM = "9900"


def soak(minutes: float, root: Path) -> dict[str, Any]:
    seconds = minutes * 60
    media = root / "media"
    clip = write_sync_source(SyncSourceSpec(path=media / "sync.mp4", seconds=60))
    users = ["u1", "u2", "u3"]
    for user, color, tone in zip(users, COLORS, TONES):
        write_sample(SampleSpec(path=media / f"{user}.mp4", label=user, color=color, tone_hz=tone, seconds=60, text=False))
    with running_server(root / "server") as server, http_files(media) as url:
        c = client(server)
        ingests = [call(c, "StartStreamIngest", {
            "SdkAppId": APP_ID, "RoomId": ROOM, "RoomIdType": 1, "UserId": u, "UserSig": usersig(u),
            "StreamUrl": f"{url}/{u}.mp4", "RepeatNum": -1, "MaxDuration": int(seconds) + 120}).TaskId for u in users]
        task = call(c, "CreateCloudRecording", {
            "SdkAppId": APP_ID, "RoomId": ROOM, "UserId": "rec_soak", "UserSig": usersig("rec_soak"),
            "RecordParams": {"RecordMode": 2, "MaxIdleTime": 30, "OutputFormat": 1, "MaxMediaFileDuration": 1440},
            "MixTranscodeParams": {"VideoParams": {"Width": 640, "Height": 360, "Fps": 30, "BitRate": 800000, "Gop": 2},
                                   "AudioParams": {"SampleRate": 1, "Channel": 2, "BitRate": 96000}},
            "MixLayoutParams": {"MixLayoutMode": 3, "BackGroundColor": "#000000"},
            "StorageParams": storage_params("soak"),
        }).TaskId
        push_url = f"rtmp://127.0.0.1:{server.rtmp_port}/push/{ROOM}?sdkappid={APP_ID}&userid=sync&usersig={usersig('sync')}"
        started = time.time()
        push = subprocess.Popen([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re",
                                 "-stream_loop", "-1", "-i", str(clip), "-t", str(seconds), "-c", "copy", "-f", "flv",
                                 push_url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        push.wait(seconds + 120)
        pushed = time.time() - started
        call(c, "DeleteCloudRecording", {"SdkAppId": APP_ID, "TaskId": task})
        for t in ingests:
            call(c, "StopStreamIngest", {"SdkAppId": APP_ID, "TaskId": t})
        out = server.storage / "soak" / task
        deadline = time.time() + 60
        mp4s: list[Path] = []
        while time.time() < deadline:
            mp4s = sorted(out.glob(f"{APP_ID}_{ROOM}_*.mp4")) if out.exists() else []
            if mp4s and (out / f"{APP_ID}_{ROOM}.m3u8").read_text().rstrip().endswith("#EXT-X-ENDLIST"):
                break
            time.sleep(1)
    return analyse(mp4s[0], pushed, push.returncode)


def analyse(path: Path, pushed: float, push_rc: int | None) -> dict[str, Any]:
    trace, size = video_trace(path)
    # the sync user's tile: the quadrant whose flashes pair with the 1 kHz beeps
    beeps = beep_onsets(path)
    best: tuple[list[float], list[float]] = ([], [])
    for region in [(0, 0, 320, 180), (320, 0, 320, 180), (0, 180, 320, 180), (320, 180, 320, 180)]:
        flashes = flash_onsets(trace, size, region)[0]
        if len(flashes) > len(best[0]):
            best = (flashes, pair(beeps, flashes))
    flashes, offsets = best
    paired_at = [v for v in flashes if any(abs(a - v) <= 0.5 for a in beeps)][: len(offsets)]
    per_minute = []
    for m in range(int(max(paired_at, default=0) // 60) + 1):
        sel = [o for v, o in zip(paired_at, offsets) if m * 60 <= v < (m + 1) * 60]
        if sel:
            per_minute.append({"minute": m, "count": len(sel), "mean_ms": round(float(np.mean(sel)), 2),
                               "max_abs_ms": round(float(np.max(np.abs(sel))), 2)})
    spacing = float(np.polyfit(np.arange(len(beeps)), beeps, 1)[0]) if len(beeps) > 2 else None
    return {
        "file": path.name, "pushed_seconds": round(pushed, 2), "push_exit": push_rc,
        "recording_seconds": round(float(trace.times[-1] - trace.times[0]), 2) if len(trace.times) else None,
        "flashes": len(flashes), "beeps": len(beeps), "paired": len(offsets),
        "mean_ms": round(float(np.mean(offsets)), 2) if offsets else None,
        "max_abs_ms": round(float(np.max(np.abs(offsets))), 2) if offsets else None,
        "beep_spacing_seconds": round(spacing, 6) if spacing else None,
        "per_minute": per_minute,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloudrec-soak-") as tmp:
        result = soak(args.minutes, Path(tmp))
    result = {"name": "sync_soak", "minutes": args.minutes, **result, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
