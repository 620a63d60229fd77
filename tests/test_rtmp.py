"""`RtmpServer` with real publishers: ffmpeg pushing H.264 + AAC over RTMP, a hand-written raw
publisher for what ffmpeg never sends (32-bit timestamp wrap, extended timestamps, relative
headers, a resolution change) and misbehaving peers next to good ones."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import imageio_ffmpeg
import pytest

from cloudrec.core.naming import A8Names
from cloudrec.core.media import MediaUnit, StreamInfo
from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.spec import TrackKind
from cloudrec.output.target import SinkTarget
from cloudrec.output.mp4 import Mp4Sink
from cloudrec.rooms.registry import RoomRegistry, TrackSubscriber
from cloudrec.rooms.rtmp import (
    AmfValue,
    ChunkReader,
    PublishGrant,
    PublishRequest,
    RtmpMessage,
    RtmpProtocolError,
    RtmpServer,
    amf0_decode,
    amf0_encode,
)
from cloudrec.tools.samples import PALETTE, SampleSpec, write_sample
from tests.support import probe

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
APP_ID = 1400000001
CLIP_SECONDS = 5.0


@dataclass(frozen=True)
class Clips:
    main: Path  # 640x360 15 fps H.264 (keyframe every 3 frames) + 48 kHz mono AAC
    small: Path  # 320x240, for a resolution change


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    root = tmp_path_factory.mktemp("rtmp")
    main = write_sample(SampleSpec(path=root / "clip.mp4", label="rtmp", color=PALETTE[0], seconds=CLIP_SECONDS, gop=3))
    small = write_sample(SampleSpec(path=root / "small.mp4", label="s", color=PALETTE[1], seconds=1, width=320,
                                    height=240, gop=3))
    return Clips(main=main, small=small)


async def authorize(request: PublishRequest) -> PublishGrant | None:
    """A real (if simple) authorizer: `usersig=good` admits, `usersig=boom` fails."""
    sig = request.query.get("usersig")
    if sig == "boom":
        raise RuntimeError("authorizer unavailable")
    user = request.query.get("userid", "")
    if sig != "good" or not user or request.app != "push":
        return None
    return PublishGrant(room=RoomKey(int(request.query.get("sdkappid", "0")), request.stream, RoomIdType.STRING),
                        user_id=user)


def key(room: str) -> RoomKey:
    return RoomKey(APP_ID, room, RoomIdType.STRING)


@pytest.fixture
async def rtmp() -> AsyncIterator[tuple[RtmpServer, RoomRegistry]]:
    registry = RoomRegistry()
    server = RtmpServer(registry, authorize, host="127.0.0.1", port=0, idle_timeout=1.5)
    await server.start()
    assert server.port > 0
    try:
        yield server, registry
    finally:
        await server.stop()


async def push(port: int, room: str, user: str, clip: Path, *, sig: str = "good", before: tuple[str, ...] = (),
               after: tuple[str, ...] = ()) -> asyncio.subprocess.Process:
    """ffmpeg publishing `clip` in real time (no initial burst) as `user` into `room`."""
    url = f"rtmp://127.0.0.1:{port}/push/{room}?sdkappid={APP_ID}&userid={user}&usersig={sig}"
    return await asyncio.create_subprocess_exec(
        FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-readrate_initial_burst", "0.01", *before, "-i", str(clip),
        "-c", "copy", *after, "-f", "flv", url, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)


async def finished(proc: asyncio.subprocess.Process, timeout: float = 20) -> int:
    try:
        async with asyncio.timeout(timeout):
            await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode


@dataclass
class Got:
    unit: MediaUnit
    arrival: float  # monotonic


@dataclass
class Collector:
    """A subscriber to every track of every room, as a recorder would be (polls every 2 ms)."""

    registry: RoomRegistry
    units: dict[tuple[str, str, TrackKind], list[Got]] = field(default_factory=dict)
    subs: dict[tuple[str, str, TrackKind], TrackSubscriber] = field(default_factory=dict)
    users: set[tuple[str, str]] = field(default_factory=set)  # (room, user) ever seen

    async def run(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(0.002)

    def poll(self) -> None:
        for room in self.registry.rooms():
            for p in room.snapshot().participants:
                self.users.add((room.key.room_id, p.user_id))
                for kind, track in list(p.tracks.items()):
                    k = (room.key.room_id, p.user_id, kind)
                    if k not in self.subs or self.subs[k].track is not track:
                        self.subs[k] = track.subscribe(maxsize=100_000)
        now = time.monotonic()
        for k, sub in self.subs.items():
            for unit in sub.drain():
                self.units.setdefault(k, []).append(Got(unit, now))

    def kinds(self, room: str, user: str) -> set[TrackKind]:
        return {k[2] for k in self.subs if k[:2] == (room, user)}

    def ended(self, room: str, user: str) -> bool:
        self.poll()
        return all(s.ended for k, s in self.subs.items() if k[:2] == (room, user))


@pytest.fixture
async def collector(rtmp: tuple[RtmpServer, RoomRegistry]) -> AsyncIterator[Collector]:
    c = Collector(rtmp[1])
    task = asyncio.create_task(c.run())
    try:
        yield c
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def source_times(clip: Path) -> dict[str, dict[bytes, list[float]]]:
    """Packet payload → its dts in seconds, per stream type, read from the source file."""
    out: dict[str, dict[bytes, list[float]]] = {"video": {}, "audio": {}}
    with av.open(str(clip)) as c:
        for packet in c.demux():
            if packet.dts is None or packet.size == 0 or packet.time_base is None:
                continue
            out[packet.stream.type].setdefault(bytes(packet), []).append(float(packet.dts * packet.time_base))
    return out


def offsets(got: list[Got], table: dict[bytes, list[float]]) -> list[float]:
    """Room-clock seconds minus source seconds of every unit whose payload is unambiguous."""
    return [float(g.unit.dts * g.unit.info.time_base) - table[g.unit.data][0]
            for g in got if len(table.get(g.unit.data, [])) == 1]


# ---------------------------------------------------------------------------------------------


async def test_ffmpeg_publisher_joins_streams_in_real_time_and_records(
        rtmp: tuple[RtmpServer, RoomRegistry], collector: Collector, clips: Clips, tmp_path: Path) -> None:
    server, registry = rtmp
    proc = await push(server.port, "r1", "alice", clips.main)
    assert await finished(proc) == 0
    await asyncio.sleep(0.1)
    assert ("r1", "alice") in collector.users
    assert collector.kinds("r1", "alice") == {TrackKind.MAIN, TrackKind.AUDIO}
    assert registry.room(key("r1")).snapshot().participants == ()  # left at deleteStream / close
    assert collector.ended("r1", "alice")
    stats = server.stats
    assert (stats.connections, stats.publishers, stats.published, stats.dropped) == (0, 0, 1, 0)

    video = collector.units[("r1", "alice", TrackKind.MAIN)]
    audio = collector.units[("r1", "alice", TrackKind.AUDIO)]
    fps, rate = 15, 48_000
    assert len(video) >= CLIP_SECONDS * fps - 5, len(video)
    assert len(audio) >= CLIP_SECONDS * rate / 1024 - 10, len(audio)
    vinfo, ainfo = video[0].unit.info, audio[0].unit.info
    assert (vinfo.codec, vinfo.width, vinfo.height, vinfo.time_base) == ("h264", 640, 360, Fraction(1, 1000))
    assert vinfo.extradata and vinfo.extradata[0] == 1  # avcC
    assert (ainfo.codec, ainfo.sample_rate, ainfo.channels, ainfo.layout) == ("aac", 48_000, 1, "mono")
    assert all(g.unit.info is vinfo for g in video) and all(g.unit.info is ainfo for g in audio)
    assert sum(g.unit.key for g in video) >= CLIP_SECONDS * fps / 3 - 2

    # Room clock, real time: units carry monotonic readings close to their arrival, and advance
    # as fast as the wall clock (ffmpeg -re paces the push).
    for units in (video, audio):
        lag = [g.arrival - float(g.unit.dts * g.unit.info.time_base) for g in units]
        assert max(lag) - min(lag) < 0.2 and max(abs(x) for x in lag) < 0.3, (min(lag), max(lag))
        media_span = float((units[-1].unit.dts - units[0].unit.dts) * units[0].unit.info.time_base)
        assert abs(media_span - (units[-1].arrival - units[0].arrival)) < 0.25
        assert all(b.unit.dts > a.unit.dts for a, b in zip(units, units[1:]))

    # One offset for both tracks: matched by payload, every unit sits at source time + the shift of
    # its moment. The shift only slews (drift correction: ≤ 1 % of media time, here towards the
    # least-delayed arrivals), so units close in time share it to the ms rounding.
    table = source_times(clips.main)
    v_off, a_off = offsets(video, table["video"]), offsets(audio, table["audio"])
    assert len(v_off) > 0.9 * len(video) and len(a_off) > 0.5 * len(audio), (len(v_off), len(a_off))
    assert max(v_off) - min(v_off) < 0.01 * CLIP_SECONDS and max(a_off) - min(a_off) < 0.01 * CLIP_SECONDS
    a_at = sorted((table["audio"][g.unit.data][0], float(g.unit.dts * g.unit.info.time_base) - table["audio"][g.unit.data][0])
                  for g in audio if len(table["audio"].get(g.unit.data, [])) == 1)
    for g in video:
        if len(table["video"].get(g.unit.data, [])) != 1:
            continue
        src = table["video"][g.unit.data][0]
        near = min(a_at, key=lambda sa: abs(sa[0] - src))
        assert abs(near[0] - src) > 0.05 or abs(float(g.unit.dts * g.unit.info.time_base) - src - near[1]) < 0.0021

    # What a recorder makes of it: an MP4 stream copy that plays with the clip's duration.
    sink = Mp4Sink(SinkTarget(directory=tmp_path, names=A8Names("alice", None), track_type=None, user_id="alice", media="main", wall0_ms=0),
                   max_seconds=3600)
    sink.open([vinfo, ainfo])
    merged = sorted([(float(g.unit.dts * g.unit.info.time_base), 0, g.unit) for g in video]
                    + [(float(g.unit.dts * g.unit.info.time_base), 1, g.unit) for g in audio], key=lambda x: x[:2])
    for _, index, unit in merged:
        sink.write(index, unit)
    sink.close()
    assert len(sink.files) == 1 and sink.errors == 0
    rep = probe(tmp_path / sink.files[0])
    assert rep.video and rep.audio
    assert (rep.video["codec"], rep.video["width"], rep.video["height"]) == ("h264", 640, 360)
    assert rep.audio["codec"] == "aac" and rep.audio["rms"] > 0.1
    assert abs(rep.duration - CLIP_SECONDS) <= 0.5, rep.duration
    assert rep.video["frames"] >= (CLIP_SECONDS - 0.5) * fps


async def test_three_publishers_and_misbehaving_peers(
        rtmp: tuple[RtmpServer, RoomRegistry], collector: Collector, clips: Clips,
        caplog: pytest.LogCaptureFixture) -> None:
    server, registry = rtmp
    caplog.set_level(logging.INFO, logger="cloudrec.rooms.rtmp")
    started = time.monotonic()
    procs = [await push(server.port, "r2", "bob", clips.main, after=("-t", "4")),
             await push(server.port, "r2", "carol", clips.main, after=("-t", "4")),
             await push(server.port, "r3", "dave", clips.main, after=("-t", "4", "-vn")),
             await push(server.port, "r3", "erin", clips.main, after=("-t", "4", "-c:a", "libmp3lame"))]

    async def garbage_before_handshake() -> None:
        _, w = await asyncio.open_connection("127.0.0.1", server.port)
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(4000))
        await w.drain()
        await asyncio.sleep(3)
        w.close()

    async def handshake(extra: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        w.write(b"\x03" + bytes(1536))
        s = await r.readexactly(1 + 2 * 1536)
        w.write(s[1:1537] + extra)
        await w.drain()
        return r, w

    async def garbage_after_handshake() -> None:
        _, w = await handshake(bytes([0x43]) + os.urandom(6000))  # fmt 1 on an unknown chunk stream, noise
        await asyncio.sleep(3)
        w.close()

    async def absurd_lengths() -> None:
        # three messages of 16 MiB − 1 announced at once: more than a connection may hold unfinished
        heads = b"".join(bytes([cs]) + bytes(3) + (0xFFFFFF).to_bytes(3, "big") + b"\x09" + bytes(4) + bytes(128)
                         for cs in (4, 5, 6))
        _, w = await handshake(heads)
        await asyncio.sleep(3)
        w.close()

    async def silent() -> None:
        _, w = await handshake(b"")  # handshakes, then says nothing (idle timeout: 1.5 s)
        await asyncio.sleep(3)
        w.close()

    peers = [asyncio.create_task(f()) for f in (garbage_before_handshake, garbage_after_handshake, absurd_lengths, silent)]
    codes = [await finished(p) for p in procs]
    await asyncio.gather(*peers)
    await asyncio.sleep(0.1)
    assert codes == [0, 0, 0, 0]
    assert time.monotonic() - started < 8

    assert collector.kinds("r2", "bob") == collector.kinds("r2", "carol") == {TrackKind.MAIN, TrackKind.AUDIO}
    assert collector.kinds("r3", "dave") == {TrackKind.AUDIO}  # audio-only push: no video track, ever
    assert collector.kinds("r3", "erin") == {TrackKind.MAIN}  # MP3 audio is not taken
    ignored = [r for r in caplog.records if r.getMessage() == "rtmp media ignored"]
    assert [(getattr(r, "user_id"), getattr(r, "codec")) for r in ignored] == [("erin", "mp3")]  # logged once
    for room, user in (("r2", "bob"), ("r2", "carol"), ("r3", "dave"), ("r3", "erin")):
        for kind in collector.kinds(room, user):
            got = collector.units[(room, user, kind)]
            assert len(got) > (50 if kind is TrackKind.MAIN else 150), (user, kind, len(got))
            gaps = [b.arrival - a.arrival for a, b in zip(got, got[1:])]
            assert max(gaps) < 0.35, (user, kind, max(gaps))  # the bad peers never stalled anyone
    assert registry.room(key("r2")).snapshot().participants == ()
    assert registry.room(key("r3")).snapshot().participants == ()

    stats = server.stats
    assert (stats.connections, stats.publishers, stats.published, stats.dropped) == (0, 0, 4, 4)
    dropped = [r for r in caplog.records if r.getMessage() == "rtmp connection dropped"]
    assert len(dropped) == 4 and len({getattr(r, "remote") for r in dropped}) == 4
    assert all(r.levelno == logging.WARNING for r in dropped)
    reasons = sorted(str(getattr(r, "reason")) for r in dropped)
    assert any("not an RTMP handshake" in r for r in reasons), reasons
    assert any("idle timeout" in r for r in reasons), reasons
    assert any("unfinished" in r for r in reasons), reasons
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.getMessage() != "rtmp connection dropped"]


async def test_refused_publishers_never_join(rtmp: tuple[RtmpServer, RoomRegistry], clips: Clips,
                                             caplog: pytest.LogCaptureFixture) -> None:
    server, registry = rtmp
    bad = await push(server.port, "r4", "eve", clips.main, sig="wrong")
    boom = await push(server.port, "r4", "mallory", clips.main, sig="boom")  # the authorizer raises
    assert await finished(bad, 10) != 0
    assert await finished(boom, 10) != 0
    assert registry.find(key("r4")) is None  # nobody joined: the room was never even created
    stats = server.stats
    assert (stats.refused, stats.published, stats.connections) == (2, 0, 0)
    assert [r.levelno for r in caplog.records if r.getMessage() == "rtmp authorize failed"] == [logging.WARNING]


async def test_stop_makes_publishers_leave(rtmp: tuple[RtmpServer, RoomRegistry], collector: Collector,
                                           clips: Clips) -> None:
    server, registry = rtmp
    proc = await push(server.port, "r5", "frank", clips.main, before=("-stream_loop", "-1"))
    try:
        deadline = time.monotonic() + 10
        while len(collector.units.get(("r5", "frank", TrackKind.MAIN), [])) < 15:
            assert time.monotonic() < deadline, "no media"
            await asyncio.sleep(0.05)
        assert registry.room(key("r5")).participant("frank") is not None
        assert server.stats.publishers == 1
        await server.stop()
        assert registry.room(key("r5")).snapshot().participants == ()
        assert collector.ended("r5", "frank")
        assert (server.stats.connections, server.stats.publishers) == (0, 0)
        assert await finished(proc, 10) != 0  # ffmpeg sees the connection go away
        await server.stop()  # idempotent
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_displaced_and_removed_publishers_are_disconnected(
        rtmp: tuple[RtmpServer, RoomRegistry], collector: Collector, clips: Clips) -> None:
    server, registry = rtmp
    first = await push(server.port, "r7", "henry", clips.main, before=("-stream_loop", "-1"))
    second: asyncio.subprocess.Process | None = None
    try:
        deadline = time.monotonic() + 10
        while len(collector.units.get(("r7", "henry", TrackKind.MAIN), [])) < 5:
            assert time.monotonic() < deadline, "no media"
            await asyncio.sleep(0.05)
        old = registry.room(key("r7")).participant("henry")
        old_track = old.tracks[TrackKind.MAIN]  # type: ignore[union-attr]
        second = await push(server.port, "r7", "henry", clips.main, before=("-stream_loop", "-1"))
        assert await finished(first, 10) != 0  # the same user publishing again closes the older connection
        assert old_track.closed and server.stats.publishers == 1
        deadline = time.monotonic() + 10
        while (registry.room(key("r7")).participant("henry") or old).tracks.get(TrackKind.MAIN) in (None, old_track):
            assert time.monotonic() < deadline, "the new connection publishes nothing"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert registry.remove_users(key("r7"), ["henry"]) == 1  # RemoveUser: the publisher is cut off
        assert await finished(second, 10) != 0
        assert registry.room(key("r7")).snapshot().participants == ()
        assert (server.stats.publishers, server.stats.connections, server.stats.dropped) == (0, 0, 0)
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()


# ---------------------------------------------------------------------------------------------
# A raw publisher: what ffmpeg does not exercise


class RawPublisher:
    """A minimal RTMP client writing its own chunk headers (fmt 0 first, then 1/2/3 like ffmpeg);
    a background task collects everything the server sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer
        self.chunk_size = 128
        self.inbox: list[RtmpMessage] = []
        self.fmts: collections.Counter[int] = collections.Counter()
        self.prev: dict[int, tuple[int, int, int, int, int]] = {}  # csid → (timestamp, field, length, type, stream)
        self.pump = asyncio.create_task(self._pump())

    @classmethod
    async def open(cls, port: int) -> RawPublisher:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"\x03" + bytes(1536))
        s = await r.readexactly(1 + 2 * 1536)
        w.write(s[1:1537])
        return cls(r, w)

    async def _pump(self) -> None:
        replies = ChunkReader()
        while data := await self.r.read(65536):
            self.inbox += replies.feed(data)

    def set_chunk_size(self, size: int) -> None:
        self.message(2, 1, 0, size.to_bytes(4, "big"))
        self.chunk_size = size

    def message(self, csid: int, type_id: int, timestamp: int, payload: bytes, stream_id: int = 0) -> None:
        prev = self.prev.get(csid)
        delta = (timestamp - prev[0]) & 0xFFFFFFFF if prev else 0
        if prev is None or delta >= 0x80000000 or stream_id != prev[4]:
            fmt, field = 0, timestamp
        elif (len(payload), type_id) != prev[2:4]:
            fmt, field = 1, delta
        elif delta != prev[1]:
            fmt, field = 2, delta
        else:
            fmt, field = 3, delta
        self.prev[csid] = (timestamp, field, len(payload), type_id, stream_id)
        self.fmts[fmt] += 1
        extended = field >= 0xFFFFFF
        ext = field.to_bytes(4, "big") if extended else b""  # repeated in every continuation chunk
        head = bytes([(fmt << 6) | csid])
        if fmt <= 2:
            head += min(field, 0xFFFFFF).to_bytes(3, "big")
        if fmt <= 1:
            head += len(payload).to_bytes(3, "big") + bytes([type_id])
        if fmt == 0:
            head += stream_id.to_bytes(4, "little")
        out = bytearray(head + ext)
        for start in range(0, len(payload), self.chunk_size):
            if start:
                out += bytes([0xC0 | csid]) + ext
            out += payload[start : start + self.chunk_size]
        self.w.write(bytes(out))

    def command(self, *values: AmfValue, stream_id: int = 0, amf3: bool = False) -> None:
        if amf3:  # an AMF3 command message whose body is AMF0 after a 0 byte (as Flash sends)
            self.message(3, 17, 0, b"\x00" + amf0_encode(*values), stream_id)
        else:
            self.message(3, 20, 0, amf0_encode(*values), stream_id)

    def received(self, type_id: int) -> list[bytes]:
        return [m.payload for m in self.inbox if m.type_id == type_id]

    async def reply(self, name: str, txn: float | None = None) -> list[AmfValue]:
        async with asyncio.timeout(5):
            while True:
                for payload in self.received(20):
                    values = amf0_decode(payload)
                    if values[0] == name and (txn is None or values[1] == txn):
                        return values
                assert not self.pump.done(), "server closed the connection"
                await asyncio.sleep(0.01)


