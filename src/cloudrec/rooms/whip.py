"""`WebRtcGateway`: WebRTC publishers (WHIP, RFC 9725) into rooms and viewers (WHEP) out of them.

Publishing keeps the media ENCODED, so a single-stream recording of a WebRTC publisher is a stream
copy (MEDIA.md §2):

- aiortc decodes everything it receives. The hook used to get the packets first is each receiver's
  jitter buffer: `RTCRtpReceiver._handle_rtp_packet` hands every packet (SRTP removed, RTX
  unwrapped, codec payload descriptor parsed) to `self.__jitter_buffer.add(packet)`, which returns
  `(send_pli, encoded_frame_or_None)`. `_ReceiverTap` replaces that object (name-mangled attribute
  `_RTCRtpReceiver__jitter_buffer`, checked when installed so an aiortc that changed it fails
  loudly) with the same interface: it takes the packet, returns no frame (aiortc's decoder thread
  stays idle, so no CPU is spent and no decoded frames pile up in the unread remote track) and
  returns `send_pli=True` when we want a keyframe, which makes aiortc send the RTCP PLI itself.
  RTCP sender reports are seen by wrapping the receiver instance's `_handle_rtcp_packet`.
- H.264 (preferred whenever the offer has a packetization-mode=1 H.264 aiortc accepts): RTP →
  `H264Depacketizer` → Annex-B access units, codec "h264", extradata = Annex-B SPS + PPS, 90 kHz.
  A changed SPS (resolution change) publishes a new `StreamInfo`.
- VP8 (when the offer has no usable H.264): RFC 7741 payloads reassembled into VP8 frames, codec
  "vp8", 90 kHz, key flag and size from the frame header.
- Opus: one RTP payload = one Opus packet, codec "opus", 48 kHz, OpusHead extradata (the mp4
  muxer needs it). G.711 (PCMU/PCMA) likewise when a client offers nothing else.
  Every codec here is decodable by `cloudrec.media.decode.Decoder` from its `StreamInfo`.

Timing (MEDIA.md §1): each track unwraps its RTP timestamps; until an RTCP sender report arrives a
track is anchored at the arrival time of its least-delayed packet of the first `ANCHOR_WINDOW`
seconds (a first packet held up behind a busy moment, then handed over in a burst with the ones
queued after it, would otherwise place the track late until the SR); the first SR of the publisher fixes one
offset (sender NTP → room clock) for all its tracks, chosen so that track continues without a jump;
every track then follows its SR line (`rooms.clock.SenderReportMap`: RTP → sender NTP, rate fitted
from the first and latest SR, changes slewed) plus that offset, which restores the publisher's own
audio/video alignment. The offset follows the sender's clock drift against ours by slewing
(`rooms.clock.DriftTracker`, shared by the tracks). Timestamps of a track never go backwards.

Robustness: a publisher leaves its room when its connection fails or closes, when it is closed, and
when no media arrived for `media_timeout` seconds (also if it never sent any) — one WARNING line
each. Malformed RTP is counted and dropped (a corrupt picture waits for the next keyframe, with
PLIs at most once a second).

WHEP viewers get a `RoomTrack` per published track: units whose codec matches what the viewer
negotiated are forwarded as `av.Packet`s, which aiortc's senders packetize without encoding
(`Encoder.pack`); anything else (e.g. AAC or HEVC from RTMP, VP8 to an H.264-only viewer) is decoded
in a thread and handed to aiortc as frames to encode. A viewer's PLI is forwarded to the publisher.

ICE host candidates come from `host_addresses`: aioice's `get_host_addresses` (which never offers
127.0.0.1) is wrapped once per process by a function that returns the addresses in a context
variable when one is set — only inside `ice_host_addresses(...)`, which the gateway enters around
its own `setLocalDescription` — and otherwise calls the original.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import secrets
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import aioice.ice
import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import InternalError as AiortcInternalError
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket, RtcpSrPacket, RtpPacket
from aiortc.sdp import SessionDescription, parse_h264_profile_level_id

from cloudrec.core.h264 import avcc_config, avcc_to_annexb
from cloudrec.core.media import MediaUnit, StreamInfo
from cloudrec.core.rooms import RoomKey
from cloudrec.core.spec import TrackKind
from cloudrec.errors import InvalidRequest, NotFound
from cloudrec.media.decode import Decoder
from cloudrec.rooms.clock import DriftTracker, SenderReportMap
from cloudrec.rooms.h264rtp import H264Depacketizer, sps_dimensions
from cloudrec.rooms.registry import CAMERA_KINDS, SCREEN_KINDS, Connection, RoomRegistry, Track, TrackSubscriber

logger = logging.getLogger(__name__)

VIDEO_RATE = 90_000
OPUS_RATE = 48_000
MEDIA_TIMEOUT = 15.0  # seconds without any RTP before a publisher is dropped
PLI_INTERVAL = 1.0  # seconds between keyframe requests while one is awaited
ANCHOR_WINDOW = 2.0  # seconds of a track's first arrivals its pre-SR anchor is the least delayed of
POLL_SECONDS = 0.01  # how often a viewer track looks for new units
MAX_OFFER_BYTES = 64 * 1024

_JITTER_ATTR = "_RTCRtpReceiver__jitter_buffer"
NEGOTIATION_ERRORS: tuple[type[Exception], ...] = (
    ValueError, KeyError, IndexError, TypeError, AiortcInternalError, InvalidAccessError, InvalidStateError, OperationError,
)

# ---------------------------------------------------------------------------------------------
# ICE host candidates


_host_addresses: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar("cloudrec_ice_hosts", default=None)
_original_get_host_addresses: Callable[[bool, bool], list[str]] | None = None


def _install_host_address_hook() -> None:
    global _original_get_host_addresses
    if _original_get_host_addresses is not None:
        return
    original: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses
    _original_get_host_addresses = original

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        chosen = _host_addresses.get()
        if chosen is None:
            return original(use_ipv4, use_ipv6)
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


@contextlib.contextmanager
def ice_host_addresses(addresses: Sequence[str]) -> Iterator[None]:
    """ICE gathering inside this block (in this task and the tasks it starts) offers exactly
    `addresses` as host candidates. Everything else in the process keeps aioice's behaviour."""
    _install_host_address_hook()
    token = _host_addresses.set(tuple(addresses))
    try:
        yield
    finally:
        _host_addresses.reset(token)


