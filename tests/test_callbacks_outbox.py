"""The outbox and notifier on a real SQLite store: claims, ordering, migration of an old database."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cloudrec.callbacks.notifier import Notifier, NotifierConfig
from cloudrec.core.events import CallbackTarget as Target, OutboxEvent
from cloudrec.core import events as ev
from cloudrec.core.rooms import RoomKey
from cloudrec.core.states import StopReason, TaskKind, TaskState
from cloudrec.core.tasks import TaskRecord
from cloudrec.dialects.tencent.callbacks import TrtcCallbacks
from cloudrec.store import tables
from cloudrec.store.migrations import MIGRATIONS
from cloudrec.store.sql import SqlTaskStore
from tests.callback_receiver import Receiver

APP = 1400000031
FAST = NotifierConfig(timeout_seconds=2, backoff_initial_seconds=0.1, backoff_max_seconds=0.3, poll_seconds=0.05)


def fixed(target: Target) -> Callable[[OutboxEvent], Awaitable[Target | None]]:
    async def resolve(_ev: OutboxEvent) -> Target | None:
        return target
    return resolve


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().up()
    yield r
    r.close()


def task(task_id: str) -> TaskRecord:
    now = time.time()
    return TaskRecord(id=task_id, kind=TaskKind.RECORDING, dialect="trtc", room=RoomKey(APP, "42"), user_id="rec_42",
                      state=TaskState.IDLE, spec="{}", created_at=now, expires_at=now + 3600)


async def until(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_two_notifiers_on_one_database_send_each_event_once_in_task_order(tmp_path: Path, receiver: Receiver) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    stores = [SqlTaskStore(url), SqlTaskStore(url)]
    for s in stores:
        await s.start()
    tasks = [f"task-{i}" for i in range(4)]
    for t in tasks:
        await stores[0].create_task(task(t))
    t0 = int(time.time() * 1000)
    for i in range(5):
        for t in tasks:
            await stores[0].add_events(t, [ev.recorder_started(t0 + i)])
    target = Target(url=receiver.url, key="k")
    notifiers = [Notifier(s, {"trtc": TrtcCallbacks()}, fixed(target), FAST) for s in stores]
    for n in notifiers:
        await n.start()
    try:
        await until(lambda: len(receiver.got) >= 20, 20)
        await asyncio.sleep(0.5)  # anything sent twice would arrive now
    finally:
        for n in notifiers:
            await n.stop(drain_seconds=0)
    assert len(receiver.got) == 20 and len({g.key for g in receiver.got}) == 20
    for t in tasks:
        stamps = [g.json["EventInfo"]["EventMsTs"] for g in receiver.got if g.task_id == t]
        assert stamps == [t0 + i for i in range(5)]  # per task, in the order written
    assert await stores[0].event_counts() == {"delivered": 20}
    for s in stores:
        await s.stop()


async def test_later_events_wait_behind_a_failing_head(tmp_path: Path, receiver: Receiver) -> None:
    store = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.start()
    await store.create_task(task("blocked"))
    await store.create_task(task("free"))
    now = int(time.time() * 1000)
    await store.add_events("blocked", [ev.recorder_started(now), ev.recorder_stopped(now + 1, StopReason.API)])
    await store.add_events("free", [ev.recorder_started(now), ev.recorder_stopped(now + 1, StopReason.IDLE)])
    broken = Target(url="http://127.0.0.1:9/nothing-listens-here", key="k")
    good = Target(url=receiver.url, key="k")
    notifier = Notifier(store, {"trtc": TrtcCallbacks()}, fixed(good), FAST)
    bad = Notifier(store, {"trtc": TrtcCallbacks()}, fixed(broken), FAST)
    # First a notifier whose receiver refuses connections fails the heads of both tasks (they back off) ...
    await bad.start()
    await asyncio.sleep(0.3)
    await bad.stop(drain_seconds=0)
    rows = await store.due_events(int(time.time() * 1000) + 10_000, limit=10)
    assert sorted((r.task_id, r.event.kind) for r in rows) == [
        ("blocked", ev.EventKind.RECORDER_STARTED), ("free", ev.EventKind.RECORDER_STARTED)]  # 302s wait behind them
    assert all(r.attempts >= 1 for r in rows)
    # ... then a working receiver gets every event, each task in order.
    await notifier.start()
    await until(lambda: len(receiver.delivered()) == 4, 10)
    await notifier.stop(drain_seconds=0)
    for t in ("blocked", "free"):
        assert receiver.types(t) == [301, 302]
    await store.stop()


async def test_dead_receiver_gives_up_after_retry_seconds(tmp_path: Path) -> None:
    store = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.start()
    await store.create_task(task("t"))
    await store.add_events("t", [ev.recorder_started(int(time.time() * 1000))])
    config = NotifierConfig(retry_seconds=0.5, timeout_seconds=1, backoff_initial_seconds=0.05, backoff_max_seconds=0.1,
                            poll_seconds=0.05)
    notifier = Notifier(store, {"trtc": TrtcCallbacks()}, fixed(Target(url="http://127.0.0.1:9/", key="")), config)
    await notifier.start()
    deadline = time.monotonic() + 10
    while (await store.event_counts()).get("dead") != 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    await notifier.stop(drain_seconds=0)
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        state, attempts, error = db.execute("SELECT state, attempts, last_error FROM events").fetchone()
    assert state == "dead" and attempts >= 2 and error == "ConnectError"
    await store.stop()


async def test_upgrade_from_v1_skips_old_events_and_delivers_new(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:  # the schema as version 1 shipped it
        tables.tasks.create(conn)
        tables.files.create(conn)
        conn.execute(sa.text(
            "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, task_id VARCHAR(128) NOT NULL, "
            "app_id BIGINT NOT NULL, type VARCHAR(32) NOT NULL, payload TEXT NOT NULL, created_ms BIGINT NOT NULL, "
            "delivered_ms BIGINT, attempts INTEGER NOT NULL)"))
        tables.schema_version.create(conn)
        conn.execute(tables.schema_version.insert().values(version=1, applied_at=time.time()))
        conn.execute(sa.text("INSERT INTO events (task_id, app_id, type, payload, created_ms, attempts) "
                             "VALUES ('old', :app, 'recorder_start', :p, 1, 0)"), {"app": APP, "p": json.dumps({"status": 0})})
    engine.dispose()
    store = SqlTaskStore(f"sqlite+aiosqlite:///{path}")
    await store.start()
    await store.create_task(task("new"))
    await store.add_events("new", [ev.recorder_started(int(time.time() * 1000))])
    assert await store.event_counts() == {"skipped": 1, "pending": 1}
    due = await store.due_events(int(time.time() * 1000), limit=10)
    assert [(d.task_id, d.event.kind) for d in due] == [("new", ev.EventKind.RECORDER_STARTED)]
    await store.stop()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT max(version) FROM schema_version").fetchone() == (MIGRATIONS[-1][0],)


async def test_stopping_mid_request_gives_the_event_back(tmp_path: Path) -> None:
    hung = Receiver()
    hung.mode = "hang"
    hung.up()
    store = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.start()
    try:
        await store.create_task(task("t"))
        await store.add_events("t", [ev.recorder_started(int(time.time() * 1000))])
        notifier = Notifier(store, {"trtc": TrtcCallbacks()}, fixed(Target(url=hung.url, key="")), FAST)
        await notifier.start()
        await until(lambda: len(hung.got) == 1, 5)
        assert await store.due_events(int(time.time() * 1000), limit=10) == []  # claimed: nobody else sends it
        await notifier.stop(drain_seconds=0)
        # Not received for sure, so pending again and due at once (not after the lease) for the next start.
        due = await store.due_events(int(time.time() * 1000), limit=10)
        assert [d.event.kind for d in due] == [ev.EventKind.RECORDER_STARTED]
        assert await store.event_counts() == {"pending": 1}
    finally:
        hung.close()
        await store.stop()
