"""StartStreamIngest from every kind of source we can serve here: MP4, FLV, MPEG-TS and HLS over
HTTP, and RTMP (ffmpeg as the RTMP server); RepeatNum; a broken URL; Describe/Stop/Update."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import av
import imageio_ffmpeg
import pytest
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from cloudrec.core import naming
from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.spec import TrackKind
from cloudrec.tools.samples import PALETTE, SampleSpec, write_sample
from tests.support import (
    APP_ID, Server, call, client, free_port, http_files, probe, storage_params, usersig, wait_ended, wait_for,
)


def to_hls(src: Path, playlist: Path) -> None:
    """Remux `src` into a VOD HLS playlist with PyAV's hls muxer."""
    with av.open(str(src)) as inp, av.open(str(playlist), "w", format="hls",
                                           options={"hls_time": "2", "hls_list_size": "0", "hls_playlist_type": "vod"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("sources")
    for i, ext in enumerate(("mp4", "flv", "ts")):
        write_sample(SampleSpec(path=root / f"clip.{ext}", label=ext, color=PALETTE[i], seconds=20, text=False))
    write_sample(SampleSpec(path=root / "short.mp4", label="short", color=PALETTE[4], seconds=3, text=False))
    (root / "hls").mkdir()
    to_hls(root / "clip.mp4", root / "hls" / "index.m3u8")
    with http_files(root) as url:
        yield url, root


def start(server: Server, room: str, user: str, url: str, **extra: object) -> str:
    return str(call(client(server), "StartStreamIngest", {
        "SdkAppId": APP_ID, "RoomId": room, "RoomIdType": 0, "UserId": user, "UserSig": usersig(user),
        "StreamUrl": url, **extra}).TaskId)


def ingest_status(server: Server, task: str) -> str:
    return str(call(client(server), "DescribeStreamIngest", {"SdkAppId": APP_ID, "TaskId": task}).Status)


def test_every_source_kind_is_recorded(server: Server, sources: tuple[str, Path]) -> None:
    url, root = sources
    room = "ingest-kinds"
    rtmp_port = free_port()
    ffmpeg = subprocess.Popen(  # ffmpeg serves the clip as an RTMP server; our ingest is its client
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re", "-i", str(root / "clip.mp4"),
         "-c", "copy", "-f", "flv", "-listen", "1", f"rtmp://127.0.0.1:{rtmp_port}/live/clip"])
    try:
        time.sleep(0.5)
        users = {"mp4": f"{url}/clip.mp4", "flv": f"{url}/clip.flv", "ts": f"{url}/clip.ts",
                 "hls": f"{url}/hls/index.m3u8", "rtmp": f"rtmp://127.0.0.1:{rtmp_port}/live/clip"}
        tasks = {u: start(server, room, u, src) for u, src in users.items()}
        rec = call(client(server), "CreateCloudRecording", {
            "SdkAppId": APP_ID, "RoomId": room, "RoomIdType": 0, "UserId": "rec_kinds", "UserSig": usersig("rec_kinds"),
            "RecordParams": {"RecordMode": 1, "AvMerge": 1, "OutputFormat": 3, "MaxIdleTime": 5},
            "StorageParams": storage_params("ingest")}).TaskId
        wait_for(lambda: all(ingest_status(server, t) == "InProgress" for t in tasks.values()), 10, what="ingests")
        time.sleep(7)
        for t in tasks.values():
            call(client(server), "StopStreamIngest", {"SdkAppId": APP_ID, "TaskId": t})
        wait_for(lambda: all(ingest_status(server, t) == "NotExist" for t in tasks.values()), 10, what="ingests stopped")
        call(client(server), "DeleteCloudRecording", {"SdkAppId": APP_ID, "TaskId": rec})
        wait_ended(server, rec)
    finally:
        ffmpeg.kill()
        ffmpeg.wait()
    key = RoomKey(APP_ID, room, RoomIdType.STRING)
    out = server.storage / "ingest" / rec
    for user in users:
        files = sorted(out.glob(naming.user_base(key, user, TrackKind.MAIN) + "*.mp4"))
        assert files, (user, sorted(p.name for p in out.iterdir()))
        rep = probe(files[0])
        assert rep.video and rep.audio and rep.audio["rms"] > 0.05, user
        assert rep.duration > 5, (user, rep.duration)


def test_repeat_broken_url_and_update(server: Server, sources: tuple[str, Path]) -> None:
    url, _ = sources
    room = "ingest-repeat"
    rec = call(client(server), "CreateCloudRecording", {
        "SdkAppId": APP_ID, "RoomId": room, "RoomIdType": 0, "UserId": "rec_rep", "UserSig": usersig("rec_rep"),
        "RecordParams": {"RecordMode": 1, "AvMerge": 1, "OutputFormat": 3, "MaxIdleTime": 5},
        "StorageParams": storage_params("ingest")}).TaskId
    looped = start(server, room, "looped", f"{url}/short.mp4", RepeatNum=2)
    broken = start(server, room, "broken", f"{url}/missing.mp4")
    wait_for(lambda: ingest_status(server, broken) == "NotExist", 15, what="broken ingest to end")
    assert ingest_status(server, looped) == "InProgress"
    # UpdateStreamIngest on a running task and errors for unknown ones
    with pytest.raises(TencentCloudSDKException) as info:
        call(client(server), "StopStreamIngest", {"SdkAppId": APP_ID, "TaskId": "nope"})
    assert info.value.code == "ResourceNotFound"
    wait_for(lambda: ingest_status(server, looped) == "NotExist", 15, what="two plays of a 3 s clip")
    wait_ended(server, rec)  # MaxIdleTime after the looped user left
    key = RoomKey(APP_ID, room, RoomIdType.STRING)
    files = sorted((server.storage / "ingest" / rec).glob(naming.user_base(key, "looped", TrackKind.MAIN) + "*.mp4"))
    assert len(files) == 1
    rep = probe(files[0])
    assert 5.0 <= rep.duration <= 6.6, rep.duration  # two seamless plays of 3 s, one continuous file
    assert not list((server.storage / "ingest" / rec).glob(naming.user_base(key, "broken", TrackKind.MAIN) + "*"))


def test_ingest_validation(server: Server) -> None:
    def code(**params: object) -> str:
        base = {"SdkAppId": APP_ID, "RoomId": "r1", "RoomIdType": 0, "UserId": "u", "UserSig": usersig("u"),
                "StreamUrl": "http://127.0.0.1:1/x.mp4"}
        base.update(params)
        with pytest.raises(TencentCloudSDKException) as info:
            call(client(server), "StartStreamIngest", {k: v for k, v in base.items() if v is not None})
        return str(info.value.code)

    assert code(StreamUrl=None) == "MissingParameter"
    assert code(StreamUrl="file:///etc/passwd") == "InvalidParameter"
    assert code(RepeatNum=0) == "InvalidParameter.OutOfRange"
    assert code(MaxDuration=20000) == "InvalidParameter.OutOfRange"
    assert code(UserSig=usersig("other")) == "InvalidParameter.UserSig"
    with pytest.raises(TencentCloudSDKException) as info:  # a running task cannot be pointed at a local file either
        call(client(server), "UpdateStreamIngest", {"SdkAppId": APP_ID, "TaskId": "nope", "StreamUrl": "file:///etc/passwd"})
    assert info.value.code == "InvalidParameter"
