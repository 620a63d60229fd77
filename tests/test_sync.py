"""Lip sync through the real paths, measured with the sync source and `av-offset` (MEDIA.md §1).

Every recording here is made by a running `cloudrec serve` through the official SDK; the offsets
are measured on the files it wrote. Mixes run at 30 fps so the video onset quantization (±1/60 s for
a 30 fps source) leaves room in the ±40 ms budget.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from cloudrec.core import naming
from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.spec import TrackKind
from cloudrec.tools.samples import SampleSpec, write_sample
from cloudrec.rooms.whip import ice_host_addresses
from cloudrec.tools.sync import (
    OffsetReport, SyncSourceSpec, beep_onsets, beep_samples, flash_at, flash_onsets, measure, pair, sync_frame, video_trace,
    write_sync_source,
)
from tests.support import (
    APP_ID, COLORS, TONES, Server, call, client, http_files, storage_params, usersig, wait_ended,
)

TOLERANCE_MS = 40.0
W, H = 640, 360


def record_mixed(server: Server, room: str, bucket: str, fps: int = 30) -> str:
    robot = f"rec_mix_{room}"
    return str(call(client(server), "CreateCloudRecording", {
        "SdkAppId": APP_ID, "RoomId": room, "UserId": robot, "UserSig": usersig(robot),
        "RecordParams": {"RecordMode": 2, "MaxIdleTime": 5, "OutputFormat": 1},
        "MixTranscodeParams": {"VideoParams": {"Width": W, "Height": H, "Fps": fps, "BitRate": 800000, "Gop": 2},
                               "AudioParams": {"SampleRate": 1, "Channel": 2, "BitRate": 96000}},
        "MixLayoutParams": {"MixLayoutMode": 3, "BackGroundColor": "#000000"},
        "StorageParams": storage_params(bucket),
    }).TaskId)


def record_single(server: Server, room: str, bucket: str) -> str:
    robot = f"rec_one_{room}"
    return str(call(client(server), "CreateCloudRecording", {
        "SdkAppId": APP_ID, "RoomId": room, "UserId": robot, "UserSig": usersig(robot),
        "RecordParams": {"RecordMode": 1, "MaxIdleTime": 5, "OutputFormat": 1, "AvMerge": 0},
        "StorageParams": storage_params(bucket),
    }).TaskId)


def stop(server: Server, *tasks: str) -> None:
    for t in tasks:
        call(client(server), "DeleteCloudRecording", {"SdkAppId": APP_ID, "TaskId": t})
    for t in tasks:
        wait_ended(server, t)


def in_sync(report: OffsetReport, at_least: int) -> None:
    assert report.count >= at_least, report.as_dict()
    assert report.max_abs_ms <= TOLERANCE_MS, report.as_dict()


def quadrants() -> list[tuple[int, int, int, int]]:
    return [(x, y, W // 2, H // 2) for y in (0, H // 2) for x in (0, W // 2)]


def mixed_file(server: Server, bucket: str, task: str, room: str) -> Path:
    return server.storage / bucket / task / f"{APP_ID}_{room}_1.mp4"


def single_files(server: Server, bucket: str, task: str, room: str, user: str) -> tuple[Path, Path]:
    base = naming.user_base(RoomKey(APP_ID, room, RoomIdType.INTEGER), user, TrackKind.MAIN)
    out = server.storage / bucket / task
    return out / f"{base}_video.m3u8", out / f"{base}_audio.m3u8"


# --- the checker itself ----------------------------------------------------------------------


def test_checker_finds_a_known_shift_and_reports_nothing_without_sync(tmp_path: Path) -> None:
    aligned = write_sync_source(SyncSourceSpec(path=tmp_path / "aligned.mp4", seconds=5, width=320, height=180))
    late = write_sync_source(SyncSourceSpec(path=tmp_path / "late.ts", seconds=5, width=320, height=180, fps=15,
                                            audio_shift_ms=60))
    rep = measure(aligned)
    assert rep.count == 4 and rep.max_abs_ms < 1.0, rep.as_dict()
    assert rep.video_onsets == pytest.approx([1, 2, 3, 4], abs=1e-6)
    rep = measure(late)
    assert rep.count == 4 and all(abs(o - 60) < 1.0 for o in rep.offsets_ms), rep.as_dict()
    assert rep.video_interval_ms == pytest.approx(1000 / 15, abs=0.1)
    plain = write_sample(SampleSpec(path=tmp_path / "plain.mp4", label="x", color=(0, 0, 200), seconds=3, text=False))
    cli = [str(Path(__import__("sys").executable).parent / "cloudrec"), "tools", "av-offset"]
    assert subprocess.run([*cli, str(plain)], capture_output=True).returncode == 1  # nothing pairs
    ok = subprocess.run([*cli, "--json", str(aligned)], capture_output=True, text=True)
    assert ok.returncode == 0 and '"count": 4' in ok.stdout


# --- ingest ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("syncmedia")
    write_sync_source(SyncSourceSpec(path=root / "sync.mp4", seconds=30))
    for user, color, tone in zip(["u1", "u2", "u3"], COLORS, TONES):
        write_sample(SampleSpec(path=root / f"{user}.mp4", label=user, color=color, tone_hz=tone, seconds=30, text=False))
    with http_files(root) as url:
        yield url


def start_ingest(server: Server, room: str, user: str, url: str) -> str:
    return str(call(client(server), "StartStreamIngest", {
        "SdkAppId": APP_ID, "RoomId": room, "RoomIdType": 1, "UserId": user, "UserSig": usersig(user),
        "StreamUrl": url}).TaskId)


def stop_ingests(server: Server, ids: list[str]) -> None:
    for t in ids:
        call(client(server), "StopStreamIngest", {"SdkAppId": APP_ID, "TaskId": t})


def test_ingest_mixed_and_single_stream_in_sync(server: Server, media: str) -> None:
    room = "7701"
    ids = [start_ingest(server, room, u, f"{media}/{u}.mp4") for u in ("u1", "u2", "u3")]
    ids.append(start_ingest(server, room, "sync", f"{media}/sync.mp4"))
    mix = record_mixed(server, room, "syncmix")
    one = record_single(server, room, "syncone")
    time.sleep(10)
    stop(server, mix, one)
    stop_ingests(server, ids)
    mixed = measure(mixed_file(server, "syncmix", mix, room))
    print("ingest mixed", mixed.as_dict())
    in_sync(mixed, 6)
    mixed_hls = measure(mixed_file(server, "syncmix", mix, room).with_name(f"{APP_ID}_{room}.m3u8"))
    in_sync(mixed_hls, 6)
    video, audio = single_files(server, "syncone", one, room, "sync")
    single = measure(video, audio)
    print("ingest single", single.as_dict())
    in_sync(single, 6)


# --- RTMP push -------------------------------------------------------------------------------


def test_rtmp_push_mixed_and_single_stream_in_sync(server: Server, tmp_path: Path) -> None:
    import imageio_ffmpeg

    room = "7702"
    clip = write_sync_source(SyncSourceSpec(path=tmp_path / "sync.flv", seconds=12))
    mix = record_mixed(server, room, "syncmix")
    one = record_single(server, room, "syncone")
    url = f"rtmp://127.0.0.1:{server.rtmp_port}/push/{room}?sdkappid={APP_ID}&userid=obs&usersig={usersig('obs')}"
    push = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re", "-i", str(clip),
                           "-c", "copy", "-f", "flv", url], capture_output=True, timeout=60)
    assert push.returncode == 0, push.stderr
    stop(server, mix, one)
    mixed = measure(mixed_file(server, "syncmix", mix, room))
    print("rtmp mixed", mixed.as_dict())
    in_sync(mixed, 8)
    video, audio = single_files(server, "syncone", one, room, "obs")
    single = measure(video, audio)
    print("rtmp single", single.as_dict())
    in_sync(single, 8)


# --- WHIP: live publishers whose flashes and beeps happen on the wall clock -----------------------
#
# A file played by aiortc's MediaPlayer paces audio and video in two players that start apart, so it
# cannot tell our timing from the client's. These tracks render each frame/chunk for the wall-clock
# instant it is sent at: every user's events happen at known times in the room, whenever the user
# joined, and aiortc encodes them like a camera (H.264) and a microphone (Opus).


class WallVideo(MediaStreamTrack):
    kind = "video"

    def __init__(self, phase: float, fps: int = 30, size: tuple[int, int] = (320, 180)) -> None:
        super().__init__()
        self.phase, self.fps, self.size = phase, fps, size
        self.n: int | None = None

    async def recv(self) -> av.VideoFrame:
        self.n = math.ceil(time.time() * self.fps) if self.n is None else self.n + 1
        t = self.n / self.fps
        await asyncio.sleep(max(0.0, t - time.time()))
        frame = sync_frame(*self.size, flash_at(t, self.fps, phase=self.phase))
        frame.pts = round((t - EPOCH) * 90_000)
        frame.time_base = Fraction(1, 90_000)
        return frame


class WallAudio(MediaStreamTrack):
    kind = "audio"
    RATE, CHUNK = 48_000, 960

    def __init__(self, phase: float, beep_hz: float) -> None:
        super().__init__()
        self.phase, self.beep_hz = phase, beep_hz
        self.pos: int | None = None

    async def recv(self) -> av.AudioFrame:
        self.pos = math.ceil(time.time() * self.RATE / self.CHUNK) * self.CHUNK if self.pos is None else self.pos + self.CHUNK
        await asyncio.sleep(max(0.0, self.pos / self.RATE - time.time()))
        data = beep_samples(self.pos, self.CHUNK, self.RATE, beep_hz=self.beep_hz, phase=self.phase)
        frame = av.AudioFrame.from_ndarray((data * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.RATE
        frame.pts = self.pos - EPOCH * self.RATE
        frame.time_base = Fraction(1, self.RATE)
        return frame


EPOCH = int(time.time()) - 60  # a shared origin keeps pts small (aiortc wraps them into RTP anyway)


async def whip_publish(server: Server, room: str, user: str, phase: float, beep_hz: float) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(WallVideo(phase))
    pc.addTrack(WallAudio(phase, beep_hz))
    with ice_host_addresses(["127.0.0.1"]):
        await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(timeout=15) as http:
        reply = await http.post(f"{server.url}/whip/{APP_ID}/{room}?userid={user}", content=pc.localDescription.sdp,
                                headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {usersig(user)}"})
    assert reply.status_code == 201, reply.text
    await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.text, type="answer"))
    return pc, server.url + reply.headers["location"]


def nearest_diffs(a: list[float], b: list[float]) -> list[float]:
    """For each b, b − (the nearest a), in ms."""
    return [round((t - min(a, key=lambda x: abs(x - t))) * 1000, 1) for t in b] if a else []


async def test_whip_publishers_joining_apart_line_up_and_stay_in_sync(server: Server) -> None:
    room = "7703"
    mix = await asyncio.to_thread(record_mixed, server, room, "syncmix")
    one = await asyncio.to_thread(record_single, server, room, "syncone")
    # alice flashes/beeps (1 kHz) on the second; bob (2 kHz, 0.3 s later in each second) joins 2.5 s after her
    alice = await whip_publish(server, room, "alice", 0.0, 1000.0)
    await asyncio.sleep(2.5)
    bob = await whip_publish(server, room, "bob", 0.3, 2000.0)
    await asyncio.sleep(9)
    async with httpx.AsyncClient(timeout=15) as http:
        for pc, location in (alice, bob):
            await http.delete(location)
            await pc.close()
    await asyncio.to_thread(stop, server, mix, one)

    path = mixed_file(server, "syncmix", mix, room)
    trace, size = await asyncio.to_thread(video_trace, path)
    # Tiles re-flow when bob joins, so flashes are taken from both halves and told apart by the beep
    # they belong to (alice's and bob's events are 300 ms apart; ±150 ms windows are disjoint).
    halves = [(0, 0, W // 2, H), (W // 2, 0, W // 2, H)]
    found = sorted(t for region in halves for t in flash_onsets(trace, size, region)[0])
    flashes = [t for i, t in enumerate(found) if i == 0 or t - found[i - 1] > 0.05]  # full-screen: in both halves
    ba, bb = beep_onsets(path, 1000.0), beep_onsets(path, 2000.0)
    fa = [t for t in flashes if ba and min(abs(t - b) for b in ba) < 0.15]
    fb = [t for t in flashes if bb and min(abs(t - b) for b in bb) < 0.15]
    assert len(fa) + len(fb) == len(flashes), (flashes, ba, bb)
    alice_av, bob_av = pair(ba, fa), pair(bb, fb)
    print("whip mixed alice", alice_av, "bob", bob_av)
    assert len(alice_av) >= 9 and max(map(abs, alice_av)) <= TOLERANCE_MS, (alice_av, fa, ba)
    assert len(bob_av) >= 6 and max(map(abs, bob_av)) <= TOLERANCE_MS, (bob_av, fb, bb)
    # joining 2.5 s apart, their events still line up as they happened: bob = alice + 300 ms
    flash_gap, beep_gap = nearest_diffs(fa, fb), nearest_diffs(ba, bb)
    print("whip line-up flashes", flash_gap, "beeps", beep_gap)
    assert len(beep_gap) >= 6 and all(abs(g - 300) <= TOLERANCE_MS for g in flash_gap + beep_gap), (flash_gap, beep_gap)
    video, audio = single_files(server, "syncone", one, room, "alice")
    single = await asyncio.to_thread(measure, video, audio)
    print("whip single alice", single.as_dict())
    in_sync(single, 7)


# --- clock drift -------------------------------------------------------------------------------


def fit_slope(times: list[float]) -> float:
    """Seconds per flash/beep, least squares over consecutive events."""
    idx = np.arange(len(times))
    return float(np.polyfit(idx, np.array(times), 1)[0])


def test_rtmp_publisher_with_a_fast_clock_follows_the_room_clock(server: Server, tmp_path: Path) -> None:
    """ffmpeg paces the push in real time (-re) but stamps it 0.4 % fast (setpts/asetpts ×1.004):
    without correction its media would run 4 ms/s ahead (130 ms over the push). The correction keeps
    the lag within the tracker's band plus the sender's own jitter (ffmpeg's re-encode sends ±30 ms
    unevenly), so the events' rate is measured over 20 s."""
    import imageio_ffmpeg

    room = "7704"
    seconds = 32
    clip = write_sync_source(SyncSourceSpec(path=tmp_path / "sync.mp4", seconds=seconds, width=320, height=180))
    mix = record_mixed(server, room, "syncmix")
    one = record_single(server, room, "syncone")
    url = f"rtmp://127.0.0.1:{server.rtmp_port}/push/{room}?sdkappid={APP_ID}&userid=fast&usersig={usersig('fast')}"
    push = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re", "-i", str(clip),
                           "-vf", "setpts=1.004*PTS", "-af", "asetpts=1.004*PTS", "-c:v", "libx264", "-preset", "ultrafast",
                           "-bf", "0", "-g", "30", "-c:a", "aac", "-f", "flv", url], capture_output=True, timeout=90)
    assert push.returncode == 0, push.stderr
    stop(server, mix, one)
    video, audio = single_files(server, "syncone", one, room, "fast")
    for name, rep in (("mixed", measure(mixed_file(server, "syncmix", mix, room))), ("single", measure(video, audio))):
        print(f"drift {name}", rep.offsets_ms)
        in_sync(rep, seconds - 6)
        # After the estimator's settle time, window and band (≈ 7 s at 4 ms/s), events are one room
        # second apart (uncorrected: 1.004 s).
        late = [t for t in rep.video_onsets if t - rep.video_onsets[0] >= 11]
        beeps = [t for t in rep.audio_onsets if t - rep.video_onsets[0] >= 11]
        print(f"drift {name} slopes video {fit_slope(late):.5f} audio {fit_slope(beeps):.5f}")
        assert abs(fit_slope(beeps) - 1.0) < 0.0015, beeps
        assert abs(fit_slope(late) - 1.0) < 0.0015, late