# ---------------------------------------------------------------------------------------------
# Time: RTP timestamps → room clock


class _PublisherClock:
    """Sender NTP seconds → room seconds, one `DriftTracker` shared by a publisher's tracks."""

    def __init__(self) -> None:
        self.drift = DriftTracker()

    @property
    def offset(self) -> float | None:
        return self.drift.offset


class _TrackClock:
    def __init__(self, publisher: _PublisherClock, rate: int) -> None:
        self.publisher = publisher
        self.rate = rate
        self._last_ext: int | None = None
        self._first_arrival: float | None = None
        self._lag: float | None = None  # least arrival − ext/rate seen in the anchor window
        self._sr = SenderReportMap(rate)  # ext rtp → sender NTP seconds, from this track's SRs
        self._last_pts: int | None = None

    @property
    def aligned(self) -> bool:
        """The track follows the sender's NTP clock (a sender report arrived)."""
        return self._sr.ready and self.publisher.offset is not None

    def _extend(self, ts: int) -> int:
        if self._last_ext is None:
            return ts
        delta = ((ts - self._last_ext + 0x80000000) & 0xFFFFFFFF) - 0x80000000
        return self._last_ext + delta

    def on_sender_report(self, ntp: int, rtp: int) -> None:
        if self._last_ext is None:
            return  # before any packet there is nothing to tie
        ext = self._extend(rtp)
        ntp_seconds = (ntp >> 32) + (ntp & 0xFFFFFFFF) / 2**32
        if not self._sr.ready and self.publisher.offset is None:
            # the publisher's first SR: this track continues without a jump
            self.publisher.drift.start(self._anchored(ext) - ntp_seconds)
        self._sr.on_report(ext, ntp_seconds)

    def _anchored(self, ext: int) -> float:
        assert self._lag is not None
        return ext / self.rate + self._lag

    def _observe_arrival(self, ext: int, arrival: float) -> None:
        # Delays only ever add to a packet's lag, so the least one is the cleanest view of the
        # sender's instant; the anchor only moves earlier, and only in the first seconds (later on the
        # SR and the drift tracker own the timing, and a sender with no SR keeps a fixed anchor).
        if self._first_arrival is None:
            self._first_arrival = arrival
        elif arrival - self._first_arrival > ANCHOR_WINDOW:
            return
        lag = arrival - ext / self.rate
        if self._lag is None or lag < self._lag:
            self._lag = lag

    def pts(self, ts: int, arrival: float) -> int:
        """Room-clock pts (in 1/rate) of an RTP timestamp; strictly increasing per track."""
        ext = self._extend(ts)
        if not self.aligned:
            self._observe_arrival(ext, arrival)
        if self._last_ext is None or ext > self._last_ext:
            self._last_ext = ext
        if self.aligned:
            seconds = self.publisher.drift.room(self._sr.ntp(ext), arrival)
        else:
            seconds = self._anchored(ext)
        pts = round(seconds * self.rate)
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1
        self._last_pts = pts
        return pts


# ---------------------------------------------------------------------------------------------
# Codec helpers


