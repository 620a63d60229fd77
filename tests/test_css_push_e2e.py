"""CSS pushes into the whole service: real ffmpeg RTMP publishers with signed (and badly signed,
expired, unsigned) push URLs, admitted into the stream's CSS room next to TRTC pushes; and an aiortc
WHIP publisher on /whip/css/…"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import imageio_ffmpeg
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.spec import TrackKind
from cloudrec.dialects.tencent.css_push import push_query, tx_secret, tx_time
from cloudrec.dialects.tencent.css_rooms import stream_room
from cloudrec.rooms.registry import Participant
from cloudrec.rooms.whip import ice_host_addresses
from cloudrec.service import Service
from cloudrec.tools.samples import PALETTE, SampleSpec, write_sample
from tests.support import in_process_service, APP_ID, APP_KEY, free_port, usersig

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
DOMAIN = "push.example.com"
KEY = "css-push-key"
BACKUP = "css-backup-key"
OPEN_DOMAIN = "open.example.com"  # the default domain; no key


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample(SampleSpec(path=tmp_path_factory.mktemp("css") / "clip.mp4", label="css", color=PALETTE[2],
                                   seconds=4, gop=15))


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    raw = {
        "server": {"http_listen": f"127.0.0.1:{free_port()}", "rtmp_listen": f"127.0.0.1:{free_port()}", "data_dir": "data"},
        "apps": [{"id": APP_ID, "key": APP_KEY}],
        "css": {"domains": [{"name": DOMAIN, "push_key": KEY, "backup_push_key": BACKUP},
                            {"name": OPEN_DOMAIN, "default": True}]},
    }
    async with in_process_service(raw, tmp_path) as svc:
        yield svc


async def push(svc: Service, path: str, clip: Path, *, tc_host: str | None = DOMAIN) -> asyncio.subprocess.Process:
    """ffmpeg publishing `clip` in real time to `rtmp://127.0.0.1:<port>/<path>`; `tc_host` is the host the
    client names in its tcUrl (the push domain), as a client would that resolved the domain to us."""
    port = svc.rtmp.port
    app = path.split("/", 1)[0]
    tc = ["-rtmp_tcurl", f"rtmp://{tc_host}:{port}/{app}"] if tc_host else []
    return await asyncio.create_subprocess_exec(
        FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-i", str(clip), "-c", "copy", *tc, "-f", "flv",
        f"rtmp://127.0.0.1:{port}/{path}", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)


async def exit_code(proc: asyncio.subprocess.Process, timeout: float = 30) -> int:
    try:
        async with asyncio.timeout(timeout):
            await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode


async def publisher(svc: Service, domain: str, app: str, stream: str, timeout: float = 15,
                    tracks: frozenset[TrackKind] | set[TrackKind] = frozenset({TrackKind.MAIN, TrackKind.AUDIO})) -> Participant:
    """The stream's publisher in its CSS room, once `tracks` have arrived."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        room = svc.registry.find(stream_room(domain, app, stream))
        who = room.participant(stream) if room is not None else None
        if who is not None and set(tracks) <= set(who.tracks):
            return who
        await asyncio.sleep(0.05)
    raise AssertionError(f"no publisher {stream!r} in {domain}/{app}")


async def test_signed_push_feeds_the_css_room(service: Service, clip: Path) -> None:
    stream = "livetest"
    proc = await push(service, f"live/{stream}?{push_query(KEY, stream, int(time.time()) + 600)}&custom=1", clip)
    who = await publisher(service, DOMAIN, "live", stream)
    sub = who.tracks[TrackKind.MAIN].subscribe()
    units = []
    async with asyncio.timeout(10):
        while len(units) < 15:
            units += sub.drain()
            await asyncio.sleep(0.05)
    assert units[0].info.codec == "h264" and (units[0].info.width, units[0].info.height) == (640, 360)
    assert await exit_code(proc) == 0
    assert service.rtmp.stats.refused == 0


