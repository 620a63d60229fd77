"""The SQL task store on a real SQLite file: migrations, concurrency limit, claims, files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cloudrec.core.rooms import RoomKey
from cloudrec.core.states import StopReason, TaskKind, TaskState
from cloudrec.core.tasks import FileRecord, TaskRecord
from cloudrec.errors import LimitReached
from cloudrec.store.sql import SqlTaskStore


def task(task_id: str, app: int = 1) -> TaskRecord:
    now = time.time()
    return TaskRecord(id=task_id, kind=TaskKind.RECORDING, dialect="trtc", room=RoomKey(app, "1"), user_id="rec",
                      state=TaskState.IDLE, spec="{}", created_at=now, expires_at=now + 3600)


async def test_store_lifecycle(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db' / 'cloudrec.db'}"
    store = SqlTaskStore(url)
    await store.start()
    await store.create_task(task("t1"), max_alive=2)
    await store.create_task(task("t2"), max_alive=2)
    with pytest.raises(LimitReached):
        await store.create_task(task("t3"), max_alive=2)
    await store.create_task(task("o1", app=2), max_alive=2)  # limits are per app

    claimed = await store.claim("w1", stale_after=10)
    assert {t.id for t in claimed} == {"t1", "t2", "o1"}
    assert await store.claim("w2", stale_after=10) == []  # nobody takes a live worker's tasks
    assert {t.id for t in await store.claim("w2", stale_after=-1)} == {"t1", "t2", "o1"}  # stale: taken over

    assert await store.request_stop("t1", StopReason.API)
    assert not await store.request_stop("t1", StopReason.IDLE)  # the first reason wins
    assert (await store.get_task("t1")).stop_requested is StopReason.API  # type: ignore[union-attr]
    assert await store.replace_spec("t2", '{"x": 1}') == 2

    await store.put_file("t2", FileRecord(name="a.m3u8", kind="playlist", track_type="audio", user_id="u", media="main", begin_ms=1))
    await store.put_file("t2", FileRecord(name="a.m3u8", kind="playlist", track_type="audio", user_id="u", media="main", begin_ms=1, end_ms=5, final=True))
    files = await store.list_files("t2")
    assert len(files) == 1 and files[0].final and files[0].end_ms == 5

    await store.set_state("t1", TaskState.ENDED, stop_reason=StopReason.API)
    assert (await store.get_task("t1")).state is TaskState.ENDED  # type: ignore[union-attr]
    await store.create_task(task("t4"), max_alive=2)  # an ended task frees its slot
    await store.stop()

    again = SqlTaskStore(url)  # migrations are idempotent; data survives a restart
    await again.start()
    assert (await again.get_task("t4")) is not None
    await again.stop()


async def test_a_task_whose_session_cannot_start_is_ended_not_left_claimed(tmp_path: Path) -> None:
    import asyncio

    from cloudrec.rooms.registry import RoomRegistry
    from cloudrec.storage.routing import StorageConfig, StorageRouter
    from cloudrec.storage.uploader import Uploader, UploaderConfig
    from cloudrec.worker.scheduler import Worker
    from cloudrec.worker.session import SessionConfig

    store = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path / 'cloudrec.db'}")
    await store.start()
    await store.create_task(task("broken"), max_alive=2)  # spec "{}": no RecordingSpec can be read from it
    router = StorageRouter(StorageConfig(storage_dir=tmp_path / "storage", spool_dir=tmp_path / "spool"))
    worker = Worker(store, RoomRegistry(), SessionConfig(uploader=Uploader(store, router, UploaderConfig(node="n1"))))
    await worker.start()
    try:
        for _ in range(100):
            row = await store.get_task("broken")
            if row is not None and row.state is TaskState.ENDED:
                break
            await asyncio.sleep(0.05)
        assert row is not None and row.state is TaskState.ENDED and row.stop_reason is StopReason.FAILED
        assert not worker.sessions
    finally:
        await worker.stop()
        await store.stop()


async def test_a_nonce_is_taken_once_until_it_expires_whatever_its_length(tmp_path: Path) -> None:
    store = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path / 'cloudrec.db'}")
    await store.start()
    try:
        long = "AK:" + "n" * 5000  # longer than the column: kept as a digest
        assert await store.use_nonce(long, now=1000.0, expires_at=1900.0)
        assert not await store.use_nonce(long, now=1500.0, expires_at=2400.0)  # a replay inside the window
        assert await store.use_nonce("AK:other", now=1500.0, expires_at=2400.0)
        assert await store.use_nonce(long, now=2000.0, expires_at=2900.0)  # its window has passed
    finally:
        await store.stop()


async def test_upgrade_adds_the_provisional_name_and_push_query_columns_and_keeps_the_rows(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "cloudrec.db"
    store = SqlTaskStore(f"sqlite+aiosqlite:///{path}")
    await store.start()
    await store.create_task(task("t1"), max_alive=2)
    await store.put_file("t1", FileRecord(name="a.mp4", kind="file", track_type="video", user_id="u", media="main", begin_ms=1))
    await store.stop()
    with sqlite3.connect(path) as db:  # the schema of version 6
        db.execute("ALTER TABLE files DROP COLUMN pending")
        db.execute("ALTER TABLE schedules DROP COLUMN source_query")
        db.execute("DELETE FROM schema_version WHERE version >= 7")
    again = SqlTaskStore(f"sqlite+aiosqlite:///{path}")
    await again.start()
    assert [(f.name, f.pending) for f in await again.list_files("t1")] == [("a.mp4", "")]
    await again.put_file("t1", FileRecord(name="b_open.mp4", kind="file", track_type="video", user_id="u", media="main",
                                          begin_ms=2, pending='{"name": "b_{end}.mp4", "tz_hours": 0}'))
    await again.put_file("t1", FileRecord(name="b_20250101.mp4", kind="file", track_type="video", user_id="u", media="main",
                                          begin_ms=2, end_ms=3, final=True), replaces="b_open.mp4")
    assert [(f.name, f.final) for f in await again.list_files("t1")] == [("a.mp4", False), ("b_20250101.mp4", True)]
    await again.stop()
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(schedules)")}
    assert "source_query" in columns
