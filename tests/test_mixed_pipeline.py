"""MixedPipeline end to end with real media: H.264/AAC sources fed in real time → MP4 → checked with PyAV."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from cloudrec.core.naming import A8Names
from cloudrec.core.layout import Participant
from cloudrec.core.media import MediaUnit, StreamInfo
from cloudrec.core.spec import AudioEncoding, FillType, Layout, LayoutMode, Pane, TrackKind, VideoEncoding
from cloudrec.media.mixed import MixedPipeline
from cloudrec.output.target import SinkTarget
from cloudrec.output.mp4 import Mp4Sink

SRC_W, SRC_H, FPS = 640, 360, 15
RATE = 48_000
VIDEO_TB = Fraction(1, 90_000)
AUDIO_TB = Fraction(1, RATE)
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 220, 40)]  # RGB
TONES = [440.0, 660.0, 880.0, 1100.0]
USERS = ["alice", "bob", "carol", "dave"]


# -- test inputs: pre-encoded sources on the room clock ------------------------------------------


@dataclass
class Encoded:
    video: list[tuple[float, bytes, int, bool]]  # (media seconds, data, pts in 1/90000, key)
    audio: list[tuple[float, bytes, int]]
    video_info: StreamInfo
    audio_info: StreamInfo


def encode_source(colour: tuple[int, int, int], tone: float, seconds: float) -> Encoded:
    v = av.CodecContext.create("libx264", "w")
    v.width, v.height, v.pix_fmt = SRC_W, SRC_H, "yuv420p"
    v.time_base = Fraction(1, FPS)
    v.framerate = Fraction(FPS)
    v.gop_size = FPS
    v.max_b_frames = 0  # like a live publisher
    v.options = {"preset": "ultrafast", "tune": "zerolatency"}
    v.open()
    rgb = np.empty((SRC_H, SRC_W, 3), np.uint8)
    rgb[...] = colour
    base = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    video: list[tuple[float, bytes, int, bool]] = []
    packets = []
    for i in range(int(seconds * FPS)):
        frame = base.reformat(format="yuv420p")
        frame.pts = i
        packets += v.encode(frame)
    packets += v.encode(None)
    for p in packets:
        assert p.pts is not None
        t = float(p.pts * v.time_base)
        video.append((t, bytes(p), round(t / VIDEO_TB), p.is_keyframe))
    vinfo = StreamInfo(kind=TrackKind.MAIN, codec="h264", time_base=VIDEO_TB, width=SRC_W, height=SRC_H)

    a = av.CodecContext.create("aac", "w")
    a.sample_rate, a.layout, a.format = RATE, "stereo", "fltp"
    a.bit_rate = 96_000
    a.time_base = AUDIO_TB
    a.flags |= av.codec.context.Flags.global_header
    a.open()
    audio: list[tuple[float, bytes, int]] = []
    apackets = []
    n_total = int(seconds * RATE)
    for start in range(0, n_total, 1024):
        ts = np.arange(start, start + 1024) / RATE
        s = (0.2 * np.sin(2 * np.pi * tone * ts)).astype(np.float32)
        aframe = av.AudioFrame.from_ndarray(np.stack([s, s]), format="fltp", layout="stereo")
        aframe.sample_rate = RATE
        aframe.pts = start
        apackets += a.encode(aframe)
    apackets += a.encode(None)
    for p in apackets:
        if p.pts is None or p.pts < 0:
            continue
        audio.append((p.pts / RATE, bytes(p), p.pts))
    ainfo = StreamInfo(kind=TrackKind.AUDIO, codec="aac", time_base=AUDIO_TB, extradata=bytes(a.extradata or b""),
                       sample_rate=RATE, channels=2, layout="stereo")
    return Encoded(video=video, audio=audio, video_info=vinfo, audio_info=ainfo)


_CACHE: dict[int, Encoded] = {}


def source_media(i: int, seconds: float = 12.0) -> Encoded:
    if i not in _CACHE:
        _CACHE[i] = encode_source(COLOURS[i], TONES[i], seconds)
    return _CACHE[i]


@dataclass
class QueueSource:
    """A `UnitSource` backed by a deque (test input, like the room's TrackSubscriber)."""

    ended: bool = False
    dropped: int = 0
    _items: deque[MediaUnit | None] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, unit: MediaUnit | None) -> None:
        with self._lock:
            self._items.append(unit)

    def drain(self) -> list[MediaUnit]:
        out: list[MediaUnit] = []
        with self._lock:
            while self._items:
                item = self._items.popleft()
                if item is None:
                    self.ended = True
                else:
                    out.append(item)
        return out