def opus_head(channels: int = 2, rate: int = OPUS_RATE) -> bytes:
    """An OpusHead (RFC 7845 §5.1), the extradata FFmpeg's decoder and mp4 muxer take."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, 0, rate, 0, 0)


def opus_samples(packet: bytes) -> int:
    """Samples at 48 kHz in one Opus packet, from its TOC byte (RFC 6716 §3.1); 960 if unreadable."""
    if not packet:
        return 0
    toc = packet[0]
    config = toc >> 3
    if config < 12:
        frame = (480, 960, 1920, 2880)[config & 3]
    elif config < 16:
        frame = (480, 960)[config & 1]
    else:
        frame = (120, 240, 480, 960)[config & 3]
    code = toc & 3
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        count = packet[1] & 0x3F if len(packet) > 1 else 1
    return frame * count if count else 960


class _Vp8Assembler:
    """RFC 7741 payloads → VP8 frames (one frame = one timestamp; starts at S=1, PID=0)."""

    def __init__(self) -> None:
        self._next_seq: int | None = None
        self._parts: list[bytes] = []
        self._ts: int | None = None
        self._ok = False
        self._need_key = True
        self.keyframe_request = False
        self.malformed = 0

    @property
    def waiting_for_keyframe(self) -> bool:
        return self._need_key

    @staticmethod
    def _descriptor(payload: bytes) -> tuple[bool, int, int]:
        """(start of partition, partition id, descriptor size)."""
        if not payload:
            raise ValueError("empty")
        b0 = payload[0]
        size = 1
        if b0 & 0x80:
            if len(payload) < 2:
                raise ValueError("short")
            b1 = payload[1]
            size = 2
            if b1 & 0x80:  # I: picture id
                if len(payload) < 3:
                    raise ValueError("short")
                size += 2 if payload[2] & 0x80 else 1
            if b1 & 0x40:  # L: TL0PICIDX
                size += 1
            if b1 & 0x30:  # T or K
                size += 1
        if size >= len(payload):
            raise ValueError("no payload")
        return bool(b0 & 0x10), b0 & 0x07, size

    def push(self, payload: bytes, seq: int, ts: int, marker: bool) -> bytes | None:
        if self._next_seq is not None and seq != self._next_seq:
            lost = ((seq - self._next_seq) & 0xFFFF) < 0x8000
            if not lost:
                return None  # late or duplicate
            self._parts, self._ts, self._ok = [], None, False
            self._need_key = True
            self.keyframe_request = True
        self._next_seq = (seq + 1) & 0xFFFF
        try:
            start, pid, size = self._descriptor(payload)
        except ValueError:
            self.malformed += 1
            self._ok = False
            return None
        if self._ts != ts:
            self._parts, self._ts, self._ok = [], ts, start and pid == 0
        self._parts.append(payload[size:])
        if not marker:
            return None
        frame, ok = b"".join(self._parts), self._ok
        self._parts, self._ts, self._ok = [], None, False
        if not ok or not frame:
            self._need_key = True
            self.keyframe_request = True
            return None
        key = not frame[0] & 0x01
        if self._need_key:
            if not key:
                return None
            self._need_key = False
        return frame


def vp8_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) of a VP8 keyframe (RFC 6386 §9.1)."""
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return width, height


# ---------------------------------------------------------------------------------------------
# Publishing


class _ReceiverTap:
    """Stands in for an aiortc receiver's jitter buffer (same `add`): takes every RTP packet and
    returns no frame to decode; returns True as its first value when a PLI should be sent."""

    def __init__(self, on_packet: Callable[[RtpPacket], bool]) -> None:
        self._on_packet = on_packet
        self.capacity = 1
        self.errors = 0

    def add(self, packet: RtpPacket) -> tuple[bool, None]:
        try:
            return self._on_packet(packet), None
        except Exception:  # noqa: BLE001 - never break aiortc's receive loop
            self.errors += 1
            if self.errors == 1:
                logger.warning("webrtc packet handling failed", exc_info=True)
            return False, None


def _install_receiver_tap(receiver: RTCRtpReceiver, tap: _ReceiverTap, on_sr: Callable[[int, int], None]) -> None:
    if not hasattr(receiver, _JITTER_ATTR) or not callable(getattr(getattr(receiver, _JITTER_ATTR), "add", None)):
        raise RuntimeError("this aiortc version has no receiver jitter buffer to tap")
    setattr(receiver, _JITTER_ATTR, tap)
    original = receiver._handle_rtcp_packet

    async def handle_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            try:
                on_sr(packet.sender_info.ntp_timestamp, packet.sender_info.rtp_timestamp)
            except Exception:  # noqa: BLE001
                logger.debug("sender report ignored", exc_info=True)
        await original(packet)

    setattr(receiver, "_handle_rtcp_packet", handle_rtcp)


