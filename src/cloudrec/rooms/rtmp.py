"""`RtmpServer`: our own asyncio RTMP endpoint for publishers (ffmpeg, OBS, hardware encoders).

FFmpeg's RTMP "listen" mode serves one publisher per socket and cannot check credentials, so rooms
get their own small server (MEDIA.md §3). One connection is one publisher:

    handshake (C0/C1/C2 ↔ S0/S1/S2, plain)
    → connect (app, tcUrl) → releaseStream / FCPublish → createStream → publish "<stream>?<query>"
    → authorize(PublishRequest) → room.join(user_id) → onStatus NetStream.Publish.Start
    → FLV audio/video messages → MediaUnits on the room clock
    → deleteStream / FCUnpublish / close / error / idle timeout / server stop → room.leave

Time (MEDIA.md §1): RTMP timestamps are 32-bit milliseconds (unwrapped here). One offset per
publisher, set at its first media message (`arrival − first timestamp`), maps both tracks onto the
room clock, so a publisher's audio and video stay exactly as aligned as it sent them. The offset
then follows the publisher's clock drift by slewing (`rooms.clock.DriftTracker`: bounded, never a
jump, the same for both tracks). Units keep the time base 1/1000.

Media is published as it arrives, without decoding: H.264 (AVCC NAL units with the avcC record as
extradata) and AAC (raw frames with the AudioSpecificConfig as extradata). A new configuration
record with different content (e.g. a resolution change) yields a new `StreamInfo` object, which
tells recorders to start new files. Other codecs are logged once and ignored.

Who ends a connection: the peer (close, or deleteStream and then silence → INFO); a refused
publish (`authorize` returned None, raised, or took longer than `idle_timeout` → onStatus
NetStream.Publish.BadName, INFO); the room (the same user published again elsewhere, or the user was
removed / the room dismissed through `Participant.on_removed` → INFO); `stop()`; and misbehaviour:
a peer sending garbage, truncated or oversized chunks, or nothing that is media for `idle_timeout`
seconds ends only its own connection, with one WARNING line ("rtmp connection dropped", `reason`).

Memory per connection is bounded: reads of 64 KiB; a message ≤ `MAX_MESSAGE_BYTES` (the 24-bit
length field caps it at 16 MiB − 1 anyway), unfinished messages ≤ `MAX_PENDING_BYTES` in total
(counted at their first chunk, from the announced length) over ≤ `MAX_CHUNK_STREAMS` chunk streams;
unparsed input is at most one chunk (≤ the peer's chunk size, ≤ 16 MiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import struct
import time
import types
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import IntEnum
from fractions import Fraction
from typing import Any, TypeAlias

from cloudrec.core.aac import parse_audio_specific_config
from cloudrec.core.h264 import avcc_sps, parse_sps
from cloudrec.core.media import MediaUnit, StreamInfo
from cloudrec.core.rooms import RoomKey
from cloudrec.core.spec import TrackKind
from cloudrec.rooms.clock import DriftTracker
from cloudrec.rooms.registry import CAMERA_KINDS, SCREEN_KINDS, Connection, Room, RoomRegistry, Track

logger = logging.getLogger(__name__)

HANDSHAKE_SIZE = 1536
RTMP_VERSION = 3
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # larger announced messages cut the peer off
MAX_PENDING_BYTES = 24 * 1024 * 1024  # unfinished messages of one connection, all chunk streams
MAX_CHUNK_STREAMS = 64  # distinct chunk stream ids one connection may use
MAX_PEER_CHUNK_SIZE = 0xFFFFFF  # the spec's maximum
READ_SIZE = 64 * 1024
WINDOW_ACK_SIZE = 5_000_000  # what we announce to the peer
PEER_BANDWIDTH = 5_000_000
STREAM_ID = 1.0  # the one message stream `createStream` hands out
TIME_BASE = Fraction(1, 1000)
AAC_FRAME_SAMPLES = 1024
MAX_AMF_DEPTH = 32

# outgoing chunk stream ids (as most servers use them)
_CS_PROTOCOL = 2
_CS_COMMAND = 3
_CS_STATUS = 5


class MessageType(IntEnum):
    SET_CHUNK_SIZE = 1
    ABORT = 2
    ACKNOWLEDGEMENT = 3
    USER_CONTROL = 4
    WINDOW_ACK_SIZE = 5
    SET_PEER_BANDWIDTH = 6
    AUDIO = 8
    VIDEO = 9
    DATA_AMF3 = 15
    SHARED_OBJECT_AMF3 = 16
    COMMAND_AMF3 = 17
    DATA_AMF0 = 18
    SHARED_OBJECT_AMF0 = 19
    COMMAND_AMF0 = 20
    AGGREGATE = 22


class UserControl(IntEnum):
    STREAM_BEGIN = 0
    PING_REQUEST = 6
    PING_RESPONSE = 7


class RtmpProtocolError(Exception):
    """The peer broke the protocol; its connection ends (and only its)."""


class _ConnectionEnd(Exception):
    """A normal end of a connection (peer closed, refused, displaced, stopped)."""


# =============================================================================================
# Public records


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishRequest:
    """What a publisher asks for: `app` from connect (without query), `stream` = the publish name
    without its `?query`, `query` = the publish name's query merged over the tcUrl's (and app's)."""

    app: str
    stream: str
    query: Mapping[str, str]
    tc_url: str
    remote: str  # "host:port" of the peer

    @property
    def host(self) -> str:
        """The host the publisher says it connected to (the tcUrl's, lower case; "" without one)."""
        try:
            return urllib.parse.urlsplit(self.tc_url).hostname or ""
        except ValueError:  # a malformed tcUrl (e.g. a bad IPv6 literal) names no host
            return ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishGrant:
    """Where an admitted publisher goes: its room, its user id and which video track it feeds."""

    room: RoomKey
    user_id: str
    track: TrackKind = TrackKind.MAIN


Authorize = Callable[[PublishRequest], Awaitable[PublishGrant | None]]


@dataclass(slots=True, kw_only=True)
class RtmpStats:
    """The server counts into one of these; `RtmpServer.stats` hands out copies."""

    connections: int = 0  # open now
    publishers: int = 0  # publishing now
    accepted: int = 0  # connections accepted since start
    published: int = 0  # publishes admitted since start
    refused: int = 0  # publishes refused since start
    dropped: int = 0  # connections ended for misbehaviour (protocol error, idle timeout)


# =============================================================================================
# AMF0

AmfValue: TypeAlias = "float | bool | str | datetime | dict[str, AmfValue] | list[AmfValue] | None"


class _Amf0Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self._data):
            raise RtmpProtocolError("truncated AMF0 value")
        out = self._data[self.pos : end]
        self.pos = end
        return out

    def _u16(self) -> int:
        return int.from_bytes(self._take(2), "big")

    def _u32(self) -> int:
        return int.from_bytes(self._take(4), "big")

    def _string(self, size: int) -> str:
        return self._take(size).decode("utf-8", errors="replace")

    def _pairs(self, depth: int) -> dict[str, AmfValue]:
        out: dict[str, AmfValue] = {}
        while True:
            key = self._string(self._u16())
            if not key and self.pos < len(self._data) and self._data[self.pos] == 0x09:
                self.pos += 1
                return out
            out[key] = self.value(depth + 1)

    def value(self, depth: int = 0) -> AmfValue:
        if depth > MAX_AMF_DEPTH:
            raise RtmpProtocolError("AMF0 nesting too deep")
        marker = self._take(1)[0]
        if marker == 0x00:
            return float(struct.unpack(">d", self._take(8))[0])
        if marker == 0x01:
            return self._take(1)[0] != 0
        if marker == 0x02:
            return self._string(self._u16())
        if marker == 0x03:
            return self._pairs(depth)
        if marker in (0x05, 0x06):  # null, undefined
            return None
        if marker == 0x08:  # ECMA array: a count (not to be trusted) then pairs like an object
            self._u32()
            return self._pairs(depth)
        if marker == 0x0A:
            count = self._u32()
            items: list[AmfValue] = []
            for _ in range(count):  # each item takes ≥ 1 byte: a lying count fails on truncation
                items.append(self.value(depth + 1))
            return items
        if marker == 0x0B:
            ms = struct.unpack(">d", self._take(8))[0]
            self._take(2)  # time zone, unused by the spec
            try:
                return datetime.fromtimestamp(ms / 1000, tz=UTC)
            except (OverflowError, OSError, ValueError) as exc:
                raise RtmpProtocolError("AMF0 date out of range") from exc
        if marker == 0x0C:
            return self._string(self._u32())
        if marker == 0x10:  # typed object: class name, then an object
            self._string(self._u16())
            return self._pairs(depth)
        raise RtmpProtocolError(f"unsupported AMF0 marker {marker:#04x}")


