"""SinglePipeline end to end: real media as room-clock units → real sinks → files reopened with PyAV."""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from cloudrec.core.naming import A8Names
from cloudrec.core import naming
from cloudrec.core.media import FileEvent, MediaUnit, PacketSink, StreamInfo
from cloudrec.core.spec import AudioEncoding, Container, VideoEncoding
from cloudrec.media.single import SinglePipeline
from cloudrec.output.factory import SinkFactory
from cloudrec.output.target import SinkTarget
from tests.test_output_sinks import BASE, demux_units, encode_media, playlist_segments, probe

ROOM_T0 = 5000.0  # the room clock (monotonic seconds) when the test media starts
WALL_NOW = 2_000_000_000.0
CLOCK_NOW = ROOM_T0 + 30.0


class ListSource:
    """A track fed from a list; each `drain` releases the next `step` seconds of media."""

    def __init__(self, units: list[MediaUnit], step: float = 0.2) -> None:
        self._units = sorted(units, key=lambda u: u.dts * u.info.time_base)
        self._cursor = min((float(u.dts * u.info.time_base) for u in units), default=0.0)
        self._step = step
        self.ended = False
        self.dropped = 0

    def drain(self) -> list[MediaUnit]:
        if not self._units:
            self.ended = True
            return []
        self._cursor += self._step
        out = [u for u in self._units if float(u.dts * u.info.time_base) < self._cursor]
        self._units = self._units[len(out) :]
        return out


def run_pipeline(
    tmp_path: Path,
    video: list[MediaUnit] | None,
    audio: list[MediaUnit] | None,
    outputs: frozenset[Container],
    *,
    track_type: str | None = None,
    max_file_seconds: float = 3600,
) -> tuple[SinglePipeline, list[FileEvent], SinkFactory]:
    events: list[FileEvent] = []
    target = SinkTarget(directory=tmp_path, names=A8Names(BASE, track_type), track_type=track_type, user_id="u1", media="main", wall0_ms=0,
                        on_event=events.append)
    factory = SinkFactory(outputs, target, max_file_seconds=max_file_seconds, segment_seconds=2.0)

    def sinks_factory(streams: list[StreamInfo], begin_ms: int) -> list[PacketSink]:
        return factory(streams, begin_ms)

    pipeline = SinglePipeline(
        video=ListSource(video) if video is not None else None,
        audio=ListSource(audio) if audio is not None else None,
        sinks_factory=sinks_factory,
        video_encoding=VideoEncoding(fps=25, gop_seconds=1, bitrate=400_000),
        audio_encoding=AudioEncoding(),
        clock=lambda: CLOCK_NOW,
        wall_clock=lambda: WALL_NOW,
        poll_seconds=0.001,
    )
    stop = threading.Event()
    thread = threading.Thread(target=pipeline.run, args=(stop,))
    thread.start()
    thread.join(timeout=60)
    if thread.is_alive():
        stop.set()
        thread.join(timeout=10)
        pytest.fail("pipeline did not finish")
    return pipeline, events, factory


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("single-src")
    return {
        "mp4": encode_media(d / "a.mp4", seconds=8.0),
        "small": encode_media(d / "s.mp4", seconds=4.0),
        "large": encode_media(d / "l.mp4", seconds=4.0, width=480, height=360),
        "webm": encode_media(d / "v.webm", seconds=4.0, video_codec="libvpx", audio_codec="libopus"),
    }


