"""Single-stream recording of WHIP H.264 publishers (720p30, ~1.5 Mbit/s): server CPU per stream.

cloudrec runs as its own process (`cloudrec serve`); the publishers are aiortc clients in this
process sending a pre-encoded H.264 file (no encoding on the client). Phases, same run:
  1. N publishers, nobody recording        → the WebRTC receive cost;
  2. the same N publishers, each recorded  → + the recording cost (stream copy to fragmented MP4);
  3. ffmpeg decoding and re-encoding the same stream (x264 veryfast, same bitrate) → what a
     recorder that transcodes would pay per stream.
Capacity: N publishers with recording for N in STEPS; "sustained" = every recorded file holds
≥ 97 % of the frames sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import httpx
import imageio_ffmpeg
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from tencentcloud.common import credential
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.trtc.v20190722 import models, trtc_client

from bench.results_file import save
from cloudrec.dialects.tencent.usersig import make_usersig
from cloudrec.rooms.whip import ice_host_addresses
from cloudrec.tools.samples import PALETTE, SampleSpec, write_sample

APP_ID, KEY, SID, SKEY = 1400000001, "bench-key", "AKIDbench", "bench-secret"
SECONDS = 20.0
N_COST = 8
STEPS = (10, 20, 40)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Service:
    def __init__(self, root: Path) -> None:
        self.port = _port()
        self.rtmp_port = _port()
        cfg = root / "bench.toml"
        cfg.write_text(f'[server]\nhttp_listen = "127.0.0.1:{self.port}"\nrtmp_listen = "127.0.0.1:{self.rtmp_port}"\n'
                       f'data_dir = "data"\nlog_level = "WARNING"\n[limits]\nrate_per_second = 1000\n'
                       f'max_concurrent_tasks = 1000\n[[apps]]\nid = {APP_ID}\nkey = "{KEY}"\n'
                       f'[[credentials]]\nid = "{SID}"\nsecret = "{SKEY}"\n')
        self.root = root
        self.proc = subprocess.Popen([sys.executable, "-m", "cloudrec.cli", "serve", "--config", str(cfg)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("cloudrec did not start")
            time.sleep(0.1)
        self.trtc = trtc_client.TrtcClient(credential.Credential(SID, SKEY), "ap-guangzhou", ClientProfile(
            httpProfile=HttpProfile(protocol="http", endpoint=f"127.0.0.1:{self.port}")))

    def call(self, action: str, params: dict[str, Any]) -> Any:
        req = getattr(models, f"{action}Request")()
        req.from_json_string(json.dumps(params))
        return getattr(self.trtc, action)(req)

    def record(self, room: str) -> str:
        return str(self.call("CreateCloudRecording", {
            "SdkAppId": APP_ID, "RoomId": room, "UserId": f"rec{room}", "UserSig": make_usersig(APP_ID, KEY, f"rec{room}"),
            "RecordParams": {"RecordMode": 1, "OutputFormat": 3, "MaxIdleTime": 5},
            "StorageParams": {"CloudStorage": {"Vendor": 1, "Region": "r", "Bucket": "bench", "AccessKey": "a",
                                               "SecretKey": "s"}}}).TaskId)

    def cpu(self) -> float:
        return _proc_cpu(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


async def _publish(port: int, room: str, user: str, sample: Path) -> tuple[RTCPeerConnection, MediaPlayer]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    player = MediaPlayer(str(sample), decode=False)
    assert player.video is not None
    pc.addTrack(player.video)
    with ice_host_addresses(["127.0.0.1"]):
        await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"http://127.0.0.1:{port}/whip/{APP_ID}/{room}?userid={user}",
                                content=pc.localDescription.sdp,
                                headers={"Content-Type": "application/sdp",
                                         "Authorization": f"Bearer {make_usersig(APP_ID, KEY, user)}"})
    reply.raise_for_status()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.text, type="answer"))
    return pc, player


async def _phase(service: Service, sample: Path, n: int, room_base: int, record: bool) -> dict[str, Any]:
    rooms = [str(room_base + i) for i in range(n)]
    tasks = [service.record(r) for r in rooms] if record else []
    pcs = await asyncio.gather(*(_publish(service.port, r, "pub", sample) for r in rooms))
    await asyncio.sleep(3)  # connections settle
    cpu0, t0 = service.cpu(), time.monotonic()
    await asyncio.sleep(SECONDS - 6)
    cpu = service.cpu() - cpu0
    wall = time.monotonic() - t0
    for pc, _ in pcs:
        await pc.close()
    frames: list[int] = []
    if record:
        await asyncio.sleep(8)  # MaxIdleTime, finalization
        for task in tasks:
            files = list((service.root / "data" / "storage" / "bench" / task).glob("*.mp4"))
            count = 0
            for f in files:
                with av.open(str(f)) as c:
                    count += sum(1 for p in c.demux(c.streams.video[0]) if p.size)
            frames.append(count)
    return {"n": n, "cpu_seconds": cpu, "wall_seconds": wall, "core_share_per_stream": cpu / wall / n,
            "frames": frames}


def _ffmpeg_transcode(sample: Path) -> dict[str, float]:
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re", "-i", str(sample),
                    "-c:v", "libx264", "-preset", "veryfast", "-b:v", "1500k", "-g", "60", "-f", "mp4", "-y",
                    os.devnull], check=True)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    wall = time.monotonic() - t0
    return {"cpu_seconds": cpu, "wall_seconds": wall, "core_share_per_stream": cpu / wall}


async def _run(root: Path) -> dict[str, Any]:
    sample = write_sample(SampleSpec(path=root / "pub.ts", label="publisher", color=PALETTE[2], seconds=SECONDS,
                                     width=1280, height=720, fps=30, gop=60, audio=False))
    service = Service(root)
    try:
        receive = await _phase(service, sample, N_COST, 10_000, record=False)
        recorded = await _phase(service, sample, N_COST, 20_000, record=True)
        capacity = []
        for i, n in enumerate(STEPS):
            step = await _phase(service, sample, n, 30_000 + 1000 * i, record=True)
            expected = SECONDS * 30
            step["sustained"] = bool(step["frames"]) and min(step["frames"]) >= 0.97 * (expected - 3 * 30)
            capacity.append(step)
    finally:
        service.stop()
    transcode = _ffmpeg_transcode(sample)
    per_stream_recording = (recorded["cpu_seconds"] - receive["cpu_seconds"]) / recorded["wall_seconds"] / N_COST
    return {
        "name": "whip_single",
        "title": f"single-stream recording of {N_COST} WHIP H.264 720p30 publishers (stream copy) vs ffmpeg transcode",
        "receive_only": receive,
        "with_recording": recorded,
        "recording_core_share_per_stream": per_stream_recording,
        "total_core_share_per_stream": recorded["core_share_per_stream"],
        "ffmpeg_transcode": transcode,
        "ratio": recorded["core_share_per_stream"] / transcode["core_share_per_stream"],
        "capacity": capacity,
        "goal": "≤ 3 % of a core per recorded stream; ≥ 40 concurrent (issue 3)",
    }


def main(results: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(_run(Path(tmp)))
    return save(results, result)


if __name__ == "__main__":
    print(json.dumps(main(Path(__file__).resolve().parent / "results"), indent=2))