def amf0_decode(data: bytes) -> list[AmfValue]:
    """Every AMF0 value in `data`, in order. Raises `RtmpProtocolError` on malformed input."""
    reader = _Amf0Reader(data)
    out: list[AmfValue] = []
    while reader.pos < len(data):
        out.append(reader.value())
    return out


def _amf0_string_body(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def _amf0_one(value: AmfValue, out: bytearray) -> None:
    if value is None:
        out.append(0x05)
    elif isinstance(value, bool):
        out += bytes((0x01, 1 if value else 0))
    elif isinstance(value, (int, float)):
        out.append(0x00)
        out += struct.pack(">d", float(value))
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) > 0xFFFF:
            out.append(0x0C)
            out += len(raw).to_bytes(4, "big") + raw
        else:
            out.append(0x02)
            out += len(raw).to_bytes(2, "big") + raw
    elif isinstance(value, datetime):
        out.append(0x0B)
        out += struct.pack(">dh", value.timestamp() * 1000, 0)
    elif isinstance(value, dict):
        out.append(0x03)
        for key, item in value.items():
            out += _amf0_string_body(key)
            _amf0_one(item, out)
        out += b"\x00\x00\x09"
    else:
        out.append(0x0A)
        out += len(value).to_bytes(4, "big")
        for item in value:
            _amf0_one(item, out)


