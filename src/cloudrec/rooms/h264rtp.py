"""`H264Depacketizer`: RTP payloads (RFC 6184, packetization-mode 1) → Annex-B H.264 access units.

Stream copy of WebRTC H.264 needs the encoded pictures, which aiortc never hands out (it decodes
everything it receives), so the WHIP gateway feeds each RTP packet of an H.264 track here:

- Single NAL unit packets (types 1–23), STAP-A (24: several NAL units, often SPS + PPS + IDR) and
  FU-A (28: one NAL unit split across packets; the NAL header is rebuilt from the FU indicator's
  F/NRI bits and the FU header's type). STAP-B, MTAP and FU-B belong to the interleaved mode,
  which WebRTC never negotiates: they count as malformed.
- One access unit = every packet with one RTP timestamp, closed by the marker bit or by the first
  packet of the next timestamp (some senders forget the marker).
- Sequence numbers are followed with a small reorder window (late retransmissions after a NACK
  still fit in); a packet that is still missing when the window is full is lost. A loss (or a
  malformed payload) corrupts the picture being assembled and every picture after it until the next
  IDR: everything is dropped until then and `take_keyframe_request()` says once that the caller
  should ask the sender for a keyframe (RTCP PLI).
- Parameter sets are tracked in-band and from `sprop-parameter-sets`; an IDR access unit that lacks
  them gets the known ones prepended, so every keyframe unit is self-contained. Nothing is emitted
  before the first IDR with SPS and PPS known.

Units carry 4-byte start codes and the raw 32-bit RTP timestamp; mapping it to the room clock is
the caller's job.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass

from cloudrec.core.h264 import NAL_PPS, NAL_SPS, nal_type, parse_sps

logger = logging.getLogger(__name__)

START_CODE = b"\x00\x00\x00\x01"
NAL_IDR = 5
NAL_SEI = 6
NAL_AUD = 9
STAP_A = 24
FU_A = 28
DEFAULT_REORDER_WINDOW = 16  # packets held while waiting for a missing one
MAX_AU_BYTES = 16 * 1024 * 1024  # a larger "picture" is garbage


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessUnit:
    """One complete picture in Annex-B form (4-byte start codes)."""

    data: bytes
    timestamp: int  # the RTP timestamp (32 bits, 90 kHz, random origin)
    key: bool  # holds an IDR slice (and then SPS + PPS too)
    sps: bytes  # the active parameter sets, NAL units without start codes
    pps: bytes

    @property
    def extradata(self) -> bytes:
        """Annex-B SPS + PPS: what FFmpeg takes as H.264 extradata (the mp4 muxer turns it into avcC)."""
        return START_CODE + self.sps + START_CODE + self.pps


def parse_sprop_parameter_sets(value: str) -> list[bytes]:
    """The NAL units of an SDP `sprop-parameter-sets` value (comma-separated base64); bad parts skipped."""
    out: list[bytes] = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            nal = base64.b64decode(part + "=" * (-len(part) % 4), validate=False)
        except (binascii.Error, ValueError):
            continue
        if nal:
            out.append(nal)
    return out


class H264Depacketizer:
    """Feed RTP packets of one H.264 stream in arrival order; get complete access units back."""

    def __init__(self, *, sprop_parameter_sets: str | None = None, reorder_window: int = DEFAULT_REORDER_WINDOW) -> None:
        self.reorder_window = max(0, reorder_window)
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        # counters (the gateway reports them)
        self.packets = 0
        self.lost = 0  # packets never received
        self.late = 0  # duplicates and packets behind the window
        self.malformed = 0
        self.dropped_units = 0  # pictures discarded (corrupt, or waiting for an IDR)
        self.units = 0
        self._expected: int | None = None  # extended sequence number of the next packet
        self._pending: dict[int, tuple[bytes, int, bool]] = {}  # ext seq → (payload, timestamp, marker)
        self._nals: list[bytes] = []  # NAL units of the picture being assembled
        self._size = 0
        self._fu: bytearray | None = None  # the FU-A NAL unit being rebuilt
        self._ts: int | None = None  # timestamp of the picture being assembled
        self._corrupt = False  # the picture being assembled lost data
        self._need_idr = True  # nothing before the (next) IDR with SPS/PPS known
        self._keyframe_request = False
        if sprop_parameter_sets:
            for nal in parse_sprop_parameter_sets(sprop_parameter_sets):
                self._remember_parameter_set(nal)

    # -- public ----------------------------------------------------------------------------------
    @property
    def waiting_for_keyframe(self) -> bool:
        return self._need_idr

    def take_keyframe_request(self) -> bool:
        """True once after data was lost: the caller should send a PLI (RTCP picture loss)."""
        request, self._keyframe_request = self._keyframe_request, False
        return request

    def push(self, payload: bytes, *, sequence: int, timestamp: int, marker: bool) -> list[AccessUnit]:
        """One RTP packet (payload after the RTP header, 16-bit sequence number, 32-bit timestamp)."""
        self.packets += 1
        sequence &= 0xFFFF
        timestamp &= 0xFFFFFFFF
        out: list[AccessUnit] = []
        if self._expected is None:
            self._expected = sequence
            ext = sequence
        else:
            # signed distance from the expected sequence number, modulo 2^16
            delta = ((sequence - self._expected + 0x8000) & 0xFFFF) - 0x8000
            ext = self._expected + delta
            if delta < 0 or ext in self._pending:
                self.late += 1
                return out
        self._pending[ext] = (payload, timestamp, bool(marker))
        self._drain(out)
        while len(self._pending) > self.reorder_window:
            # the missing packet is given up: skip to the oldest one we hold
            first = min(self._pending)
            assert self._expected is not None
            self.lost += first - self._expected
            self._expected = first
            self._loss()
            self._drain(out)
        return out

    def flush(self) -> list[AccessUnit]:
        """Give up on missing packets and return what can still complete (the stream ended)."""
        out: list[AccessUnit] = []
        while self._pending:
            first = min(self._pending)
            assert self._expected is not None
            if first != self._expected:
                self.lost += first - self._expected
                self._expected = first
                self._loss()
            self._drain(out)
        self._close_unit(out)
        return out

    # -- internals -------------------------------------------------------------------------------
    def _drain(self, out: list[AccessUnit]) -> None:
        assert self._expected is not None
        while self._expected in self._pending:
            payload, ts, marker = self._pending.pop(self._expected)
            self._expected += 1
            self._packet(payload, ts, marker, out)

    def _loss(self) -> None:
        """Data is missing right here: the current picture is lost, and all until the next IDR."""
        self._discard()
        self._need_idr = True
        self._keyframe_request = True

    def _discard(self) -> None:
        if self._nals or self._fu is not None:
            self.dropped_units += 1
        self._nals = []
        self._size = 0
        self._fu = None
        self._ts = None
        self._corrupt = False

    def _packet(self, payload: bytes, ts: int, marker: bool, out: list[AccessUnit]) -> None:
        if self._ts is not None and ts != self._ts:
            self._close_unit(out)  # a new timestamp closes the previous picture
        self._ts = ts
        if payload:
            self._payload(payload)
        if marker:
            self._close_unit(out)

    def _payload(self, payload: bytes) -> None:
        kind = payload[0] & 0x1F
        if payload[0] & 0x80:  # forbidden_zero_bit
            self._malformed()
        elif 1 <= kind <= 23:
            self._end_fu_if_open()
            self._add_nal(payload)
        elif kind == STAP_A:
            self._end_fu_if_open()
            pos = 1
            nals: list[bytes] = []
            while pos < len(payload):
                if pos + 2 > len(payload):
                    self._malformed()
                    return
                size = int.from_bytes(payload[pos : pos + 2], "big")
                pos += 2
                if size == 0 or pos + size > len(payload):
                    self._malformed()
                    return
                nals.append(payload[pos : pos + size])
                pos += size
            for nal in nals:
                self._add_nal(nal)
        elif kind == FU_A:
            if len(payload) < 2:
                self._malformed()
                return
            header = payload[1]
            start, end = bool(header & 0x80), bool(header & 0x40)
            if start:
                self._end_fu_if_open()
                self._fu = bytearray([(payload[0] & 0xE0) | (header & 0x1F)])
            elif self._fu is None:
                self._malformed()  # a continuation without its start
                return
            self._fu += payload[2:]
            if len(self._fu) > MAX_AU_BYTES:
                self._malformed()
                return
            if end:
                nal, self._fu = bytes(self._fu), None
                self._add_nal(nal)
        else:
            self._malformed()  # 0, 25–27, 29–31: not valid in packetization-mode 1

    def _end_fu_if_open(self) -> None:
        if self._fu is not None:
            self._fu = None
            self._malformed()  # a fragmented NAL unit never got its end

    def _malformed(self) -> None:
        self.malformed += 1
        self._corrupt = True
        self._fu = None

    def _add_nal(self, nal: bytes) -> None:
        if not nal or nal[0] & 0x80:
            self._malformed()
            return
        self._size += len(nal) + 4
        if self._size > MAX_AU_BYTES:
            self._malformed()
            return
        self._nals.append(nal)

    def _remember_parameter_set(self, nal: bytes) -> None:
        if nal_type(nal) == NAL_SPS and len(nal) >= 4:
            self.sps = nal
        elif nal_type(nal) == NAL_PPS and len(nal) >= 2:
            self.pps = nal

    def _close_unit(self, out: list[AccessUnit]) -> None:
        nals, ts, corrupt, fu_open = self._nals, self._ts, self._corrupt, self._fu is not None
        self._nals = []
        self._size = 0
        self._fu = None
        self._ts = None
        self._corrupt = False
        if ts is None or (not nals and not fu_open and not corrupt):
            return
        if corrupt or fu_open:
            self.dropped_units += 1
            self._need_idr = True
            self._keyframe_request = True
            return
        for nal in nals:
            self._remember_parameter_set(nal)
        types = [nal_type(n) for n in nals]
        key = NAL_IDR in types
        if not any(1 <= t <= 5 for t in types):
            return  # parameter sets / SEI alone: remembered, nothing to show
        if self._need_idr:
            # After a loss the next picture may have lost its beginning: its first slice must start
            # at macroblock 0 (first_mb_in_slice = ue(v) 0 = a leading 1 bit).
            first_vcl = next(n for n in nals if 1 <= nal_type(n) <= 5)
            whole = len(first_vcl) > 1 and bool(first_vcl[1] & 0x80)
            if not key or not whole or self.sps is None or self.pps is None:
                self.dropped_units += 1
                return
            self._need_idr = False
        assert self.sps is not None and self.pps is not None
        if key and (NAL_SPS not in types or NAL_PPS not in types):
            # make the keyframe self-contained: parameter sets right after any AUD
            at = 1 if types[0] == NAL_AUD else 0
            extra = [n for n, t in ((self.sps, NAL_SPS), (self.pps, NAL_PPS)) if t not in types]
            nals = nals[:at] + extra + nals[at:]
        self.units += 1
        out.append(AccessUnit(
            data=b"".join(START_CODE + n for n in nals), timestamp=ts, key=key, sps=self.sps, pps=self.pps,
        ))


def sps_dimensions(sps: bytes) -> tuple[int, int]:
    """(width, height) of the pictures an SPS describes; ValueError when it cannot be parsed."""
    info = parse_sps(sps)
    return info.width, info.height
