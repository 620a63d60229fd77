"""H264Depacketizer against real libx264 output, packetized here per RFC 6184 (single NAL, STAP-A,
FU-A at a small MTU), with loss, reordering, duplicates and garbage injected; the reassembled
units must decode with PyAV to exactly the pictures the encoder's own units decode to."""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import pytest

from cloudrec.core.h264 import annexb_nals, avcc_config, avcc_to_annexb
from cloudrec.rooms.h264rtp import AccessUnit, H264Depacketizer, parse_sprop_parameter_sets, sps_dimensions

MTU = 300  # small, so most slices travel as FU-A


@dataclass(frozen=True)
class EncodedAU:
    data: bytes
    nals: list[bytes]
    ts: int
    key: bool


@dataclass(frozen=True)
class Rtp:
    payload: bytes
    seq: int
    ts: int
    marker: bool


def encode(n: int = 45, width: int = 320, height: int = 240, gop: int = 15, slices: int = 1) -> list[EncodedAU]:
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = Fraction(1, 30)
    ctx.framerate = Fraction(30)
    ctx.gop_size = gop
    ctx.options = {"preset": "veryfast", "bf": "0", "slices": str(slices), "threads": "1", "sc_threshold": "0", "keyint_min": str(gop)}
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    aus: list[EncodedAU] = []
    ts0 = 0xFFFFFFFF - 3000 * 10  # wraps during the clip
    packets: list[av.Packet] = []
    for i in range(n):
        img = np.roll(base, i * 4, axis=1)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        packets.extend(ctx.encode(frame))
    packets.extend(ctx.encode(None))
    for p in packets:
        assert p.pts is not None
        data = bytes(p)
        aus.append(EncodedAU(data=data, nals=annexb_nals(data), ts=(ts0 + p.pts * 3000) & 0xFFFFFFFF, key=p.is_keyframe))
    return aus


def packetize(aus: list[EncodedAU], mtu: int = MTU, seq0: int = 65500) -> list[Rtp]:
    """RFC 6184 non-interleaved mode: small neighbours aggregated in STAP-A, large NALs as FU-A."""
    out: list[Rtp] = []
    seq = seq0
    for au in aus:
        payloads: list[bytes] = []
        group: list[bytes] = []

        def flush_group() -> None:
            if len(group) == 1:
                payloads.append(group[0])
            elif group:
                nri = max(n[0] & 0x60 for n in group)
                payloads.append(bytes([nri | 24]) + b"".join(len(n).to_bytes(2, "big") + n for n in group))
            group.clear()

        for nal in au.nals:
            if len(nal) > mtu:
                flush_group()
                indicator = (nal[0] & 0xE0) | 28
                body = nal[1:]
                chunk = mtu - 2
                for off in range(0, len(body), chunk):
                    start = off == 0
                    end = off + chunk >= len(body)
                    header = (0x80 if start else 0) | (0x40 if end else 0) | (nal[0] & 0x1F)
                    payloads.append(bytes([indicator, header]) + body[off : off + chunk])
            else:
                if group and 1 + sum(2 + len(n) for n in group) + 2 + len(nal) > mtu:
                    flush_group()
                group.append(nal)
        flush_group()
        for i, payload in enumerate(payloads):
            out.append(Rtp(payload, seq & 0xFFFF, au.ts, i == len(payloads) - 1))
            seq += 1
    return out


def feed(dep: H264Depacketizer, packets: list[Rtp]) -> list[AccessUnit]:
    out: list[AccessUnit] = []
    for p in packets:
        out.extend(dep.push(p.payload, sequence=p.seq, timestamp=p.ts, marker=p.marker))
    out.extend(dep.flush())
    return out