def amf0_encode(*values: AmfValue) -> bytes:
    """AMF0 bytes of `values`: dict → object, list → strict array, datetime → date."""
    out = bytearray()
    for value in values:
        _amf0_one(value, out)
    return bytes(out)


# =============================================================================================
# Chunk stream


@dataclass(frozen=True, slots=True, kw_only=True)
class RtmpMessage:
    type_id: int
    stream_id: int
    timestamp: int  # milliseconds, 32-bit (wraps)
    payload: bytes


@dataclass(slots=True)
class _ChunkStream:
    timestamp: int = 0  # of the message being read / last read (32-bit)
    delta: int = 0  # the last timestamp field (a fmt 3 that starts a message repeats it)
    length: int = 0
    type_id: int = 0
    stream_id: int = 0
    extended: bool = False  # the last header carried an extended timestamp
    started: bool = False  # a fmt 0 header was seen
    partial: bytearray | None = None  # the unfinished message


class ChunkReader:
    """Sans-IO parser of the peer's chunk stream: `feed(bytes)` → the messages completed.

    Set Chunk Size and Abort are applied here (they change how the following bytes parse) and
    also returned. Everything is bounded (see the module docstring).
    """

    def __init__(self) -> None:
        self.chunk_size = 128
        self._buffer = bytearray()
        self._streams: dict[int, _ChunkStream] = {}
        self._pending = 0  # bytes held in unfinished messages

    def feed(self, data: bytes) -> list[RtmpMessage]:
        self._buffer += data
        out: list[RtmpMessage] = []
        pos = 0
        buf = self._buffer
        while True:
            used = self._chunk(buf, pos, out)
            if used == 0:
                break
            pos += used
        del buf[:pos]
        return out

    def _chunk(self, buf: bytearray, pos: int, out: list[RtmpMessage]) -> int:
        """Parse one chunk at `pos`; the bytes it used, 0 if it is not complete yet."""
        avail = len(buf) - pos
        if avail < 1:
            return 0
        first = buf[pos]
        fmt = first >> 6
        csid = first & 0x3F
        head = 1
        if csid == 0:
            if avail < 2:
                return 0
            csid = 64 + buf[pos + 1]
            head = 2
        elif csid == 1:
            if avail < 3:
                return 0
            csid = 64 + buf[pos + 1] + (buf[pos + 2] << 8)
            head = 3
        header_size = (11, 7, 3, 0)[fmt]
        if avail < head + header_size:
            return 0
        cs = self._streams.get(csid)
        if cs is None:
            if fmt != 0:
                raise RtmpProtocolError(f"chunk header type {fmt} on new chunk stream {csid}")
            if len(self._streams) >= MAX_CHUNK_STREAMS:
                raise RtmpProtocolError("too many chunk streams")
            cs = _ChunkStream()
        h = pos + head
        ts_field = -1
        length, type_id, stream_id = cs.length, cs.type_id, cs.stream_id
        if fmt <= 2:
            ts_field = int.from_bytes(buf[h : h + 3], "big")
            if fmt <= 1:
                length = int.from_bytes(buf[h + 3 : h + 6], "big")
                type_id = buf[h + 6]
                if fmt == 0:
                    stream_id = int.from_bytes(buf[h + 7 : h + 11], "little")
        extended = ts_field == 0xFFFFFF if fmt <= 2 else cs.extended
        ext_size = 4 if extended else 0
        if avail < head + header_size + ext_size:
            return 0
        if extended:
            e = h + header_size
            ts_value = int.from_bytes(buf[e : e + 4], "big")
        else:
            ts_value = ts_field
        new_message = cs.partial is None
        if not new_message and fmt != 3 and (length != cs.length or type_id != cs.type_id):
            raise RtmpProtocolError("new message header inside an unfinished message")
        if new_message:
            if length > MAX_MESSAGE_BYTES:
                raise RtmpProtocolError(f"message of {length} bytes exceeds the limit")
            if fmt != 0 and not cs.started:
                raise RtmpProtocolError("relative chunk header before an absolute one")
        payload_start = head + header_size + ext_size
        done = 0 if new_message else len(cs.partial or b"")
        size = min(self.chunk_size, length - done)
        if avail < payload_start + size:
            return 0
        if new_message and self._pending + length > MAX_PENDING_BYTES:
            raise RtmpProtocolError("too much unfinished data")
        # -- the chunk is complete: commit the header state
        if csid not in self._streams:
            self._streams[csid] = cs
        if new_message:
            if fmt == 0:
                cs.timestamp = ts_value
                cs.started = True
                cs.delta = ts_value
            else:
                delta = ts_value if fmt <= 2 or extended else cs.delta  # fmt 3 repeats the last delta
                cs.delta = delta
                cs.timestamp = (cs.timestamp + delta) & 0xFFFFFFFF
            cs.length, cs.type_id, cs.stream_id = length, type_id, stream_id
            cs.partial = bytearray()
            self._pending += length
        cs.extended = extended
        data_at = pos + payload_start
        partial = cs.partial
        assert partial is not None
        partial += buf[data_at : data_at + size]
        if len(partial) >= cs.length:
            self._pending -= cs.length
            cs.partial = None
            message = RtmpMessage(type_id=cs.type_id, stream_id=cs.stream_id, timestamp=cs.timestamp, payload=bytes(partial))
            self._control(message)
            out.append(message)
        return payload_start + size

    def _control(self, message: RtmpMessage) -> None:
        if message.type_id == MessageType.SET_CHUNK_SIZE:
            if len(message.payload) < 4:
                raise RtmpProtocolError("short Set Chunk Size")
            size = int.from_bytes(message.payload[:4], "big") & 0x7FFFFFFF
            if not 1 <= size <= MAX_PEER_CHUNK_SIZE:
                raise RtmpProtocolError(f"invalid chunk size {size}")
            self.chunk_size = size
        elif message.type_id == MessageType.ABORT:
            if len(message.payload) < 4:
                raise RtmpProtocolError("short Abort")
            cs = self._streams.get(int.from_bytes(message.payload[:4], "big"))
            if cs is not None and cs.partial is not None:
                self._pending -= cs.length
                cs.partial = None


