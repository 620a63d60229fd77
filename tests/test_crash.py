"""kill -9 of `cloudrec serve` in the middle of a mixed and a single-stream recording to S3.

Right after the kill: every MP4 in the spool plays (fragmented, fragments ≤ 2 s) and reaches to
within ~2 s of the kill; every segment a playlist lists plays; the database is intact. After a
restart: the tasks are taken over (306), the interrupted files are closed and uploaded, new files
carry the `ha1_` prefix, and the tasks end with every object stored.
"""

from __future__ import annotations

import sqlite3
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from cloudrec.dialects.tencent.css_push import push_query
from cloudrec.output.mp4 import FRAGMENT_SECONDS
from cloudrec.tools.samples import SampleSpec, write_sample
from cloudrec.storage.playlist import segment_names
from tests.callback_receiver import Receiver
from tests.s3_servers import Seaweed, seaweed
from tests.support import running_server, served_samples, wait_for
from tests.test_css_api import lcall, live
from tests.test_css_push_e2e import FFMPEG
from tests.test_storage_s3 import APP, BUCKET, cloud_storage, config, download_hls, record, start_ingest, stop

MAX_FRAGMENT_SECONDS = 2.0  # the bound; the sinks cut every FRAGMENT_SECONDS (1 s) and at keyframes
MAX_LOST_SECONDS = 2.0  # what a kill may cost: the fragment being built plus the recorder's latency