def decode(units: list[bytes]) -> list[np.ndarray]:
    ctx = av.CodecContext.create("h264", "r")
    frames: list[np.ndarray] = []
    for data in units:
        for f in ctx.decode(av.Packet(data)):
            frames.append(f.to_ndarray(format="yuv420p"))
    for f in ctx.decode(None):
        frames.append(f.to_ndarray(format="yuv420p"))
    return frames


@pytest.fixture(scope="module")
def clip() -> list[EncodedAU]:
    return encode()


def test_lossless_reassembly_is_bit_exact(clip: list[EncodedAU]) -> None:
    packets = packetize(clip)
    kinds = {p.payload[0] & 0x1F for p in packets}
    assert {24, 28} <= kinds  # STAP-A and FU-A really used
    dep = H264Depacketizer()
    units = feed(dep, packets)
    assert [u.timestamp for u in units] == [a.ts for a in clip]
    assert [annexb_nals(u.data) for u in units] == [a.nals for a in clip]
    assert [u.key for u in units] == [a.key for a in clip]
    assert all(u.data.startswith(b"\x00\x00\x00\x01") for u in units)
    assert dep.lost == dep.malformed == dep.dropped_units == 0 and not dep.take_keyframe_request()
    got = decode([u.data for u in units])
    want = decode([a.data for a in clip])
    assert len(got) == len(want) == len(clip)
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    # the parameter sets are tracked and describe the picture
    assert sps_dimensions(units[0].sps) == (320, 240)
    assert units[0].extradata.startswith(b"\x00\x00\x00\x01\x67")


def test_multi_slice_pictures_and_missing_marker() -> None:
    aus = encode(n=20, slices=3)
    assert any(sum(1 for n in a.nals if n[0] & 0x1F in (1, 5)) == 3 for a in aus)
    packets = [Rtp(p.payload, p.seq, p.ts, False) for p in packetize(aus, mtu=1200)]  # a sender that never sets the marker
    units = feed(H264Depacketizer(), packets)
    assert [annexb_nals(u.data) for u in units] == [a.nals for a in aus]


def test_loss_drops_until_next_idr_and_asks_for_keyframe(clip: list[EncodedAU]) -> None:
    packets = packetize(clip)
    # lose one packet inside picture 20 (second GOP: keyframes at 0, 15, 30)
    victim = next(i for i, p in enumerate(packets) if p.ts == clip[20].ts) + 1
    dep = H264Depacketizer(reorder_window=4)
    units: list[AccessUnit] = []
    requests = 0
    for i, p in enumerate(packets):
        if i == victim:
            continue
        units.extend(dep.push(p.payload, sequence=p.seq, timestamp=p.ts, marker=p.marker))
        requests += dep.take_keyframe_request()
    units.extend(dep.flush())
    assert dep.lost == 1 and requests == 1
    by_ts = {a.ts: i for i, a in enumerate(clip)}
    kept = [by_ts[u.timestamp] for u in units]
    assert kept == list(range(0, 20)) + list(range(30, 45))
    assert units[20].key
    # everything emitted decodes exactly as the encoder's own units do from the same keyframes
    got = decode([u.data for u in units])
    want = decode([a.data for a in clip[:20]]) + decode([a.data for a in clip[30:]])
    assert len(got) == len(want) == 35
    assert all(np.array_equal(g, w) for g, w in zip(got, want))


def test_reordering_within_window_and_duplicates_are_harmless(clip: list[EncodedAU]) -> None:
    packets = packetize(clip)
    rng = random.Random(7)
    shuffled = list(packets)
    for i in range(5, len(shuffled) - 3, 9):  # local swaps, like a real network
        j = i + rng.randint(1, 3)
        shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
    shuffled[40:40] = [packets[30], packets[31]]  # duplicates (e.g. a retransmission racing the original)
    dep = H264Depacketizer(reorder_window=8)
    units = feed(dep, shuffled)
    assert [annexb_nals(u.data) for u in units] == [a.nals for a in clip]
    assert dep.lost == 0 and dep.late == 2