def encode_message(csid: int, type_id: int, payload: bytes, *, chunk_size: int, stream_id: int = 0,
                   timestamp: int = 0) -> bytes:
    """One message as chunks: a fmt 0 header, then fmt 3 continuation headers (csid 2…63)."""
    assert 2 <= csid <= 63
    ts = min(timestamp, 0xFFFFFF)
    out = bytearray()
    out.append(csid)
    out += ts.to_bytes(3, "big") + len(payload).to_bytes(3, "big") + bytes((type_id,)) + stream_id.to_bytes(4, "little")
    extended = timestamp >= 0xFFFFFF
    if extended:
        out += timestamp.to_bytes(4, "big")
    for start in range(0, max(len(payload), 1), chunk_size):
        if start:
            out.append(0xC0 | csid)
            if extended:
                out += timestamp.to_bytes(4, "big")
        out += payload[start : start + chunk_size]
    return bytes(out)


# =============================================================================================
# FLV payloads: H.264 (avcC, SPS) and AAC (AudioSpecificConfig)

_VIDEO_CODECS = {2: "h263", 3: "screen", 4: "vp6", 5: "vp6a", 6: "screen2", 7: "h264", 12: "hevc", 13: "av1"}
_AUDIO_CODECS = {0: "pcm", 1: "adpcm", 2: "mp3", 3: "pcm_le", 4: "nellymoser16", 5: "nellymoser8", 6: "nellymoser",
                 7: "alaw", 8: "mulaw", 9: "enhanced", 10: "aac", 11: "speex", 14: "mp3_8k"}


# =============================================================================================
# The publisher: FLV messages → MediaUnits on the room clock