class Publisher:
    """A synthetic publisher: `rate_error` fast (> 0) or slow clock, media sent with network jitter."""

    def __init__(self, rate_error: float, seed: int = 1) -> None:
        self.k = 1.0 + rate_error
        self.rng = np.random.default_rng(seed)

    def units(self, seconds: float) -> list[tuple[str, float, float]]:
        """(track, true capture time, arrival) in arrival order: audio every 20 ms, video every 33 ms."""
        out = [("audio", t, 0.0) for t in np.arange(0, seconds, 0.02)] + [("video", t, 0.0) for t in np.arange(0, seconds, 1 / 30)]
        last: dict[str, float] = {}
        jittered = []
        for kind, t, _ in out:  # one connection: a track's units arrive in order
            arrival = max(last.get(kind, 0.0), t + 0.02 + (0.03 if kind == "video" else 0.0) + float(self.rng.exponential(0.01)))
            last[kind] = arrival
            jittered.append((kind, t, arrival))
        return sorted(jittered, key=lambda u: u[2])


@pytest.mark.parametrize("rate_error", [0.002, -0.002, 0.0])
def test_drift_tracker_follows_the_room_clock_slowly_and_keeps_tracks_together(rate_error: float) -> None:
    from cloudrec.rooms.clock import BAND, MAX_SLEW, DriftTracker

    tracker = DriftTracker()
    pub = Publisher(rate_error)
    last: dict[str, float] = {}
    last_offset: float | None = None
    placed: list[float] = []
    for kind, t, arrival in pub.units(600):
        src = 1000.0 + t * pub.k  # the publisher's clock
        room = tracker.room(src, arrival)
        assert tracker.offset is not None
        if last_offset is not None:  # bounded slew: never a jump
            assert abs(tracker.offset - last_offset) <= MAX_SLEW * 0.034 + 1e-9
        last_offset = tracker.offset
        assert room > last.get(kind, -math.inf)  # never backwards per track
        last[kind] = room
        if t > 15:  # converged (settle 2 s + window 2 s + 10 ms band at 2 ms/s): room − capture stays put
            placed.append(room - t)
    worst = max(placed) - min(placed)
    assert worst <= 2 * BAND + 0.002, worst  # without correction: 600 s × 0.2 % = 1.2 s
    assert abs(tracker.corrected + 600 * rate_error) < 0.03 if rate_error else abs(tracker.corrected) < 0.02