def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[str, int, int]]:
    """(type, payload start, box end) of the ISO-BMFF boxes in data[start:end]; stops at a cut box."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
            header = 16
        if size < header or pos + size > end:
            return  # the box the kill cut short
        yield kind.decode("latin-1"), pos + header, pos + size
        pos += size


def fragment_seconds(path: Path) -> list[float]:
    """Durations between the starts (tfdt) of consecutive fragments of the first track."""
    data = path.read_bytes()
    scales: dict[int, int] = {}
    starts: dict[int, list[int]] = {}
    for kind, a, b in boxes(data):
        if kind == "moov":
            for k2, a2, b2 in boxes(data, a, b):
                if k2 != "trak":
                    continue
                track = scale = 0
                for k3, a3, b3 in boxes(data, a2, b2):
                    if k3 == "tkhd":
                        track = struct.unpack(">I", data[a3 + (20 if data[a3] == 1 else 12):][:4])[0]
                    if k3 == "mdia":
                        for k4, a4, _ in boxes(data, a3, b3):
                            if k4 == "mdhd":
                                scale = struct.unpack(">I", data[a4 + (20 if data[a4] == 1 else 12):][:4])[0]
                scales[track] = scale
        if kind == "moof":
            for k2, a2, b2 in boxes(data, a, b):
                if k2 != "traf":
                    continue
                track = base = 0
                for k3, a3, _ in boxes(data, a2, b2):
                    if k3 == "tfhd":
                        track = struct.unpack(">I", data[a3 + 4:a3 + 8])[0]
                    if k3 == "tfdt":
                        base = struct.unpack(">Q" if data[a3] == 1 else ">I", data[a3 + 4:a3 + (12 if data[a3] == 1 else 8)])[0]
                starts.setdefault(track, []).append(base)
    first = min(scales)
    ticks = starts.get(first, [])
    return [(b - a) / scales[first] for a, b in zip(ticks, ticks[1:])]


def last_video_seconds(path: Path) -> tuple[int, float]:
    """(decoded frames, time of the last one after the first) of a file, read to where it ends."""
    times: list[float] = []
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            if frame.pts is not None:
                times.append(float(frame.pts * frame.time_base))
    return len(times), (max(times) - min(times)) if times else 0.0


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    with seaweed(tmp_path_factory.mktemp("seaweed-crash"), (BUCKET,)) as server:
        yield server


def test_kill_9_leaves_playable_files_and_restart_finishes_the_tasks(tmp_path: Path, s3: Seaweed) -> None:
    receiver = Receiver().up()
    extra = config(s3, receiver)
    room = "5401"
    base = f"{APP}_{room}"
    with served_samples(tmp_path / "media", ["alice", "bob"], 4) as media_url:
        with running_server(tmp_path / "srv", extra) as server:
            for user in ("alice", "bob"):
                start_ingest(server, room, media_url, user)
            mixed = record(server, room, cloud_storage(["crash"]))  # HLS + MP4
            single = record(server, room, cloud_storage(["crash"]), mode=1, av_merge=1)
            wait_for(lambda: 307 in receiver.types(mixed) and 307 in receiver.types(single), 30, what="recording")
            time.sleep(5)
            killed_ms = time.time() * 1000
            server.proc.kill()  # SIGKILL: no flush, no finalizing
            server.proc.wait(10)
        db_path = tmp_path / "srv" / "data" / "cloudrec.db"
        with sqlite3.connect(db_path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            files = {(t, n): (k, b, f) for t, n, k, b, f in db.execute("SELECT task_id, name, kind, begin_ms, final FROM files")}
            alive = dict(db.execute("SELECT id, state FROM tasks WHERE kind = 'recording'"))
        assert alive[mixed] == alive[single] == "in_progress"
        spool = tmp_path / "srv" / "data" / "spool"
        open_mp4 = [(t, n, b) for (t, n), (k, b, f) in files.items() if k == "file" and not f]
        assert {t for t, _, _ in open_mp4} == {mixed, single} and len(open_mp4) == 3  # the mix, alice, bob
        for task, name, begin_ms in open_mp4:
            path = spool / task / name
            frames, seconds = last_video_seconds(path)
            assert frames > 30, name
            lost = killed_ms - (begin_ms + seconds * 1000)
            assert lost < MAX_LOST_SECONDS * 1000, (name, lost)
            fragments = fragment_seconds(path)
            assert len(fragments) >= 3 and max(fragments) <= min(MAX_FRAGMENT_SECONDS, FRAGMENT_SECONDS + 0.1), (name, fragments)
        # Every listed segment plays, whether it was uploaded already or still waits in the spool.
        for task in (mixed, single):
            for playlist in (spool / task).glob("*.m3u8"):
                listed = segment_names(playlist.read_text())
                assert listed, playlist.name
                for seg in listed:
                    path = spool / task / seg
                    if not path.exists():
                        path = tmp_path / seg
                        path.write_bytes(s3.get(BUCKET, f"crash/{task}/{seg}"))
                    with av.open(str(path)) as c:
                        assert sum(1 for _ in c.decode(video=0)) > 0, seg

        # Restart on the same data: spooled files upload, the tasks are taken over and go on (ha1_ files).
        with running_server(tmp_path / "srv", extra) as again:
            wait_for(lambda: 306 in receiver.types(mixed) and 306 in receiver.types(single), 40, what="306 takeover")
            wait_for(lambda: f"crash/{mixed}/ha1_{base}.m3u8" in s3.keys(BUCKET, f"crash/{mixed}/"), 30, what="ha1_ files")
            time.sleep(3)
            stop(again, "DeleteCloudRecording", mixed)
            stop(again, "DeleteCloudRecording", single)
            wait_for(lambda: 310 in receiver.types(mixed) and 310 in receiver.types(single), 40, what="last events")
    receiver.close()
    assert receiver.types(mixed) == [301, 303, 304, 307, 306, 302, 305, 310]
    keys = s3.keys(BUCKET, f"crash/{mixed}/")
    names = {k.rsplit("/", 1)[1] for k in keys}
    assert {f"{base}.m3u8", f"{base}_1.mp4", f"ha1_{base}.m3u8", f"ha1_{base}_1.mp4"} <= names
    # The interrupted playlist is closed and lists only stored segments; the interrupted MP4 plays.
    for task in (mixed, single):
        for key in (k for k in s3.keys(BUCKET, f"crash/{task}/") if k.endswith(".m3u8")):
            playlist, segments = download_hls(s3, key, tmp_path / "dl" / task)
            assert playlist.read_text().rstrip().endswith("#EXT-X-ENDLIST") and segments, key
        assert not (tmp_path / "srv" / "data" / "spool" / task).exists()
    mp4 = tmp_path / "interrupted.mp4"
    mp4.write_bytes(s3.get(BUCKET, f"crash/{mixed}/{base}_1.mp4"))
    frames, _ = last_video_seconds(mp4)
    assert frames > 30
    p310 = next(g.json for g in receiver.delivered(mixed) if g.event_type == 310)["EventInfo"]["Payload"]
    assert p310["Status"] == 0 and set(p310["FileList"]) == {f"{base}_1.mp4", f"ha1_{base}_1.mp4"}


CSS_DOMAIN = "crash.push.example.com"
CSS_PUSH_KEY = "crash-push-key"


def test_kill_9_of_a_css_recording_keeps_the_file_whose_name_waits_for_its_end_time(tmp_path: Path) -> None:
    """CSS names files by their start and end (`{StreamID}_{Start…}_{End…}` by default), so a file is
    written under a provisional name until it ends. Killed in the middle, it is still in the store:
    after the restart it gets the name its end gives it, is stored and reported (event_type 100)."""
    receiver = Receiver().up()
    extra = (f'[css]\nappid = 1250000000\n[[css.domains]]\nname = "{CSS_DOMAIN}"\npush_key = "{CSS_PUSH_KEY}"\n'
             f'callback_url = "{receiver.url}"\ncallback_key = "k"\n')
    clip = write_sample(SampleSpec(path=tmp_path / "clip.mp4", label="css", color=(40, 200, 40), seconds=4, gop=15))
    stream = "crashlive"
    with running_server(tmp_path / "srv", extra) as server:
        push = subprocess.Popen(
            [FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy",
             "-rtmp_tcurl", f"rtmp://{CSS_DOMAIN}:{server.rtmp_port}/live", "-f", "flv",
             f"rtmp://127.0.0.1:{server.rtmp_port}/live/{stream}?{push_query(CSS_PUSH_KEY, stream, int(time.time()) + 600)}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = live(server.url.removeprefix("http://"))
            template = lcall(client, "CreateLiveRecordTemplate", {"TemplateName": "crash", "Mp4Param": {"Enable": 1, "RecordInterval": 1800}}).TemplateId
            now = int(time.time())
            task_id = lcall(client, "CreateRecordTask", {"DomainName": CSS_DOMAIN, "AppName": "live", "StreamName": stream,
                                                         "EndTime": now + 3600, "TemplateId": template}).TaskId
            db_path = tmp_path / "srv" / "data" / "cloudrec.db"

            def provisional() -> list[tuple[str, int]]:
                with sqlite3.connect(db_path) as db:
                    return list(db.execute("SELECT name, begin_ms FROM files WHERE task_id = ? AND kind = 'file' AND NOT final "
                                           "AND pending != ''", (task_id,)))
            wait_for(lambda: bool(provisional()), 30, what="the provisional MP4 record")
            time.sleep(4)
            killed_ms = time.time() * 1000
            server.proc.kill()  # SIGKILL: the file is never closed or renamed by this run
            server.proc.wait(10)
        finally:
            push.kill()
            push.wait(10)
    ((name, begin_ms),) = provisional()
    (spool_file,) = (tmp_path / "srv" / "data").rglob(f"{task_id}/{name}")  # the task's spool (a VOD task's own)
    frames, seconds = last_video_seconds(spool_file)
    assert frames > 30 and killed_ms - (begin_ms + seconds * 1000) < MAX_LOST_SECONDS * 1000

    def interrupted() -> list[dict[str, Any]]:
        return [g.json for g in receiver.got
                if g.answered == 200 and g.json.get("task_id") == task_id and g.json.get("start_time") == begin_ms // 1000]

    local = tmp_path / "stored.mp4"
    with running_server(tmp_path / "srv", extra) as again:
        wait_for(lambda: bool(interrupted()), 40, what="event 100 of the interrupted file")
        lcall(live(again.url.removeprefix("http://")), "StopRecordTask", {"TaskId": task_id})
        (body,) = interrupted()
        local.write_bytes(httpx.get(body["video_url"], timeout=10).content)
    receiver.close()
    url = body["video_url"]
    assert body["file_format"] == "mp4" and "open" not in url and url.endswith(".mp4")
    # Its name holds its end: the last write before the kill (Beijing time, the default pattern's zone).
    end = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(body["end_time"] + 8 * 3600))
    assert url.endswith(f"_{end}.mp4") and abs(body["end_time"] * 1000 - killed_ms) < 3000, (url, body["end_time"], killed_ms)
    assert len(local.read_bytes()) == body["file_size"]
    frames, _ = last_video_seconds(local)
    assert frames > 30
