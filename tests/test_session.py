"""A recording session in process (real store, worker, room, pull ingest, pipelines and files): room
changes wake it at once. With a poll far longer than the test, every step below happens only if the
room's news reaches the session: the mix starts on the first media and takes a joiner in from their
first unit, none of it dropped as late."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import av
import pytest

from cloudrec.core.ingest import IngestSpec
from cloudrec.core.records import to_plain
from cloudrec.core.rooms import RoomKey
from cloudrec.core.spec import Container, RecordingSpec, RecordMode, TrackKind
from cloudrec.core.states import StopReason, TaskKind, TaskState
from cloudrec.core.tasks import TaskRecord
from cloudrec.rooms.ingest import IngestPublisher
from cloudrec.rooms.registry import RoomRegistry
from cloudrec.storage.routing import StorageConfig, StorageRouter
from cloudrec.storage.uploader import Uploader, UploaderConfig
from cloudrec.store.sql import SqlTaskStore
from cloudrec.worker.scheduler import Worker
from cloudrec.worker.session import RecordingSession, SessionConfig
from tests.test_output_sinks import encode_media

POLL_SECONDS = 60.0  # longer than the test: nothing may wait for a poll
ROOM = RoomKey(1, "wake")


def publish(registry: RoomRegistry, user: str, clip: Path) -> threading.Event:
    stop = threading.Event()
    publisher = IngestPublisher(registry.room(ROOM), IngestSpec(room=ROOM, user_id=user, urls=(str(clip),), repeat=-1))
    threading.Thread(target=publisher.run, args=(stop,), daemon=True).start()
    return stop


async def wait_for(check: Callable[[], bool], seconds: float) -> float:
    """Seconds until `check()` held (fails after `seconds`)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > seconds:
            pytest.fail(f"not within {seconds} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


async def test_a_mix_starts_on_first_media_and_takes_a_joiner_in_from_the_first_unit_without_a_poll(tmp_path: Path) -> None:
    clip = encode_media(tmp_path / "clip.mp4", seconds=4.0, fps=25, gop=25)
    store = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path / 'cloudrec.db'}")
    await store.start()
    router = StorageRouter(StorageConfig(storage_dir=tmp_path / "storage", spool_dir=tmp_path / "spool"))
    uploader = Uploader(store, router, UploaderConfig(node="n1"))
    await uploader.start()
    registry = RoomRegistry()
    worker = Worker(store, registry, SessionConfig(uploader=uploader, poll_seconds=POLL_SECONDS))
    spec = RecordingSpec(room=ROOM, robot_user_id="rec", mode=RecordMode.MIXED, outputs=frozenset({Container.MP4}))
    now = time.time()
    await store.create_task(TaskRecord(id="t-wake", kind=TaskKind.RECORDING, dialect="trtc", room=ROOM, user_id="rec",
                                       state=TaskState.IDLE, spec=json.dumps(to_plain(spec)), created_at=now,
                                       expires_at=now + 3600), max_alive=5)
    await worker.start()
    stops: list[threading.Event] = []
    try:
        await wait_for(lambda: "t-wake" in worker.sessions, 5)
        session = worker.sessions["t-wake"][0]
        assert isinstance(session, RecordingSession)
        await asyncio.sleep(0.3)  # the session went to sleep on an empty room

        stops.append(publish(registry, "alice", clip))
        started = await wait_for(lambda: session.mix is not None, 2)
        await asyncio.sleep(1.5)
        stops.append(publish(registry, "bob", clip))
        taken_in = await wait_for(lambda: session.mix is not None and {("bob", TrackKind.MAIN), ("bob", TrackKind.AUDIO)} <= set(session.mix.subs), 2)
        print(f"mix started {started * 1000:.0f} ms after alice's join, took bob in {taken_in * 1000:.0f} ms after his")
        assert started < 1.0 and taken_in < 1.0  # a poll would have come after POLL_SECONDS
        await asyncio.sleep(2.0)

        await store.request_stop("t-wake", StopReason.API)
        worker.wake()
        await wait_for(lambda: "t-wake" not in worker.sessions, 20)
        assert session.mix is not None
        stats = session.mix.pipeline.stats
        assert stats.frames_out > 0 and stats.late_units == 0, stats  # none of bob's first moments were too late
    finally:
        for stop in stops:
            stop.set()
        await worker.stop()
        await uploader.stop()
        await store.stop()

    row = await reopened(tmp_path)
    assert row is TaskState.ENDED
    (mp4,) = (tmp_path / "storage").rglob("*.mp4")
    with av.open(str(mp4)) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video))
        assert container.streams.audio and frames >= 15 * 3  # 15 fps for the ~3.5 s recorded


async def reopened(tmp_path: Path) -> TaskState | None:
    store = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path / 'cloudrec.db'}")
    await store.start()
    try:
        row = await store.get_task("t-wake")
        return row.state if row is not None else None
    finally:
        await store.stop()
