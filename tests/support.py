"""Test support: a real cloudrec process, official SDK clients and PyAV output checks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.trtc.v20190722 import models, trtc_client

from cloudrec.dialects.tencent.usersig import make_usersig

APP_ID = 1400000001
APP_KEY = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e"
OTHER_APP_ID = 1400000002
OTHER_APP_KEY = "0f0e0d0c0b0a09080706050403020100"
LIMITED_APP_ID = 1400000003  # an app with a tiny rate limit
SECRET_ID = "AKIDcloudrecTEST0001"
SECRET_KEY = "cloudrec-test-secret-key-0001"
REGION = "ap-guangzhou"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    port: int
    root: Path
    proc: subprocess.Popen[bytes]
    log: Path
    rtmp_port: int = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def storage(self) -> Path:
        return self.root / "data" / "storage"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def write_config(root: Path, port: int, extra: str = "", rtmp_port: int = 0) -> Path:
    cfg = root / "cloudrec.toml"
    cfg.write_text(
        f"""
[server]
http_listen = "127.0.0.1:{port}"
rtmp_listen = "127.0.0.1:{rtmp_port or free_port()}"
data_dir = "data"

[media]
hls_segment_seconds = 2
allow_private_image_urls = true  # layout pictures are served from 127.0.0.1 in tests

[[apps]]
id = {APP_ID}
key = "{APP_KEY}"
rate_per_second = 500

[[apps]]
id = {OTHER_APP_ID}
key = "{OTHER_APP_KEY}"

[[apps]]
id = {LIMITED_APP_ID}
key = "{APP_KEY}"
rate_per_second = 2
max_concurrent_tasks = 2

[[credentials]]
id = "{SECRET_ID}"
secret = "{SECRET_KEY}"
{extra}
"""
    )
    return cfg


@asynccontextmanager
async def in_process_service(raw: dict[str, Any], root: Path) -> AsyncIterator[Any]:
    """The whole service running on this test's event loop (for tests that look inside it), from a
    settings dict; stopped and finalized on exit."""
    from cloudrec.service import Service
    from cloudrec.settings import parse_settings

    svc = Service(parse_settings(raw, root))
    stop = asyncio.Event()
    running = asyncio.create_task(svc.run(stop))
    async with asyncio.timeout(30):
        while not svc.ready:
            assert not running.done(), running.exception()
            await asyncio.sleep(0.05)
    try:
        yield svc
    finally:
        stop.set()
        await asyncio.wait_for(running, 60)


@contextmanager
def running_server(root: Path, extra: str = "") -> Iterator[Server]:
    root.mkdir(parents=True, exist_ok=True)
    port, rtmp_port = free_port(), free_port()
    cfg = write_config(root, port, extra, rtmp_port)
    log = root / "server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloudrec.cli", "serve", "--config", str(cfg)], stdout=fh, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = Server(port=port, root=root, proc=proc, log=log, rtmp_port=rtmp_port)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"cloudrec exited early:\n{server.log_text()}")
            try:
                if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"cloudrec did not become ready:\n{server.log_text()}")
            time.sleep(0.1)
        yield server
    finally:
        server.stop()


def client(server: Server, *, sign_method: str | None = None, req_method: str = "POST", secret_key: str = SECRET_KEY,
           region: str = REGION) -> trtc_client.TrtcClient:
    cred = credential.Credential(SECRET_ID, secret_key)
    http = HttpProfile(protocol="http", endpoint=server.endpoint, reqMethod=req_method, reqTimeout=30)
    profile = ClientProfile(signMethod=sign_method, httpProfile=http) if sign_method else ClientProfile(httpProfile=http)
    return trtc_client.TrtcClient(cred, region, profile)


def call(c: trtc_client.TrtcClient, action: str, params: dict[str, Any]) -> Any:
    req = getattr(models, f"{action}Request")()
    req.from_json_string(__import__("json").dumps(params))
    return getattr(c, action)(req)


def usersig(user_id: str, app_id: int = APP_ID, key: str = APP_KEY, expire: int = 86400) -> str:
    return make_usersig(app_id, key, user_id, expire=expire)


def storage_params(bucket: str = "bucket1", prefix: list[str] | None = None) -> dict[str, Any]:
    return {"CloudStorage": {"Vendor": 1, "Region": "us-east-1", "Bucket": bucket, "AccessKey": "AK",
                             "SecretKey": "SK", "FileNamePrefix": prefix or []}}


def wait_for(predicate: Any, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


# --- output checks ---------------------------------------------------------------------------


@dataclass
class MediaReport:
    duration: float
    video: dict[str, Any] | None
    audio: dict[str, Any] | None


def probe(path: Path, decode: bool = True) -> MediaReport:
    """Reopen a recorded file with PyAV and measure what is in it."""
    with av.open(str(path)) as c:
        video = audio = None
        v_times: list[float] = []
        a_chunks: list[np.ndarray] = []
        a_times: list[float] = []
        vs = c.streams.video[0] if c.streams.video else None
        as_ = c.streams.audio[0] if c.streams.audio else None
        if decode:
            for frame in c.decode(*(s for s in (vs, as_) if s is not None)):
                if frame.pts is None:
                    continue
                t = float(frame.pts * frame.time_base)
                if isinstance(frame, av.VideoFrame):
                    v_times.append(t)
                else:
                    a_times.append(t)
                    a_chunks.append(frame.to_ndarray().astype(np.float32).reshape(-1))
        if vs is not None:
            video = {"codec": vs.codec_context.name, "width": vs.codec_context.width, "height": vs.codec_context.height,
                     "frames": len(v_times), "first": min(v_times, default=0.0), "last": max(v_times, default=0.0),
                     "bit_rate": vs.codec_context.bit_rate}
        if as_ is not None:
            samples = np.concatenate(a_chunks) if a_chunks else np.zeros(1, np.float32)
            audio = {"codec": as_.codec_context.name, "sample_rate": as_.codec_context.sample_rate,
                     "channels": as_.codec_context.channels, "rms": float(np.sqrt(np.mean(samples ** 2))),
                     "first": min(a_times, default=0.0), "last": max(a_times, default=0.0)}
        times = v_times + a_times
        duration = (max(times) - min(times)) if times else 0.0
        return MediaReport(duration=duration, video=video, audio=audio)


def sample_frame(path: Path, at_seconds: float) -> np.ndarray:
    """The decoded RGB picture nearest `at_seconds` after the first frame."""
    with av.open(str(path)) as c:
        first = None
        best = None
        for frame in c.decode(video=0):
            t = float(frame.pts * frame.time_base)
            first = t if first is None else first
            best = frame
            if t - first >= at_seconds:
                break
        assert best is not None, f"no video in {path}"
        return best.to_ndarray(format="rgb24")



def http_files(directory: Path) -> Any:
    """Serve `directory` over HTTP on loopback (the ingest pulls real http:// URLs)."""
    from cloudrec.tools.fileserver import serve_directory

    return serve_directory(directory)


# --- rooms fed by ingest -----------------------------------------------------------------------

COLORS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 230, 30)]
TONES = [330.0, 440.0, 550.0, 660.0]
USERS = ["alice", "bob", "carol", "dave"]


