"""CSS record tasks recording for real: a publisher in the stream's room (an ingest publisher playing
a sample clip in real time, as a push would), the task driven by the official LiveClient, every
file reopened with PyAV. Covers: a task created while the stream is live starts at once, an
interrupted push closes the file set and a resumed one starts a new one, EndTime ends the task,
StartTime holds it back, StopRecordTask ends it early, DeleteRecordTask lets a recording finish."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from cloudrec.core.ingest import IngestSpec
from cloudrec.core.states import StopReason, TaskState
from cloudrec.core.tasks import FileRecord
from cloudrec.dialects.tencent.css_rooms import stream_room
from cloudrec.rooms.ingest import IngestPublisher
from cloudrec.service import Service
from cloudrec.tools.samples import SampleSpec, write_sample
from tests.support import in_process_service, SECRET_ID, SECRET_KEY, free_port, probe
from tests.test_css_api import DOMAIN, lcall, live

pytestmark = pytest.mark.slow
BEIJING = timezone(timedelta(hours=8))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample(SampleSpec(path=tmp_path_factory.mktemp("css-rec") / "clip.mp4", label="css", color=(30, 30, 220),
                                   seconds=6, gop=15))


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    raw = {
        "server": {"http_listen": f"127.0.0.1:{free_port()}", "rtmp_listen": f"127.0.0.1:{free_port()}", "data_dir": "data"},
        "media": {"hls_segment_seconds": 1},
        "credentials": [{"id": SECRET_ID, "secret": SECRET_KEY}],
    }
    async with in_process_service(raw, tmp_path) as svc:
        yield svc


class Pusher:
    """The stream's publisher: the clip looped in real time into the CSS room, until `stop()`."""

    def __init__(self, svc: Service, stream: str, clip: Path) -> None:
        room = stream_room(DOMAIN, "live", stream)
        spec = IngestSpec(room=room, user_id=stream, urls=(str(clip),), repeat=-1)
        self.flag = threading.Event()
        self.thread = threading.Thread(target=IngestPublisher(svc.registry.room(room), spec).run, args=(self.flag,),
                                       daemon=True)
        self.thread.start()

    async def stop(self) -> None:
        self.flag.set()
        await asyncio.to_thread(self.thread.join, 10)


async def api(svc: Service, action: str, params: dict[str, Any]) -> Any:
    c = live(f"127.0.0.1:{svc.settings.http_port}")
    return await asyncio.to_thread(lcall, c, action, params)


async def ended(svc: Service, task_id: str, timeout: float = 40) -> StopReason | None:
    async with asyncio.timeout(timeout):
        while True:
            task = await svc.store.get_task(task_id)
            assert task is not None
            if task.state is TaskState.ENDED:
                return task.stop_reason
            await asyncio.sleep(0.2)


async def wait_state(svc: Service, task_id: str, state: TaskState, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while (task := await svc.store.get_task(task_id)) is None or task.state is not state:
            await asyncio.sleep(0.1)


def vod_dir(svc: Service, task_id: str) -> Path:
    return svc.settings.storage_dir / "vod" / task_id


def whole_files(files: list[FileRecord], suffix: str) -> list[FileRecord]:
    return sorted((f for f in files if f.name.endswith(suffix) and f.kind != "segment"), key=lambda f: f.begin_ms)


def beijing(ms: int, fmt: str) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=BEIJING).strftime(fmt)


async def test_template_recording_interrupt_resume_until_end_time(service: Service, clip: Path) -> None:
    svc = service
    template = await api(svc, "CreateLiveRecordTemplate", {
        "TemplateName": "hls_mp4",
        "HlsParam": {"Enable": 1, "VodFileName": "{StreamID}_hls_{StartYear}{StartMonth}{StartDay}{StartHour}{StartMinute}{StartSecond}"},
        "Mp4Param": {"Enable": 1, "RecordInterval": 1800},  # the default VodFileName (start and end times)
    })
    pusher = Pusher(svc, "cam1", clip)
    await asyncio.sleep(1.0)  # the stream is live before the task exists
    created = time.time()
    task_id = (await api(svc, "CreateRecordTask", {"DomainName": DOMAIN, "AppName": "live", "StreamName": "cam1",
                                                   "EndTime": int(created) + 15, "TemplateId": template.TemplateId})).TaskId
    await wait_state(svc, task_id, TaskState.IN_PROGRESS, 10)  # starts at once
    await asyncio.sleep(4.0)
    await pusher.stop()  # interrupted: the file set closes
    await asyncio.sleep(2.5)
    pusher = Pusher(svc, "cam1", clip)  # resumed before EndTime: a new file set
    try:
        assert await ended(svc, task_id) is StopReason.TIMEOUT  # EndTime ends it while the push goes on
        ended_at = time.time()
    finally:
        await pusher.stop()
    assert ended_at - (int(created) + 15) < 4  # at EndTime, give or take the poll and finalizing

    files = await svc.store.list_files(task_id)
    mp4s, playlists = whole_files(files, ".mp4"), whole_files(files, ".m3u8")
    assert len(mp4s) == 2 and len(playlists) == 2, [f.name for f in files]
    assert all(f.final for f in mp4s + playlists)
    first, second = mp4s
    assert second.begin_ms - (first.end_ms or 0) >= 2000  # nothing recorded while nobody pushed
    for f in mp4s:
        assert f.end_ms is not None
        start, end = f.begin_ms, f.end_ms
        assert f.name == (f"cam1_{beijing(start, '%Y-%m-%d-%H-%M-%S')}_{beijing(end, '%Y-%m-%d-%H-%M-%S')}.mp4"), f.name
    for f in playlists:
        assert f.name == f"cam1_hls_{beijing(f.begin_ms, '%Y%m%d%H%M%S')}.m3u8"
    durations = []
    for f in mp4s + playlists:
        path = vod_dir(svc, task_id) / f.name
        report = probe(path)
        assert report.video is not None and report.video["codec"] == "h264" and report.video["width"] == 640
        assert report.audio is not None and report.audio["codec"] == "aac" and report.audio["rms"] > 0.01
        durations.append(report.duration)
    first_d, second_d = durations[0], durations[1]
    assert 2.5 <= first_d <= 5.5, durations  # ~4 s of the first push
    assert 3.0 <= second_d <= 9.5, durations  # the second push until EndTime
    assert abs(durations[2] - first_d) < 1.5 and abs(durations[3] - second_d) < 1.5  # HLS = MP4 per push