class _InboundTrack:
    """One received m-line: RTP packets of any negotiated codec → MediaUnits on a room track."""

    def __init__(self, session: _PublishSession, kind: TrackKind, codecs: dict[int, RTCRtpCodecParameters],
                 sprop: dict[int, str]) -> None:
        self.session = session
        self.kind = kind
        self.codecs = codecs
        self.sprop = sprop
        self.track: Track | None = None
        self.clock: _TrackClock | None = None
        self.info: StreamInfo | None = None
        self.codec: str | None = None
        self.h264: H264Depacketizer | None = None
        self.vp8: _Vp8Assembler | None = None
        self.keyframe_wanted = False
        self.last_pli = 0.0
        self.packets = 0
        self.units = 0
        self.ignored = 0

    def request_keyframe(self) -> None:
        self.keyframe_wanted = True

    def on_sender_report(self, ntp: int, rtp: int) -> None:
        if self.clock is not None:
            self.clock.on_sender_report(ntp, rtp)

    def on_packet(self, packet: RtpPacket) -> bool:
        now = time.monotonic()
        self.session.last_media = now
        self.packets += 1
        codec = self.codecs.get(packet.payload_type)
        if codec is None or self.track is None:
            self.ignored += 1
            return False
        name = codec.name.lower()
        if name != self.codec:
            self._switch(name, packet.payload_type, codec, now)
        if self.clock is None:
            self.clock = _TrackClock(self.session.clock, codec.clockRate)
        pli = False
        if name == "h264":
            pli = self._h264(packet, now)
        elif name == "vp8":
            pli = self._vp8(packet, now)
        elif name in ("opus", "pcmu", "pcma"):
            self._audio(name, packet, now)
        else:
            self.ignored += 1
        if self.keyframe_wanted:
            self.keyframe_wanted = False
            pli = True
        if pli:
            self.last_pli = now
        return pli

    def _switch(self, name: str, pt: int, codec: RTCRtpCodecParameters, now: float) -> None:
        self.codec = name
        self.info = None
        self.h264 = H264Depacketizer(sprop_parameter_sets=self.sprop.get(pt)) if name == "h264" else None
        self.vp8 = _Vp8Assembler() if name == "vp8" else None
        self.last_pli = now  # the sender starts with a keyframe: give it a second before asking

    def _waiting_pli(self, waiting: bool, requested: bool, now: float) -> bool:
        return requested or (waiting and now - self.last_pli >= PLI_INTERVAL)

    def _publish(self, data: bytes, pts: int, duration: int, key: bool) -> None:
        assert self.track is not None and self.info is not None
        self.track.publish(MediaUnit(data=data, pts=pts, dts=pts, duration=duration, key=key, info=self.info))
        self.units += 1

    def _h264(self, packet: RtpPacket, now: float) -> bool:
        dep = self.h264
        assert dep is not None and self.clock is not None
        for au in dep.push(packet.payload, sequence=packet.sequence_number, timestamp=packet.timestamp, marker=bool(packet.marker)):
            extradata = au.extradata
            if self.info is None or self.info.extradata != extradata:
                try:
                    width, height = sps_dimensions(au.sps)
                except ValueError:
                    width = height = 0
                self.info = StreamInfo(kind=self.kind, codec="h264", time_base=Fraction(1, VIDEO_RATE), extradata=extradata,
                                       width=width, height=height, pix_fmt="yuv420p")
            self._publish(au.data, self.clock.pts(au.timestamp, now), 0, au.key)
        return self._waiting_pli(dep.waiting_for_keyframe, dep.take_keyframe_request(), now)

    def _vp8(self, packet: RtpPacket, now: float) -> bool:
        asm = self.vp8
        assert asm is not None and self.clock is not None
        frame = asm.push(packet.payload, packet.sequence_number, packet.timestamp, bool(packet.marker))
        if frame is not None:
            key = not frame[0] & 0x01
            size = vp8_size(frame) if key else None
            if self.info is None or (size is not None and size != (self.info.width, self.info.height)):
                w, h = size or (0, 0)
                self.info = StreamInfo(kind=self.kind, codec="vp8", time_base=Fraction(1, VIDEO_RATE), width=w, height=h,
                                       pix_fmt="yuv420p")
            self._publish(frame, self.clock.pts(packet.timestamp, now), 0, key)
        requested, asm.keyframe_request = asm.keyframe_request, False
        return self._waiting_pli(asm.waiting_for_keyframe, requested, now)

    def _audio(self, name: str, packet: RtpPacket, now: float) -> None:
        assert self.clock is not None
        if not packet.payload:
            return
        if self.info is None:
            if name == "opus":
                self.info = StreamInfo(kind=TrackKind.AUDIO, codec="opus", time_base=Fraction(1, OPUS_RATE),
                                       extradata=opus_head(), sample_rate=OPUS_RATE, channels=2, layout="stereo")
            else:
                self.info = StreamInfo(kind=TrackKind.AUDIO, codec="pcm_mulaw" if name == "pcmu" else "pcm_alaw",
                                       time_base=Fraction(1, 8000), sample_rate=8000, channels=1, layout="mono")
        duration = opus_samples(packet.payload) if name == "opus" else len(packet.payload)
        self._publish(packet.payload, self.clock.pts(packet.timestamp, now), duration, True)

    def flush(self) -> None:
        if self.h264 is not None and self.clock is not None and self.track is not None and not self.track.closed:
            for au in self.h264.flush():
                if self.info is not None and self.info.extradata == au.extradata:
                    self._publish(au.data, self.clock.pts(au.timestamp, time.monotonic()), 0, au.key)


