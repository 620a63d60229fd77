"""Real publishers into the running service, recorded: an aiortc WHIP client (H.264, stream copy)
and headless Chromium on the /publish page (fake camera and microphone)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import av
import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from cloudrec.core import naming
from cloudrec.core.h264 import NAL_SPS, annexb_nals, avcc_sps, nal_type
from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.spec import TrackKind
from cloudrec.rooms.whip import ice_host_addresses
from cloudrec.tools.samples import SampleSpec, write_sample
from tests.support import (APP_ID, Server, call, client, probe, rgb_close, sample_frame, storage_params, usersig,
                           wait_ended, wait_for)


def record(server: Server, room: str, robot: str, mode: int = 1) -> str:
    return str(call(client(server), "CreateCloudRecording", {
        "SdkAppId": APP_ID, "RoomId": room, "UserId": robot, "UserSig": usersig(robot),
        "RecordParams": {"RecordMode": mode, "AvMerge": 1, "OutputFormat": 3, "MaxIdleTime": 5},
        "StorageParams": storage_params("publishers")}).TaskId)


def sps_of(data: bytes) -> bytes:
    """The SPS NAL of an Annex-B or avcC blob."""
    if data[:1] == b"\x01":
        return avcc_sps(data) or b""
    return next((n for n in annexb_nals(data) if nal_type(n) == NAL_SPS), b"")


async def test_aiortc_whip_publisher_is_stream_copied(server: Server, tmp_path: Path) -> None:
    room = "9401"
    sample = write_sample(SampleSpec(path=tmp_path / "alice.ts", label="alice", color=(200, 40, 40), seconds=12,
                                     width=640, height=360, fps=15))
    task = record(server, room, "rec_9401")
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = MediaPlayer(str(sample), decode=False)  # the file's own H.264 access units
    audio = MediaPlayer(str(sample))
    assert video.video is not None and audio.audio is not None
    pc.addTrack(video.video)
    pc.addTrack(audio.audio)
    with ice_host_addresses(["127.0.0.1"]):
        await pc.setLocalDescription(await pc.createOffer())
    url = f"{server.url}/whip/{APP_ID}/{room}?userid=alice"
    async with httpx.AsyncClient(timeout=15) as http:
        bad = await http.post(url, content=pc.localDescription.sdp,
                              headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {usersig('bob')}"})
        assert bad.status_code == 401  # a UserSig of another user joins nothing
        reply = await http.post(url, content=pc.localDescription.sdp,
                                headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {usersig('alice')}"})
        assert reply.status_code == 201, reply.text
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.text, type="answer"))
        await asyncio.sleep(8)
        gone = await http.delete(server.url + reply.headers["location"])
        assert gone.status_code == 200
    await pc.close()
    await asyncio.to_thread(wait_ended, server, task)  # MaxIdleTime after alice left
    key = RoomKey(APP_ID, room, RoomIdType.INTEGER)
    files = sorted((server.storage / "publishers" / task).glob(naming.user_base(key, "alice", TrackKind.MAIN) + "*.mp4"))
    assert files
    rep = probe(files[0])
    assert rep.video and rep.video["codec"] == "h264" and (rep.video["width"], rep.video["height"]) == (640, 360)
    assert rep.audio and rep.audio["codec"] == "aac" and rep.audio["rms"] > 0.02
    assert 5.0 < rep.duration < 9.5
    with av.open(str(sample)) as src, av.open(str(files[0])) as out:
        first_key = next(bytes(p) for p in src.demux(src.streams.video[0]) if p.is_keyframe)
        assert sps_of(out.streams.video[0].codec_context.extradata or b"") == sps_of(first_key)  # copied, not re-encoded


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_chromium_publishes_from_the_publish_page(server: Server, tmp_path: Path) -> None:
    browser = chromium()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required under CI (make test installs it)")
        pytest.skip("chromium is not installed (make browsers)")
    room = "9402"
    task = record(server, room, "rec_9402")
    page = (f"{server.url}/publish?sdkappid={APP_ID}&roomid={room}&roomidtype=1&userid=chrome"
            f"&usersig={usersig('chrome')}&autostart=1")
    proc = subprocess.Popen(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--use-fake-ui-for-media-stream",
         "--use-fake-device-for-media-stream", "--allow-loopback-in-peer-connection",
         "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0", page],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: call(client(server), "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": task}).StorageFileList,
                 30, what="chromium's media to be recorded")
        time.sleep(6)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    wait_ended(server, task)
    key = RoomKey(APP_ID, room, RoomIdType.INTEGER)
    files = sorted((server.storage / "publishers" / task).glob(naming.user_base(key, "chrome", TrackKind.MAIN) + "*.mp4"))
    assert files
    rep = probe(files[0])
    assert rep.video and rep.video["codec"] == "h264" and rep.video["frames"] > 30
    assert rep.audio and rep.audio["rms"] > 0.001
    assert rep.duration > 4


def test_camera_and_screen_share_of_one_user_are_recorded_side_by_side(server: Server, tmp_path: Path) -> None:
    """Two RTMP connections of one user (camera, then a screen share with `streamtype=aux`): the
    screen share does not displace the camera, and each is recorded as its own file set."""
    import imageio_ffmpeg

    room = "9404"
    camera_clip = write_sample(SampleSpec(path=tmp_path / "cam.mp4", label="cam", color=(40, 160, 60), seconds=8))
    screen_clip = write_sample(SampleSpec(path=tmp_path / "scr.mp4", label="scr", color=(200, 60, 160), seconds=4))
    task = record(server, room, "rec_9404")

    def push(clip: Path, stream: str) -> subprocess.Popen[bytes]:
        url = (f"rtmp://127.0.0.1:{server.rtmp_port}/push/{room}?sdkappid={APP_ID}&userid=presenter"
               f"&usersig={usersig('presenter')}&streamtype={stream}")
        return subprocess.Popen([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re",
                                 "-i", str(clip), "-c", "copy", "-f", "flv", url],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    camera = push(camera_clip, "main")
    time.sleep(2)
    screen = push(screen_clip, "aux")
    assert screen.wait(30) == 0 and camera.wait(30) == 0  # neither connection was cut off
    wait_ended(server, task)
    key = RoomKey(APP_ID, room, RoomIdType.INTEGER)
    out = server.storage / "publishers" / task
    cam_files = sorted(out.glob(naming.user_base(key, "presenter", TrackKind.MAIN) + "*.mp4"))
    scr_files = sorted(out.glob(naming.user_base(key, "presenter", TrackKind.AUX) + "*.mp4"))
    assert len(cam_files) == 1 and len(scr_files) == 1, (cam_files, scr_files)
    cam, scr = probe(cam_files[0]), probe(scr_files[0])
    assert cam.video and cam.audio and cam.audio["rms"] > 0.05 and cam.duration > 7.0
    assert scr.video and scr.video["codec"] == "h264" and 3.0 < scr.duration < 5.0
    assert rgb_close(sample_frame(cam_files[0], 1.0)[10, 10], (40, 160, 60))
    assert rgb_close(sample_frame(scr_files[0], 1.0)[10, 10], (200, 60, 160))


def test_ffmpeg_rtmp_push_is_recorded(server: Server, tmp_path: Path) -> None:
    import imageio_ffmpeg

    room = "9403"
    sample = write_sample(SampleSpec(path=tmp_path / "obs.mp4", label="obs", color=(40, 160, 60), seconds=8))
    task = record(server, room, "rec_9403")

    def push(user: str, sig: str) -> subprocess.Popen[bytes]:
        url = f"rtmp://127.0.0.1:{server.rtmp_port}/push/{room}?sdkappid={APP_ID}&userid={user}&usersig={sig}"
        return subprocess.Popen([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re",
                                 "-i", str(sample), "-c", "copy", "-f", "flv", url],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    refused = push("mallory", usersig("someone-else"))
    assert refused.wait(20) != 0  # a bad signature is refused at publish
    good = push("obs", usersig("obs"))
    assert good.wait(30) == 0
    wait_ended(server, task)
    key = RoomKey(APP_ID, room, RoomIdType.INTEGER)
    out = server.storage / "publishers" / task
    assert not list(out.glob(naming.user_base(key, "mallory", TrackKind.MAIN) + "*"))
    files = sorted(out.glob(naming.user_base(key, "obs", TrackKind.MAIN) + "*.mp4"))
    assert files
    rep = probe(files[0])
    assert rep.video and rep.video["codec"] == "h264" and rep.audio and rep.audio["rms"] > 0.05
    assert rep.duration > 6.0
    with av.open(str(sample)) as src, av.open(str(files[0])) as outc:
        assert sps_of(outc.streams.video[0].codec_context.extradata or b"") == sps_of(
            src.streams.video[0].codec_context.extradata or b"")  # stream copy: the publisher's own SPS