def test_sender_report_mapping_follows_drifting_rtp_clocks_without_jumps() -> None:
    """WebRTC: a sender whose NTP clock runs 0.2 % fast against ours and whose audio RTP clock runs
    0.1 % slow against its NTP clock; SRs every second with send-time jitter. Audio and video of the
    same capture instant stay together and follow the room clock."""
    from cloudrec.rooms.whip import _PublisherClock, _TrackClock

    rng = np.random.default_rng(7)
    publisher = _PublisherClock()
    clocks = {"audio": _TrackClock(publisher, 48_000), "video": _TrackClock(publisher, 90_000)}
    rtp_scale = {"audio": 48_000 * 0.999, "video": 90_000.0}
    origin = {"audio": 123_456, "video": 4_000_000_000}  # video wraps past 2^32 early on
    ntp_k, ntp0 = 1.002, 3_900_000_000.0

    def rtp(kind: str, t: float) -> int:
        return int(origin[kind] + round(t * rtp_scale[kind])) & 0xFFFFFFFF

    def ntp64(t: float) -> int:
        s = ntp0 + t * ntp_k + float(rng.uniform(0, 0.004))  # stamped at send time
        return int(s * 2**32)

    events: list[tuple[float, str, float]] = []  # (arrival, kind, capture t)
    for kind, step in (("audio", 0.02), ("video", 1 / 30)):
        arrivals = np.maximum.accumulate([t + 0.03 + float(rng.exponential(0.005)) for t in np.arange(0, 900, step)])
        events += [(float(a), kind, t) for a, t in zip(arrivals, np.arange(0, 900, step))]  # in order per track
    events += [(t + 0.03, f"sr-{kind}", t) for kind in ("audio", "video") for t in np.arange(0.5, 900, 1.0)]
    events.sort()
    room: dict[str, list[tuple[float, float]]] = {"audio": [], "video": []}
    last = {"audio": -1, "video": -1}
    for arrival, kind, t in events:
        if kind.startswith("sr-"):
            k = kind[3:]
            clocks[k].on_sender_report(ntp64(t), rtp(k, t))
            continue
        pts = clocks[kind].pts(rtp(kind, t), arrival)
        assert pts > last[kind]
        last[kind] = pts
        room[kind].append((t, pts / (48_000 if kind == "audio" else 90_000)))
    assert all(c.aligned for c in clocks.values())
    a_t, a_room = np.array(room["audio"]).T
    v_t, v_room = np.array(room["video"]).T
    late = v_t > 30
    # audio and video of the same capture instant (interpolated on the audio track) stay together
    av = np.interp(v_t[late], a_t, a_room) - v_room[late]
    assert np.max(np.abs(av)) < 0.005, (av.min(), av.max())
    # and each unit sits at capture + ~min delay on the room clock (not 0.2 % × 900 s = 1.8 s away)
    follow = a_room[a_t > 30] - a_t[a_t > 30]
    assert follow.max() - follow.min() < 0.02 and abs(np.median(follow) - 0.03) < 0.02, (follow.min(), follow.max())
    # never a jump: consecutive audio units 20 ms apart stay 20 ms apart ± two slews (SR line and
    # publisher offset, ≤ 1 % each) and the pts rounding
    steps = np.diff(a_room[a_t > 1])
    assert np.all(np.abs(steps - 0.02) < 0.02 * 0.021 + 2 / 48_000), (steps.min(), steps.max())


