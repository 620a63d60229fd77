"""`FlvSink` with real media: H.264 + AAC stream copy into FLV, rotation, a recorder killed mid-file,
and the factory wiring. Every file is reopened with PyAV and decoded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import av
import pytest

from cloudrec.core import naming
from cloudrec.core.media import FileEvent
from cloudrec.core.spec import Container
from cloudrec.errors import InvalidRequest
from cloudrec.output.factory import make_sinks
from cloudrec.output.flv import FlvSink
from cloudrec.output.mp4 import complete_info
from tests.test_output_sinks import BASE, WALL0_MS, demux_units, encode_media, feed, probe, target


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("flv-media")
    return {"mp4": encode_media(d / "src.mp4"), "ts": encode_media(d / "src.ts", "mpegts")}  # 10 s, 25 fps, GOP 1 s


def streams_of(path: Path) -> tuple[list[str], float]:
    with av.open(str(path)) as c:
        assert c.format.name == "flv"
        return sorted(s.type for s in c.streams), (c.duration or 0) / 1_000_000


@pytest.mark.parametrize("source", ["mp4", "ts", "ts-no-extradata"])
def test_flv_stream_copy(tmp_path: Path, media: dict[str, Path], source: str) -> None:
    video, audio = demux_units(media[source.split("-")[0]])
    if source == "ts-no-extradata":  # Annex-B without out-of-band SPS/PPS (as from RTP): taken from the first keyframe
        info = replace(video[0].info, extradata=None)
        video = [replace(u, info=info) for u in video]
    if source.startswith("ts"):  # ADTS in: the config a pipeline derives, ADTS headers stripped by the sink
        ainfo = complete_info(audio[0].info, audio[0])
        audio = [replace(u, info=ainfo) for u in audio]
    events: list[FileEvent] = []
    feed(FlvSink(target(tmp_path, None, events.append), max_seconds=3600), video, audio)
    path = tmp_path / naming.file_name(BASE, None, 1, "flv")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert streams_of(path) == (["audio", "video"], pytest.approx(10.0, abs=0.1))
    got = probe(path)
    assert (got["vcodec"], got["width"], got["height"], got["acodec"], got["rate"]) == ("h264", 320, 240, "aac", 48000)
    assert got["frames"] == 250 and "bad" not in got and "truncated" not in got
    assert abs(float(got["vdur"]) - 10.0) <= 0.1 and abs(float(got["adur"]) - 10.0) <= 0.1
    assert float(got["rms"]) > 0.1
    assert [(e.kind, e.final, e.name) for e in events] == [("file", False, path.name), ("file", True, path.name)]
    assert events[1].end_ms is not None and abs(events[1].end_ms - WALL0_MS - 10_000) <= 100


def test_flv_rotation_by_duration(tmp_path: Path, media: dict[str, Path]) -> None:
    video, audio = demux_units(media["mp4"])
    events: list[FileEvent] = []
    feed(FlvSink(target(tmp_path, None, events.append), max_seconds=4.0), video, audio)
    names = [naming.file_name(BASE, None, i, "flv") for i in (1, 2, 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    frames = 0
    for name, expected in zip(names, (4.0, 4.0, 2.0)):
        got = probe(tmp_path / name)
        assert float(got["vstart"]) < 0.05  # time restarts at 0 in every file
        assert abs(float(got["vdur"]) - expected) <= 0.1 and float(got["rms"]) > 0.1
        assert streams_of(tmp_path / name)[0] == ["audio", "video"]
        frames += int(got["frames"])
    assert frames == 250
    assert [e.begin_ms - WALL0_MS for e in events if e.final] == [0, 4000, 8000]


def test_killed_recorder_leaves_a_playable_flv(tmp_path: Path, media: dict[str, Path]) -> None:
    """A child process writes 6 s of a 10 s recording and is killed with SIGKILL (no close, no trailer)."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from pathlib import Path
        from tests.test_output_sinks import demux_units, interleave, target
        from cloudrec.output.flv import FlvSink
        video, audio = demux_units(Path({str(media['mp4'])!r}))
        sink = FlvSink(target(Path({str(tmp_path)!r}), None), max_seconds=3600)
        sink.open([video[0].info, audio[0].info])
        for index, unit in interleave(video, audio):
            if float(unit.dts * unit.info.time_base) >= 6.0:
                os.kill(os.getpid(), signal.SIGKILL)
            sink.write(index, unit)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    path = tmp_path / naming.file_name(BASE, None, 1, "flv")
    kinds, _ = streams_of(path)
    assert kinds == ["audio", "video"]
    got = probe(path)
    assert got["vcodec"] == "h264" and "bad" not in got
    assert 145 <= int(got["frames"]) <= 150  # every frame written before the kill
    assert float(got["vend"]) >= 5.7 and float(got["rms"]) > 0.1


def test_factory_makes_flv_sinks(tmp_path: Path) -> None:
    sinks = make_sinks(frozenset({Container.FLV, Container.MP4}), target(tmp_path, None), max_file_seconds=60,
                       has_video=True, has_audio=True)
    assert sorted(type(s).__name__ for s in sinks) == ["FlvSink", "Mp4Sink"]
    flv = next(s for s in sinks if isinstance(s, FlvSink))
    assert flv.max_seconds == 60
    with pytest.raises(InvalidRequest):  # FLV holds H.264 and AAC only
        make_sinks(frozenset({Container.FLV}), target(tmp_path, None), max_file_seconds=60, has_video=True,
                   has_audio=True, audio_codec="opus")
    with pytest.raises(InvalidRequest):
        make_sinks(frozenset({Container.FLV}), target(tmp_path, None), max_file_seconds=60, has_video=True,
                   has_audio=False, video_codec="vp8")