@pytest.mark.parametrize("variant", ["bad", "expired", "unsigned", "other-stream"])
async def test_badly_signed_pushes_are_refused(service: Service, clip: Path, variant: str) -> None:
    stream = "livetest"
    expiry = int(time.time()) + 600
    query = {
        "bad": f"txSecret={tx_secret('wrong-key', stream, tx_time(expiry))}&txTime={tx_time(expiry)}",
        "expired": push_query(KEY, stream, int(time.time()) - 1),
        "unsigned": "custom=1",
        "other-stream": push_query(KEY, "another", expiry),
    }[variant]
    proc = await push(service, f"live/{stream}?{query}", clip)
    assert await exit_code(proc, 20) != 0
    assert service.rtmp.stats.refused == 1
    room = service.registry.find(stream_room(DOMAIN, "live", stream))
    assert room is None or room.participant(stream) is None


async def test_backup_key_lower_case_time_and_the_default_domain(service: Service, clip: Path) -> None:
    expiry = f"{int(time.time()) + 600:x}"  # lower-case hex, signed as written
    backup = await push(service, f"live/b1?txSecret={tx_secret(BACKUP, 'b1', expiry)}&txTime={expiry}", clip)
    # No tcUrl host of ours (the client used the IP address): the default domain, whose key is empty.
    unknown_host = await push(service, "app2/open1", clip, tc_host=None)
    await publisher(service, DOMAIN, "live", "b1")
    await publisher(service, OPEN_DOMAIN, "app2", "open1")
    assert await exit_code(backup) == 0 and await exit_code(unknown_host) == 0


async def test_trtc_pushes_still_go_to_trtc_rooms(service: Service, clip: Path) -> None:
    """A push URL with sdkappid is TRTC's even when CSS domains are configured."""
    proc = await push(service, f"push/8801?sdkappid={APP_ID}&userid=obs&usersig={usersig('obs')}", clip)
    async with asyncio.timeout(15):
        while (room := service.registry.find(RoomKey(APP_ID, "8801", RoomIdType.INTEGER))) is None \
                or room.participant("obs") is None:
            await asyncio.sleep(0.05)
    bad = await push(service, f"push/8801?sdkappid={APP_ID}&userid=eve&usersig={usersig('someone')}", clip)
    assert await exit_code(bad, 20) != 0
    assert await exit_code(proc) == 0


async def test_whip_css_push(service: Service, clip: Path) -> None:
    stream = "webrtc1"
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    annexb = write_sample(SampleSpec(path=clip.with_name("clip.ts"), label="css", color=PALETTE[2], seconds=4, gop=15))
    player = MediaPlayer(str(annexb), decode=False)  # the clip's own H.264 (aiortc sends Annex-B as it is)
    assert player.video is not None
    pc.addTrack(player.video)
    with ice_host_addresses(["127.0.0.1"]):
        await pc.setLocalDescription(await pc.createOffer())
    base = f"http://127.0.0.1:{service.settings.http_port}/whip/css/live/{stream}"
    sdp = {"Content-Type": "application/sdp"}
    expiry = int(time.time()) + 600
    try:
        async with httpx.AsyncClient(timeout=15) as http:
            # The domain is the Host the client addressed (here: the signed domain's, so its key applies) …
            bad = await http.post(f"{base}?txSecret={tx_secret('wrong', stream, tx_time(expiry))}&txTime={tx_time(expiry)}",
                                  content=pc.localDescription.sdp, headers={**sdp, "Host": DOMAIN})
            assert bad.status_code == 403
            unsigned = await http.post(f"{base}?domain={DOMAIN}", content=pc.localDescription.sdp, headers=sdp)
            assert unsigned.status_code == 403
            # … or `domain=`, for clients that reach us by address.
            reply = await http.post(f"{base}?{push_query(KEY, stream, expiry)}&domain={DOMAIN}",
                                    content=pc.localDescription.sdp, headers=sdp)
            assert reply.status_code == 201, reply.text
            await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.text, type="answer"))
            who = await publisher(service, DOMAIN, "live", stream, tracks={TrackKind.MAIN})
            assert who.user_id == stream
            sub = who.tracks[TrackKind.MAIN].subscribe()
            units = []
            async with asyncio.timeout(15):
                while len(units) < 10:
                    units += sub.drain()
                    await asyncio.sleep(0.05)
            assert units[0].info.codec == "h264"
            assert (await http.delete(f"http://127.0.0.1:{service.settings.http_port}{reply.headers['location']}")
                    ).status_code == 200
    finally:
        await pc.close()
