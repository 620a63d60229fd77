"""End to end: 4 users pulled into a room by StartStreamIngest, recorded mixed and per user.

Everything goes through the official TRTC SDK; every output is reopened with PyAV.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cloudrec.core import naming
from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.spec import TrackKind
from cloudrec.storage.playlist import segment_names
from tests.support import (
    APP_ID, COLORS, USERS, Server, call, client, ingest, probe, rgb_close, sample_frame, served_samples, storage_params,
    stop_all, usersig, wait_ended, wait_for,
)

STOP_DELAY = 0.3  # DeleteCloudRecording → the session sees it → the pipeline stops: typically 0.1–0.3 s


@pytest.fixture(scope="module")
def media_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_samples(tmp_path_factory.mktemp("media"), USERS, 30) as url:
        yield url


def test_mixed_grid_recording(server: Server, media_url: str) -> None:
    room = "8101"
    ingests = ingest(server, room, media_url, USERS)
    c = client(server)
    task = call(c, "CreateCloudRecording", {
        "SdkAppId": APP_ID, "RoomId": room, "UserId": "rec_8101", "UserSig": usersig("rec_8101"),
        "RecordParams": {"RecordMode": 2, "MaxIdleTime": 10, "OutputFormat": 1},
        "MixTranscodeParams": {"VideoParams": {"Width": 640, "Height": 360, "Fps": 15, "BitRate": 800000, "Gop": 2},
                               "AudioParams": {"SampleRate": 1, "Channel": 2, "BitRate": 64000}},
        "MixLayoutParams": {"MixLayoutMode": 3, "BackGroundColor": "#000000"},
        "StorageParams": storage_params("mixbucket", ["rec", "mixed"]),
    }).TaskId
    desc = wait_for(lambda: (d := call(c, "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": task}))
                    and d.Status == "InProgress" and d.StorageFileList and d, 15, what="InProgress with files")
    files = {f.FileName: f for f in desc.StorageFileList}
    assert f"{APP_ID}_{room}.m3u8" in files
    begin_ms = files[f"{APP_ID}_{room}.m3u8"].BeginTimeStamp
    assert abs(begin_ms / 1000 - time.time()) < 20
    time.sleep(7)
    stopped = stop_all(server, task, ingests)
    wait_ended(server, task)

    out = server.storage / "mixbucket" / "rec" / "mixed" / task
    mp4 = out / f"{APP_ID}_{room}_1.mp4"
    playlist = out / f"{APP_ID}_{room}.m3u8"
    assert mp4.exists() and playlist.exists(), sorted(p.name for p in out.iterdir())
    # The file covers task time 0 (BeginTimeStamp) up to the moment the stop reached the pipeline:
    # on stop it renders the rest of the timeline (the latency window included) at once.
    expected = stopped - begin_ms / 1000 + STOP_DELAY
    for path in (mp4, playlist):
        rep = probe(path)
        assert rep.video and rep.video["codec"] == "h264" and (rep.video["width"], rep.video["height"]) == (640, 360)
        assert rep.audio and rep.audio["codec"] == "aac" and rep.audio["sample_rate"] == 48000 and rep.audio["channels"] == 2
        assert abs(rep.duration - expected) <= STOP_DELAY + 0.3, (path.name, rep.duration, expected)
        assert rep.audio["rms"] > 0.01
        assert abs(rep.video["frames"] / rep.duration - 15) <= 1.0  # requested fps
    # requested bitrates are a ceiling (this flat test pattern needs far less)
    assert mp4.stat().st_size * 8 / expected <= 1.5 * (800_000 + 64_000)
    # Grid 2×2: each quadrant shows one user's colour (entry order is not fixed across ingests).
    frame = sample_frame(mp4, 5.0)
    centres = [frame[90, 160], frame[90, 480], frame[270, 160], frame[270, 480]]
    for color in COLORS:
        assert any(rgb_close(px, color) for px in centres), (color, centres)
    # segments listed in the playlist exist and are named per A.8
    names = segment_names(playlist.read_text())
    assert names and all((out / n).exists() and n.startswith(f"{APP_ID}_{room}_") and n.endswith(".ts") for n in names)
    assert "#EXT-X-TRTC-START-REC-TIME" in playlist.read_text() and "#EXT-X-ENDLIST" in playlist.read_text()


def test_single_stream_recording(server: Server, media_url: str) -> None:
    room = "8102"
    users = USERS[:2]
    ingests = ingest(server, room, media_url, users)
    c = client(server)
    task = call(c, "CreateCloudRecording", {
        "SdkAppId": APP_ID, "RoomId": room, "UserId": "rec_8102", "UserSig": usersig("rec_8102"),
        "RecordParams": {"RecordMode": 1, "MaxIdleTime": 10, "OutputFormat": 1, "AvMerge": 0},
        "StorageParams": storage_params("singlebucket"),
    }).TaskId
    wait_for(lambda: len(call(c, "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": task}).StorageFileList) >= 4,
             15, what="4 playlists")
    time.sleep(6)
    desc = call(c, "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": task})
    assert desc.Status == "InProgress"
    listed = {(f.UserId, f.TrackType): f.FileName for f in desc.StorageFileList}
    assert set(listed) == {(u, t) for u in users for t in ("audio", "video")}
    stop_all(server, task, ingests)
    wait_ended(server, task)
    out = server.storage / "singlebucket" / task
    key = RoomKey(APP_ID, room, RoomIdType.INTEGER)
    for user, color in zip(users, COLORS):
        base = naming.user_base(key, user, TrackKind.MAIN)
        video = probe(out / f"{base}_video.m3u8")
        audio = probe(out / f"{base}_audio.m3u8")
        assert video.video and video.video["codec"] == "h264" and video.video["width"] == 640 and video.audio is None
        assert audio.audio and audio.audio["codec"] == "aac" and audio.video is None and audio.audio["rms"] > 0.05
        assert video.duration > 5 and abs(video.duration - audio.duration) < 1.5  # video starts at a keyframe (GOP 1 s)
        assert rgb_close(sample_frame(out / f"{base}_video.m3u8", 1.0)[180, 320], color)
        mp4s = sorted(out.glob(f"{base}*.mp4"))
        assert mp4s, "OutputFormat 1 also writes MP4"
        for m in mp4s:
            assert probe(m).duration > 5