def test_start_mid_stream_and_garbage_never_emit_non_idr_first(clip: list[EncodedAU]) -> None:
    packets = packetize(clip)
    start = next(i for i, p in enumerate(packets) if p.ts == clip[5].ts) + 1  # mid-picture, mid-GOP
    rng = random.Random(3)
    stream = packets[start:]
    # garbage payloads sharing sequence space with a picture of the second GOP
    bad_at = next(i for i, p in enumerate(stream) if p.ts == clip[18].ts)
    for k in range(3):
        p = stream[bad_at + k]
        stream[bad_at + k] = Rtp(bytes([rng.choice([0, 25, 26, 27, 29, 30, 31, 0x9C])]) + rng.randbytes(50), p.seq, p.ts, p.marker)
    dep = H264Depacketizer(reorder_window=0)
    units = feed(dep, stream)
    by_ts = {a.ts: i for i, a in enumerate(clip)}
    kept = [by_ts[u.timestamp] for u in units]
    assert kept[0] == 15 and units[0].key  # nothing before the first IDR
    assert 18 not in kept and kept[kept.index(17) + 1] == 30  # the broken GOP resumes at the next IDR
    assert dep.malformed >= 1 and dep.take_keyframe_request()
    assert len(decode([u.data for u in units])) == len(units)


def test_parameter_sets_from_sdp_are_prepended(clip: list[EncodedAU]) -> None:
    sps = next(n for n in clip[0].nals if n[0] & 0x1F == 7)
    pps = next(n for n in clip[0].nals if n[0] & 0x1F == 8)
    import base64

    sprop = f"{base64.b64encode(sps).decode()},{base64.b64encode(pps).decode()}"
    assert parse_sprop_parameter_sets(sprop) == [sps, pps]
    stripped = [EncodedAU(a.data, [n for n in a.nals if n[0] & 0x1F not in (7, 8)], a.ts, a.key) for a in clip]
    assert feed(H264Depacketizer(), packetize(stripped)) == []  # no SPS/PPS known: nothing
    units = feed(H264Depacketizer(sprop_parameter_sets=sprop), packetize(stripped))
    assert len(units) == len(clip)
    for u, a in zip(units, clip):
        assert annexb_nals(u.data) == [n for n in a.nals if n[0] & 0x1F != 9] or annexb_nals(u.data) == a.nals
    got = decode([u.data for u in units])
    want = decode([a.data for a in clip])
    assert all(np.array_equal(g, w) for g, w in zip(got, want))


def test_sps_dimensions_with_cropping() -> None:
    aus = encode(n=1, width=640, height=360)
    sps = next(n for n in aus[0].nals if n[0] & 0x1F == 7)
    assert sps_dimensions(sps) == (640, 360)
    with pytest.raises(ValueError):
        sps_dimensions(b"\x67\x42")


def test_avcc_units_become_annexb_with_parameter_sets() -> None:
    sps, pps = bytes([0x67, 0x42, 0xC0, 0x1E, 0xDA]), bytes([0x68, 0xCE, 0x3C, 0x80])
    avcc = bytes([1, 0x42, 0xC0, 0x1E, 0xFF, 0xE1]) + len(sps).to_bytes(2, "big") + sps + b"\x01" + len(pps).to_bytes(2, "big") + pps
    assert avcc_config(avcc) == (4, [sps, pps])
    slice_ = bytes([0x65]) + bytes(300)  # 301 bytes: its length prefix 00 00 01 2d looks like a start code
    unit = len(slice_).to_bytes(4, "big") + slice_
    assert avcc_to_annexb(unit, 4, [sps, pps]) == b"".join(b"\x00\x00\x00\x01" + n for n in (sps, pps, slice_))
    with pytest.raises(ValueError):
        avcc_to_annexb(unit[:-1], 4)  # a length past the end
    with pytest.raises(ValueError):
        avcc_config(avcc[:-2])  # a truncated record
