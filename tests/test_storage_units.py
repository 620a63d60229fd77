"""Storage parts on their own, against moto's real S3 server: the S3 backend (single and multipart
PUTs, failure classes), the local backend's key checks, playlist publishing, and the uploader
taking split files (A.8 names, `MaxMediaFileDuration` rotation) from the spool to the bucket."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from cloudrec.core.naming import A8Names
from cloudrec.core.events import EventKind
from cloudrec.core.media import FileEvent, MediaUnit
from cloudrec.core.records import to_plain
from cloudrec.core.rooms import RoomKey
from cloudrec.core.spec import RecordingSpec, RecordMode, StorageTarget
from cloudrec.core.states import TaskKind, TaskState
from cloudrec.core.tasks import FileRecord, TaskRecord
from cloudrec.output.hls import HlsSink
from cloudrec.output.target import SinkTarget
from cloudrec.output.mp4 import Mp4Sink
from cloudrec.storage.base import StorageFailure
from cloudrec.storage.local import LocalStore
from cloudrec.storage.playlist import closed, publishable, segment_names
from cloudrec.storage.routing import EndpointRule, StorageConfig, StorageRouter
from cloudrec.storage.s3 import S3Store
from cloudrec.storage.uploader import Uploader, UploaderConfig
from cloudrec.store.sql import SqlTaskStore
from tests.s3_servers import ACCESS_KEY, SECRET_KEY, moto_server, s3_client
from tests.support import free_port
from tests.test_output_sinks import demux_units, encode_media, interleave


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


def _store(endpoint: str, bucket: str, **kw: int) -> S3Store:
    return S3Store(bucket=bucket, region="us-east-1", access_key=ACCESS_KEY, secret_key=SECRET_KEY, endpoint=endpoint, **kw)


def test_s3_store_single_and_multipart(moto: str, tmp_path: Path) -> None:
    client = s3_client(moto)
    client.create_bucket(Bucket="units")
    store = _store(moto, "units", multipart_threshold=5 * 1024 * 1024, part_size=5 * 1024 * 1024)
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(12 * 1024 * 1024 + 17))
    assert store.put_file("a/b/task/big.mp4", big) == big.stat().st_size
    head = client.head_object(Bucket="units", Key="a/b/task/big.mp4")
    assert head["ContentLength"] == big.stat().st_size and head["ContentType"] == "video/mp4"
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 2 MiB
    got = store.get_bytes("a/b/task/big.mp4")
    assert hashlib.sha256(got).digest() == hashlib.sha256(big.read_bytes()).digest()
    small = tmp_path / "x.ts"
    small.write_bytes(b"\x47" * 188 * 10)
    store.put_file("a/b/task/x.ts", small)
    assert "-" not in client.head_object(Bucket="units", Key="a/b/task/x.ts")["ETag"]
    store.put_bytes("a/b/task/p.m3u8", b"#EXTM3U\n")
    assert client.head_object(Bucket="units", Key="a/b/task/p.m3u8")["ContentType"] == "application/vnd.apple.mpegurl"


def test_s3_failures_say_whether_retrying_helps(moto: str, tmp_path: Path) -> None:
    f = tmp_path / "f.ts"
    f.write_bytes(b"x")
    with pytest.raises(StorageFailure) as missing_bucket:
        _store(moto, "no-such-bucket").put_file("k/f.ts", f)
    assert missing_bucket.value.code == "NoSuchBucket" and missing_bucket.value.permanent
    down = _store(f"http://127.0.0.1:{free_port()}", "units")  # nothing listens there
    with pytest.raises(StorageFailure) as refused:
        down.put_file("k/f.ts", f)
    assert refused.value.code == "ConnectionError" and not refused.value.permanent
    with pytest.raises(StorageFailure) as gone:
        _store(moto, "units").put_file("k/gone.ts", tmp_path / "gone.ts")
    assert gone.value.code == "SpoolFileMissing" and gone.value.permanent
    for exc in (missing_bucket.value, refused.value, gone.value):
        assert SECRET_KEY not in str(exc) and exc.__cause__ is None or SECRET_KEY not in str(exc.__cause__)


def test_local_store_keys_stay_inside(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    src = tmp_path / "a.ts"
    src.write_bytes(b"abc")
    assert store.put_file("b/t/a.ts", src) == 3 and store.get_bytes("b/t/a.ts") == b"abc"
    assert store.put_file("b/t/a.ts", tmp_path / "root" / "b" / "t" / "a.ts") == 3  # in place: nothing to copy
    for bad in ("../x.ts", "b/../../x.ts", "/etc/passwd", "b//x.ts", ""):
        with pytest.raises(StorageFailure):
            store.put_bytes(bad, b"x")


PLAYLIST = """#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:4
#EXT-X-MEDIA-SEQUENCE:0
#EXT-X-PLAYLIST-TYPE:EVENT
#EXT-X-TRTC-START-REC-TIME:1700000000000
#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z
#EXTINF:4.000,
s1.ts
#EXT-X-DISCONTINUITY
#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:24.000Z
#EXTINF:4.000,
s2.ts
#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:28.000Z
#EXTINF:2.500,
s3.ts
#EXT-X-ENDLIST
"""


def test_playlist_is_published_up_to_the_first_missing_segment() -> None:
    none = publishable(PLAYLIST, set())
    assert none.listed == 0 and none.total == 3 and not none.complete
    assert none.text.splitlines()[-1] == "#EXT-X-TRTC-START-REC-TIME:1700000000000"  # header only
    two = publishable(PLAYLIST, {"s1.ts", "s2.ts"})
    assert two.listed == 2 and "#EXT-X-ENDLIST" not in two.text and two.text.rstrip().endswith("s2.ts")
    assert "#EXT-X-DISCONTINUITY" in two.text
    gap = publishable(PLAYLIST, {"s1.ts", "s3.ts"})  # s2 still uploading: s3 waits
    assert gap.listed == 1 and "s3.ts" not in gap.text
    done = publishable(PLAYLIST, {"s1.ts", "s2.ts", "s3.ts"})
    assert done.complete and done.text == PLAYLIST
    live = PLAYLIST.replace("#EXT-X-ENDLIST\n", "")
    assert not publishable(live, {"s1.ts", "s2.ts", "s3.ts"}).complete
    all_three = {"s1.ts", "s2.ts", "s3.ts"}
    assert closed(live, all_three) == PLAYLIST and closed(PLAYLIST, all_three) == PLAYLIST
    # killed after listing s3 but before its record was stored: s3 is not listed, the end tag is
    cut = closed(live, {"s1.ts", "s2.ts"})
    assert segment_names(cut) == ["s1.ts", "s2.ts"] and cut.rstrip().endswith("#EXT-X-ENDLIST")
    assert publishable(cut, {"s1.ts", "s2.ts"}).complete
    assert segment_names(closed(live, {"x/s1.ts"}, "x/")) == ["s1.ts"]  # a playlist in x/ lists its segments relative


async def uploading_task(tmp_path: Path, task_id: str, spec: RecordingSpec,
                         *endpoints: EndpointRule) -> tuple[TaskRecord, SqlTaskStore, Uploader]:
    """A recording task in a fresh SQLite store, and a started uploader that routes by `endpoints`."""
    now = time.time()
    task = TaskRecord(id=task_id, kind=TaskKind.RECORDING, dialect="trtc", room=spec.room, user_id="rec",
                      state=TaskState.IN_PROGRESS, spec=json.dumps(to_plain(spec)), created_at=now, expires_at=now + 3600)
    store = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.start()
    await store.create_task(task)
    router = StorageRouter(StorageConfig(storage_dir=tmp_path / "storage", spool_dir=tmp_path / "spool", endpoints=endpoints))
    uploader = Uploader(store, router, UploaderConfig(node="n1", poll_seconds=0.1))
    await uploader.start()
    return task, store, uploader


async def put_files(store: SqlTaskStore, task_id: str, events: list[FileEvent], *, upload_all: bool = False) -> None:
    """What the session does with each file event: a file row, queued for upload once final (or a playlist)."""
    for fe in events:
        await store.put_file(task_id, FileRecord(name=fe.name, kind=fe.kind, track_type=fe.track_type, user_id=fe.user_id,
                                                 media=fe.media, begin_ms=fe.begin_ms, end_ms=fe.end_ms, final=fe.final),
                             upload_on="n1" if upload_all or fe.final or fe.kind == "playlist" else None)


async def test_split_files_reach_the_bucket_with_a8_names(moto: str, tmp_path: Path) -> None:
    """Real sinks rotate MP4s (`MaxMediaFileDuration`'s mechanism, 3 s here) and cut HLS segments
    into the spool; the uploader stores them under `<prefix…>/<TaskId>/` with the same names."""
    s3_client(moto).create_bucket(Bucket="splits")
    room = RoomKey(1400123456, "12345")
    spec = RecordingSpec(room=room, robot_user_id="rec", mode=RecordMode.MIXED,
                         storage=StorageTarget(vendor="s3", region="ap-tokyo", bucket="splits", prefix=("p1", "p2"),
                                               access_key=ACCESS_KEY, secret_key=SECRET_KEY))
    now = time.time()
    task, store, uploader = await uploading_task(
        tmp_path, "task-split", spec,
        EndpointRule(vendor="0", region="*", endpoint_url="http://127.0.0.1:9"),  # COS only: must not match
        EndpointRule(vendor="1", region="ap-tokyo", bucket="splits", endpoint_url=moto))
    dest = uploader.destination(spec.storage, task.id)
    assert not dest.in_place and dest.key_prefix == "p1/p2/task-split/"
    events: list[FileEvent] = []
    wall0 = int(now * 1000)
    base = "1400123456_12345"
    target = SinkTarget(directory=dest.spool, names=A8Names(base, None), track_type=None, user_id="", media="mix", wall0_ms=wall0,
                        on_event=events.append)
    sinks = [Mp4Sink(target, max_seconds=3.0), HlsSink(target, segment_seconds=2.0)]
    video, audio = demux_units(encode_media(tmp_path / "src.mp4", seconds=10.0))
    for sink in sinks:
        sink.open([video[0].info, audio[0].info])
    for index, unit in interleave(video, audio):
        for sink in sinks:
            sink.write(index, unit)
        await put_files(store, task.id, events)
        if events:
            uploader.wake(task.id)
        events.clear()
        await asyncio.sleep(0)
    for sink in sinks:
        sink.close()
    await put_files(store, task.id, events, upload_all=True)
    finished = await uploader.finish_task(task.id, wait_seconds=30)
    await uploader.stop()
    await store.stop()
    assert finished is not None
    client = s3_client(moto)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="splits", Prefix="p1/p2/task-split/")["Contents"])
    mp4s = [k for k in keys if k.endswith(".mp4")]
    assert mp4s == [f"p1/p2/task-split/{base}_{i}.mp4" for i in range(1, len(mp4s) + 1)] and len(mp4s) >= 3
    segments = [k for k in keys if k.endswith(".ts")]
    assert segments and all(re.fullmatch(rf"p1/p2/task-split/{base}_\d{{17}}\.ts", k) for k in segments)
    assert f"p1/p2/task-split/{base}.m3u8" in keys
    playlist = client.get_object(Bucket="splits", Key=f"p1/p2/task-split/{base}.m3u8")["Body"].read().decode()
    assert playlist.rstrip().endswith("#EXT-X-ENDLIST")
    listed = [ln for ln in playlist.splitlines() if ln.endswith(".ts")]
    assert sorted(f"p1/p2/task-split/{n}" for n in listed) == segments  # everything listed is there, nothing else
    total = 0.0
    for key in mp4s:  # every split plays on its own
        path = tmp_path / key.rsplit("/", 1)[-1]
        path.write_bytes(client.get_object(Bucket="splits", Key=key)["Body"].read())
        with av.open(str(path)) as c:
            frames = sum(1 for _ in c.decode(video=0))
        assert frames > 0
        total += frames
    assert total >= 240  # 10 s at 25 fps, minus the encoder's tail at most
    kinds = [e.kind for e in finished]
    assert kinds == [EventKind.FILES_FINISHED]  # no upload_started here: this test never started the task
    assert [f["name"] for f in finished[0].payload["files"]] == [k.rsplit("/", 1)[-1] for k in mp4s]
    assert finished[0].payload["status"] == 0 and not dest.spool.exists()  # the spool is emptied


def test_storage_config_as_the_issue_writes_it_routes_destinations(tmp_path: Path) -> None:
    import tomllib

    from cloudrec.errors import InvalidRequest
    from cloudrec.settings import parse_settings

    raw = tomllib.loads("""
[storage]
allow_request_endpoints = false

[[storage.endpoints]]
vendor = 1                     # CloudStorage.Vendor (0 COS, 1 AWS S3) or "oss" for Alibaba OSSParams
region = "us-east-1"           # "*" matches any region
bucket = "*"                   # optional; "*" (default) matches any bucket
endpoint_url = "http://127.0.0.1:8333"

[[storage.endpoints]]
vendor = 0
region = "*"
endpoint_url = "http://127.0.0.1:8334"
""")
    settings = parse_settings(raw, tmp_path)
    rules = tuple(EndpointRule(vendor=e.vendor, region=e.region, bucket=e.bucket, endpoint_url=e.endpoint_url)
                  for e in settings.storage.endpoints)
    router = StorageRouter(StorageConfig(storage_dir=tmp_path / "storage", spool_dir=tmp_path / "spool", endpoints=rules))

    def where(**kw: str) -> str:
        dest = router.destination(StorageTarget(access_key="AK", secret_key="SK", **kw), "T1")  # type: ignore[arg-type]
        return dest.store.description + " " + dest.key_prefix

    assert where(vendor="s3", region="us-east-1", bucket="b") == "s3:http://127.0.0.1:8333/b T1/"
    assert where(vendor="cos", region="ap-shanghai", bucket="c") == "s3:http://127.0.0.1:8334/c T1/"
    assert where(vendor="s3", region="eu-west-1", bucket="b").startswith("local:")  # no rule: local backend
    # A request's endpoint is not followed unless config allows it.
    assert where(vendor="s3", region="eu-west-1", bucket="b", endpoint_url="http://169.254.169.254").startswith("local:")
    allowed = StorageRouter(StorageConfig(storage_dir=tmp_path, spool_dir=tmp_path / "spool", allow_request_endpoints=True))
    dest = allowed.destination(StorageTarget(vendor="s3", bucket="b", endpoint_url="acct.r2.example", access_key="AK",
                                             secret_key="SK"), "T1")
    assert dest.store.description == "s3:https://acct.r2.example/b"
    for bad in ('vendor = 2\nendpoint_url = "http://x"', 'vendor = 1\nendpoint_url = "ftp://x"', "vendor = 1"):
        with pytest.raises(InvalidRequest):
            parse_settings(tomllib.loads(f"[[storage.endpoints]]\n{bad}\n"), tmp_path)


def test_vod_file_names_only_recorded_media_inside_the_library(tmp_path: Path) -> None:
    from cloudrec.api.app import vod_file

    (tmp_path / "t1").mkdir()
    for name in ("a.m3u8", "m3u8", "notes.txt"):
        (tmp_path / "t1" / name).write_text("x")
    assert vod_file(tmp_path, "t1/a.m3u8") == tmp_path / "t1" / "a.m3u8"
    for bad in ("t1/m3u8", "t1/notes.txt", "t1/../t1/a.m3u8", "t1/.a.m3u8", "t1/missing.mp4"):
        assert vod_file(tmp_path, bad) is None, bad


async def test_a_playlist_that_goes_on_is_published_again(moto: str, tmp_path: Path) -> None:
    """A user leaves (their playlist is closed, ENDLIST, uploaded as final) and publishes again: the
    sink continues the same playlist, and the bucket's copy must list the new segments too."""
    s3_client(moto).create_bucket(Bucket="again")
    room = RoomKey(1400123456, "777")
    spec = RecordingSpec(room=room, robot_user_id="rec", mode=RecordMode.SINGLE,
                         storage=StorageTarget(vendor="s3", region="ap-tokyo", bucket="again", access_key=ACCESS_KEY,
                                               secret_key=SECRET_KEY))
    now = time.time()
    task, store, uploader = await uploading_task(tmp_path, "task-again", spec,
                                                 EndpointRule(vendor="1", region="ap-tokyo", bucket="again", endpoint_url=moto))
    dest = uploader.destination(spec.storage, task.id)
    events: list[FileEvent] = []
    target = SinkTarget(directory=dest.spool, names=A8Names("u", "video"), track_type="video", user_id="u1", media="main",
                        wall0_ms=int(now * 1000), on_event=events.append)

    async def record(sink: HlsSink, units: list[MediaUnit]) -> None:
        sink.open([units[0].info])
        for unit in units:
            sink.write(0, unit)
        sink.close()
        await put_files(store, task.id, events)
        events.clear()
        uploader.wake(task.id)

    video, _ = demux_units(encode_media(tmp_path / "src.mp4", seconds=8.0, audio_codec=None))
    half = next(i for i, u in enumerate(video) if u.key and float(u.pts * u.info.time_base) >= 4.0)
    first = HlsSink(target, segment_seconds=1.0)
    await record(first, video[:half])
    deadline = time.monotonic() + 20  # the first session's playlist is stored, final
    while not any(u.kind == "playlist" and u.state == "done" for u in await store.task_uploads(task.id)):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    await record(HlsSink(target, segment_seconds=1.0, continue_from=first), video[half:])
    finished = await uploader.finish_task(task.id, wait_seconds=30)
    await uploader.stop()
    await store.stop()
    assert finished is not None
    client = s3_client(moto)
    segments = sorted(o["Key"] for o in client.list_objects_v2(Bucket="again")["Contents"] if o["Key"].endswith(".ts"))
    playlist = client.get_object(Bucket="again", Key="task-again/u_video.m3u8")["Body"].read().decode()
    listed = sorted(f"task-again/{n}" for n in segment_names(playlist))
    assert listed == segments and len(segments) >= 6 and "#EXT-X-DISCONTINUITY" in playlist
    assert playlist.rstrip().endswith("#EXT-X-ENDLIST")