# ---------------------------------------------------------------------------------------------
# Viewing


class RoomTrack(MediaStreamTrack):
    """A room track as an aiortc track: forwards packets of the negotiated codec, else decodes."""

    def __init__(self, kind: str, subscriber: TrackSubscriber, *, request_keyframe: Callable[[], None]) -> None:
        super().__init__()
        self.kind = kind
        self.subscriber = subscriber
        self.request_keyframe = request_keyframe
        self.codec: str | None = None  # the negotiated codec (FFmpeg name), set once known
        self._ready: collections.deque[av.Packet[Any] | av.VideoFrame | av.AudioFrame] = collections.deque()
        self._base: dict[Fraction, int] = {}
        self._need_key = kind == "video"
        self._decoder: Decoder | None = None
        self._forward = True
        self._avcc_info: StreamInfo | None = None  # the unit parameters `_avcc` was read from
        self._avcc: tuple[int, list[bytes]] = (4, [])
        self.forwarded = 0
        self.transcoded = 0

    def _rebase(self, pts: int, time_base: Fraction) -> int:
        base = self._base.setdefault(time_base, pts)
        return pts - base

    async def recv(self) -> av.Packet[Any] | av.VideoFrame | av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        while not self._ready:
            if self.subscriber.ended:
                self.stop()
                raise MediaStreamError
            units = self.subscriber.drain()
            if not units:
                await asyncio.sleep(POLL_SECONDS)
                continue
            for unit in units:
                await self._take(unit)
        return self._ready.popleft()

    def _forwardable(self, unit: MediaUnit) -> bytes | None:
        """The unit's bytes as the WebRTC packetizer takes them, or None to transcode. H.264 from
        RTMP or a pulled file is length-prefixed (avcC): rewritten to Annex-B with the parameter
        sets before each keyframe. Reordered pictures (B-frames) are not sent as they are:
        browsers' WebRTC decoders do not reorder, so such a source is transcoded from then on."""
        if not self._forward or self.codec is None or unit.info.codec != self.codec:
            return None
        # The avcC record says the units are length-prefixed (their first bytes can look like a
        # start code: a 256–511-byte NAL unit's length is 00 00 01 xx).
        if self.codec != "h264" or not (unit.info.extradata or b"").startswith(b"\x01"):
            return unit.data
        if unit.pts != unit.dts:
            self._forward = False
            logger.info("webrtc viewer: source has B-frames; transcoding")
            return None
        try:
            if unit.info is not self._avcc_info:
                self._avcc = avcc_config(unit.info.extradata or b"")
                self._avcc_info = unit.info
            length_size, sets = self._avcc
            return avcc_to_annexb(unit.data, length_size, sets if unit.key else ())
        except ValueError:
            return b""  # malformed: dropped (and the next keyframe awaited)

    async def _take(self, unit: MediaUnit) -> None:
        data = self._forwardable(unit)
        if data is not None:
            if self._need_key:
                if not unit.key or not data:
                    return
                self._need_key = False
            if not data:
                self._need_key = True
                return
            packet = av.Packet(data)
            packet.pts = packet.dts = self._rebase(unit.pts, unit.info.time_base)
            packet.time_base = unit.info.time_base
            self._ready.append(packet)
            self.forwarded += 1
            return
        if self._decoder is None:  # it reopens itself (flushing first) when the stream parameters change
            self._decoder = Decoder(unit.info, threads=1)
        frames = await asyncio.to_thread(self._decoder.decode, unit)
        for frame in frames:
            if frame.pts is None or frame.time_base is None:
                continue
            frame.pts = self._rebase(frame.pts, Fraction(frame.time_base))
            self._ready.append(frame)
            self.transcoded += 1

    def stop(self) -> None:
        super().stop()
        self.subscriber.close()


def _install_sender_pli_hook(sender: RTCRtpSender, on_pli: Callable[[], None]) -> None:
    original = sender._handle_rtcp_packet

    async def handle_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
            on_pli()
        await original(packet)

    setattr(sender, "_handle_rtcp_packet", handle_rtcp)


# ---------------------------------------------------------------------------------------------
# Sessions


@dataclass(slots=True)
class _Base:
    id: str
    pc: RTCPeerConnection
    room: RoomKey
    user_id: str
    kind: str  # "whip" | "whep"
    closed: bool = False
    monitor: asyncio.Task[None] | None = None


class _PublishSession(_Base):
    def __init__(self, id: str, pc: RTCPeerConnection, room: RoomKey, user_id: str, track: TrackKind) -> None:
        super().__init__(id=id, pc=pc, room=room, user_id=user_id, kind="whip")
        self.track_kind = track
        self.clock = _PublisherClock()
        self.last_media = time.monotonic()
        self.inbound: list[_InboundTrack] = []
        self.connection: Connection | None = None
        self.video_codec: str | None = None

    def request_keyframe(self) -> None:
        for t in self.inbound:
            if t.kind.is_video:
                t.request_keyframe()