class _Publisher:
    """One admitted publish: a connection to a room, its tracks and its single time offset."""

    def __init__(self, room: Room, connection: Connection, grant: PublishGrant, *, remote: str,
                 clock: Callable[[], float]) -> None:
        self.room = room
        self.connection = connection
        self.user_id = grant.user_id
        self.video_kind = grant.track if grant.track.is_video else TrackKind.MAIN
        self.remote = remote
        self._clock = clock
        self._drift = DriftTracker()  # source seconds → room seconds, one for both tracks
        self._last32: int | None = None
        self._ext = 0  # unwrapped source ms of the last media message
        self._infos: dict[TrackKind, StreamInfo] = {}
        self._tracks: dict[TrackKind, Track] = {}
        self._ignored: set[str] = set()
        self.units = 0
        self.skipped = 0  # media before its configuration record, or malformed
        self.metadata_logged = False

    # -- time ----------------------------------------------------------------------------------
    def _room_ms(self, ts32: int) -> int:
        if self._last32 is None:
            self._ext = ts32
        else:
            delta = (ts32 - self._last32) & 0xFFFFFFFF
            if delta >= 0x80000000:
                delta -= 0x100000000
            self._ext += delta
        self._last32 = ts32
        return round(self._drift.room(self._ext / 1000, self._clock()) * 1000)

    # -- media ---------------------------------------------------------------------------------
    def present(self) -> bool:
        return self.connection.present

    def _check_present(self) -> None:
        if not self.present():
            raise _ConnectionEnd("no longer in the room (displaced or removed)")

    def _ignore(self, what: str, **fields: object) -> None:
        if what not in self._ignored:
            self._ignored.add(what)
            logger.info("rtmp media ignored", extra={"remote": self.remote, "user_id": self.user_id, "what": what, **fields})

    def _configure(self, kind: TrackKind, info: StreamInfo) -> None:
        if kind not in self.connection.kinds:  # audio of a screen-share (aux) publish
            self._ignore(f"{kind.value} of a {self.video_kind.value} stream")
            return
        old = self._infos.get(kind)
        if old is not None and old.extradata == info.extradata:
            return  # the same record again: keep the object (recorders compare identity)
        self._infos[kind] = info
        logger.info("rtmp stream parameters", extra={
            "remote": self.remote, "user_id": self.user_id, "track": kind.value, "codec": info.codec,
            "width": info.width, "height": info.height, "sample_rate": info.sample_rate, "channels": info.channels})
        if kind not in self._tracks:
            self._tracks[kind] = self.connection.add_track(kind)

    def _publish(self, kind: TrackKind, unit: MediaUnit) -> None:
        track = self._tracks.get(kind)
        if track is None:
            return
        track.publish(unit)
        self.units += 1

    def video(self, ts32: int, payload: bytes) -> None:
        self._check_present()
        if not payload:
            return
        head = payload[0]
        if head & 0x80:
            fourcc = payload[1:5].decode("latin-1") if len(payload) >= 5 else "?"
            self._ignore("video codec", codec=f"enhanced:{fourcc}")
            return
        codec_id = head & 0x0F
        frame_type = head >> 4
        if codec_id != 7:
            self._ignore("video codec", codec=_VIDEO_CODECS.get(codec_id, str(codec_id)))
            return
        if frame_type == 5:  # video info / command frame
            return
        dts = self._room_ms(ts32)
        if len(payload) < 5:
            self.skipped += 1
            return
        packet_type = payload[1]
        if packet_type == 0:
            avcc = payload[5:]
            width = height = 0
            pix_fmt: str | None = None
            sps = avcc_sps(avcc)
            if sps is not None:
                try:
                    parsed = parse_sps(sps)
                    width, height, pix_fmt = parsed.width, parsed.height, parsed.pix_fmt
                except ValueError:
                    pass
            if sps is None:
                self._ignore("invalid AVC configuration record")
                return
            self._configure(self.video_kind, StreamInfo(
                kind=self.video_kind, codec="h264", time_base=TIME_BASE, extradata=avcc, width=width, height=height,
                pix_fmt=pix_fmt))
        elif packet_type == 1:
            info = self._infos.get(self.video_kind)
            data = payload[5:]
            if info is None or not data:
                self.skipped += 1
                return
            cts = int.from_bytes(payload[2:5], "big", signed=True)
            self._publish(self.video_kind, MediaUnit(
                data=data, pts=dts + cts, dts=dts, duration=0, key=frame_type == 1, info=info))

    def audio(self, ts32: int, payload: bytes) -> None:
        self._check_present()
        if not payload:
            return
        sound_format = payload[0] >> 4
        if sound_format != 10:
            self._ignore("audio codec", codec=_AUDIO_CODECS.get(sound_format, str(sound_format)))
            return
        dts = self._room_ms(ts32)
        if len(payload) < 2:
            self.skipped += 1
            return
        if payload[1] == 0:
            asc = payload[2:]
            try:
                config = parse_audio_specific_config(asc)
            except ValueError:
                self._ignore("invalid AudioSpecificConfig")
                return
            layout = {1: "mono", 2: "stereo"}.get(config.channels)
            self._configure(TrackKind.AUDIO, StreamInfo(
                kind=TrackKind.AUDIO, codec="aac", time_base=TIME_BASE, extradata=asc, sample_rate=config.sample_rate,
                channels=config.channels, layout=layout))
        elif payload[1] == 1:
            info = self._infos.get(TrackKind.AUDIO)
            data = payload[2:]
            if info is None or not data:
                self.skipped += 1
                return
            duration = round(AAC_FRAME_SAMPLES * 1000 / info.sample_rate) if info.sample_rate else 0
            self._publish(TrackKind.AUDIO, MediaUnit(data=data, pts=dts, dts=dts, duration=duration, key=True, info=info))

    def close(self) -> None:
        self.connection.leave()  # a no-op when displaced or removed: the room already closed its tracks


# =============================================================================================
# One connection


def _query(text: str) -> dict[str, str]:
    """`a=b&c=d` → dict; percent-decoded, '+' kept (signatures are not form-encoded)."""
    out: dict[str, str] = {}
    for part in text.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        out[urllib.parse.unquote(key)] = urllib.parse.unquote(value)
    return out


