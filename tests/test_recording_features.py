"""Recording features against a live room: custom layout and live changes, stream types,
subscription lists, MaxIdleTime, and a graceful stop of the whole service."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudrec.core import naming
from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.spec import TrackKind
from tests.support import (
    APP_ID, COLORS, Server, call, client, ingest, probe, rgb_close, running_server, sample_frame, served_samples,
    stop_all, storage_params, usersig, wait_ended, wait_for,
)

USERS = ["alice", "bob"]


@pytest.fixture(scope="module")
def media_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_samples(tmp_path_factory.mktemp("media2"), USERS, 40) as url:
        yield url


def test_custom_layout_modified_while_recording(server: Server, media_url: str) -> None:
    room = "9101"
    ingests = ingest(server, room, media_url, USERS)
    c = client(server)
    left_right = [{"Top": 0, "Left": 0, "Width": 320, "Height": 360, "UserId": "alice"},
                  {"Top": 0, "Left": 320, "Width": 320, "Height": 360, "UserId": "bob"},
                  {"Top": 300, "Left": 560, "Width": 80, "Height": 60, "UserId": "nobody", "ImageLayer": 5}]
    task = call(c, "CreateCloudRecording", {
        "SdkAppId": APP_ID, "RoomId": room, "UserId": "rec_9101", "UserSig": usersig("rec_9101"),
        "RecordParams": {"RecordMode": 2, "MaxIdleTime": 10, "OutputFormat": 3},
        "MixTranscodeParams": {"VideoParams": {"Width": 640, "Height": 360, "Fps": 15, "BitRate": 500000, "Gop": 1}},
        "MixLayoutParams": {"MixLayoutMode": 4, "BackGroundColor": "#FF00FF", "MixLayoutList": left_right},
        "StorageParams": storage_params("features"),
    }).TaskId
    desc = wait_for(lambda: (d := call(c, "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": task}))
                    and d.Status == "InProgress" and d.StorageFileList and d, 15, what="recording")
    begin_ms = desc.StorageFileList[0].BeginTimeStamp
    time.sleep(4)
    swapped = [{**left_right[0], "Left": 320}, {**left_right[1], "Left": 0}]  # full replacement: no 3rd pane
    modified_at = time.time()
    call(c, "ModifyCloudRecording", {"SdkAppId": APP_ID, "TaskId": task,
                                     "MixLayoutParams": {"MixLayoutMode": 4, "BackGroundColor": "#FF00FF", "MixLayoutList": swapped}})
    time.sleep(4)
    stop_all(server, task, ingests)
    wait_ended(server, task)
    mp4 = server.storage / "features" / task / f"{APP_ID}_{room}_1.mp4"
    assert [p.name for p in mp4.parent.glob("*.mp4")] == [mp4.name]  # one file: no new file on modify
    before = sample_frame(mp4, modified_at - begin_ms / 1000 - 2.0)
    after = sample_frame(mp4, modified_at - begin_ms / 1000 + 1.5)  # takes effect within 1 s
    assert rgb_close(before[180, 160], COLORS[0]) and rgb_close(before[180, 480], COLORS[1])
    assert rgb_close(before[330, 600], (255, 0, 255))  # absent user's pane shows the background
    assert rgb_close(after[180, 160], COLORS[1]) and rgb_close(after[180, 480], COLORS[0])
    assert not rgb_close(after[330, 600], (255, 0, 255))
    rep = probe(mp4)
    assert rep.video and rep.video["frames"] > 100


def test_stream_types_and_subscriptions(server: Server, media_url: str) -> None:
    room = "9102"
    ingests = ingest(server, room, media_url, USERS)
    c = client(server)
    common = {"SdkAppId": APP_ID, "RoomId": room, "StorageParams": storage_params("features")}
    audio_mix = call(c, "CreateCloudRecording", {**common, "UserId": "rec_a", "UserSig": usersig("rec_a"),
        "RecordParams": {"RecordMode": 2, "StreamType": 1, "OutputFormat": 3, "MaxIdleTime": 5}}).TaskId
    video_single = call(c, "CreateCloudRecording", {**common, "UserId": "rec_v", "UserSig": usersig("rec_v"),
        "RecordParams": {"RecordMode": 1, "StreamType": 2, "OutputFormat": 0, "MaxIdleTime": 5,
                         "SubscribeStreamUserIds": {"SubscribeVideoUserIds": ["al.*$"]}}}).TaskId
    merged_single = call(c, "CreateCloudRecording", {**common, "UserId": "rec_m", "UserSig": usersig("rec_m"),
        "RecordParams": {"RecordMode": 1, "AvMerge": 1, "OutputFormat": 0, "MaxIdleTime": 5,
                         "SubscribeStreamUserIds": {"UnSubscribeAudioUserIds": ["alice"], "UnSubscribeVideoUserIds": ["alice"]}}}).TaskId
    aac_mix = call(c, "CreateCloudRecording", {**common, "UserId": "rec_aac", "UserSig": usersig("rec_aac"),
        "RecordParams": {"RecordMode": 2, "OutputFormat": 2, "MaxIdleTime": 5}}).TaskId
    time.sleep(6)
    for t in ingests:  # publishers leave: every task stops itself after MaxIdleTime
        call(c, "StopStreamIngest", {"SdkAppId": APP_ID, "TaskId": t})
    left = time.monotonic()
    for t in (audio_mix, video_single, merged_single, aac_mix):
        wait_ended(server, t)
    assert 4 <= time.monotonic() - left <= 12
    key = RoomKey(APP_ID, room, RoomIdType.INTEGER)

    rep = probe(server.storage / "features" / audio_mix / f"{APP_ID}_{room}_1.mp4")
    assert rep.video is None and rep.audio and rep.audio["rms"] > 0.05 and rep.duration > 4

    out = server.storage / "features" / aac_mix  # OutputFormat 2: HLS with video, plus an audio-only AAC file
    rep = probe(out / f"{APP_ID}_{room}_1.aac")
    assert rep.video is None and rep.audio and rep.audio["codec"] == "aac" and rep.audio["rms"] > 0.05
    assert probe(out / f"{APP_ID}_{room}.m3u8").video is not None

    out = server.storage / "features" / video_single
    names = sorted(p.name for p in out.glob("*.m3u8"))
    assert names == [naming.playlist_name(naming.user_base(key, "alice", TrackKind.MAIN), "video")]
    rep = probe(out / names[0])
    assert rep.audio is None and rep.video and rep.video["frames"] > 50

    out = server.storage / "features" / merged_single
    names = sorted(p.name for p in out.glob("*.m3u8"))
    assert names == [naming.playlist_name(naming.user_base(key, "bob", TrackKind.MAIN), "audio_video")]
    rep = probe(out / names[0])
    assert rep.audio and rep.video and rep.audio["rms"] > 0.05


def test_sigterm_finalizes_running_recordings(tmp_path: Path, media_url: str) -> None:
    with running_server(tmp_path / "svc") as server:
        room = "9103"
        ingests = ingest(server, room, media_url, USERS[:1])
        c = client(server)
        mixed = call(c, "CreateCloudRecording", {
            "SdkAppId": APP_ID, "RoomId": room, "UserId": "rec_t", "UserSig": usersig("rec_t"),
            "RecordParams": {"RecordMode": 2, "OutputFormat": 1, "MaxIdleTime": 60},
            "StorageParams": storage_params("term")}).TaskId
        wait_for(lambda: call(c, "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": mixed}).Status == "InProgress",
                 15, what="recording")
        time.sleep(4)
        assert server.stop(signal.SIGTERM) == 0
        out = server.storage / "term" / mixed
        playlist = (out / f"{APP_ID}_{room}.m3u8").read_text()
        assert "#EXT-X-ENDLIST" in playlist
        assert probe(out / f"{APP_ID}_{room}_1.mp4").duration > 3
        assert "recording ended" in server.log_text()
    assert ingests
    with running_server(tmp_path / "svc") as again:  # the same data dir: the task has ended for good
        from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

        with pytest.raises(TencentCloudSDKException) as info:
            call(client(again), "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": mixed})
        assert info.value.code == "ResourceNotFound"