class _PlaySession(_Base):
    def __init__(self, id: str, pc: RTCPeerConnection, room: RoomKey, user_id: str) -> None:
        super().__init__(id=id, pc=pc, room=room, user_id=user_id, kind="whep")
        self.tracks: list[RoomTrack] = []


def _parse_offer(offer_sdp: str) -> SessionDescription:
    if not offer_sdp.strip() or len(offer_sdp) > MAX_OFFER_BYTES or not offer_sdp.lstrip().startswith("v=0"):
        raise InvalidRequest("not an SDP offer", field="sdp")
    try:
        parsed = SessionDescription.parse(offer_sdp)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise InvalidRequest("unreadable SDP offer", field="sdp") from exc
    if not any(m.kind in ("audio", "video") for m in parsed.media):
        raise InvalidRequest("the SDP offer has no audio or video", field="sdp")
    return parsed


def _capabilities(kind: str, names: Sequence[str]) -> list[RTCRtpCodecCapability]:
    caps = RTCRtpReceiver.getCapabilities(kind)
    assert caps is not None
    chosen = [c for name in names for c in caps.codecs if c.mimeType.lower() == f"{kind}/{name}"]
    if chosen and kind == "video":
        chosen += [c for c in caps.codecs if c.mimeType.lower() == "video/rtx"]
    return chosen


def _offers_h264(media_codecs: Sequence[RTCRtpCodecParameters]) -> bool:
    """Whether an offer's m-line has an H.264 that aiortc would accept (packetization-mode 1,
    (constrained) baseline profile: aiortc matches profiles exactly)."""
    caps = _capabilities("video", ["h264"])
    ours = {parse_h264_profile_level_id(str(c.parameters.get("profile-level-id", "42e01f")))[0] for c in caps}
    for codec in media_codecs:
        if codec.mimeType.lower() != "video/h264" or str(codec.parameters.get("packetization-mode", "0")) != "1":
            continue
        try:
            profile = parse_h264_profile_level_id(str(codec.parameters.get("profile-level-id", "42e01f")))[0]
        except ValueError:
            continue
        if profile in ours:
            return True
    return False


def _media_of(transceiver: RTCRtpTransceiver, sdp: SessionDescription) -> Any:
    for media in sdp.media:
        if media.rtp.muxId == transceiver.mid:
            return media
    return None


