"""A real ARTC recording end to end: publishers (TRTC ingest into the string room, and ffmpeg over RTMP with an
ARTC token), a single and a mixed task started with the official SDK (MP4 + HLS + MP3 with name patterns),
a layout update, stop, the file lists, every file reopened with PyAV, and the signed callbacks."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import pytest

from cloudrec.dialects.aliyun.tokens import classic_token
from cloudrec.storage.playlist import segment_names
from cloudrec.tools.samples import SampleSpec, write_sample
from tests.aliyun_support import ARTC_APP, OSS, ali, ali_call, ingest_string_room, start, stop_ingests, wait_stopped
from tests.callback_receiver import Receiver
from tests.support import APP_KEY, Server, probe, running_server, served_samples, wait_for

CHANNEL = "e2e-ch"
NOTIFY_KEY = "artcNotifyKey0123456789"
STAMP = r"\d{4}-\d\d-\d\d-\d\d:\d\d:\d\d"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().up()
    yield r
    r.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("aliyun-e2e")) as srv:
        yield srv


def rtmp_push(server: Server, clip: Path, user: str) -> subprocess.Popen[bytes]:
    """ffmpeg publishing into the ARTC channel with a classic ARTC token (spec §12.1)."""
    expire = int(time.time()) + 3600
    token = classic_token(ARTC_APP, APP_KEY, CHANNEL, user, "n1", expire)
    url = (f"rtmp://127.0.0.1:{server.rtmp_port}/push/{CHANNEL}?appid={ARTC_APP}&userid={user}&nonce=n1"
           f"&timestamp={expire}&token={token}")
    return subprocess.Popen([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re", "-i", str(clip),
                             "-c", "copy", "-f", "flv", url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_single_and_mixed_recording(server: Server, receiver: Receiver, tmp_path: Path) -> None:
    c = ali(server)
    carol_clip = write_sample(SampleSpec(path=tmp_path / "carol.mp4", label="carol", color=(30, 30, 220), seconds=16))
    with served_samples(tmp_path / "media", ["alice", "bob"], seconds=16) as url:
        ingests = ingest_string_room(server, CHANNEL, url, ["alice", "bob"])
        carol = rtmp_push(server, carol_clip, "carol")
        mixed = start(
            c, CHANNEL, mode=1,
            SubscribeParams={"SubscribeUserIdList": [{"UserId": "alice"}, {"UserId": "bob"}, {"UserId": "carol"}]},
            StorageParams={"StorageType": 1, "OSSParams": OSS, "FileInfo": [
                {"Format": "MP4", "FileNamePattern": "{AppId}_{ChannelId}_{RecordMode}_{StartTime}",
                 "FilePathPrefix": ["mix", "d2"]},
                {"Format": "HLS", "SliceDuration": 10, "FileNamePattern": "{ChannelId}_{StartTime}",
                 "SliceNamePattern": "{ChannelId}_{StartTime}_{Sequence}"},
                {"Format": "MP3", "FileNamePattern": "{ChannelId}_{UserId}_{StartTime}"}]},
            MixTranscodeParams={"AudioBitrate": 64, "AudioChannels": 2, "AudioSampleRate": 48000, "VideoBitrate": 500,
                                "VideoFramerate": 15, "VideoGop": 30, "VideoWidth": 320, "VideoHeight": 240},
            MixLayoutParams={"UserPanes": [
                {"UserId": "alice", "X": "0", "Y": "0", "Width": "0.5", "Height": "1"},
                {"UserId": "bob", "X": "0.5", "Y": "0", "Width": "0.5", "Height": "1"},
                {"UserId": "carol", "X": "0.25", "Y": "0.25", "Width": "0.5", "Height": "0.5", "ZOrder": 1}]},
            NotifyUrl=receiver.url, NotifyAuthKey=NOTIFY_KEY, NotifyFileUploadedFormat=["MP4", "MP3"],
        )
        single = start(
            c, CHANNEL, mode=0, MaxIdleTime=10,
            SubscribeParams={"SubscribeUserIdList": [{"UserId": "alice"}, {"UserId": "bob", "StreamType": 1}]},
            StorageParams={"StorageType": 1, "OSSParams": OSS, "FileInfo": [
                {"Format": "MP4", "FileNamePattern": "{UserId}_{SourceType}_{StartTime}"}]},
            NotifyUrl=receiver.url,
        )
        time.sleep(6)
        swapped = {"UserPanes": [{"UserId": "bob", "X": "0", "Y": "0", "Width": "0.5", "Height": "1"},
                                 {"UserId": "alice", "X": "0.5", "Y": "0", "Width": "0.5", "Height": "1"}]}
        ali_call(c, "UpdateRtcCloudRecording", {"TaskId": mixed, "MixLayoutParams": swapped, "SubscribeParams": {
            "SubscribeUserIdList": [{"UserId": "alice"}, {"UserId": "bob"}]}})
        time.sleep(5)
        for task in (mixed, single):
            ali_call(c, "StopRtcCloudRecording", {"TaskId": task})
        stop_ingests(server, ingests)
        carol.kill()
        carol.wait(10)

    files_of: dict[str, dict[str, Any]] = {}
    for task in (mixed, single):
        info = wait_stopped(c, task)
        files_of[task] = info["RecordFileList"]
    mixed_files, single_files = files_of[mixed], files_of[single]
    root = server.storage / OSS["OSSBucket"]

    # mixed: names from the patterns, keys <prefix…>/<TaskId>/<name>.<ext>
    assert len(mixed_files["Mp4FileList"]) == 1 and len(mixed_files["HlsFileList"]) == 1
    assert len(mixed_files["Mp3FileList"]) == 1
    assert re.fullmatch(rf"mix/d2/{re.escape(mixed)}/{ARTC_APP}_{CHANNEL}_Mix_{STAMP}\.mp4", mixed_files["Mp4FileList"][0])
    assert re.fullmatch(rf"{re.escape(mixed)}/{CHANNEL}_{STAMP}\.m3u8", mixed_files["HlsFileList"][0])
    assert re.fullmatch(rf"{re.escape(mixed)}/{CHANNEL}_\{{UserId\}}_{STAMP}\.mp3", mixed_files["Mp3FileList"][0])
    mp4 = probe(root / mixed_files["Mp4FileList"][0])
    assert mp4.video and (mp4.video["width"], mp4.video["height"]) == (320, 240) and mp4.audio
    assert mp4.audio["rms"] > 0.01 and mp4.duration > 7
    # ARTC names hold ":" (UTC+8 StartTime): the playlist lists them as "./name" (RFC 3986 4.2), so it plays.
    playlist = root / mixed_files["HlsFileList"][0]
    segments = segment_names(playlist.read_text())
    assert segments and all(re.fullmatch(rf"{CHANNEL}_{STAMP}_\d+\.ts", s) for s in segments), segments
    reports = [probe(playlist.parent / s) for s in segments]
    assert all(r.video and r.audio for r in reports) and sum(r.duration for r in reports) > 7
    whole = probe(playlist)
    assert whole.video and whole.audio and whole.duration > 7
    mp3 = probe(root / mixed_files["Mp3FileList"][0])
    assert mp3.audio and mp3.audio["codec"].startswith("mp3") and mp3.video is None and mp3.duration > 7

    # single: one MP4 per subscribed stream (alice's original stream "OC", bob's audio "A"), plus default HLS
    names = sorted(k.rsplit("/", 1)[-1] for k in single_files["Mp4FileList"])
    assert any(re.fullmatch(rf"alice_OC_{STAMP}\.mp4", n) for n in names), names
    assert any(re.fullmatch(rf"bob_A_{STAMP}\.mp4", n) for n in names), names
    assert not any(n.startswith("carol") for n in names)  # not subscribed
    assert single_files["HlsFileList"] and all(k.startswith(single + "/") for k in single_files["HlsFileList"])
    for key in single_files["Mp4FileList"]:
        rep = probe(root / key)
        assert rep.audio is not None and rep.audio["rms"] > 0.01 and rep.duration > 5, key
        assert (rep.video is None) == ("bob_" in key), key
    for key in single_files["HlsFileList"]:
        parts = [probe((root / key).parent / s) for s in segment_names((root / key).read_text())]
        assert parts and all(p.audio for p in parts) and sum(p.duration for p in parts) > 5, key

    # callbacks: lifecycle plus RecordFileUploaded for the formats asked for, each signed
    def events(task: str) -> list[dict[str, Any]]:
        return [g.json for g in receiver.got if g.answered == 200 and json.loads(g.body).get("taskId") == task]

    got = wait_for(lambda: (ev := events(mixed)) and ev[-1]["eventType"] == "TaskStopped" and ev, 30, what="TaskStopped")
    kinds = [e["eventType"] for e in got]
    assert kinds[0] == "TaskRunning" and "TaskStopping" in kinds
    uploaded = [json.loads(e["payload"]) for e in got if e["eventType"] == "RecordFileUploaded"]
    assert sorted(u["format"] for u in uploaded) == ["MP3", "MP4"]
    assert {u["fileName"] for u in uploaded} == {mixed_files["Mp4FileList"][0], mixed_files["Mp3FileList"][0]}
    for g in receiver.got:
        body = json.loads(g.body)
        if body.get("taskId") != mixed:
            continue
        ts = g.headers["ali-live-timestamp"]
        assert g.headers["ali-live-signature"] == hashlib.md5(f"{ts}|{NOTIFY_KEY}".encode()).hexdigest()
        assert body["appId"] == ARTC_APP and body["channelId"] == CHANNEL and abs(int(ts) - body["callbackTs"] // 1000) <= 1
    single_events = [e["eventType"] for e in events(single)]
    assert "RecordFileUploaded" not in single_events and "TaskRunning" in single_events
    assert all("ali-live-signature" not in g.headers for g in receiver.got if json.loads(g.body).get("taskId") == single)


def test_rtmp_with_a_wrong_artc_token_is_refused(server: Server, tmp_path: Path) -> None:
    clip = write_sample(SampleSpec(path=tmp_path / "m.mp4", label="m", color=(200, 30, 30), seconds=3))
    expire = int(time.time()) + 3600
    bad = classic_token(ARTC_APP, "not-the-key", CHANNEL, "mallory", "", expire)
    url = (f"rtmp://127.0.0.1:{server.rtmp_port}/push/{CHANNEL}?appid={ARTC_APP}&userid=mallory&timestamp={expire}"
           f"&token={bad}")
    proc = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re", "-i", str(clip),
                           "-c", "copy", "-f", "flv", url], capture_output=True, timeout=30)
    assert proc.returncode != 0
