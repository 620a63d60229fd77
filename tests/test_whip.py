"""WHIP/WHEP end to end on loopback: real aiortc clients over HTTP (uvicorn) into a real room registry.

Publishers play generated sample files; H.264 is sent pre-encoded (aiortc's MediaPlayer with
decode=False packs the file's own access units), so "stream copy" is checked exactly: the room
must carry the file's SPS and slice NAL units byte for byte, and an MP4 recorded from the room
must hold them with the right duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from fractions import Fraction
from collections.abc import AsyncIterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import uvicorn
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from starlette.applications import Starlette

from cloudrec.core.naming import A8Names
from cloudrec.core.h264 import annexb_nals
from cloudrec.api.whip import InvalidToken, WebRtcGrant, WebRtcRequest, webrtc_routes
from cloudrec.core.ingest import IngestSpec
from cloudrec.core.media import MediaUnit
from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.spec import TrackKind
from cloudrec.media.decode import Decoder
from cloudrec.output.target import SinkTarget
from cloudrec.output.mp4 import Mp4Sink
from cloudrec.rooms.ingest import IngestPublisher
from cloudrec.rooms.registry import RoomRegistry, TrackSubscriber
from cloudrec.rooms.whip import WebRtcGateway, ice_host_addresses
from cloudrec.tools.samples import SampleSpec, write_sample
from tests.support import free_port

APP = 1400000001
ROOM = "4321"
KEY = RoomKey(APP, ROOM, RoomIdType.INTEGER)
TOKEN = "let-me-in"
SECONDS = 4.0
FPS = 15
MEDIA_TIMEOUT = 3.0

pytestmark = pytest.mark.timeout(90)


async def authorize(req: WebRtcRequest) -> WebRtcGrant | None:
    """A small real policy: one shared token; user "mallory" may never publish."""
    if req.token != TOKEN:
        raise InvalidToken()
    user = req.query.get("userid", "viewer")
    if req.kind == "whip" and user == "mallory":
        return None
    id_type = RoomIdType(int(req.query.get("roomidtype", "1")))
    return WebRtcGrant(room=RoomKey(int(req.app_id), req.room_id, id_type), user_id=user)


@contextlib.asynccontextmanager
async def serving(gateway: WebRtcGateway) -> AsyncIterator[str]:
    app = Starlette(routes=webrtc_routes(gateway, authorize))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    for _ in range(250):
        if server.started:
            break
        await asyncio.sleep(0.02)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await gateway.stop()
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def client_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def post_offer(url: str, pc: RTCPeerConnection, *, token: str | None = TOKEN,
                     content_type: str = "application/sdp") -> httpx.Response:
    offer = await pc.createOffer()
    with ice_host_addresses(["127.0.0.1"]):
        await pc.setLocalDescription(offer)
    assert pc.localDescription is not None
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(timeout=15) as http:
        reply = await http.post(url, content=pc.localDescription.sdp, headers=headers)
    if reply.status_code == 201:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.text, type="answer"))
    return reply


def whip_url(base: str, user: str, extra: str = "") -> str:
    return f"{base}/whip/{APP}/{ROOM}?userid={user}{extra}"


async def wait_for(predicate: object, timeout: float) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


async def collect(subs: dict[TrackKind, TrackSubscriber], *, quiet: float = 1.5, limit: float = 15.0) -> dict[TrackKind, list[MediaUnit]]:
    """Units of each subscription until none arrived for `quiet` seconds (bounded by `limit`)."""
    got: dict[TrackKind, list[MediaUnit]] = {k: [] for k in subs}
    deadline = time.monotonic() + limit
    last = time.monotonic()
    while time.monotonic() < deadline:
        fresh = False
        for kind, sub in subs.items():
            units = sub.drain()
            got[kind].extend(units)
            fresh = fresh or bool(units)
        now = time.monotonic()
        if fresh:
            last = now
        elif any(got.values()) and now - last > quiet:
            break
        await asyncio.sleep(0.05)
    return got


@pytest.fixture(scope="module")
def sample_ts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """H.264 (Annex-B in MPEG-TS, what aiortc can send pre-encoded) + AAC, 320×240 @ 15 fps."""
    return write_sample(SampleSpec(path=tmp_path_factory.mktemp("whip") / "alice.ts", label="alice", color=(200, 40, 40),
                                   seconds=SECONDS, width=320, height=240, fps=FPS))


@pytest.fixture(scope="module")
def sample_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample(SampleSpec(path=tmp_path_factory.mktemp("whip") / "bob.mp4", label="bob", color=(40, 80, 200),
                                   tone_hz=660.0, seconds=SECONDS, width=320, height=240, fps=FPS))


def file_access_units(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.video[0]) if p.size]


async def publish_h264(base: str, sample: Path, user: str = "alice", extra: str = "") -> tuple[RTCPeerConnection, list[MediaPlayer], httpx.Response]:
    pc = client_pc()
    video = MediaPlayer(str(sample), decode=False)  # the file's own H.264 access units
    audio = MediaPlayer(str(sample))  # decoded, and encoded to Opus by aiortc
    assert video.video is not None and audio.audio is not None
    pc.addTrack(video.video)
    pc.addTrack(audio.audio)
    reply = await post_offer(whip_url(base, user, extra), pc)
    return pc, [video, audio], reply


def stop_players(players: list[MediaPlayer]) -> None:
    for p in players:
        for t in (p.video, p.audio):
            if t:
                t.stop()


async def close_all(pcs: list[RTCPeerConnection], players: list[MediaPlayer]) -> None:
    for pc in pcs:
        await pc.close()
    stop_players(players)


async def test_h264_publish_is_stream_copied_and_records(tmp_path: Path, sample_ts: Path) -> None:
    registry = RoomRegistry()
    gateway = WebRtcGateway(registry, media_timeout=MEDIA_TIMEOUT)
    async with serving(gateway) as base:
        pc, players, reply = await publish_h264(base, sample_ts)
        try:
            assert reply.status_code == 201, reply.text
            assert reply.headers["content-type"] == "application/sdp"
            assert reply.headers["location"].startswith("/whip/session/")
            assert reply.headers["access-control-allow-origin"] == "*"
            assert "H264/90000" in reply.text and "VP8/90000" not in reply.text  # H.264 preferred over the offer's VP8
            room = registry.find(KEY)
            assert room is not None
            participant = room.participant("alice")
            assert participant is not None and set(participant.tracks) == {TrackKind.MAIN, TrackKind.AUDIO}
            subs = {k: t.subscribe(maxsize=4096) for k, t in participant.tracks.items()}
            got = await collect(subs)
            session_id = reply.headers["location"].rsplit("/", 1)[1]
            stats = gateway.stats(session_id)
            assert stats is not None and stats["lost"] == 0 and stats["malformed"] == 0
            assert stats["sender_report_aligned"] == 2  # both tracks placed by RTCP sender reports
            async with httpx.AsyncClient(timeout=10) as http:
                assert (await http.delete(base + reply.headers["location"])).status_code == 200
                assert (await http.delete(base + reply.headers["location"])).status_code == 404
            assert room.participant("alice") is None and gateway.sessions == 0
        finally:
            await close_all([pc], players)

    video, audio = got[TrackKind.MAIN], got[TrackKind.AUDIO]
    # stream copy: the file's own parameter sets and slices, byte for byte, as Annex-B units
    source = file_access_units(sample_ts)
    source_sps = next(n for n in annexb_nals(source[0]) if n[0] & 0x1F == 7)
    assert len(video) >= len(source) - 2
    assert video[0].key and all(u.data.startswith(b"\x00\x00\x00\x01") for u in video)
    assert video[0].info.codec == "h264" and video[0].info.time_base == Fraction(1, 90000)
    assert (video[0].info.width, video[0].info.height) == (320, 240)
    assert video[0].info.extradata is not None and source_sps in annexb_nals(video[0].info.extradata)
    slices = {n for au in source for n in annexb_nals(au) if n[0] & 0x1F in (1, 5)}
    assert all(n in slices for u in video for n in annexb_nals(u.data) if n[0] & 0x1F in (1, 5))
    assert all(b.pts > a.pts for a, b in zip(video, video[1:]))
    span = video[-1].seconds - video[0].seconds + 1 / FPS
    assert abs(span - SECONDS) < 0.5
    decoder = Decoder(video[0].info)
    frames = [f for u in video for f in decoder.decode(u)] + decoder.flush()
    assert len(frames) == len(video) and frames[0].width == 320
    # Opus audio: decodable, not silent, aligned with the video on the room clock
    assert audio and audio[0].info.codec == "opus"
    adec = Decoder(audio[0].info)
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for u in audio for f in adec.decode(u)])
    assert pcm.size > 48_000 and float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) > 0.02
    assert abs(audio[0].seconds - video[0].seconds) < 0.5
    # recording it: a playable MP4 with the same SPS (no re-encode) and the right duration
    sink = Mp4Sink(SinkTarget(directory=tmp_path, names=A8Names("alice", None), track_type=None, user_id="alice", media="main", wall0_ms=0),
                   max_seconds=3600)
    sink.open([video[0].info, audio[0].info])
    for index, unit in sorted([(0, u) for u in video] + [(1, u) for u in audio], key=lambda iu: iu[1].seconds):
        sink.write(index, unit)
    sink.close()
    assert len(sink.files) == 1
    with av.open(str(tmp_path / sink.files[0])) as c:
        vs = c.streams.video[0]
        assert vs.codec_context.name == "h264" and (vs.codec_context.width, vs.codec_context.height) == (320, 240)
        assert source_sps in bytes(vs.codec_context.extradata or b"")  # avcC built from our Annex-B SPS
        assert c.streams.audio[0].codec_context.name == "opus"
        packets = [p for p in c.demux(vs) if p.size]
        assert packets[0].is_keyframe
        assert c.duration is not None and abs(c.duration / 1_000_000 - SECONDS) < 0.5
    with av.open(str(tmp_path / sink.files[0])) as c:
        decoded = sum(1 for _ in c.decode(video=0))
    with av.open(str(tmp_path / sink.files[0])) as c:
        apcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    assert decoded >= len(video) - 1 and float(np.abs(apcm).max()) > 0.1


async def test_vp8_publish_when_no_h264_offered(sample_mp4: Path) -> None:
    registry = RoomRegistry()
    gateway = WebRtcGateway(registry, media_timeout=MEDIA_TIMEOUT)
    async with serving(gateway) as base:
        pc = client_pc()
        player = MediaPlayer(str(sample_mp4))
        assert player.video is not None
        transceiver = pc.addTransceiver(player.video, direction="sendonly")
        caps = RTCRtpSender.getCapabilities("video")
        assert caps is not None
        transceiver.setCodecPreferences([c for c in caps.codecs if c.mimeType in ("video/VP8", "video/rtx")])
        try:
            reply = await post_offer(whip_url(base, "bob", "&streamtype=aux"), pc)
            assert reply.status_code == 201, reply.text
            room = registry.find(KEY)
            assert room is not None
            participant = room.participant("bob")
            assert participant is not None and set(participant.tracks) == {TrackKind.AUX}
            got = await collect({TrackKind.AUX: participant.tracks[TrackKind.AUX].subscribe(maxsize=4096)}, limit=10)
        finally:
            await close_all([pc], [player])
    units = got[TrackKind.AUX]
    assert len(units) >= SECONDS * FPS * 0.7
    assert units[0].key and units[0].info.codec == "vp8" and (units[0].info.width, units[0].info.height) == (320, 240)
    decoder = Decoder(units[0].info)
    frames = [f for u in units for f in decoder.decode(u)] + decoder.flush()
    assert len(frames) >= len(units) - 1 and decoder.errors == 0
    assert isinstance(frames[0], av.VideoFrame) and frames[0].height == 240


async def test_camera_and_screen_share_are_two_sessions_and_removal_hangs_up(sample_ts: Path) -> None:
    registry = RoomRegistry()
    gateway = WebRtcGateway(registry, media_timeout=MEDIA_TIMEOUT)
    async with serving(gateway) as base:
        cam_pc, cam_players, cam = await publish_h264(base, sample_ts, "erin")
        scr_pc, scr_players, scr = await publish_h264(base, sample_ts, "erin", "&streamtype=aux")
        try:
            assert cam.status_code == 201 and scr.status_code == 201, (cam.text, scr.text)
            room = registry.find(KEY)
            assert room is not None
            erin = room.participant("erin")
            assert erin is not None and set(erin.tracks) == {TrackKind.MAIN, TrackKind.AUDIO, TrackKind.AUX}
            assert gateway.sessions == 2  # the screen share did not displace the camera
            got = await collect({k: t.subscribe(maxsize=4096) for k, t in erin.tracks.items()}, quiet=0.5, limit=2.5)
            assert all(len(units) > 5 for units in got.values()), {k: len(v) for k, v in got.items()}
            assert got[TrackKind.AUX][0].info.codec == "h264"
            # RemoveUser: both of the user's sessions are hung up, not only their tracks ended
            assert registry.remove_users(KEY, ["erin"]) == 1
            assert await wait_for(lambda: gateway.sessions == 0, 5)
            assert room.participant("erin") is None
            async with httpx.AsyncClient(timeout=10) as http:
                assert (await http.delete(base + cam.headers["location"])).status_code == 404
        finally:
            await close_all([cam_pc, scr_pc], cam_players + scr_players)


async def test_garbage_rtp_in_a_live_session_is_skipped(tmp_path: Path) -> None:
    """A publisher whose video RTP payloads are partly random bytes: the session, the room and the
    other units survive; a broken unit is skipped up to the next keyframe (a pre-encoded sender
    cannot answer our PLI, so the sample has a keyframe every 5 frames)."""
    sample = write_sample(SampleSpec(path=tmp_path / "grace.ts", label="grace", color=(90, 90, 200), seconds=SECONDS,
                                     width=320, height=240, fps=FPS, gop=5))
    registry = RoomRegistry()
    gateway = WebRtcGateway(registry, media_timeout=MEDIA_TIMEOUT)
    rng = np.random.default_rng(7)
    async with serving(gateway) as base:
        pc = client_pc()
        video = MediaPlayer(str(sample), decode=False)
        assert video.video is not None
        sender = pc.addTrack(video.video)
        state = {"n": 0, "corrupted": 0}

        def header_length(packet: bytes) -> int:
            n = 12 + 4 * (packet[0] & 0x0F)
            if packet[0] & 0x10:
                n += 4 + 4 * int.from_bytes(packet[n + 2:n + 4], "big")
            return n

        original = None

        async def corrupting(data: bytes) -> None:
            assert original is not None
            if 192 <= data[1] <= 223:  # RTCP shares this path: leave it alone
                await original(data)
                return
            state["n"] += 1
            if 25 <= state["n"] < 31 or 60 <= state["n"] < 63:  # two bursts of random payloads
                start = header_length(data)
                garbage = rng.integers(0, 256, max(1, len(data) - start), dtype=np.uint8).tobytes()
                if state["n"] % 2:
                    garbage = garbage[:1]  # and truncated ones
                data = data[:start] + garbage
                state["corrupted"] += 1
            await original(data)

        try:
            reply = await post_offer(whip_url(base, "grace"), pc)
            assert reply.status_code == 201, reply.text
            transport = sender.transport
            original = transport._send_rtp
            transport._send_rtp = corrupting  # type: ignore[method-assign]
            room = registry.find(KEY)
            assert room is not None and room.participant("grace") is not None
            track = room.participant("grace").tracks[TrackKind.MAIN]  # type: ignore[union-attr]
            got = await collect({TrackKind.MAIN: track.subscribe(maxsize=4096)}, quiet=2.0, limit=12)
            session_id = reply.headers["location"].rsplit("/", 1)[1]
            stats = gateway.stats(session_id)
            assert stats is not None and state["corrupted"] == 9
            assert stats["malformed"] + stats["ignored"] + stats["lost"] > 0, stats
            assert room.participant("grace") is not None and gateway.sessions == 1  # still connected
        finally:
            await close_all([pc], [video])
    units = got[TrackKind.MAIN]
    assert len(units) >= SECONDS * FPS * 0.4 and units[0].key
    assert all(b.dts > a.dts for a, b in zip(units, units[1:]))
    assert units[-1].seconds - units[0].seconds > SECONDS - 1.0  # media kept flowing to the end


async def test_refused_requests_join_nobody(sample_ts: Path) -> None:
    registry = RoomRegistry()
    gateway = WebRtcGateway(registry, media_timeout=MEDIA_TIMEOUT)
    async with serving(gateway) as base:
        cases = [
            (dict(token=None), "alice", 401),
            (dict(token="wrong"), "alice", 401),
            (dict(), "mallory", 403),
            (dict(content_type="text/plain"), "alice", 400),
        ]
        for kwargs, user, status in cases:
            pc = client_pc()
            pc.addTransceiver("video", direction="sendonly")
            try:
                reply = await post_offer(whip_url(base, user), pc, **kwargs)  # type: ignore[arg-type]
            finally:
                await pc.close()
            assert reply.status_code == status, (kwargs, user, reply.text)
        async with httpx.AsyncClient(timeout=10) as http:
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/sdp"}
            assert (await http.post(whip_url(base, "alice"), content=b"hello", headers=headers)).status_code == 400
            assert (await http.post(whip_url(base, "alice", "&streamtype=side"), content=b"v=0\r\n", headers=headers)).status_code == 400
            no_media = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
            assert (await http.post(whip_url(base, "alice"), content=no_media, headers=headers)).status_code == 400
            # WHEP for somebody who is not there
            whep = f"{base}/whep/{APP}/{ROOM}/nobody"
            pc = client_pc()
            pc.addTransceiver("video", direction="recvonly")
            try:
                assert (await post_offer(whep, pc)).status_code == 404
            finally:
                await pc.close()
            preflight = await http.options(whip_url(base, "alice"), headers={"Origin": "https://example.org", "Access-Control-Request-Method": "POST"})
            assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == "*"
            assert "Location" in preflight.headers["access-control-expose-headers"]
            assert "Authorization" in preflight.headers["access-control-allow-headers"]
            assert (await http.delete(f"{base}/whip/session/unknown")).status_code == 404
    room = registry.find(KEY)
    assert room is None or not room.snapshot().participants
    assert gateway.sessions == 0


async def test_abrupt_disconnect_and_silent_publisher_leave(sample_ts: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = RoomRegistry()
    gateway = WebRtcGateway(registry, media_timeout=MEDIA_TIMEOUT)
    async with serving(gateway) as base:
        pc, players, reply = await publish_h264(base, sample_ts, user="carol")
        assert reply.status_code == 201
        # a publisher that negotiates but never sends anything
        silent = client_pc()
        silent.addTransceiver("video", direction="sendonly")
        assert (await post_offer(whip_url(base, "dave"), silent)).status_code == 201
        room = registry.find(KEY)
        assert room is not None
        track = room.participant("carol").tracks[TrackKind.MAIN]  # type: ignore[union-attr]
        assert await wait_for(lambda: track.units > 5, 10)
        # the client vanishes without DELETE (no BYE, no DTLS close reaches us in time)
        stop_players(players)
        await pc.close()
        t0 = time.monotonic()
        assert await wait_for(lambda: room.participant("carol") is None, MEDIA_TIMEOUT + 5)
        assert time.monotonic() - t0 < MEDIA_TIMEOUT + 3
        assert await wait_for(lambda: room.participant("dave") is None, MEDIA_TIMEOUT + 5)
        await silent.close()
        assert await wait_for(lambda: gateway.sessions == 0, 5)
    warnings = [r for r in caplog.records if r.name == "cloudrec.rooms.whip" and r.levelname == "WARNING"]
    assert len(warnings) == 2 and all(r.getMessage() == "webrtc session ended" for r in warnings)


class _FrameSink:
    def __init__(self, track: MediaStreamTrack) -> None:
        self.frames: list[av.VideoFrame | av.AudioFrame] = []
        self.task = asyncio.ensure_future(self._run(track))

    async def _run(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, (av.VideoFrame, av.AudioFrame))
                self.frames.append(frame)


async def test_whep_viewer_receives_the_publisher(sample_ts: Path) -> None:
    registry = RoomRegistry()
    gateway = WebRtcGateway(registry, media_timeout=MEDIA_TIMEOUT)
    async with serving(gateway) as base:
        pc, players, reply = await publish_h264(base, sample_ts, user="erin")
        assert reply.status_code == 201
        viewer = client_pc()
        viewer.addTransceiver("video", direction="recvonly")
        viewer.addTransceiver("audio", direction="recvonly")
        sinks: dict[str, _FrameSink] = {}
        viewer.on("track", lambda track: sinks.setdefault(track.kind, _FrameSink(track)))
        try:
            answer = await post_offer(f"{base}/whep/{APP}/{ROOM}/erin", viewer)
            assert answer.status_code == 201, answer.text
            assert answer.headers["location"].startswith("/whep/session/")
            assert "H264/90000" in answer.text
            assert await wait_for(lambda: "video" in sinks and len(sinks["video"].frames) >= 10, 12)
            assert await wait_for(lambda: "audio" in sinks and len(sinks["audio"].frames) >= 10, 5)
            frame = sinks["video"].frames[-1]
            assert isinstance(frame, av.VideoFrame) and (frame.width, frame.height) == (320, 240)
            stats = gateway.stats(answer.headers["location"].rsplit("/", 1)[1])
            assert stats is not None and stats["video_forwarded"] >= 10 and stats["video_transcoded"] == 0  # no re-encode
            session_ids = gateway.sessions
            assert session_ids == 2
            async with httpx.AsyncClient(timeout=10) as http:
                assert (await http.delete(base + answer.headers["location"])).status_code == 200
            assert gateway.sessions == 1
        finally:
            for s in sinks.values():
                s.task.cancel()
            await close_all([viewer, pc], players)


async def test_whep_viewer_of_a_pulled_mp4_gets_its_h264_without_reencoding(sample_mp4: Path) -> None:
    """A publisher whose H.264 is length-prefixed (a pulled MP4; RTMP is the same): forwarded as
    Annex-B with parameter sets before keyframes, not decoded and re-encoded."""
    registry = RoomRegistry()
    gateway = WebRtcGateway(registry, media_timeout=MEDIA_TIMEOUT)
    room = registry.room(KEY)
    stop = threading.Event()
    publisher = IngestPublisher(room, IngestSpec(room=KEY, user_id="frank", urls=(str(sample_mp4),), repeat=-1))
    thread = threading.Thread(target=publisher.run, args=(stop,), daemon=True)
    thread.start()
    async with serving(gateway) as base:
        assert await wait_for(lambda: (p := room.participant("frank")) is not None and len(p.tracks) == 2, 10)
        viewer = client_pc()
        viewer.addTransceiver("video", direction="recvonly")
        sinks: dict[str, _FrameSink] = {}
        viewer.on("track", lambda track: sinks.setdefault(track.kind, _FrameSink(track)))
        try:
            answer = await post_offer(f"{base}/whep/{APP}/{ROOM}/frank", viewer)
            assert answer.status_code == 201, answer.text
            assert await wait_for(lambda: "video" in sinks and len(sinks["video"].frames) >= 15, 12)
            frame = sinks["video"].frames[-1]
            assert isinstance(frame, av.VideoFrame) and (frame.width, frame.height) == (320, 240)
            rgb = frame.to_ndarray(format="rgb24")
            assert np.all(np.abs(rgb[5, 5].astype(int) - np.array((40, 80, 200))) < 40), rgb[5, 5]
            stats = gateway.stats(answer.headers["location"].rsplit("/", 1)[1])
            assert stats is not None and stats["video_forwarded"] >= 15 and stats["video_transcoded"] == 0
        finally:
            stop.set()
            for s in sinks.values():
                s.task.cancel()
            await viewer.close()
    thread.join(10)


async def test_ffmpeg_whip_muxer_publishes(tmp_path: Path) -> None:
    """FFmpeg's own WHIP muxer (ICE-lite, its own DTLS/SRTP) as a second, independent client."""
    import imageio_ffmpeg

    registry = RoomRegistry()
    gateway = WebRtcGateway(registry, media_timeout=MEDIA_TIMEOUT)
    async with serving(gateway) as base:
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re",
               "-f", "lavfi", "-i", f"testsrc=size=320x240:rate={FPS}", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
               "-t", str(SECONDS), "-c:v", "libx264", "-profile:v", "baseline", "-bf", "0", "-g", str(FPS), "-pix_fmt", "yuv420p",
               "-c:a", "libopus", "-ar", "48000", "-ac", "2", "-f", "whip", "-authorization", TOKEN, whip_url(base, "ffmpeg")]
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            assert await wait_for(lambda: (r := registry.find(KEY)) is not None and r.participant("ffmpeg") is not None, 10)
            room = registry.find(KEY)
            assert room is not None
            participant = room.participant("ffmpeg")
            assert participant is not None
            got = await collect({k: t.subscribe(maxsize=4096) for k, t in participant.tracks.items()}, limit=12)
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err.decode(errors="replace")
        # ffmpeg DELETEs its session when it ends (it then logs a harmless read error on the empty 200 body)
        assert await wait_for(lambda: room.participant("ffmpeg") is None, 5)
    video, audio = got[TrackKind.MAIN], got[TrackKind.AUDIO]
    assert len(video) >= SECONDS * FPS - 3 and video[0].key and video[0].info.codec == "h264"
    decoder = Decoder(video[0].info)
    frames = [f for u in video for f in decoder.decode(u)] + decoder.flush()
    assert len(frames) == len(video) and decoder.errors == 0
    assert audio and audio[0].info.codec == "opus" and abs(audio[0].seconds - video[0].seconds) < 0.5