@contextmanager
def served_samples(root: Path, users: list[str], seconds: float) -> Iterator[str]:
    """One solid-colour sample with a distinct tone per user, served over loopback HTTP."""
    from cloudrec.tools.samples import SampleSpec, write_sample

    for user, color, tone in zip(users, COLORS, TONES):
        write_sample(SampleSpec(path=root / f"{user}.mp4", label=user, color=color, tone_hz=tone, seconds=seconds, text=False))
    with http_files(root) as url:
        yield url


def ingest(server: Server, room: str, url: str, users: list[str]) -> list[str]:
    c = client(server)
    return [
        call(c, "StartStreamIngest", {
            "SdkAppId": APP_ID, "RoomId": room, "RoomIdType": 1, "UserId": u, "UserSig": usersig(u),
            "StreamUrl": f"{url}/{u}.mp4"}).TaskId
        for u in users
    ]



def stop_all(server: Server, recording: str, ingests: list[str]) -> float:
    """DeleteCloudRecording, then StopStreamIngest for each ingest; returns when the delete was sent."""
    c = client(server)
    stopped = time.time()
    call(c, "DeleteCloudRecording", {"SdkAppId": APP_ID, "TaskId": recording})
    for t in ingests:
        call(c, "StopStreamIngest", {"SdkAppId": APP_ID, "TaskId": t})
    return stopped

def wait_ended(server: Server, task_id: str) -> None:
    def ended() -> bool:
        try:
            call(client(server), "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": task_id})
            return False
        except TencentCloudSDKException as exc:
            return exc.code == "ResourceNotFound"

    wait_for(ended, 30, what="task end")


def rgb_close(pixel: np.ndarray, color: tuple[int, int, int], tol: int = 40) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(color)) <= tol))