class _Connection:
    def __init__(self, server: RtmpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        self.chunks = ChunkReader()
        self.out_chunk_size = server.chunk_size
        self.publisher: _Publisher | None = None
        self.received = 0
        self._acked = 0
        self._peer_window = 0
        self._connected = False
        self._removed = False
        self._unpublished = False
        self._app = ""
        self._app_query: dict[str, str] = {}
        self._tc_url = ""
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + server.idle_timeout

    # -- lifetime ------------------------------------------------------------------------------
    async def run(self) -> None:
        stats = self.server._counters
        started = time.monotonic()
        reason = "closed"
        try:
            await self._handshake()
            while True:
                data = await self._read()
                for message in self.chunks.feed(data):
                    await self._on_message(message)
                await self._acknowledge()
        except RtmpProtocolError as exc:
            stats.dropped += 1
            logger.warning("rtmp connection dropped", extra={"remote": self.remote, "reason": str(exc), **self._who()})
            reason = ""
        except _ConnectionEnd as exc:
            reason = str(exc)
        except (ConnectionError, asyncio.IncompleteReadError):
            reason = "connection reset"
        except asyncio.CancelledError:
            reason = "server stopped"
            raise
        except Exception as exc:  # a bug of ours: end this connection only
            stats.dropped += 1
            logger.warning("rtmp connection failed", extra={"remote": self.remote, "error": repr(exc), **self._who()},
                           exc_info=True)
            reason = ""
        finally:
            self._unpublish()
            self.writer.close()
            if reason:
                logger.info("rtmp connection closed", extra={
                    "remote": self.remote, "reason": reason, "bytes": self.received,
                    "seconds": round(time.monotonic() - started, 1)})

    def _who(self) -> dict[str, object]:
        if self.publisher is None:
            return {}
        return {"room": str(self.publisher.room.key), "user_id": self.publisher.user_id}

    def _on_removed(self) -> None:
        """The user was removed from the room (RemoveUser, DismissRoom): close; from any thread."""
        with contextlib.suppress(RuntimeError):  # the loop is already gone
            self._loop.call_soon_threadsafe(self._kick)

    def _kick(self) -> None:
        self._removed = True
        self.writer.close()  # the pending read sees the end of the stream

    def _unpublish(self) -> None:
        publisher, self.publisher = self.publisher, None
        if publisher is not None:
            self._unpublished = True
            self.server._counters.publishers -= 1
            publisher.close()

    def _idle(self) -> Exception:
        if self._unpublished:  # a publisher that stopped and lingers: not a misbehaviour
            return _ConnectionEnd("idle after unpublishing")
        return RtmpProtocolError("idle timeout: no media")

    async def _read(self) -> bytes:
        if self._loop.time() >= self._deadline:
            raise self._idle()
        try:
            async with asyncio.timeout_at(self._deadline):
                data = await self.reader.read(READ_SIZE)
        except TimeoutError:
            raise self._idle() from None
        if self._removed:
            raise _ConnectionEnd("removed from the room")
        if not data:
            raise _ConnectionEnd("peer closed" if self.received else "peer closed before the handshake")
        self.received += len(data)
        return data

    async def _read_exactly(self, buffer: bytearray, size: int) -> bytes:
        while len(buffer) < size:
            buffer += await self._read()
        out = bytes(buffer[:size])
        del buffer[:size]
        return out

    async def _handshake(self) -> None:
        buffer = bytearray()
        c0 = (await self._read_exactly(buffer, 1))[0]
        if c0 != RTMP_VERSION:
            raise RtmpProtocolError(f"not an RTMP handshake (version byte {c0:#04x})")
        c1 = await self._read_exactly(buffer, HANDSHAKE_SIZE)
        s1 = bytes(8) + os.urandom(HANDSHAKE_SIZE - 8)  # time 0, zero version: plain handshake
        await self._send_raw(bytes((RTMP_VERSION,)) + s1 + c1)  # S0 S1 S2 (S2 echoes C1)
        await self._read_exactly(buffer, HANDSHAKE_SIZE)  # C2: an echo of S1, not checked (peers differ)
        if buffer:
            for message in self.chunks.feed(bytes(buffer)):
                await self._on_message(message)

    # -- sending -------------------------------------------------------------------------------
    async def _send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        try:
            async with asyncio.timeout(self.server.idle_timeout):
                await self.writer.drain()
        except TimeoutError:
            raise RtmpProtocolError("peer does not read") from None

    async def _send(self, csid: int, type_id: int, payload: bytes, *, stream_id: int = 0) -> None:
        await self._send_raw(encode_message(csid, type_id, payload, chunk_size=self.out_chunk_size, stream_id=stream_id))

    async def _command(self, *values: AmfValue, stream_id: int = 0) -> None:
        csid = _CS_STATUS if stream_id else _CS_COMMAND
        await self._send(csid, MessageType.COMMAND_AMF0, amf0_encode(*values), stream_id=stream_id)

    async def _status(self, level: str, code: str, description: str, stream_id: int) -> None:
        await self._command("onStatus", 0.0, None, {"level": level, "code": code, "description": description},
                            stream_id=stream_id)

    async def _acknowledge(self) -> None:
        if self._peer_window and self.received - self._acked >= self._peer_window:
            self._acked = self.received
            await self._send(_CS_PROTOCOL, MessageType.ACKNOWLEDGEMENT, (self.received & 0xFFFFFFFF).to_bytes(4, "big"))

    # -- messages ------------------------------------------------------------------------------
    async def _on_message(self, message: RtmpMessage) -> None:
        t = message.type_id
        if t == MessageType.VIDEO or t == MessageType.AUDIO:
            self._media(t, message.timestamp, message.payload)
        elif t == MessageType.COMMAND_AMF0 or t == MessageType.COMMAND_AMF3:
            payload = message.payload
            if t == MessageType.COMMAND_AMF3 and payload[:1] == b"\x00":
                payload = payload[1:]
            await self._on_command(amf0_decode(payload), message.stream_id)
        elif t == MessageType.DATA_AMF0 or t == MessageType.DATA_AMF3:
            payload = message.payload
            if t == MessageType.DATA_AMF3 and payload[:1] == b"\x00":
                payload = payload[1:]
            self._on_data(payload)
        elif t == MessageType.USER_CONTROL:
            if len(message.payload) >= 6 and int.from_bytes(message.payload[:2], "big") == UserControl.PING_REQUEST:
                reply = UserControl.PING_RESPONSE.to_bytes(2, "big") + message.payload[2:6]
                await self._send(_CS_PROTOCOL, MessageType.USER_CONTROL, reply)
        elif t == MessageType.WINDOW_ACK_SIZE:
            if len(message.payload) < 4:
                raise RtmpProtocolError("short Window Acknowledgement Size")
            self._peer_window = int.from_bytes(message.payload[:4], "big")
        elif t == MessageType.AGGREGATE:
            self._aggregate(message)
        elif t in (MessageType.SET_CHUNK_SIZE, MessageType.ABORT, MessageType.ACKNOWLEDGEMENT,
                   MessageType.SET_PEER_BANDWIDTH):
            pass  # chunk size and abort are applied by the reader; the others need nothing from us
        else:
            logger.debug("rtmp message ignored", extra={"remote": self.remote, "type_id": t})

    def _media(self, type_id: int, timestamp: int, payload: bytes) -> None:
        publisher = self.publisher
        if publisher is None:
            return  # media before publish (or after unpublish): nowhere to go
        self._deadline = self._loop.time() + self.server.idle_timeout
        if type_id == MessageType.VIDEO:
            publisher.video(timestamp, payload)
        else:
            publisher.audio(timestamp, payload)

    def _aggregate(self, message: RtmpMessage) -> None:
        """FLV tags packed in one message; their timestamps are relative to the first one's."""
        data = message.payload
        pos = 0
        first: int | None = None
        while pos + 11 <= len(data):
            tag_type = data[pos]
            size = int.from_bytes(data[pos + 1 : pos + 4], "big")
            ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | (data[pos + 7] << 24)
            body = data[pos + 11 : pos + 11 + size]
            if len(body) < size:
                raise RtmpProtocolError("truncated aggregate message")
            first = ts if first is None else first
            if tag_type in (MessageType.AUDIO, MessageType.VIDEO):
                self._media(tag_type, (message.timestamp + ts - first) & 0xFFFFFFFF, body)
            pos += 11 + size + 4  # tag, then its back pointer

    def _on_data(self, payload: bytes) -> None:
        publisher = self.publisher
        try:
            values = amf0_decode(payload)
        except RtmpProtocolError:
            logger.debug("rtmp data message not decoded", extra={"remote": self.remote})
            return
        if values and values[0] == "@setDataFrame":
            values = values[1:]
        if not values or values[0] != "onMetaData" or publisher is None or publisher.metadata_logged:
            return
        publisher.metadata_logged = True
        meta = values[1] if len(values) > 1 and isinstance(values[1], dict) else {}
        wanted = ("width", "height", "framerate", "videocodecid", "audiocodecid", "audiosamplerate", "encoder")
        logger.info("rtmp metadata", extra={
            "remote": self.remote, "user_id": publisher.user_id,
            "metadata": {k: meta[k] for k in wanted if k in meta and isinstance(meta[k], (str, float, bool))}})

    async def _on_command(self, values: list[AmfValue], stream_id: int) -> None:
        if len(values) < 2 or not isinstance(values[0], str):
            raise RtmpProtocolError("malformed command")
        name = values[0]
        txn = values[1] if isinstance(values[1], float) else 0.0
        args = values[3:]
        if name == "connect":
            await self._connect(txn, values[2] if len(values) > 2 else None)
        elif name in ("releaseStream", "FCPublish"):
            if txn:
                await self._command("_result", txn, None, None)
            if name == "FCPublish":
                stream = args[0] if args and isinstance(args[0], str) else ""
                await self._command("onFCPublish", 0.0, None,
                                    {"code": "NetStream.Publish.Start", "description": stream.split("?", 1)[0]})
        elif name == "createStream":
            self._require_connect()
            await self._command("_result", txn, None, STREAM_ID)
        elif name == "publish":
            await self._publish(args, stream_id or int(STREAM_ID))
        elif name in ("deleteStream", "FCUnpublish", "closeStream"):
            if self.publisher is not None:
                logger.info("rtmp publish ended", extra={"remote": self.remote, "command": name, **self._who()})
            self._unpublish()
        else:
            logger.debug("rtmp command ignored", extra={"remote": self.remote, "command": name})

    def _require_connect(self) -> None:
        if not self._connected:
            raise RtmpProtocolError("command before connect")

    async def _connect(self, txn: float, params: AmfValue) -> None:
        obj = params if isinstance(params, dict) else {}
        app = obj.get("app")
        tc_url = obj.get("tcUrl")
        self._tc_url = tc_url if isinstance(tc_url, str) else ""
        app_text = app if isinstance(app, str) else ""
        if not app_text and self._tc_url:
            app_text = urllib.parse.urlsplit(self._tc_url).path.strip("/")
        self._app, _, app_query = app_text.partition("?")
        self._app_query = _query(app_query)
        self._connected = True
        encoding = obj.get("objectEncoding")
        await self._send(_CS_PROTOCOL, MessageType.WINDOW_ACK_SIZE, WINDOW_ACK_SIZE.to_bytes(4, "big"))
        await self._send(_CS_PROTOCOL, MessageType.SET_PEER_BANDWIDTH, PEER_BANDWIDTH.to_bytes(4, "big") + b"\x02")
        await self._send(_CS_PROTOCOL, MessageType.SET_CHUNK_SIZE, self.server.chunk_size.to_bytes(4, "big"))
        self.out_chunk_size = self.server.chunk_size
        await self._command(
            "_result", txn, {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0},
            {"level": "status", "code": "NetConnection.Connect.Success", "description": "Connection succeeded.",
             "objectEncoding": encoding if isinstance(encoding, float) else 0.0})

    def _request(self, name: str) -> PublishRequest:
        stream, _, stream_query = name.partition("?")
        tc_query = _query(urllib.parse.urlsplit(self._tc_url).query) if self._tc_url else {}
        query = {**tc_query, **self._app_query, **_query(stream_query)}
        return PublishRequest(app=self._app, stream=stream, query=types.MappingProxyType(query), tc_url=self._tc_url,
                              remote=self.remote)

    async def _publish(self, args: list[AmfValue], stream_id: int) -> None:
        self._require_connect()
        counters = self.server._counters
        name = args[0] if args and isinstance(args[0], str) else ""
        if self.publisher is not None:
            raise RtmpProtocolError("publish while already publishing")
        request = self._request(name)
        grant: PublishGrant | None = None
        if request.stream:
            try:
                async with asyncio.timeout(self.server.idle_timeout):
                    grant = await self.server.authorize(request)
            except Exception as exc:
                logger.warning("rtmp authorize failed", extra={"remote": self.remote, "app": request.app,
                                                               "stream": request.stream, "error": repr(exc)})
                grant = None
        if grant is None:
            counters.refused += 1
            logger.info("rtmp publish refused", extra={"remote": self.remote, "app": request.app, "stream": request.stream})
            await self._status("error", "NetStream.Publish.BadName", "Publish refused.", stream_id)
            raise _ConnectionEnd("publish refused")
        room = self.server.registry.room(grant.room)
        kinds = SCREEN_KINDS if grant.track is TrackKind.AUX else CAMERA_KINDS
        connection = room.connect(grant.user_id, kinds, on_removed=self._on_removed)
        self.publisher = _Publisher(room, connection, grant, remote=self.remote, clock=self.server.clock)
        counters.publishers += 1
        counters.published += 1
        self._deadline = self._loop.time() + self.server.idle_timeout
        logger.info("rtmp publish started", extra={"remote": self.remote, "app": request.app, "stream": request.stream,
                                                    "room": str(grant.room), "user_id": grant.user_id,
                                                    "track": grant.track.value})
        await self._send(_CS_PROTOCOL, MessageType.USER_CONTROL,
                         UserControl.STREAM_BEGIN.to_bytes(2, "big") + stream_id.to_bytes(4, "big"))
        await self._status("status", "NetStream.Publish.Start", f"{request.stream} is now published.", stream_id)


# =============================================================================================
# The server


class RtmpServer:
    """Accepts RTMP publishers on `host:port` (0 = any free port), admits them through `authorize`
    and publishes their media into `registry`'s rooms."""

    def __init__(self, registry: RoomRegistry, authorize: Authorize, *, host: str, port: int, chunk_size: int = 4096,
                 idle_timeout: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not 128 <= chunk_size <= MAX_PEER_CHUNK_SIZE:
            raise ValueError("chunk_size must be within 128…16777215")
        if not (idle_timeout > 0 and math.isfinite(idle_timeout)):
            raise ValueError("idle_timeout must be a positive number of seconds")
        self.registry = registry
        self.authorize = authorize
        self.host = host
        self.chunk_size = chunk_size
        self.idle_timeout = idle_timeout
        self.clock = clock  # the room clock (monotonic seconds); injectable for tests
        self._requested_port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._counters = RtmpStats()
        self._stopped = False

    @property
    def port(self) -> int:
        """The bound port (the requested one until `start()`)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._requested_port

    @property
    def stats(self) -> RtmpStats:
        return replace(self._counters)

    async def start(self) -> None:
        if self._server is not None:
            return
        self._stopped = False
        self._server = await asyncio.start_server(self._accept, self.host, self._requested_port, limit=READ_SIZE)
        logger.info("rtmp server started", extra={"host": self.host, "port": self.port})

    async def stop(self) -> None:
        """Stop accepting, close every connection (each publisher leaves its room); idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopped = True
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.wait_closed()
        logger.info("rtmp server stopped", extra={"host": self.host, "connections": len(tasks)})

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self._stopped or task is None:
            writer.close()
            return
        tasks = self._tasks
        tasks.add(task)
        self._counters.connections += 1
        self._counters.accepted += 1
        try:
            await _Connection(self, reader, writer).run()
        except asyncio.CancelledError:
            pass  # server stop: the connection cleaned up in its `finally`
        finally:
            self._counters.connections -= 1
            tasks.discard(task)


__all__ = [
    "AmfValue",
    "Authorize",
    "ChunkReader",
    "PublishGrant",
    "PublishRequest",
    "RtmpMessage",
    "RtmpProtocolError",
    "RtmpServer",
    "RtmpStats",
    "amf0_decode",
    "amf0_encode",
    "encode_message",
]
