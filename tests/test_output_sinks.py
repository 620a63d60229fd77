"""Output sinks (HLS segmenter, fragmented MP4 with rotation, audio files) with real media.

Media is generated with PyAV (moving bar + 440 Hz tone), demuxed into `MediaUnit`s and written
through the sinks; every output is reopened with PyAV and measured.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from cloudrec.core.naming import A8Names
from cloudrec.core import naming
from cloudrec.core.media import FileEvent, MediaUnit, StreamInfo
from cloudrec.core.spec import Container, TrackKind
from cloudrec.errors import InvalidRequest
from cloudrec.output.audio import AudioFileSink
from cloudrec.output.factory import SinkFactory, make_sinks
from cloudrec.output.hls import HlsSink
from cloudrec.output.target import SinkTarget
from cloudrec.output.mp4 import Mp4Sink
from cloudrec.storage.playlist import segment_names

WALL0_MS = 2_000_000_000_000  # 2033-05-18
BASE = "1400123456_12345__UserId_s_dTE.__UserId_e_main"
SEGMENT_RE = re.compile(re.escape(BASE) + r"_video_(\d{17})\.ts$")


# ---------------------------------------------------------------------------------------------
# Test media (shared with test_single_pipeline.py)


def target(directory: Path, track_type: str | None, on_event: Callable[[FileEvent], None] | None = None, *,
           wall0_ms: int = WALL0_MS) -> SinkTarget:
    return SinkTarget(directory=directory, names=A8Names(BASE, track_type), track_type=track_type, user_id="u1", media="main",
                      wall0_ms=wall0_ms, on_event=on_event)


def encode_media(
    path: Path,
    fmt: str | None = None,
    *,
    seconds: float = 10.0,
    fps: int = 25,
    width: int = 320,
    height: int = 240,
    gop: int = 25,
    video_codec: str | None = "libx264",
    audio_codec: str | None = "aac",
    sample_rate: int = 48_000,
) -> Path:
    """A test file: a moving bar whose brightness changes every frame, and a 440 Hz tone."""
    out = av.open(str(path), "w", format=fmt)
    v: Any = None
    if video_codec:
        opts = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        if video_codec == "libx264":
            opts["preset"] = "ultrafast"
        v = out.add_stream(video_codec, rate=fps, options=opts)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
    a: Any = None
    if audio_codec:
        a = out.add_stream(audio_codec, rate=sample_rate)
        a.layout = "stereo"
    if v is not None:
        for i in range(int(seconds * fps)):
            img = np.full((height * 3 // 2, width), 128, np.uint8)
            img[:height] = 40 + (i * 5) % 180
            x = (i * 4) % (width - 24)
            img[:height, x : x + 24] = 235
            vframe = av.VideoFrame.from_ndarray(img, format="yuv420p")
            vframe.pts = i
            vframe.time_base = Fraction(1, fps)
            out.mux(v.encode(vframe))
        out.mux(v.encode(None))
    if a is not None:
        n = 0
        chunk = 1024
        while n < seconds * sample_rate:
            t = (np.arange(chunk) + n) / sample_rate
            s = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(np.stack([s, s]), format="fltp", layout="stereo")
            frame.sample_rate = sample_rate
            frame.pts = n
            frame.time_base = Fraction(1, sample_rate)
            out.mux(a.encode(frame))
            n += chunk
        out.mux(a.encode(None))
    out.close()
    return path


def stream_info(stream: av.stream.Stream, kind: TrackKind | None = None) -> StreamInfo:
    ctx = stream.codec_context
    assert stream.time_base is not None
    if stream.type == "video":
        return StreamInfo(
            kind=kind or TrackKind.MAIN,
            codec=ctx.codec.canonical_name,
            time_base=stream.time_base,
            extradata=bytes(ctx.extradata) if ctx.extradata else None,
            width=ctx.width,  # type: ignore[attr-defined]
            height=ctx.height,  # type: ignore[attr-defined]
            pix_fmt="yuv420p",
        )
    return StreamInfo(
        kind=TrackKind.AUDIO,
        codec=ctx.codec.canonical_name,
        time_base=stream.time_base,
        extradata=bytes(ctx.extradata) if ctx.extradata else None,
        sample_rate=ctx.sample_rate,  # type: ignore[attr-defined]
        channels=ctx.channels,  # type: ignore[attr-defined]
        layout=ctx.layout.name,  # type: ignore[attr-defined]
    )


def demux_units(path: Path, *, offset: float = 0.0) -> tuple[list[MediaUnit], list[MediaUnit]]:
    """(video units, audio units), pts shifted so media time 0 is at `offset` seconds."""
    video: list[MediaUnit] = []
    audio: list[MediaUnit] = []
    with av.open(str(path)) as c:
        infos = {s.index: stream_info(s) for s in c.streams if s.type in ("video", "audio")}
        starts = {s.index: (s.start_time or 0) for s in c.streams}
        for p in c.demux():
            if p.pts is None or p.dts is None or p.stream.index not in infos:
                continue
            info = infos[p.stream.index]
            shift = round(Fraction(offset) / info.time_base) - starts[p.stream.index]
            unit = MediaUnit(
                data=bytes(p),
                pts=p.pts + shift,
                dts=p.dts + shift,
                duration=p.duration or 0,
                key=p.is_keyframe,
                info=info,
            )
            if unit.pts < 0:
                continue  # AAC priming
            (video if info.kind.is_video else audio).append(unit)
    return video, audio


def interleave(video: list[MediaUnit], audio: list[MediaUnit]) -> list[tuple[int, MediaUnit]]:
    """(stream index, unit) in dts order: video is stream 0 when present, audio the next."""
    tagged = [(0, u) for u in video] + [(1 if video else 0, u) for u in audio]
    return sorted(tagged, key=lambda iu: float(iu[1].dts * iu[1].info.time_base))


def probe(path: Path | str) -> dict[str, float | int | str]:
    """Decode everything: codecs, size, frame count, durations, audio RMS."""
    out: dict[str, float | int | str] = {"frames": 0, "samples": 0, "sq": 0.0}
    with av.open(str(path)) as c:
        for s in c.streams:
            if s.type == "video":
                out["vcodec"] = s.codec_context.name
                out["width"] = s.codec_context.width  # type: ignore[attr-defined]
                out["height"] = s.codec_context.height  # type: ignore[attr-defined]
            elif s.type == "audio":
                out["acodec"] = s.codec_context.codec.canonical_name
                out["rate"] = s.codec_context.sample_rate  # type: ignore[attr-defined]
        vts: list[float] = []
        ats: list[float] = []
        streams = [s for s in c.streams if s.type in ("video", "audio")]
        frames: list[av.VideoFrame | av.AudioFrame] = []
        try:
            for packet in c.demux(*streams):
                try:  # like a player: skip what does not decode
                    frames.extend(packet.decode())  # type: ignore[arg-type]
                except av.error.InvalidDataError:
                    out["bad"] = int(out.get("bad", 0)) + 1
        except av.error.FFmpegError:
            out["truncated"] = 1
        for frame in frames:
            t = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else None
            if isinstance(frame, av.VideoFrame):
                out["frames"] = int(out["frames"]) + 1
                if t is not None:
                    vts.append(t)
            else:
                arr = frame.to_ndarray().astype(np.float64)
                if frame.format.name.startswith("s16"):
                    arr = arr / 32768.0
                out["samples"] = int(out["samples"]) + frame.samples
                out["sq"] = float(out["sq"]) + float(np.sum(arr**2)) / max(1, arr.shape[0] if frame.format.is_planar else 1)
                if t is not None:
                    ats.append(t + frame.samples / frame.sample_rate)
    if vts:
        out["vstart"], out["vend"] = min(vts), max(vts)
        out["vdur"] = max(vts) - min(vts) + 1 / 25
    if int(out["samples"]):
        out["rms"] = (float(out["sq"]) / int(out["samples"])) ** 0.5
        out["adur"] = int(out["samples"]) / int(out["rate"])
    return out


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    return {
        "mp4": encode_media(d / "src.mp4"),  # AVCC + avcC, raw AAC + ASC
        "ts": encode_media(d / "src.ts", "mpegts"),  # Annex-B, ADTS
        "mp3": encode_media(d / "src.mp3", "mp3", video_codec=None, audio_codec="libmp3lame", seconds=6.0),
    }


def feed(sink: HlsSink | Mp4Sink | AudioFileSink, video: list[MediaUnit], audio: list[MediaUnit]) -> None:
    streams = ([video[0].info] if video else []) + ([audio[0].info] if audio else [])
    sink.open(streams)
    for index, unit in interleave(video, audio):
        sink.write(index, unit)
    sink.close()
    sink.close()  # idempotent


def playlist_segments(path: Path) -> list[str]:
    return segment_names(path.read_text())


# ---------------------------------------------------------------------------------------------
# HLS


@pytest.mark.parametrize("source", ["mp4", "ts"])
def test_hls_segments_avcc_and_annexb(tmp_path: Path, media: dict[str, Path], source: str) -> None:
    video, audio = demux_units(media[source])
    events: list[FileEvent] = []
    sink = HlsSink(target(tmp_path, "video", events.append), segment_seconds=2.0)
    feed(sink, video, audio)

    playlist = tmp_path / naming.playlist_name(BASE, "video")
    text = playlist.read_text()
    for tag in (
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        "#EXT-X-TARGETDURATION:2",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:EVENT",
        f"#EXT-X-TRTC-START-REC-TIME:{WALL0_MS}",
        "#EXT-X-PROGRAM-DATE-TIME:2033-05-18T03:33:20.000Z",
        "#EXT-X-ENDLIST",
    ):
        assert tag in text
    names = playlist_segments(playlist)
    assert len(names) == 5
    assert sorted(p.name for p in tmp_path.glob("*.ts")) == sorted(names)
    stamps = []
    for name in names:
        m = SEGMENT_RE.match(name)
        assert m, name
        stamps.append(m.group(1))
        seg = probe(tmp_path / name)  # every segment decodes on its own
        assert seg["vcodec"] == "h264" and seg["acodec"] == "aac"
        assert seg["frames"] == 50
        assert float(seg["rms"]) > 0.1
    assert stamps[0] == naming.utc_stamp(WALL0_MS) and stamps[1] == naming.utc_stamp(WALL0_MS + 2000)

    whole = probe(playlist)
    assert (whole["vcodec"], whole["width"], whole["height"], whole["acodec"]) == ("h264", 320, 240, "aac")
    assert whole["frames"] == 250
    assert abs(float(whole["vdur"]) - 10.0) <= 0.5
    assert abs(float(whole["adur"]) - 10.0) <= 0.5
    assert float(whole["rms"]) > 0.1

    kinds = [(e.kind, e.final) for e in events]
    assert kinds[0] == ("playlist", False) and kinds[-1] == ("playlist", True)
    segs = [e for e in events if e.kind == "segment"]
    assert [e.name for e in segs] == names
    assert segs[0].begin_ms == WALL0_MS and segs[0].end_ms == WALL0_MS + 2000
    assert segs[-1].end_ms is not None and abs(segs[-1].end_ms - (WALL0_MS + 10_000)) <= 100


def test_hls_playlist_lists_only_complete_segments(tmp_path: Path, media: dict[str, Path]) -> None:
    video, audio = demux_units(media["mp4"])
    sink = HlsSink(target(tmp_path, "video"), segment_seconds=2.0)
    sink.open([video[0].info, audio[0].info])
    playlist = tmp_path / naming.playlist_name(BASE, "video")
    for index, unit in interleave(video, audio):
        sink.write(index, unit)
        if float(unit.pts * unit.info.time_base) > 5.0:
            break
    listed = playlist_segments(playlist)
    assert len(listed) == 2  # 0–2 s and 2–4 s closed; 4–6 s still being written
    assert len(list(tmp_path.glob("*.ts"))) == 3
    assert "#EXT-X-ENDLIST" not in playlist.read_text()
    # (PyAV would wait for a live playlist to grow: check the listed segments one by one)
    assert sum(int(probe(tmp_path / name)["frames"]) for name in listed) == 100
    sink.close()
    assert "#EXT-X-ENDLIST" in playlist.read_text()


def test_hls_audio_only_cuts_at_target(tmp_path: Path, media: dict[str, Path]) -> None:
    _, audio = demux_units(media["mp4"])
    sink = HlsSink(target(tmp_path, "audio"), segment_seconds=3.0)
    feed(sink, [], audio)
    playlist = tmp_path / naming.playlist_name(BASE, "audio")
    names = playlist_segments(playlist)
    assert len(names) == 4 and all(n.endswith(".ts") and "_audio_" in n for n in names)
    whole = probe(playlist)
    assert whole["acodec"] == "aac" and "vcodec" not in whole
    assert abs(float(whole["adur"]) - 10.0) <= 0.5
    assert float(whole["rms"]) > 0.1


# ---------------------------------------------------------------------------------------------
# MP4


@pytest.mark.parametrize("source", ["mp4", "ts", "ts-no-extradata"])
def test_mp4_stream_copy(tmp_path: Path, media: dict[str, Path], source: str) -> None:
    video, audio = demux_units(media[source.split("-")[0]])
    if source == "ts-no-extradata":  # Annex-B without out-of-band SPS/PPS (as from RTP)
        info = replace(video[0].info, extradata=None)
        video = [replace(u, info=info) for u in video]
    if source.startswith("ts"):  # ADTS in, so give the sink the config a pipeline would derive
        from cloudrec.output.mp4 import complete_info

        ainfo = complete_info(audio[0].info, audio[0])
        audio = [replace(u, info=ainfo) for u in audio]
    events: list[FileEvent] = []
    sink = Mp4Sink(target(tmp_path, None, events.append), max_seconds=3600)
    feed(sink, video, audio)
    path = tmp_path / naming.file_name(BASE, None, 1, "mp4")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    got = probe(path)
    assert (got["vcodec"], got["width"], got["height"], got["acodec"], got["rate"]) == ("h264", 320, 240, "aac", 48000)
    assert got["frames"] == 250
    assert abs(float(got["vdur"]) - 10.0) <= 0.5 and abs(float(got["adur"]) - 10.0) <= 0.5
    assert float(got["rms"]) > 0.1
    assert "truncated" not in got and "bad" not in got
    assert [(e.kind, e.final, e.name) for e in events] == [("file", False, path.name), ("file", True, path.name)]
    assert events[1].end_ms is not None and abs(events[1].end_ms - WALL0_MS - 10_000) <= 100


def test_mp4_rotation_by_duration(tmp_path: Path, media: dict[str, Path]) -> None:
    video, audio = demux_units(media["mp4"])
    events: list[FileEvent] = []
    sink = Mp4Sink(target(tmp_path, None, events.append), max_seconds=3.0)
    feed(sink, video, audio)
    names = [naming.file_name(BASE, None, i, "mp4") for i in (1, 2, 3, 4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    total = 0
    for i, name in enumerate(names):
        info = probe(tmp_path / name)
        assert info["vcodec"] == "h264" and info["acodec"] == "aac"
        assert float(info["vstart"]) < 0.05  # time restarts at 0 in every file
        expected = 3.0 if i < 3 else 1.0
        assert abs(float(info["vdur"]) - expected) <= 0.5
        assert float(info["rms"]) > 0.1
        total += int(info["frames"])
    assert total == 250
    finished = [e for e in events if e.final]
    assert [e.begin_ms - WALL0_MS for e in finished] == [0, 3000, 6000, 9000]


def test_mp4_rotation_by_size(tmp_path: Path, media: dict[str, Path]) -> None:
    video, audio = demux_units(media["mp4"])
    size = sum(len(u.data) for u in video + audio)
    sink = Mp4Sink(target(tmp_path, None), max_seconds=3600, max_bytes=size // 3)
    feed(sink, video, audio)
    files = sorted(tmp_path.iterdir())
    assert len(files) in (3, 4)
    assert sum(int(probe(p)["frames"]) for p in files) == 250


def test_truncated_fragmented_mp4_still_plays(tmp_path: Path, media: dict[str, Path]) -> None:
    video, audio = demux_units(media["mp4"])
    sink = Mp4Sink(target(tmp_path / "out", None), max_seconds=3600)
    feed(sink, video, audio)
    full = tmp_path / "out" / naming.file_name(BASE, None, 1, "mp4")
    cut = tmp_path / "killed.mp4"
    shutil.copy(full, cut)
    with open(cut, "r+b") as f:  # kill -9 mid-fragment: the tail is missing
        f.truncate(full.stat().st_size - 5000)
    info = probe(cut)
    assert info["vcodec"] == "h264"
    assert float(info["vend"]) >= 10.0 - 2.0 - 0.1  # all but the last fragment (≤ 2 s)
    assert float(info["rms"]) > 0.1


# ---------------------------------------------------------------------------------------------
# Audio files


@pytest.mark.parametrize("source", ["mp4", "ts"])
def test_aac_file(tmp_path: Path, media: dict[str, Path], source: str) -> None:
    video, audio = demux_units(media[source])
    sink = AudioFileSink(target(tmp_path, "audio"), codec="aac", max_seconds=4.0)
    feed(sink, [], audio)
    names = [naming.file_name(BASE, "audio", i, "aac") for i in (1, 2, 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    durations = []
    for name in names:
        info = probe(tmp_path / name)
        assert info["acodec"] == "aac" and float(info["rms"]) > 0.1
        durations.append(float(info["adur"]))
    assert abs(sum(durations) - 10.0) <= 0.5


def test_mp3_file(tmp_path: Path, media: dict[str, Path]) -> None:
    _, audio = demux_units(media["mp3"])
    sink = AudioFileSink(target(tmp_path, None), codec="mp3", max_seconds=3600)
    feed(sink, [], audio)
    info = probe(tmp_path / naming.file_name(BASE, None, 1, "mp3"))
    assert info["acodec"] == "mp3" and abs(float(info["adur"]) - 6.0) <= 0.5 and float(info["rms"]) > 0.1


# ---------------------------------------------------------------------------------------------
# Factory


def _make(outputs: frozenset[Container], tmp_path: Path, **kw: bool) -> list[object]:
    args: dict[str, Any] = {"has_video": True, "has_audio": True}
    args.update(kw)
    return list(
        make_sinks(outputs, target(tmp_path, None), max_file_seconds=60, **args)
    )


def test_factory_compatibility_table(tmp_path: Path) -> None:
    sinks = _make(frozenset({Container.MP4, Container.HLS}), tmp_path)
    assert [type(s) for s in sinks] == [HlsSink, Mp4Sink]
    audio_only = _make(frozenset({Container.AAC}), tmp_path, has_video=False)
    assert [type(s) for s in audio_only] == [AudioFileSink]
    assert [type(s) for s in _make(frozenset({Container.AAC}), tmp_path, extract_audio=True)] == [AudioFileSink]
    for outputs, kw in [
        (frozenset({Container.AAC}), {}),  # video into an audio file
        (frozenset({Container.MP3}), {"has_video": False}),  # AAC audio into an MP3 file
        (frozenset({Container.AAC}), {"has_video": False, "has_audio": False}),
        (frozenset({Container.AAC}), {"has_audio": False, "extract_audio": True}),
        (frozenset(), {}),
    ]:
        with pytest.raises(InvalidRequest):
            _make(outputs, tmp_path, **kw)


def test_sink_factory_continues_indexes(tmp_path: Path, media: dict[str, Path]) -> None:
    video, audio = demux_units(media["mp4"])
    factory = SinkFactory(frozenset({Container.MP4, Container.HLS}), target(tmp_path, None, wall0_ms=0),
                          max_file_seconds=3600)
    streams = [video[0].info, audio[0].info]
    for n in range(2):
        sinks = factory(streams, WALL0_MS + n * 20_000)
        for s in sinks:
            s.open(streams)
        for index, unit in interleave(video[:100], audio[:180]):
            for s in sinks:
                s.write(index, unit)
        for s in sinks:
            s.close()
    assert (tmp_path / naming.file_name(BASE, None, 2, "mp4")).exists()
    playlist = tmp_path / naming.playlist_name(BASE, None)
    assert "#EXT-X-DISCONTINUITY" in playlist.read_text()
    assert len(playlist_segments(playlist)) == 2
    assert probe(playlist)["frames"] == 200