class Feeder(threading.Thread):
    """Publishes every source's units at their room-clock time (room time = base + media time)."""

    def __init__(self, plan: list[tuple[Encoded, QueueSource, QueueSource, float, float]]) -> None:
        # plan: (media, video source, audio source, base monotonic, stop after media seconds)
        super().__init__(daemon=True)
        self.stop_event = threading.Event()
        events: list[tuple[float, int, QueueSource, MediaUnit | None]] = []
        seq = 0
        for media, vsrc, asrc, base, until in plan:
            for t, data, pts, key in media.video:
                if t >= until:
                    continue
                unit = MediaUnit(data=data, pts=round(base / VIDEO_TB) + pts, dts=round(base / VIDEO_TB) + pts,
                                 duration=round(1 / FPS / VIDEO_TB), key=key, info=media.video_info)
                events.append((base + t, seq, vsrc, unit))
                seq += 1
            for t, data, pts in media.audio:
                if t >= until:
                    continue
                apts = round(base * RATE) + pts
                unit = MediaUnit(data=data, pts=apts, dts=apts, duration=1024, key=True, info=media.audio_info)
                events.append((base + t, seq, asrc, unit))
                seq += 1
            if until < 1e9:
                events.append((base + until, seq, vsrc, None))
                events.append((base + until, seq + 1, asrc, None))
                seq += 2
        events.sort(key=lambda e: (e[0], e[1]))
        self.events = events

    def run(self) -> None:
        for at, _, src, unit in self.events:
            delay = at + 0.01 - time.monotonic()  # ~10 ms network delay
            if delay > 0 and self.stop_event.wait(delay):
                return
            src.put(unit)


# -- running a pipeline and reading the result ---------------------------------------------------


@dataclass
class Output:
    frames: list[tuple[float, np.ndarray]]  # (seconds, rgb)
    width: int
    height: int
    rate: Fraction | None
    audio: np.ndarray  # (channels, samples) float32
    audio_rate: int
    files: list[str]


def read_output(path: Path) -> Output:
    frames: list[tuple[float, np.ndarray]] = []
    chunks: list[np.ndarray] = []
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        w, h, rate = vs.codec_context.width, vs.codec_context.height, vs.average_rate
        arate = c.streams.audio[0].codec_context.sample_rate if c.streams.audio else 0
        for frame in c.decode(*c.streams):
            if isinstance(frame, av.VideoFrame):
                assert frame.time is not None
                frames.append((frame.time, frame.to_ndarray(format="rgb24")))
            elif isinstance(frame, av.AudioFrame):
                chunks.append(frame.to_ndarray())
    audio = np.concatenate(chunks, axis=1) if chunks else np.zeros((2, 0), np.float32)
    frames.sort(key=lambda f: f[0])
    return Output(frames=frames, width=w, height=h, rate=rate, audio=audio, audio_rate=arate, files=[])


def close_to(pixel: np.ndarray, rgb: tuple[int, int, int], tol: int = 28) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(rgb)) <= tol))