def test_a_late_first_packet_does_not_place_a_track_late_before_the_first_sender_report() -> None:
    """A publisher's first audio packet is held up 60 ms (a busy moment at join), the ones queued
    behind it come in a burst. Until an SR ties the tracks, each is placed by arrival: by its least
    delayed packet, so audio and video of the same instant still land together, not 60 ms apart."""
    from cloudrec.rooms.whip import _PublisherClock, _TrackClock

    publisher = _PublisherClock()
    clocks = {"audio": _TrackClock(publisher, 48_000), "video": _TrackClock(publisher, 90_000)}
    rates = {"audio": 48_000, "video": 90_000}
    origin = {"audio": 987_654, "video": 3_000_000}
    events: list[tuple[float, str, float]] = []
    for kind, step in (("audio", 0.02), ("video", 1 / 30)):
        for t in np.arange(0, 1.5, step):
            arrival = t + 0.01
            if kind == "audio":
                arrival = max(arrival, 0.07)  # the first packets all wait until 70 ms
            events.append((float(arrival), kind, float(t)))
    events.sort()
    placed: dict[str, list[tuple[float, float]]] = {"audio": [], "video": []}
    last = {"audio": -1, "video": -1}
    for arrival, kind, t in events:
        pts = clocks[kind].pts(int(origin[kind] + round(t * rates[kind])), 100.0 + arrival)
        assert pts > last[kind]
        last[kind] = pts
        placed[kind].append((t, pts / rates[kind] - 100.0 - t))
    for kind in ("audio", "video"):
        after = [lag for t, lag in placed[kind] if t >= 0.1]
        assert max(abs(lag - 0.01) for lag in after) < 0.001, (kind, min(after), max(after))