async def test_start_time_waits_and_stop_ends_early(service: Service, clip: Path) -> None:
    svc = service
    pusher = Pusher(svc, "cam2", clip)
    try:
        start = int(time.time()) + 3
        task_id = (await api(svc, "CreateRecordTask", {"DomainName": DOMAIN, "AppName": "live", "StreamName": "cam2",
                                                       "StartTime": start, "EndTime": start + 600})).TaskId
        await wait_state(svc, task_id, TaskState.IN_PROGRESS, 15)
        assert time.time() >= start  # nothing before StartTime although the stream was live
        await asyncio.sleep(3.0)
        stop_call = int(time.time())
        await api(svc, "StopRecordTask", {"TaskId": task_id})
        assert await ended(svc, task_id, 20) is StopReason.API
        listed = (await api(svc, "DescribeRecordTask", {"StartTime": start - 10, "EndTime": start + 700})).TaskList
        mine = [t for t in listed if t.TaskId == task_id]
        assert len(mine) == 1 and stop_call <= mine[0].Stopped <= stop_call + 2 and mine[0].TemplateId == 0
        await asyncio.sleep(2.0)  # stopped for good: the push goes on, nothing more is recorded
    finally:
        await pusher.stop()
    files = await svc.store.list_files(task_id)
    playlists = whole_files(files, ".m3u8")  # no template: HLS into the VOD library
    assert len(playlists) == 1 and not whole_files(files, ".mp4")
    # From StartTime on (it begins at the keyframe before it: the room hands a new subscriber its last GOP, 1 s here).
    assert playlists[0].begin_ms >= start * 1000 - 1100
    assert playlists[0].name == f"cam2_{beijing(playlists[0].begin_ms, '%Y-%m-%d-%H-%M-%S')}.m3u8"  # our HLS default
    report = probe(vod_dir(svc, task_id) / playlists[0].name)
    assert report.video is not None and 2.0 <= report.duration <= 5.5


async def test_delete_lets_the_running_recording_finish(service: Service, clip: Path) -> None:
    svc = service
    pusher = Pusher(svc, "cam3", clip)
    try:
        now = int(time.time())
        task_id = (await api(svc, "CreateRecordTask", {"DomainName": DOMAIN, "AppName": "live", "StreamName": "cam3",
                                                       "EndTime": now + 600})).TaskId
        await wait_state(svc, task_id, TaskState.IN_PROGRESS, 10)
        await api(svc, "DeleteRecordTask", {"TaskId": task_id})
        listed = (await api(svc, "DescribeRecordTask", {"StartTime": now - 10, "EndTime": now + 700})).TaskList
        assert task_id not in {t.TaskId for t in listed}
        await asyncio.sleep(3.0)
        task = await svc.store.get_task(task_id)
        assert task is not None and task.state is TaskState.IN_PROGRESS  # not interrupted
    finally:
        await pusher.stop()
    assert await ended(svc, task_id, 20) is StopReason.IDLE  # the push ended: so does the deleted task
    playlists = whole_files(await svc.store.list_files(task_id), ".m3u8")
    assert len(playlists) == 1
    report = probe(vod_dir(svc, task_id) / playlists[0].name)
    assert report.video is not None and report.duration >= 2.5


async def test_rule_records_every_push(service: Service, clip: Path) -> None:
    svc = service
    template = await api(svc, "CreateLiveRecordTemplate", {"TemplateName": "mp4", "Mp4Param": {"Enable": 1}})
    await api(svc, "CreateLiveRecordRule", {"DomainName": DOMAIN, "AppName": "live", "TemplateId": template.TemplateId})
    room = stream_room(DOMAIN, "live", "cam4")
    for push in range(2):
        pusher = Pusher(svc, "cam4", clip)
        try:
            async with asyncio.timeout(15):
                while len([t for t in await svc.store.list_tasks(alive_only=False) if t.room == room]) <= push:
                    await asyncio.sleep(0.2)
            await asyncio.sleep(3.0)
        finally:
            await pusher.stop()
        latest = max((t for t in await svc.store.list_tasks(alive_only=False) if t.room == room), key=lambda t: t.created_at)
        assert await ended(svc, latest.id, 20) is StopReason.IDLE  # the push ended: so does its task
    tasks = [t for t in await svc.store.list_tasks(alive_only=False) if t.room == room]
    assert len(tasks) == 2  # one task per push session
    for task in tasks:
        assert await ended(svc, task.id, 20) is StopReason.IDLE  # each ended with its push
        mp4s = whole_files(await svc.store.list_files(task.id), ".mp4")
        assert len(mp4s) == 1
        report = probe(vod_dir(svc, task.id) / mp4s[0].name)
        assert report.video is not None and report.audio is not None and report.duration >= 2.0
    now = int(time.time())
    listed = (await api(svc, "DescribeRecordTask", {"StartTime": now - 600, "EndTime": now + 2 * 86400})).TaskList
    assert not {t.TaskId for t in listed} & {t.id for t in tasks}  # only CreateRecordTask's tasks are listed
