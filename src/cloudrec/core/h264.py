"""H.264 bitstream facts every publisher and sink needs: NAL units, SPS sizes, avcC records.

One implementation for RTMP (avcC), WebRTC (RTP access units) and the MP4/TS sinks (Annex-B).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

NAL_SPS = 7
NAL_PPS = 8
_START3 = b"\x00\x00\x01"
_START4 = b"\x00\x00\x00\x01"
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


class BitReader:
    """MSB-first bit reader with exp-Golomb codes; ValueError when the data runs out."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0  # bit position

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self._pos >> 3
            if byte >= len(self._data):
                raise ValueError("bitstream ended")
            value = (value << 1) | ((self._data[byte] >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def nal_type(nal: bytes) -> int:
    return nal[0] & 0x1F if nal else 0


def rbsp(nal: bytes) -> bytes:
    """A NAL unit's payload without emulation-prevention bytes (00 00 03 → 00 00)."""
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def annexb_nals(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B buffer, without their start codes."""
    nals: list[bytes] = []
    pos = data.find(_START3)
    while pos >= 0:
        start = pos + 3
        nxt = data.find(_START3, start)
        nal = data[start : len(data) if nxt < 0 else nxt]
        if nxt >= 0 and nal.endswith(b"\x00"):
            nal = nal.rstrip(b"\x00")  # the leading zero of a 4-byte start code
        if nal:
            nals.append(nal)
        pos = nxt
    return nals


def is_annexb(data: bytes) -> bool:
    return data.startswith(_START3) or data.startswith(_START4)


def avcc_config(avcc: bytes) -> tuple[int, list[bytes]]:
    """(NAL length size, [SPS…, PPS…]) of an AVCDecoderConfigurationRecord; ValueError if malformed."""
    if len(avcc) < 7 or avcc[0] != 1:
        raise ValueError("not an AVCDecoderConfigurationRecord")
    length_size = (avcc[4] & 0x03) + 1
    sets: list[bytes] = []
    pos = 5
    for count_mask in (0x1F, 0xFF):  # SPS count (5 bits), then PPS count (8 bits)
        if pos >= len(avcc):
            raise ValueError("truncated AVCDecoderConfigurationRecord")
        count = avcc[pos] & count_mask
        pos += 1
        for _ in range(count):
            size = int.from_bytes(avcc[pos:pos + 2], "big")
            nal = avcc[pos + 2:pos + 2 + size]
            if size == 0 or len(nal) != size:
                raise ValueError("truncated AVCDecoderConfigurationRecord")
            sets.append(nal)
            pos += 2 + size
    return length_size, sets


def avcc_to_annexb(data: bytes, length_size: int, prefix: Sequence[bytes] = ()) -> bytes:
    """A length-prefixed (MP4/FLV) access unit as Annex-B, with `prefix` NAL units (parameter sets)
    first; ValueError when a length runs past the end."""
    out = [_START4 + n for n in prefix]
    pos = 0
    while pos + length_size <= len(data):
        size = int.from_bytes(data[pos:pos + length_size], "big")
        pos += length_size
        if size == 0 or pos + size > len(data):
            raise ValueError("NAL unit length past the end of the access unit")
        out.append(_START4 + data[pos:pos + size])
        pos += size
    return b"".join(out)


def avcc_sps(avcc: bytes) -> bytes | None:
    """The first SPS NAL unit of an AVCDecoderConfigurationRecord."""
    if len(avcc) < 8 or avcc[0] != 1 or avcc[5] & 0x1F == 0:
        return None
    size = int.from_bytes(avcc[6:8], "big")
    sps = avcc[8 : 8 + size]
    return sps if len(sps) == size and size > 1 else None


@dataclass(frozen=True, slots=True, kw_only=True)
class SpsInfo:
    width: int
    height: int
    pix_fmt: str | None


def parse_sps(sps: bytes) -> SpsInfo:
    """Picture size (after cropping) and pixel format of an SPS NAL unit (with its header byte).

    Enough of H.264 7.3.2.1.1 to reach the size; ValueError when it is not an SPS or cannot be parsed.
    """
    if nal_type(sps) != NAL_SPS:
        raise ValueError("not an SPS")
    r = BitReader(rbsp(sps[1:]))
    profile = r.u(8)
    r.u(16)  # constraint flags, level
    r.ue()  # sps id
    chroma = 1
    bit_depth = 8
    separate_planes = 0
    if profile in _HIGH_PROFILES:
        chroma = r.ue()
        if chroma == 3:
            separate_planes = r.u(1)
        bit_depth = 8 + r.ue()
        r.ue()  # chroma bit depth
        r.u(1)  # qpprime_y_zero_transform_bypass
        if r.u(1):  # seq_scaling_matrix_present
            for i in range(8 if chroma != 3 else 12):
                if r.u(1):
                    last, nxt = 8, 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt:
                            nxt = (last + r.se() + 256) % 256
                        last = nxt or last
    r.ue()  # log2_max_frame_num - 4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.u(1)
        r.se()
        r.se()
        for _ in range(min(r.ue(), 255)):
            r.se()
    r.ue()  # max_num_ref_frames
    r.u(1)  # gaps_in_frame_num_allowed
    width_mbs = r.ue() + 1
    height_units = r.ue() + 1
    frame_mbs_only = r.u(1)
    if not frame_mbs_only:
        r.u(1)  # mb_adaptive_frame_field
    r.u(1)  # direct_8x8_inference
    crop = (0, 0, 0, 0)
    if r.u(1):
        crop = (r.ue(), r.ue(), r.ue(), r.ue())
    if chroma == 0 or separate_planes:
        unit_x, unit_y = 1, 2 - frame_mbs_only
    else:
        unit_x = 1 if chroma == 3 else 2
        unit_y = (2 if chroma == 1 else 1) * (2 - frame_mbs_only)
    width = width_mbs * 16 - (crop[0] + crop[1]) * unit_x
    height = (2 - frame_mbs_only) * height_units * 16 - (crop[2] + crop[3]) * unit_y
    if width <= 0 or height <= 0:
        raise ValueError("bad SPS dimensions")
    pix_fmt = {0: "gray", 1: "yuv420p", 2: "yuv422p", 3: "yuv444p"}.get(chroma) if bit_depth == 8 else None
    return SpsInfo(width=width, height=height, pix_fmt=pix_fmt)