def test_stream_copy_starts_at_first_keyframe(tmp_path: Path, sources: dict[str, Path]) -> None:
    # audio runs from ROOM_T0; video only from ROOM_T0 + 0.5 → the file starts there
    _, audio = demux_units(sources["mp4"], offset=ROOM_T0)
    video, _ = demux_units(sources["mp4"], offset=ROOM_T0 + 0.5)
    pipeline, events, _ = run_pipeline(tmp_path, video, audio, frozenset({Container.HLS, Container.MP4}), track_type="video")

    begin_ms = round(WALL_NOW * 1000 - (CLOCK_NOW - ROOM_T0 - 0.5) * 1000)
    assert pipeline.begin_ms == begin_ms
    assert pipeline.dropped >= 20  # the audio before the keyframe (0.5 s ≈ 23 AAC frames)
    mp4 = tmp_path / naming.file_name(BASE, "video", 1, "mp4")
    info = probe(mp4)
    assert (info["vcodec"], info["width"], info["height"], info["acodec"]) == ("h264", 320, 240, "aac")
    assert info["frames"] == 200
    assert float(info["vstart"]) < 0.05
    assert abs(float(info["vdur"]) - 8.0) <= 0.5 and abs(float(info["adur"]) - 7.5) <= 0.5
    assert float(info["rms"]) > 0.1

    playlist = tmp_path / naming.playlist_name(BASE, "video")
    names = playlist_segments(playlist)
    assert names[0] == naming.segment_name(BASE, "video", begin_ms)
    assert all((tmp_path / n).exists() for n in names)
    whole = probe(playlist)
    assert whole["frames"] == 200 and float(whole["rms"]) > 0.1
    assert f"#EXT-X-TRTC-START-REC-TIME:{begin_ms}" in playlist.read_text()
    assert {e.kind for e in events} == {"playlist", "segment", "file"}
    assert pipeline.units_written == 200 + len(audio) - pipeline.dropped


def test_transcodes_vp8_and_opus(tmp_path: Path, sources: dict[str, Path]) -> None:
    video, audio = demux_units(sources["webm"], offset=ROOM_T0)
    assert video[0].info.codec == "vp8" and audio[0].info.codec == "opus"
    pipeline, _, _ = run_pipeline(tmp_path, video, audio, frozenset({Container.MP4}))
    info = probe(tmp_path / naming.file_name(BASE, None, 1, "mp4"))
    assert (info["vcodec"], info["width"], info["height"]) == ("h264", 320, 240)
    assert (info["acodec"], info["rate"]) == ("aac", 48000)
    assert abs(float(info["vdur"]) - 4.0) <= 0.5 and abs(float(info["adur"]) - 4.0) <= 0.5
    assert int(info["frames"]) >= 95
    assert float(info["rms"]) > 0.1
    assert pipeline.errors == 0


def test_stream_change_starts_new_files(tmp_path: Path, sources: dict[str, Path]) -> None:
    v1, a1 = demux_units(sources["small"], offset=ROOM_T0)
    v2, a2 = demux_units(sources["large"], offset=ROOM_T0 + 4.0)
    audio_info = a1[0].info
    a2 = [replace(u, info=audio_info) for u in a2]  # same audio parameters throughout
    pipeline, events, _ = run_pipeline(tmp_path, v1 + v2, a1 + a2, frozenset({Container.MP4, Container.HLS}))
    assert pipeline.sets == 2
    first = probe(tmp_path / naming.file_name(BASE, None, 1, "mp4"))
    second = probe(tmp_path / naming.file_name(BASE, None, 2, "mp4"))
    assert (first["width"], first["height"], first["frames"]) == (320, 240, 100)
    assert (second["width"], second["height"], second["frames"]) == (480, 360, 100)
    assert abs(float(second["vdur"]) - 4.0) <= 0.5 and float(second["rms"]) > 0.1
    playlist = tmp_path / naming.playlist_name(BASE, None)
    text = playlist.read_text()
    assert "#EXT-X-DISCONTINUITY" in text and text.rstrip().endswith("#EXT-X-ENDLIST")
    names = playlist_segments(playlist)
    assert len(names) == 4 and all((tmp_path / n).exists() for n in names)
    assert sum(int(probe(tmp_path / n)["frames"]) for n in names) == 200
    files = [e for e in events if e.kind == "file" and e.final]
    assert files[1].begin_ms - files[0].begin_ms == 4000


