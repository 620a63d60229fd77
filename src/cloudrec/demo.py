"""`cloudrec demo`: the whole product, end to end, on embedded defaults.

It generates four users' sample media, starts cloudrec, pulls the users into a room with
`StartStreamIngest`, records the room mixed (2×2 grid, HLS + MP4) and per user (HLS, audio and
video merged) through the official Tencent SDK, stops, and shows what was written.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

import av
from PIL import Image
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.trtc.v20190722 import models, trtc_client

from cloudrec.dialects.tencent.usersig import make_usersig
from cloudrec.service import Service
from cloudrec.settings import load_settings
from cloudrec.tools.fileserver import serve_directory
from cloudrec.tools.samples import PALETTE, SampleSpec, write_sample

APP_ID = 1400000001
USERS = ["alice", "bob", "carol", "dave"]
ROOM = "2026"
console = Console()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(out: Path, app_key: str, secret_id: str, secret_key: str) -> Path:
    cfg = out / "cloudrec.toml"
    cfg.write_text(
        f"""# written by `cloudrec demo`
[server]
http_listen = "127.0.0.1:{_port()}"
rtmp_listen = "127.0.0.1:{_port()}"
data_dir = "data"

[[apps]]
id = {APP_ID}
key = "{app_key}"

[[credentials]]
id = "{secret_id}"
secret = "{secret_key}"
"""
    )
    return cfg


class _Background:
    """The service on its own event loop in a thread, so the demo can drive it like a client."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="cloudrec", daemon=True)

    def _main(self) -> None:
        async def run() -> None:
            self.stop_event = asyncio.Event()
            await self.service.run(self.stop_event)

        try:
            self.loop.run_until_complete(run())
        except BaseException as exc:  # surfaced to the demo's thread
            self.error = exc

    def __enter__(self) -> _Background:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.service.ready:
            if self.error is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cloudrec did not start: {self.error}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(60)


def _call(client: trtc_client.TrtcClient, action: str, params: dict[str, Any]) -> Any:
    req = getattr(models, f"{action}Request")()
    req.from_json_string(json.dumps(params))
    return getattr(client, action)(req)


def _describe_file(path: Path) -> tuple[str, str, str, str]:
    with av.open(str(path)) as c:
        v = c.streams.video[0] if c.streams.video else None
        a = c.streams.audio[0] if c.streams.audio else None
        times = [float(p.pts * p.time_base) for p in c.demux() if p.pts is not None and p.time_base is not None]
    duration = f"{max(times) - min(times):.1f} s" if times else "-"
    size = f"{v.codec_context.width}x{v.codec_context.height}" if v else "audio only"
    codecs = "+".join(s.codec_context.name for s in (v, a) if s is not None)
    return path.name, duration, size, codecs


