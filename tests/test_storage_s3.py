"""Recordings stored in a real S3-compatible service (SeaweedFS, which checks signatures), driven
through the official TRTC SDK, with callbacks to a real receiver.

A watcher reads the bucket the whole time, as a player would: every playlist it finds must list
only segments that exist. The last test stops the S3 server for 30 s in the middle of a recording.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from cloudrec.core.spec import StorageTarget
from cloudrec.storage.base import StorageFailure
from cloudrec.storage.playlist import segment_names
from cloudrec.storage.routing import EndpointRule, StorageConfig, StorageRouter
from tests.callback_receiver import Receiver
from tests.s3_servers import ACCESS_KEY, SECRET_KEY, Seaweed, seaweed
from tests.support import Server, call, client, probe, running_server, served_samples, usersig, wait_for

APP = 1400000021
APP_KEY = "0123456789abcdef0123456789abcdef"
CB_KEY = "storageCbKey21"
BUCKET = "recordings"


def config(s3: Seaweed, receiver: Receiver, storage: str = "") -> str:
    return f"""
[storage]
{storage}
backoff_initial_seconds = 0.5
backoff_max_seconds = 2
finish_wait_seconds = 5
poll_seconds = 0.2

[[storage.endpoints]]
vendor = 1
region = "*"
endpoint_url = "{s3.endpoint}"

[callbacks]
backoff_initial_seconds = 0.2
backoff_max_seconds = 1
poll_seconds = 0.2