def peaks(audio: np.ndarray, rate: int, count: int) -> list[float]:
    mono = audio.mean(axis=0)
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(mono.size)))
    freqs = np.fft.rfftfreq(mono.size, 1 / rate)
    found: list[float] = []
    for idx in np.argsort(spectrum)[::-1]:
        f = float(freqs[idx])
        if all(abs(f - g) > 30 for g in found):
            found.append(f)
        if len(found) == count:
            break
    return sorted(found)


def make_sink(tmp_path: Path) -> Mp4Sink:
    return Mp4Sink(SinkTarget(directory=tmp_path, names=A8Names("mix", None), track_type=None, user_id="", media="mix", wall0_ms=0),
                   max_seconds=3600)


def participants(users: list[str]) -> list[Participant]:
    return [Participant(user_id=u, video=frozenset({TrackKind.MAIN})) for u in users]


@pytest.fixture(scope="module", autouse=True)
def _encoded_sources() -> None:
    for i in range(4):
        source_media(i)


def run_pipeline(pipe: MixedPipeline, feeder: Feeder, seconds: float, t0: float,
                 actions: list[tuple[float, Callable[[], None]]] | None = None) -> None:
    """Feed and run `pipe` until `seconds` after `t0`, calling each action at its time; then stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=pipe.run, args=(stop,))
    feeder.start()
    thread.start()
    for at, action in actions or []:
        time.sleep(max(0.0, at - (time.monotonic() - t0)))
        action()
    time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
    stop.set()
    thread.join(10)
    feeder.stop_event.set()
    assert not thread.is_alive()


def test_grid_mix_of_four(tmp_path: Path) -> None:
    W, H, RUN = 640, 360, 5.0
    t0 = time.monotonic()
    vsrc = [QueueSource() for _ in USERS]
    asrc = [QueueSource() for _ in USERS]
    feeder = Feeder([(source_media(i), vsrc[i], asrc[i], t0, 1e10) for i in range(4)])
    sink = make_sink(tmp_path)
    pipe = MixedPipeline(video=VideoEncoding(width=W, height=H, fps=FPS, bitrate=800_000, gop_seconds=2),
                         audio=AudioEncoding(), layout=Layout(mode=LayoutMode.GRID), fill_type=FillType.LAST_FRAME,
                         sinks=[sink], t0=t0)
    pipe.update(participants=participants(USERS), video={(u, TrackKind.MAIN): vsrc[i] for i, u in enumerate(USERS)},
                audio={u: asrc[i] for i, u in enumerate(USERS)})
    run_pipeline(pipe, feeder, RUN, t0)

    out = read_output(tmp_path / sink.files[0])
    assert sink.files == ["mix_1.mp4"]
    assert (out.width, out.height) == (W, H)
    assert out.rate is not None and abs(float(out.rate) - FPS) < 0.2
    duration = out.frames[-1][0] - out.frames[0][0] + 1 / FPS
    assert abs(duration - RUN) <= 0.5
    times = np.array([t for t, _ in out.frames])
    assert np.allclose(np.diff(times), 1 / FPS, atol=1e-3)  # constant frame rate, no gaps
    quads = [(H // 4, W // 4), (H // 4, 3 * W // 4), (3 * H // 4, W // 4), (3 * H // 4, 3 * W // 4)]
    for t, rgb in out.frames[FPS:]:  # from 1 s on (sources are there from the start)
        for (y, x), colour in zip(quads, COLOURS):
            assert close_to(rgb[y, x], colour), (t, (y, x), rgb[y, x], colour)
    # Audio: the whole timeline, not silent, all four tones.
    audio_seconds = out.audio.shape[1] / out.audio_rate
    assert abs(audio_seconds - duration) <= 0.2
    steady = out.audio[:, out.audio_rate: out.audio_rate * 4]
    assert float(np.sqrt(np.mean(steady**2))) > 0.05
    found = peaks(steady, out.audio_rate, 4)
    for f, tone in zip(found, TONES):
        assert abs(f - tone) < 5, found
    stats = pipe.stats
    assert stats.frames_out == len(out.frames)
    assert stats.samples_out == round(stats.frames_out / FPS * RATE)
    assert stats.first_frame_at is not None and stats.first_frame_at - t0 < 1.0
    assert stats.late_units == 0
    assert stats.skipped_frames == 0


def test_custom_layout_background_and_live_update(tmp_path: Path) -> None:
    W, H, RUN, SWITCH = 640, 360, 5.0, 2.5
    bg = (0, 0, 160)
    left = Pane(x=0, y=0, width=320, height=180, user_id="alice")
    right = Pane(x=320, y=180, width=320, height=180, user_id="bob")
    layout1 = Layout(mode=LayoutMode.CUSTOM, panes=(left, right), background=bg)
    layout2 = Layout(mode=LayoutMode.CUSTOM, background=bg, panes=(
        Pane(x=0, y=0, width=320, height=180, user_id="bob"),
        Pane(x=320, y=180, width=320, height=180, user_id="alice"),
    ))
    t0 = time.monotonic()
    vsrc = [QueueSource() for _ in range(2)]
    asrc = [QueueSource() for _ in range(2)]
    feeder = Feeder([(source_media(i), vsrc[i], asrc[i], t0, 1e10) for i in range(2)])
    sink = make_sink(tmp_path)
    pipe = MixedPipeline(video=VideoEncoding(width=W, height=H, fps=FPS, gop_seconds=1), audio=AudioEncoding(),
                         layout=layout1, fill_type=FillType.LAST_FRAME, sinks=[sink], t0=t0)
    users = USERS[:2]
    video = {(u, TrackKind.MAIN): vsrc[i] for i, u in enumerate(users)}
    audio = {u: asrc[i] for i, u in enumerate(users)}
    pipe.update(participants=participants(users), video=video, audio=audio)
    run_pipeline(pipe, feeder, RUN, t0, [(SWITCH, lambda: pipe.update(participants=participants(users), video=video,
                                                                     audio=audio, layout=layout2))])

    assert sink.files == ["mix_1.mp4"]  # the update did not start a new file
    out = read_output(tmp_path / sink.files[0])
    times = np.array([t for t, _ in out.frames])
    assert np.allclose(np.diff(times), 1 / FPS, atol=1e-3)  # no pts discontinuity at the switch
    first = out.frames[0][0]
    top_left, bottom_right, outside = (90, 160), (270, 480), (90, 480)
    before = [rgb for t, rgb in out.frames if 1.0 <= t - first <= SWITCH - 0.5]
    after = [rgb for t, rgb in out.frames if t - first >= SWITCH + 0.8]
    assert before and after
    for rgb in before:
        assert close_to(rgb[top_left], COLOURS[0]) and close_to(rgb[bottom_right], COLOURS[1])
        assert close_to(rgb[outside], bg)
    for rgb in after:
        assert close_to(rgb[top_left], COLOURS[1]) and close_to(rgb[bottom_right], COLOURS[0])
        assert close_to(rgb[outside], bg)


@pytest.mark.parametrize("fill_type", [FillType.LAST_FRAME, FillType.BLACK])
def test_source_stops_fill_type(tmp_path: Path, fill_type: FillType) -> None:
    W, H, RUN, STOP_AT, GAP = 320, 180, 4.0, 1.5, 0.5
    t0 = time.monotonic()
    vsrc = [QueueSource() for _ in range(2)]
    asrc = [QueueSource() for _ in range(2)]
    feeder = Feeder([(source_media(0), vsrc[0], asrc[0], t0, 1e10), (source_media(1), vsrc[1], asrc[1], t0, STOP_AT)])
    sink = make_sink(tmp_path)
    pipe = MixedPipeline(video=VideoEncoding(width=W, height=H, fps=FPS, gop_seconds=1), audio=AudioEncoding(),
                         layout=Layout(mode=LayoutMode.GRID), fill_type=fill_type, sinks=[sink], t0=t0, gap_seconds=GAP)
    users = USERS[:2]
    pipe.update(participants=participants(users), video={(u, TrackKind.MAIN): vsrc[i] for i, u in enumerate(users)},
                audio={u: asrc[i] for i, u in enumerate(users)})
    run_pipeline(pipe, feeder, RUN, t0)

    out = read_output(tmp_path / sink.files[0])
    first = out.frames[0][0]
    left, right = (H // 2, W // 4), (H // 2, 3 * W // 4)  # grid of two: side by side
    for t, rgb in out.frames:
        rel = t - first
        assert close_to(rgb[left], COLOURS[0]) or rel < 0.3
        if 0.5 <= rel <= STOP_AT - 0.2:
            assert close_to(rgb[right], COLOURS[1])
        elif rel >= STOP_AT + GAP + 0.3:
            expected = COLOURS[1] if fill_type is FillType.LAST_FRAME else (0, 0, 0)
            assert close_to(rgb[right], expected), (rel, rgb[right])
    # The stopped source's tone leaves the mix; the other remains.
    tail = out.audio[:, int((STOP_AT + 0.5) * out.audio_rate):]
    spectrum = peaks(tail, out.audio_rate, 1)
    assert abs(spectrum[0] - TONES[0]) < 5


def test_output_goes_out_once_every_source_is_past_it_and_the_latency_window_is_only_a_limit(tmp_path: Path) -> None:
    """alice publishes from the start, bob only from 1.5 s, with a 3 s latency window. Nothing goes out
    while bob has sent nothing (he may still be on his way); once both are past a time it goes out
    without waiting out the window, and bob's first frames are not late for it."""
    W, H, LATENCY, BOB_FROM, RUN = 320, 180, 3.0, 1.5, 4.0
    t0 = time.monotonic()
    vsrc = [QueueSource() for _ in range(2)]
    asrc = [QueueSource() for _ in range(2)]
    feeder = Feeder([(source_media(0), vsrc[0], asrc[0], t0, 1e10), (source_media(1), vsrc[1], asrc[1], t0 + BOB_FROM, 1e10)])
    sink = make_sink(tmp_path)
    pipe = MixedPipeline(video=VideoEncoding(width=W, height=H, fps=FPS, gop_seconds=1), audio=AudioEncoding(),
                         layout=Layout(mode=LayoutMode.GRID), fill_type=FillType.LAST_FRAME, sinks=[sink], t0=t0,
                         latency=LATENCY)
    users = USERS[:2]
    pipe.update(participants=participants(users), video={(u, TrackKind.MAIN): vsrc[i] for i, u in enumerate(users)},
                audio={u: asrc[i] for i, u in enumerate(users)})
    seen: dict[float, tuple[int, int]] = {}

    def look(at: float) -> Callable[[], None]:
        return lambda: seen.__setitem__(at, (pipe.stats.frames_out, pipe.stats.samples_out))

    run_pipeline(pipe, feeder, RUN, t0, [(1.2, look(1.2)), (2.6, look(2.6))])

    assert seen[1.2] == (0, 0)  # bob has sent nothing yet: the window holds everything back
    frames, samples = seen[2.6]  # the 3 s window alone would still hold everything back here
    assert frames >= 15 and samples >= 15 * RATE // FPS, seen
    stats = pipe.stats
    assert stats.first_output_at is not None and stats.first_output_at - t0 < LATENCY
    assert stats.first_written_at is not None and stats.first_written_at >= stats.first_output_at
    assert stats.late_units == 0 and stats.skipped_frames == 0
    out = read_output(tmp_path / sink.files[0])
    times = np.array([t for t, _ in out.frames])
    assert np.allclose(np.diff(times), 1 / FPS, atol=1e-3)  # the burst at 1.5 s left no gap
    right = (H // 2, 3 * W // 4)
    for t, rgb in out.frames:
        if t - out.frames[0][0] >= BOB_FROM + 0.2:
            assert close_to(rgb[right], COLOURS[1]), (t, rgb[right])