def _contact_sheet(mp4: Path, target: Path, columns: int = 3, count: int = 6) -> None:
    frames: list[Image.Image] = []
    with av.open(str(mp4)) as c:
        stream = c.streams.video[0]
        duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 10.0
        marks = [duration * (i + 0.5) / count for i in range(count)]
        for frame in c.decode(video=0):
            if frame.pts is None or frame.time_base is None:
                continue
            t = float(frame.pts * frame.time_base)
            if marks and t >= marks[0]:
                frames.append(frame.to_image())  # type: ignore[no-untyped-call]
                marks.pop(0)
    if not frames:
        return
    w, h = frames[0].size
    scale = 0.5
    tw, th = int(w * scale), int(h * scale)
    rows = (len(frames) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tw, rows * th))
    for i, img in enumerate(frames):
        sheet.paste(img.resize((tw, th)), ((i % columns) * tw, (i // columns) * th))
    sheet.save(target)


def run_demo(out: Path, seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    app_key, secret_id, secret_key = secrets.token_hex(32), "AKIDdemo" + secrets.token_hex(8), secrets.token_hex(16)
    media = out / "media"
    with console.status("generating sample media for 4 users…"):
        for i, user in enumerate(USERS):
            write_sample(SampleSpec(path=media / f"{user}.mp4", label=user, color=PALETTE[i], tone_hz=330 + 110 * i,
                                    seconds=seconds + 15))
    settings = load_settings(_config(out, app_key, secret_id, secret_key))
    with serve_directory(media) as media_url, _Background(Service(settings)):
        endpoint = f"{settings.http_host}:{settings.http_port}"
        console.print(f"cloudrec is serving the TRTC API at http://{endpoint}  (data in {settings.data_dir})")
        client = trtc_client.TrtcClient(
            credential.Credential(secret_id, secret_key), "ap-guangzhou",
            ClientProfile(httpProfile=HttpProfile(protocol="http", endpoint=endpoint)),
        )

        def sig(user: str) -> str:
            return make_usersig(APP_ID, app_key, user, expire=3600)

        ingests = [
            _call(client, "StartStreamIngest", {"SdkAppId": APP_ID, "RoomId": ROOM, "RoomIdType": 1, "UserId": u,
                                                "UserSig": sig(u), "StreamUrl": f"{media_url}/{u}.mp4"}).TaskId
            for u in USERS
        ]
        console.print(f"StartStreamIngest: {len(ingests)} users pulled into room {ROOM}")
        storage = {"CloudStorage": {"Vendor": 1, "Region": "us-east-1", "Bucket": "demo", "AccessKey": "demo",
                                    "SecretKey": "demo", "FileNamePrefix": ["recordings"]}}
        mixed = _call(client, "CreateCloudRecording", {
            "SdkAppId": APP_ID, "RoomId": ROOM, "RoomIdType": 1, "UserId": "recorder_mix", "UserSig": sig("recorder_mix"),
            "RecordParams": {"RecordMode": 2, "MaxIdleTime": 30, "OutputFormat": 1},
            "MixTranscodeParams": {"VideoParams": {"Width": 1280, "Height": 720, "Fps": 15, "BitRate": 1500000, "Gop": 2},
                                   "AudioParams": {"SampleRate": 1, "Channel": 2, "BitRate": 64000}},
            "MixLayoutParams": {"MixLayoutMode": 3, "BackGroundColor": "#101820"},
            "StorageParams": storage}).TaskId
        single = _call(client, "CreateCloudRecording", {
            "SdkAppId": APP_ID, "RoomId": ROOM, "RoomIdType": 1, "UserId": "recorder_single",
            "UserSig": sig("recorder_single"),
            "RecordParams": {"RecordMode": 1, "MaxIdleTime": 30, "OutputFormat": 0, "AvMerge": 1},
            "StorageParams": storage}).TaskId
        console.print("CreateCloudRecording: one mixed (2x2 grid, HLS+MP4) and one single-stream (HLS) task")
        with Progress(console=console, transient=True) as progress:
            bar = progress.add_task("recording", total=seconds)
            start = time.monotonic()
            while (elapsed := time.monotonic() - start) < seconds:
                status = _call(client, "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": mixed}).Status
                progress.update(bar, completed=elapsed, description=f"recording ({status})")
                time.sleep(0.5)
        for task in (mixed, single):
            _call(client, "DeleteCloudRecording", {"SdkAppId": APP_ID, "TaskId": task})
        for task in ingests:
            _call(client, "StopStreamIngest", {"SdkAppId": APP_ID, "TaskId": task})
        for task in (mixed, single):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    _call(client, "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": task})
                    time.sleep(0.3)
                except TencentCloudSDKException:
                    break
        console.print("DeleteCloudRecording: both tasks finished and finalized their files")
    root = settings.storage_dir / "demo" / "recordings"
    table = Table(title=f"recorded files under {root}")
    for col in ("task", "file", "duration", "resolution", "codecs"):
        table.add_column(col)
    for label, task in (("mixed", mixed), ("single", single)):
        for path in sorted((root / task).glob("*")):
            if path.suffix in (".m3u8", ".mp4"):
                table.add_row(label, *_describe_file(path))
    console.print(table)
    mixed_mp4 = next((root / mixed).glob("*.mp4"), None)
    if mixed_mp4 is not None:
        sheet = out / "contact-sheet.png"
        _contact_sheet(mixed_mp4, sheet)
        console.print(f"contact sheet of the mixed recording: {sheet}")