[[apps]]
id = {APP}
key = "{APP_KEY}"
callback_url = "{receiver.url}"
callback_key = "{CB_KEY}"
rate_per_second = 100
"""


def cloud_storage(prefix: list[str], secret: str = SECRET_KEY) -> dict[str, Any]:
    return {"CloudStorage": {"Vendor": 1, "Region": "us-east-1", "Bucket": BUCKET, "AccessKey": ACCESS_KEY,
                             "SecretKey": secret, "FileNamePrefix": prefix}}


def start_ingest(server: Server, room: str, url: str, user: str) -> str:
    return str(call(client(server), "StartStreamIngest", {
        "SdkAppId": APP, "RoomId": room, "RoomIdType": 1, "UserId": user, "UserSig": usersig(user, APP, APP_KEY),
        "StreamUrl": f"{url}/{user}.mp4", "RepeatNum": -1}).TaskId)


def record(server: Server, room: str, storage: dict[str, Any], *, mode: int = 2, output_format: int = 1,
           robot: str = "", av_merge: int = 0) -> str:
    robot = robot or f"rec_{room}_{mode}_{output_format}"
    return str(call(client(server), "CreateCloudRecording", {
        "SdkAppId": APP, "RoomId": room, "UserId": robot, "UserSig": usersig(robot, APP, APP_KEY),
        "RecordParams": {"RecordMode": mode, "MaxIdleTime": 30, "OutputFormat": output_format, "AvMerge": av_merge},
        "StorageParams": storage}).TaskId)


def stop(server: Server, action: str, task: str) -> None:
    call(client(server), action, {"SdkAppId": APP, "TaskId": task})


class BucketWatcher:
    """Reads every playlist in the bucket again and again; records any listed segment that is missing."""

    def __init__(self, s3: Seaweed) -> None:
        self.s3 = s3
        self.checked = 0
        self.missing: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            try:
                client = self.s3.client()
                for key in [k for k in self.s3.keys(BUCKET) if k.endswith(".m3u8")]:
                    text = client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
                    folder = key.rsplit("/", 1)[0]
                    for name in segment_names(text):
                        try:
                            client.head_object(Bucket=BUCKET, Key=f"{folder}/{name}")
                        except client.exceptions.ClientError:
                            self.missing.append(f"{folder}/{name}")
                    self.checked += 1
            except Exception:
                continue  # the server is down (outage test): nothing to read

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    with seaweed(tmp_path_factory.mktemp("seaweed"), (BUCKET,)) as server:
        yield server


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().up()
    yield r
    r.close()


@pytest.fixture(scope="module")
def rec_server(tmp_path_factory: pytest.TempPathFactory, s3: Seaweed, receiver: Receiver) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("cloudrec-s3"), config(s3, receiver)) as server:
        yield server


@pytest.fixture(scope="module")
def media_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_samples(tmp_path_factory.mktemp("media"), ["alice", "bob", "carol"], 4) as url:
        yield url


@pytest.fixture(scope="module")
def watcher(s3: Seaweed) -> Iterator[BucketWatcher]:
    w = BucketWatcher(s3)
    yield w
    w.close()


def download_hls(s3: Seaweed, key: str, into: Path) -> tuple[Path, list[str]]:
    """The playlist and every segment it lists, as a player would fetch them."""
    into.mkdir(parents=True, exist_ok=True)
    folder, name = key.rsplit("/", 1)
    text = s3.get(BUCKET, key).decode()
    segments = segment_names(text)
    for seg in segments:
        (into / seg).write_bytes(s3.get(BUCKET, f"{folder}/{seg}"))
    (into / name).write_text(text)
    return into / name, segments


def hls_seconds(playlist: Path) -> float:
    with av.open(str(playlist)) as c:
        times = [float(f.pts * f.time_base) for f in c.decode(video=0) if f.pts is not None]
    return max(times) - min(times)


def test_recordings_reach_s3_with_a8_keys_and_play(rec_server: Server, s3: Seaweed, receiver: Receiver,
                                                   media_url: str, watcher: BucketWatcher, tmp_path: Path) -> None:
    room = "5301"
    ingests = [start_ingest(rec_server, room, media_url, u) for u in ("alice", "bob")]
    mixed = record(rec_server, room, cloud_storage(["rec", "mix"]))  # HLS + MP4
    single = record(rec_server, room, cloud_storage(["rec", "single"]), mode=1, av_merge=1)
    wrong = record(rec_server, room, cloud_storage(["rec", "wrong"], secret="not-the-secret"), output_format=0)
    vod = record(rec_server, room, {"CloudVod": {"TencentVod": {"MediaType": 0}}}, robot="rec_vod")
    wait_for(lambda: 307 in receiver.types(mixed) and 307 in receiver.types(single), 30, what="first segments stored")
    wait_for(lambda: 308 in receiver.types(wrong), 20, what="308 for the wrong secret")
    time.sleep(3)
    for task in (mixed, single, wrong, vod):
        stop(rec_server, "DeleteCloudRecording", task)
    for task in ingests:
        stop(rec_server, "StopStreamIngest", task)
    wait_for(lambda: 310 in receiver.types(mixed) and 310 in receiver.types(single) and 305 in receiver.types(wrong)
             and 312 in receiver.types(vod), 40, what="last storage events")

    # Objects under <prefix>/<TaskId>/ with the A.8 names.
    base = f"{APP}_{room}"
    mix_keys = s3.keys(BUCKET, f"rec/mix/{mixed}/")
    names = [k.rsplit("/", 1)[1] for k in mix_keys]
    assert f"{base}.m3u8" in names and f"{base}_1.mp4" in names
    assert [n for n in names if n.endswith(".ts")] and all(
        re.fullmatch(rf"{base}_\d{{17}}\.ts", n) for n in names if n.endswith(".ts"))
    single_names = [k.rsplit("/", 1)[1] for k in s3.keys(BUCKET, f"rec/single/{single}/")]
    for user, b64 in (("alice", "YWxpY2U."), ("bob", "Ym9i")):
        user_base = f"{base}__UserId_s_{b64}__UserId_e_main"
        assert f"{user_base}_audio_video.m3u8" in single_names, (user, single_names)
        assert f"{user_base}_audio_video_1.mp4" in single_names
    # What was stored plays: the MP4 and the HLS playlist with the segments it lists.
    mp4 = tmp_path / "mix.mp4"
    mp4.write_bytes(s3.get(BUCKET, f"rec/mix/{mixed}/{base}_1.mp4"))
    report = probe(mp4)
    assert report.video is not None and report.video["frames"] > 30 and report.audio is not None
    assert report.audio["rms"] > 0.01 and report.duration > 3
    playlist, segments = download_hls(s3, f"rec/mix/{mixed}/{base}.m3u8", tmp_path / "hls")
    assert playlist.read_text().rstrip().endswith("#EXT-X-ENDLIST")
    assert sorted(segments) == sorted(n for n in names if n.endswith(".ts"))
    assert hls_seconds(playlist) > 3
    # Spool emptied after confirmed uploads; nothing of the good tasks left behind.
    for task in (mixed, single):
        assert not (rec_server.root / "data" / "spool" / task).exists()
    # Callbacks: the COS sequence with real outcomes.
    assert receiver.types(mixed) == [301, 303, 304, 307, 302, 305, 310]
    p310 = next(g.json for g in receiver.delivered(mixed) if g.event_type == 310)["EventInfo"]["Payload"]
    assert p310["Status"] == 0 and p310["FileList"] == [f"{base}_1.mp4"]
    # The wrong secret: 308 with the service's own code, once; 305 says files are stranded; they wait in the spool.
    wrong_types = receiver.types(wrong)
    assert wrong_types.count(308) == 1 and wrong_types[-1] == 305
    p308 = next(g.json for g in receiver.delivered(wrong) if g.event_type == 308)["EventInfo"]["Payload"]
    assert p308["Code"] == "SignatureDoesNotMatch" and "not-the-secret" not in p308["Message"]
    p305 = next(g.json for g in receiver.delivered(wrong) if g.event_type == 305)["EventInfo"]["Payload"]
    assert p305["Status"] == 1
    assert s3.keys(BUCKET, f"rec/wrong/{wrong}/") == []
    assert list((rec_server.root / "data" / "spool" / wrong).glob("*.ts"))
    # VOD (local library): 311 per file with a playback URL this server serves, read-only.
    commits = [g.json["EventInfo"]["Payload"] for g in receiver.delivered(vod) if g.event_type == 311]
    assert commits and all(c["Status"] == 0 for c in commits)
    url = commits[0]["TencentVod"]["VideoUrl"]
    assert url.startswith(f"{rec_server.url}/vod/{vod}/")
    got = httpx.get(url, timeout=10)
    assert got.status_code == 200 and got.headers["content-type"] == "video/mp4"
    assert got.content == (rec_server.storage / "vod" / vod / commits[0]["TencentVod"]["CacheFile"]).read_bytes()
    for bad in ("/vod/../cloudrec.db", f"/vod/{vod}/..%2F..%2Fcloudrec.db", "/vod/%2e%2e/cloudrec.db", "/vod/"):
        assert httpx.get(rec_server.url + bad, timeout=10).status_code == 404
    assert httpx.put(url, content=b"x", timeout=10).status_code == 405
    # Secrets never reach the log; the metrics count what happened.
    log = rec_server.log_text()
    assert SECRET_KEY not in log and "not-the-secret" not in log
    metrics = httpx.get(f"{rec_server.url}/metrics", timeout=10).text
    assert float(re.search(r"^cloudrec_uploaded_bytes_total (\S+)$", metrics, re.M).group(1)) > 100_000  # type: ignore[union-attr]
    assert float(re.search(r"^cloudrec_upload_failures_total (\S+)$", metrics, re.M).group(1)) >= 1  # type: ignore[union-attr]
    assert watcher.checked > 5 and watcher.missing == []


def test_s3_outage_loses_nothing(rec_server: Server, s3: Seaweed, receiver: Receiver, media_url: str,
                                 watcher: BucketWatcher, tmp_path: Path) -> None:
    room = "5302"
    ingest = start_ingest(rec_server, room, media_url, "carol")
    task = record(rec_server, room, cloud_storage(["outage"]))
    wait_for(lambda: 307 in receiver.types(task), 30, what="first segment stored")
    s3.kill()  # the storage service goes away in the middle of the recording
    down_at = time.time()
    time.sleep(30)
    s3.start()  # same ports, same data
    up_at = time.time()
    time.sleep(3)
    stop(rec_server, "DeleteCloudRecording", task)
    stop(rec_server, "StopStreamIngest", ingest)
    wait_for(lambda: 310 in receiver.types(task), 40, what="all uploads after the outage")
    assert receiver.types(task) == [301, 303, 304, 307, 302, 305, 310]
    for g in receiver.delivered(task):
        if g.event_type in (305, 310):
            assert g.json["EventInfo"]["Payload"]["Status"] == 0  # nothing stranded
    base = f"{APP}_{room}"
    playlist, segments = download_hls(s3, f"outage/{task}/{base}.m3u8", tmp_path / "hls")
    text = playlist.read_text()
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    # No gap: each segment starts where the one before ended, across the outage.
    starts = [datetime.fromisoformat(ln.split(":", 1)[1].replace("Z", "+00:00")).timestamp()
              for ln in text.splitlines() if ln.startswith("#EXT-X-PROGRAM-DATE-TIME:")]
    lengths = [float(ln.split(":", 1)[1].rstrip(",")) for ln in text.splitlines() if ln.startswith("#EXTINF:")]
    assert len(starts) == len(lengths) == len(segments)
    for i in range(1, len(starts)):
        assert abs(starts[i] - (starts[i - 1] + lengths[i - 1])) < 0.1, (i, starts[i - 1:i + 1])
    assert starts[0] < down_at - 1 and starts[-1] + lengths[-1] > up_at
    assert hls_seconds(playlist) > 30
    mp4 = tmp_path / "outage.mp4"
    mp4.write_bytes(s3.get(BUCKET, f"outage/{task}/{base}_1.mp4"))
    assert probe(mp4, decode=False).video is not None
    with av.open(str(mp4)) as c:
        assert c.duration is not None and c.duration / 1e6 > 30
    assert not (rec_server.root / "data" / "spool" / task).exists()
    metrics = httpx.get(f"{rec_server.url}/metrics", timeout=10).text
    assert float(re.search(r"^cloudrec_upload_retries_total (\S+)$", metrics, re.M).group(1)) > 0  # type: ignore[union-attr]
    assert re.search(r"^cloudrec_upload_backlog 0$", metrics, re.M)
    assert watcher.missing == []


def test_stranded_files_are_stored_when_storage_returns(s3: Seaweed, receiver: Receiver, media_url: str,
                                                        tmp_path: Path) -> None:
    """Storage down longer than `retry_seconds`: files are given up (305 Status 1) and kept; when the
    storage is back, the periodic retry stores them and a second 305 says Status 2 (recovered)."""
    short = "retry_seconds = 1\nstranded_retry_seconds = 2"
    with running_server(tmp_path / "srv", config(s3, receiver, short)) as server:
        room = "5303"
        ingest = start_ingest(server, room, media_url, "alice")
        task = record(server, room, cloud_storage(["stranded"]))
        wait_for(lambda: 307 in receiver.types(task), 30, what="first segment stored")
        s3.kill()
        try:
            time.sleep(4)
            stop(server, "DeleteCloudRecording", task)
            stop(server, "StopStreamIngest", ingest)
            wait_for(lambda: 305 in receiver.types(task), 30, what="the end reported while storage is down")
        finally:
            s3.start()
        finished = [g.json["EventInfo"]["Payload"]["Status"] for g in receiver.delivered(task) if g.event_type == 305]
        assert finished == [1]  # stranded
        wait_for(lambda: receiver.types(task).count(305) == 2, 30, what="the recovery")
        finished = [g.json["EventInfo"]["Payload"]["Status"] for g in receiver.delivered(task) if g.event_type == 305]
        assert finished == [1, 2]
        # One 308 per cause (a server going away may fail a request in more than one way), never repeated:
        # not by later failures of the same cause, not by the retries of stranded files.
        codes = [g.json["EventInfo"]["Payload"]["Code"] for g in receiver.delivered(task) if g.event_type == 308]
        assert codes and len(codes) == len(set(codes)), codes
        base = f"{APP}_{room}"
        mp4 = tmp_path / "stranded.mp4"
        mp4.write_bytes(s3.get(BUCKET, f"stranded/{task}/{base}_1.mp4"))
        with av.open(str(mp4)) as c:
            assert c.duration is not None and c.duration / 1e6 > 3
        playlist, segments = download_hls(s3, f"stranded/{task}/{base}.m3u8", tmp_path / "hls")
        assert playlist.read_text().rstrip().endswith("#EXT-X-ENDLIST") and hls_seconds(playlist) > 3


def test_endpoint_credentials_sign_requests_that_carry_none(s3: Seaweed, tmp_path: Path) -> None:
    """Alibaba OSS requests name a bucket but no keys: the matching endpoint's own keys sign the upload
    (SeaweedFS checks the signature); without them the store refuses."""
    def router(**keys: str) -> StorageRouter:
        rule = EndpointRule(vendor="oss", region="cn-shanghai", endpoint_url=s3.endpoint, **keys)
        return StorageRouter(StorageConfig(storage_dir=tmp_path / "storage", spool_dir=tmp_path / "spool", endpoints=(rule,)))

    oss = StorageTarget(vendor="oss", region="cn-shanghai", bucket=BUCKET, prefix=("oss",))
    dest = router(access_key=ACCESS_KEY, secret_key=SECRET_KEY).destination(oss, "T9")
    dest.store.put_bytes(dest.key("a.m3u8"), b"#EXTM3U\n")
    assert s3.get(BUCKET, "oss/T9/a.m3u8") == b"#EXTM3U\n"
    unsigned = router().destination(oss, "T9")
    with pytest.raises(StorageFailure):
        unsigned.store.put_bytes(unsigned.key("b.m3u8"), b"#EXTM3U\n")