def test_survives_garbage_units(tmp_path: Path, sources: dict[str, Path]) -> None:
    video, audio = demux_units(sources["mp4"], offset=ROOM_T0)
    junk = os.urandom(3000)
    bad_v = replace(video[60], data=junk, pts=video[60].pts + 1, dts=video[60].dts + 1, key=False)
    bad_a = replace(audio[100], data=junk[:300], pts=audio[100].pts + 1, dts=audio[100].dts + 1)
    webm_v, webm_a = demux_units(sources["webm"], offset=ROOM_T0)
    bad_vp8 = replace(webm_v[30], data=junk, pts=webm_v[30].pts + 1, dts=webm_v[30].dts + 1, key=False)

    copy, _, _ = run_pipeline(tmp_path / "copy", video + [bad_v], audio + [bad_a], frozenset({Container.MP4, Container.HLS}))
    assert copy.errors == 1  # the malformed H.264 unit is skipped before any muxer sees it
    info = probe(tmp_path / "copy" / naming.file_name(BASE, None, 1, "mp4"))
    assert int(info["frames"]) >= 199 and abs(float(info["vdur"]) - 8.0) <= 0.5
    assert int(probe(tmp_path / "copy" / naming.playlist_name(BASE, None))["frames"]) >= 199

    pipeline, _, _ = run_pipeline(tmp_path / "transcode", webm_v + [bad_vp8], webm_a, frozenset({Container.MP4}))
    info = probe(tmp_path / "transcode" / naming.file_name(BASE, None, 1, "mp4"))
    assert int(info["frames"]) >= 90 and abs(float(info["vdur"]) - 4.0) <= 0.5
    assert pipeline.errors + pipeline.dropped >= 1


def test_audio_only_aac_and_rotation(tmp_path: Path, sources: dict[str, Path]) -> None:
    _, audio = demux_units(sources["mp4"], offset=ROOM_T0)
    pipeline, events, _ = run_pipeline(
        tmp_path, None, audio, frozenset({Container.AAC, Container.HLS}), track_type="audio", max_file_seconds=3.0
    )
    begin_ms = round(WALL_NOW * 1000 - (CLOCK_NOW - audio[0].seconds) * 1000)
    assert pipeline.begin_ms == begin_ms
    names = [naming.file_name(BASE, "audio", i, "aac") for i in (1, 2, 3)]
    total = 0.0
    for name in names:
        info = probe(tmp_path / name)
        assert info["acodec"] == "aac" and float(info["rms"]) > 0.1
        total += float(info["adur"])
    assert abs(total - 8.0) <= 0.5
    hls = probe(tmp_path / naming.playlist_name(BASE, "audio"))
    assert abs(float(hls["adur"]) - 8.0) <= 0.5
    assert [e.name for e in events if e.kind == "file" and e.final] == names


def test_video_only_and_stop_event(tmp_path: Path, sources: dict[str, Path]) -> None:
    video, _ = demux_units(sources["small"], offset=ROOM_T0)
    events: list[FileEvent] = []
    target = SinkTarget(directory=tmp_path, names=A8Names(BASE, "video"), track_type="video", user_id="u1", media="main", wall0_ms=0,
                        on_event=events.append)
    factory = SinkFactory(frozenset({Container.MP4}), target, max_file_seconds=3600)

    class Endless(ListSource):
        def drain(self) -> list[MediaUnit]:
            out = super().drain()
            self.ended = False  # a live track that never ends by itself
            return out

    pipeline = SinglePipeline(
        video=Endless(video),
        audio=None,
        sinks_factory=lambda s, b: factory(s, b),
        video_encoding=VideoEncoding(),
        audio_encoding=AudioEncoding(),
        poll_seconds=0.001,
    )
    stop = threading.Event()
    thread = threading.Thread(target=pipeline.run, args=(stop,))
    thread.start()
    thread.join(timeout=2)
    assert thread.is_alive()
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    info = probe(tmp_path / naming.file_name(BASE, "video", 1, "mp4"))
    assert info["frames"] == 100 and "acodec" not in info
    assert events[-1].final
    pipeline.close()  # idempotent after run