def mp4_media(clip: Path) -> tuple[bytes, bytes, list[tuple[str, int, int, bool, bytes]]]:
    """avcC, AudioSpecificConfig and (kind, dts ms, cts ms, key, payload) of every packet, dts order."""
    with av.open(str(clip)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        avcc, asc = bytes(v.codec_context.extradata or b""), bytes(a.codec_context.extradata or b"")
        packets: list[tuple[str, int, int, bool, bytes]] = []
        for p in c.demux():
            if p.dts is None or p.size == 0 or p.time_base is None or p.pts is None:
                continue
            dts = round(float(p.dts * p.time_base) * 1000)
            packets.append((p.stream.type, dts, round(float(p.pts * p.time_base) * 1000) - dts, p.is_keyframe, bytes(p)))
    packets.sort(key=lambda x: x[1])
    return avcc, asc, packets


async def test_raw_publisher_timestamp_wrap_and_resolution_change(
        rtmp: tuple[RtmpServer, RoomRegistry], collector: Collector, clips: Clips) -> None:
    server, registry = rtmp
    pub = await RawPublisher.open(server.port)
    pub.command("connect", 1.0, {"app": "push", "type": "nonprivate", "flashVer": "FMLE/3.0",
                                 "tcUrl": f"rtmp://127.0.0.1:{server.port}/push?sdkappid={APP_ID}&userid=nobody"})
    result = await pub.reply("_result", 1.0)
    assert isinstance(result[3], dict) and result[3]["code"] == "NetConnection.Connect.Success"
    assert pub.received(5) == [(5_000_000).to_bytes(4, "big")]  # Window Acknowledgement Size
    assert pub.received(6) == [(5_000_000).to_bytes(4, "big") + b"\x02"]  # Set Peer Bandwidth (dynamic)
    assert pub.received(1) == [(4096).to_bytes(4, "big")]  # Set Chunk Size
    pub.set_chunk_size(100)
    pub.message(2, 5, 0, (20_000).to_bytes(4, "big"))  # our window: the server acknowledges every 20 kB
    pub.message(2, 4, 0, struct.pack(">HI", 6, 1234))  # User Control ping request → ping response
    pub.command("releaseStream", 2.0, None, "r6")
    pub.command("FCPublish", 3.0, None, "r6")
    pub.command("createStream", 4.0, None, amf3=True)
    assert (await pub.reply("_result", 4.0))[1:] == [4.0, None, 1.0]
    assert (await pub.reply("onFCPublish"))[3] == {"code": "NetStream.Publish.Start", "description": "r6"}
    assert struct.pack(">HI", 7, 1234) in pub.received(4)  # the ping was answered
    pub.command("publish", 5.0, None, "r6?userid=grace&usersig=good", "live", stream_id=1)  # query merged over tcUrl's
    status = await pub.reply("onStatus")
    assert isinstance(status[3], dict) and status[3]["code"] == "NetStream.Publish.Start"
    assert registry.room(key("r6")).participant("grace") is not None

    # An aborted message: its chunk stream is reusable for a different message afterwards.
    pub.w.write(bytes([8]) + bytes(3) + (500).to_bytes(3, "big") + b"\x09" + (1).to_bytes(4, "little") + bytes(100))
    pub.message(2, 2, 0, (8).to_bytes(4, "big"))
    for ts in (0, 10, 20):  # the same data message again: fmt 0, then 2 (new delta), then 3 (same delta)
        pub.message(8, 18, ts, amf0_encode("@setDataFrame", "onMetaData", {"width": 640.0, "encoder": "raw"}), 1)

    base = 0xFFFFFFFF - 1500  # 32-bit milliseconds that wrap 1.5 s in (extended timestamps before)
    avcc, asc, packets = mp4_media(clips.main)
    small_avcc, _, small_packets = mp4_media(clips.small)
    pub.message(7, 9, base, b"\x17\x00\x00\x00\x00" + avcc, 1)
    pub.message(5, 8, base, b"\xae\x00" + asc, 1)
    await pub.w.drain()
    await asyncio.sleep(0.1)  # the collector subscribes to the new tracks
    assert collector.kinds("r6", "grace") == {TrackKind.MAIN, TrackKind.AUDIO}
    sent: dict[str, list[int]] = {"video": [], "audio": []}  # unwrapped source ms, in sending order
    sent_cts: list[int] = []

    def send(stream: list[tuple[str, int, int, bool, bytes]], start: int) -> None:
        for kind, dts, cts, key_frame, data in stream:
            ts = start + dts
            sent[kind].append(ts)
            if kind == "video":  # the first one: a fmt 0 header with an extended timestamp, in many chunks
                cts += (len(sent_cts) % 3 - 1) * 33  # composition offsets of -33, 0 and +33 ms (signed 24-bit)
                sent_cts.append(cts)
                head = bytes([0x17 if key_frame else 0x27, 1]) + cts.to_bytes(3, "big", signed=True)
                pub.message(6, 9, ts & 0xFFFFFFFF, head + data, 1)
            else:
                pub.message(4, 8, ts & 0xFFFFFFFF, b"\xae\x01" + data, 1)

    first = [p for p in packets if p[1] < 3000]
    send(first[: len(first) // 2], base)
    pub.message(7, 9, base + 1500, b"\x17\x00\x00\x00\x00" + avcc, 1)  # the same record again: no change
    send(first[len(first) // 2 :], base)
    switch = base + 3000
    pub.message(6, 9, switch & 0xFFFFFFFF, b"\x17\x00\x00\x00\x00" + small_avcc, 1)  # a new resolution
    send([p for p in small_packets if p[0] == "video"], switch)
    await pub.w.drain()
    await asyncio.sleep(0.3)
    assert set(pub.fmts) == {0, 1, 2, 3}
    acks = [int.from_bytes(p, "big") for p in pub.received(3)]
    assert len(acks) >= 3 and acks == sorted(acks) and acks[0] >= 20_000, acks
    pub.command("FCUnpublish", 6.0, None, "r6")
    pub.command("deleteStream", 7.0, None, 1.0)
    await pub.w.drain()
    async with asyncio.timeout(5):
        while registry.room(key("r6")).participant("grace") is not None:
            await asyncio.sleep(0.02)
    pub.w.close()
    await asyncio.gather(pub.pump, return_exceptions=True)
    assert collector.ended("r6", "grace")

    video = [g.unit for g in collector.units[("r6", "grace", TrackKind.MAIN)]]
    audio = [g.unit for g in collector.units[("r6", "grace", TrackKind.AUDIO)]]
    assert len(video) == len(sent["video"]) and len(audio) == len(sent["audio"])
    assert [u.data for u in video] == [p[4] for p in first + small_packets if p[0] == "video"]
    infos: list[StreamInfo] = []
    for u in video:
        if not infos or u.info is not infos[-1]:
            infos.append(u.info)
    assert [(i.width, i.height, i.extradata) for i in infos] == [(640, 360, avcc), (320, 240, small_avcc)]
    # across the wrap, every unit keeps its place: one shift for both tracks, pts = dts + cts
    shifts = {u.dts - ts for u, ts in zip(video, sent["video"])} | {u.dts - ts for u, ts in zip(audio, sent["audio"])}
    assert len(shifts) == 1, sorted(shifts)[:5]
    assert [u.pts - u.dts for u in video] == sent_cts
    assert all(b.dts > a.dts for a, b in zip(video, video[1:]))
    assert abs(float(video[0].dts * video[0].info.time_base) - time.monotonic()) < 5  # on the room clock
    assert server.stats.dropped == 0


async def raw_publish(port: int, room: str, user: str) -> RawPublisher:
    pub = await RawPublisher.open(port)
    pub.command("connect", 1.0, {"app": "push", "tcUrl": f"rtmp://127.0.0.1:{port}/push"})
    pub.command("createStream", 2.0, None)
    pub.command("publish", 3.0, None, f"{room}?sdkappid={APP_ID}&userid={user}&usersig=good", "live", stream_id=1)
    status = await pub.reply("onStatus")
    assert isinstance(status[3], dict) and status[3]["code"] == "NetStream.Publish.Start"
    return pub


async def test_publishers_that_break_or_go_silent_leave(rtmp: tuple[RtmpServer, RoomRegistry], clips: Clips,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    server, registry = rtmp
    avcc, asc, _ = mp4_media(clips.main)
    broken, silent = await raw_publish(server.port, "r8", "ivan"), await raw_publish(server.port, "r8", "judy")
    for pub in (broken, silent):
        pub.message(6, 9, 0, b"\x17\x00\x00\x00\x00" + avcc, 1)
        pub.message(4, 8, 0, b"\xae\x00" + asc, 1)
    room = registry.room(key("r8"))
    async with asyncio.timeout(5):
        while any(p is None or len(p.tracks) < 2 for p in (room.participant("ivan"), room.participant("judy"))):
            await asyncio.sleep(0.02)
    started = time.monotonic()
    broken.message(2, 1, 0, (0).to_bytes(4, "big"))  # Set Chunk Size 0: nothing can follow
    async with asyncio.timeout(5):
        while room.participant("ivan") is not None:
            await asyncio.sleep(0.02)
    assert room.participant("judy") is not None and time.monotonic() - started < 1
    async with asyncio.timeout(5):
        while room.participant("judy") is not None:  # idle timeout: 1.5 s without media
            await asyncio.sleep(0.02)
    assert 1.2 < time.monotonic() - started < 3
    for pub in (broken, silent):
        pub.w.close()
    assert (server.stats.dropped, server.stats.publishers) == (2, 0)
    dropped = sorted((str(getattr(r, "user_id")), str(getattr(r, "reason")))
                     for r in caplog.records if r.getMessage() == "rtmp connection dropped")
    assert dropped == [("ivan", "invalid chunk size 0"), ("judy", "idle timeout: no media")]


def test_amf0_round_trip_and_malformed_input() -> None:
    values: list[AmfValue] = [1.5, True, "héllo", None, {"a": 1.0, "nested": {"b": [1.0, "x", False]}}, ["s", 2.0], "L" * 70_000]
    assert amf0_decode(amf0_encode(*values)) == values
    ecma = b"\x08" + (2).to_bytes(4, "big") + b"\x00\x01k\x02\x00\x01v" + b"\x00\x00\x09"
    undefined_and_date = b"\x06\x0b" + struct.pack(">dh", 86_400_000.0, 0)
    decoded = amf0_decode(ecma + undefined_and_date)
    assert decoded[:2] == [{"k": "v"}, None]
    assert decoded[2].timestamp() == 86_400  # type: ignore[union-attr]
    for bad in (b"\x02\x00\x05ab", b"\x0a\xff\xff\xff\xff\x05", b"\x11\x00", b"\x03" * 100):
        with pytest.raises(RtmpProtocolError):
            amf0_decode(bad)