class WebRtcGateway:
    """WHIP publishers into rooms, WHEP viewers out of them (see the module docstring)."""

    def __init__(self, registry: RoomRegistry, *, host_addresses: Sequence[str] = ("127.0.0.1",),
                 ice_servers: Sequence[str] = (), media_timeout: float = MEDIA_TIMEOUT) -> None:
        self.registry = registry
        self.host_addresses = tuple(host_addresses)
        self.ice_servers = tuple(ice_servers)
        self.media_timeout = media_timeout
        self._sessions: dict[str, _PublishSession | _PlaySession] = {}
        self._publishers: dict[tuple[RoomKey, str, TrackKind], _PublishSession] = {}

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def stats(self, session_id: str) -> dict[str, int] | None:
        """Counters of one session (for metrics and tests); None when there is no such session."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if isinstance(session, _PlaySession):
            return {
                "forwarded": sum(t.forwarded for t in session.tracks),
                "transcoded": sum(t.transcoded for t in session.tracks),
                "video_forwarded": sum(t.forwarded for t in session.tracks if t.kind == "video"),
                "video_transcoded": sum(t.transcoded for t in session.tracks if t.kind == "video"),
            }
        out = {"packets": 0, "units": 0, "ignored": 0, "lost": 0, "malformed": 0, "sender_report_aligned": 0}
        for t in session.inbound:
            out["packets"] += t.packets
            out["units"] += t.units
            out["ignored"] += t.ignored
            if t.h264 is not None:
                out["lost"] += t.h264.lost
                out["malformed"] += t.h264.malformed
            if t.vp8 is not None:
                out["malformed"] += t.vp8.malformed
            if t.clock is not None and t.clock.aligned:
                out["sender_report_aligned"] += 1
        return out

    def _peer_connection(self) -> RTCPeerConnection:
        servers = [RTCIceServer(urls=url) for url in self.ice_servers]
        return RTCPeerConnection(RTCConfiguration(iceServers=servers))

    async def _remote(self, pc: RTCPeerConnection, offer_sdp: str) -> None:
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except NEGOTIATION_ERRORS as exc:
            raise InvalidRequest("the SDP offer cannot be negotiated", field="sdp") from exc

    async def _answer(self, pc: RTCPeerConnection) -> str:
        answer = await pc.createAnswer()
        with ice_host_addresses(self.host_addresses):
            await pc.setLocalDescription(answer)
        local = pc.localDescription
        assert local is not None
        return local.sdp

    # -- WHIP -------------------------------------------------------------------------------------
    async def publish(self, *, room: RoomKey, user_id: str, track: TrackKind, offer_sdp: str) -> tuple[str, str]:
        """Accept a WHIP offer: returns (session id, answer SDP); the user joins `room`."""
        if not track.is_video:
            raise InvalidRequest("a WebRTC publisher publishes a main or aux video track", field="streamtype")
        offer = _parse_offer(offer_sdp)
        pc = self._peer_connection()
        session = _PublishSession(secrets.token_urlsafe(18), pc, room, user_id, track)
        try:
            # aiortc applies codec preferences while it takes the offer, so the transceivers (one per
            # offered m-line, in order) are made first, with H.264 (else VP8) and Opus preferred.
            video_taken = False
            audio_taken = False
            pending: list[tuple[RTCRtpTransceiver, TrackKind | None]] = []
            for media in offer.media:
                if media.kind not in ("audio", "video"):
                    continue
                kind: TrackKind | None = None
                transceiver = pc.addTransceiver(media.kind, direction="recvonly")
                if media.kind == "video":
                    h264 = _offers_h264(media.rtp.codecs)
                    transceiver.setCodecPreferences(_capabilities("video", ["h264"] if h264 else ["vp8"]))
                    if not video_taken:
                        kind, video_taken = track, True
                else:
                    opus = any(c.name.lower() == "opus" for c in media.rtp.codecs)
                    transceiver.setCodecPreferences(_capabilities("audio", ["opus"] if opus else ["pcmu", "pcma"]))
                    # A screen share (aux) carries no audio of its own, as TRTC's sub stream: the
                    # user's audio comes from their camera connection, which an aux one must not displace.
                    if not audio_taken and track is not TrackKind.AUX:
                        kind, audio_taken = TrackKind.AUDIO, True
                pending.append((transceiver, kind))
            await self._remote(pc, offer_sdp)
            answer_sdp = await self._answer(pc)
        except BaseException:
            await pc.close()
            raise
        answer = SessionDescription.parse(answer_sdp)
        for transceiver, kind in pending:
            media = _media_of(transceiver, answer)
            remote = _media_of(transceiver, offer)
            codecs = {c.payloadType: c for c in media.rtp.codecs if c.payloadType is not None} if media is not None else {}
            sprop = {c.payloadType: str(c.parameters["sprop-parameter-sets"]) for c in remote.rtp.codecs
                     if c.payloadType is not None and "sprop-parameter-sets" in c.parameters} if remote is not None else {}
            receiving = media is not None and media.direction in ("recvonly", "sendrecv") and media.port != 0
            inbound = _InboundTrack(session, kind or TrackKind.AUDIO, codecs if (kind and receiving) else {}, sprop)
            if kind is not None and receiving and kind.is_video:
                session.video_codec = next((c.name.lower() for c in codecs.values() if c.name.lower() != "rtx"), None)
            session.inbound.append(inbound)
            _install_receiver_tap(transceiver.receiver, _ReceiverTap(inbound.on_packet), inbound.on_sender_report)
        # join and declare the tracks now, so recorders can subscribe before the first keyframe
        loop = asyncio.get_running_loop()

        def removed() -> None:  # displaced, removed from the room or the room dismissed: hang up
            with contextlib.suppress(RuntimeError):  # the loop is already gone
                loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._close(session, "left the room")))

        kinds = SCREEN_KINDS if track is TrackKind.AUX else CAMERA_KINDS
        connection = self.registry.room(room).connect(user_id, kinds, on_removed=removed)
        session.connection = connection
        for inbound in session.inbound:
            if inbound.codecs and inbound.kind in kinds:
                inbound.track = connection.add_track(inbound.kind)
        self._sessions[session.id] = session
        self._publishers[(room, user_id, track)] = session
        pc.on("connectionstatechange", lambda: self._on_state(session))
        session.monitor = asyncio.ensure_future(self._watch_publisher(session))
        logger.info("webrtc publisher joined", extra={"room": str(room), "user_id": user_id, "session": session.id,
                                                       "video_codec": session.video_codec or ""})
        return session.id, answer_sdp

    def _on_state(self, session: _PublishSession | _PlaySession) -> None:
        state = session.pc.connectionState
        if state in ("failed", "closed") and not session.closed:
            asyncio.ensure_future(self._close(session, f"connection {state}"))

    async def _watch_publisher(self, session: _PublishSession) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while not session.closed:
                await asyncio.sleep(min(0.5, self.media_timeout / 4))
                if time.monotonic() - session.last_media > self.media_timeout:
                    await self._close(session, "no media")
                    return

    # -- WHEP -------------------------------------------------------------------------------------
    async def play(self, *, room: RoomKey, user_id: str, track: TrackKind, offer_sdp: str) -> tuple[str, str]:
        """Accept a WHEP offer for `user_id`'s `track` video and audio: (session id, answer SDP)."""
        _parse_offer(offer_sdp)
        found = self.registry.find(room)
        participant = found.participant(user_id) if found is not None else None
        if participant is None:
            raise NotFound("no such user in this room", field="user_id")
        video = participant.tracks.get(track) if track.is_video else None
        audio = participant.tracks.get(TrackKind.AUDIO)
        if video is None and audio is None:
            raise NotFound("the user publishes nothing to play", field="streamtype")
        publisher = self._publishers.get((room, user_id, track))
        current = publisher is not None and publisher.connection is not None and publisher.connection.present
        video_codec = publisher.video_codec if publisher is not None and current else None

        def keyframe() -> None:
            if publisher is not None and not publisher.closed:
                publisher.request_keyframe()

        pc = self._peer_connection()
        session = _PlaySession(secrets.token_urlsafe(18), pc, room, user_id)
        try:
            offer = SessionDescription.parse(offer_sdp)
            for media in offer.media:
                if media.kind not in ("audio", "video"):
                    continue
                room_track = video if media.kind == "video" else audio
                names: list[str] = []
                if media.kind == "video":
                    wanted = video_codec or "h264"
                    if wanted == "h264" and not _offers_h264(media.rtp.codecs):
                        wanted = "vp8"
                    names = [wanted]
                elif any(c.name.lower() == "opus" for c in media.rtp.codecs):
                    names = ["opus"]
                caps = _capabilities(media.kind, names) if names else []
                if room_track is None or not caps or any(t.kind == media.kind for t in session.tracks):
                    pc.addTransceiver(media.kind, direction="inactive")
                    continue
                rt = RoomTrack(media.kind, room_track.subscribe(maxsize=512), request_keyframe=keyframe)
                session.tracks.append(rt)
                transceiver = pc.addTransceiver(rt, direction="sendonly")
                transceiver.setCodecPreferences(caps)
                _install_sender_pli_hook(transceiver.sender, keyframe)
            await self._remote(pc, offer_sdp)
            if not session.tracks:
                raise InvalidRequest("the offer receives none of the published tracks", field="sdp")
            answer_sdp = await self._answer(pc)
        except BaseException:
            for rt in session.tracks:
                rt.stop()
            await pc.close()
            raise
        answer = SessionDescription.parse(answer_sdp)
        for media in answer.media:
            negotiated = next((c.name.lower() for c in media.rtp.codecs if c.name.lower() != "rtx"), None)
            for rt in session.tracks:
                if rt.kind == media.kind and negotiated:
                    rt.codec = negotiated
        if video is not None:
            keyframe()  # the viewer starts at a keyframe: ask for one now rather than waiting a GOP
        self._sessions[session.id] = session
        pc.on("connectionstatechange", lambda: self._on_state(session))
        session.monitor = asyncio.ensure_future(self._watch_viewer(session))
        logger.info("webrtc viewer started", extra={"room": str(room), "user_id": user_id, "session": session.id})
        return session.id, answer_sdp

    async def _watch_viewer(self, session: _PlaySession) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while not session.closed:
                await asyncio.sleep(0.5)
                if all(t.subscriber.ended or t.readyState != "live" for t in session.tracks):
                    await self._close(session, None)  # the publisher is gone
                    return

    # -- both -------------------------------------------------------------------------------------
    async def close(self, session_id: str) -> bool:
        """End a session (WHIP/WHEP DELETE); False when there is no such session."""
        session = self._sessions.get(session_id)
        if session is None:
            return False
        await self._close(session, None)
        return True

    async def _close(self, session: _PublishSession | _PlaySession, reason: str | None) -> None:
        if session.closed:
            return
        session.closed = True
        self._sessions.pop(session.id, None)
        if reason is not None:
            logger.warning("webrtc session ended", extra={"room": str(session.room), "user_id": session.user_id,
                                                          "session": session.id, "kind": session.kind, "reason": reason})
        else:
            logger.info("webrtc session closed", extra={"room": str(session.room), "user_id": session.user_id,
                                                        "session": session.id, "kind": session.kind})
        current = asyncio.current_task()
        if session.monitor is not None and session.monitor is not current:
            session.monitor.cancel()
        if isinstance(session, _PublishSession):
            if self._publishers.get((session.room, session.user_id, session.track_kind)) is session:
                del self._publishers[(session.room, session.user_id, session.track_kind)]
            for inbound in session.inbound:
                inbound.flush()
            if session.connection is not None:
                session.connection.leave()
        else:
            for rt in session.tracks:
                rt.stop()
        try:
            await asyncio.wait_for(session.pc.close(), timeout=5)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            logger.debug("peer connection close failed", exc_info=True)

    async def stop(self) -> None:
        """Close every session (idempotent)."""
        for session in list(self._sessions.values()):
            await self._close(session, None)


__all__ = ["RoomTrack", "WebRtcGateway", "ice_host_addresses", "opus_head", "opus_samples", "vp8_size"]
