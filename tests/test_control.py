"""Business rules of control/ on a real SQLite store, with an injected clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudrec.control.tasks import TaskControl
from cloudrec.core.rooms import RoomKey
from cloudrec.core.spec import Layout, LayoutMode, RecordingSpec, RecordMode
from cloudrec.core.states import StopReason, TaskKind
from cloudrec.errors import LimitReached, NotFound
from cloudrec.store.sql import SqlTaskStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_lifetime_isolation_displacement_and_limits(tmp_path: Path) -> None:
    store = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    await store.start()
    clock = Clock()
    control = TaskControl(store, max_concurrent=lambda app: 2, clock=clock)
    spec = RecordingSpec(room=RoomKey(1, "100"), robot_user_id="rec", mode=RecordMode.MIXED)
    first = await control.create_recording(spec, dialect="trtc", lifetime_hours=6)

    # ResourceExpiredHour: visible for 6 h, then NotFound (the recording itself is not stopped)
    clock.now += 6 * 3600 - 1
    task, got = await control.recording(1, first)
    assert got == spec
    clock.now += 2
    with pytest.raises(NotFound) as info:
        await control.recording(1, first)
    assert info.value.reason == "expired"
    assert (await store.get_task(first)).stop_requested is None  # type: ignore[union-attr]

    # another app never sees the task
    with pytest.raises(NotFound):
        await control.recording(2, first)

    # the same robot UserId in the same room displaces the earlier task (LeaveCode 101)
    second = await control.create_recording(spec, dialect="trtc", lifetime_hours=72)
    assert (await store.get_task(first)).stop_requested is StopReason.DISPLACED  # type: ignore[union-attr]

    # modify replaces the layout; stop twice is harmless
    await control.modify_recording(1, second, layout=Layout(mode=LayoutMode.CUSTOM), subscription=None)
    _, changed = await control.recording(1, second)
    assert changed.layout.mode is LayoutMode.CUSTOM
    await control.stop(1, second, TaskKind.RECORDING)
    await control.stop(1, second, TaskKind.RECORDING)

    # concurrency is counted over alive tasks of the app (both above are still alive until a worker ends them)
    with pytest.raises(LimitReached):
        await control.create_recording(RecordingSpec(room=RoomKey(1, "101"), robot_user_id="r2", mode=RecordMode.SINGLE),
                                       dialect="trtc", lifetime_hours=72)
    await store.stop()


async def test_a_refused_create_displaces_nobody(tmp_path: Path) -> None:
    store = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    await store.start()
    control = TaskControl(store, max_concurrent=lambda app: 2, clock=Clock())
    spec = RecordingSpec(room=RoomKey(1, "100"), robot_user_id="rec", mode=RecordMode.MIXED)
    first = await control.create_recording(spec, dialect="trtc", lifetime_hours=6)
    await control.create_recording(RecordingSpec(room=RoomKey(1, "101"), robot_user_id="r2", mode=RecordMode.MIXED),
                                   dialect="trtc", lifetime_hours=6)
    # at the limit: the displaced task does not count, so the same robot may come back...
    again = await control.create_recording(spec, dialect="trtc", lifetime_hours=6)
    assert (await store.get_task(first)).stop_requested is StopReason.DISPLACED  # type: ignore[union-attr]
    # ...but a refused create (the limit holds without the displaced one) stops nothing
    third = RecordingSpec(room=RoomKey(1, "100"), robot_user_id="rec", mode=RecordMode.MIXED)
    strict = TaskControl(store, max_concurrent=lambda app: 1, clock=Clock())  # first (displaced, alive) + r2 fill it
    with pytest.raises(LimitReached):
        await strict.create_recording(third, dialect="trtc", lifetime_hours=6)
    assert (await store.get_task(again)).stop_requested is None  # type: ignore[union-attr]
    await store.stop()


def test_rate_buckets_belong_to_configured_apps_or_the_signing_key() -> None:
    """Inventing app ids must not give a caller fresh buckets: unknown ids share their key's bucket."""
    from cloudrec.control.apps import AppInfo, app_named
    from cloudrec.control.limits import RateLimiter, caller

    apps = {1400000001: AppInfo(id=1400000001, key="k", rate_per_second=2.0)}
    limiter = RateLimiter(1.0, clock=lambda: 0.0)
    allowed = [limiter.allow(caller(app_named(apps, str(1400000100 + i)), "AK1")[0]) for i in range(5)]
    assert allowed == [True, False, False, False, False]  # one bucket for all the invented ids
    key, rate = caller(app_named(apps, "1400000001"), "AK1")
    assert rate == 2.0 and [limiter.allow(key, rate) for _ in range(3)] == [True, True, False]  # the app's own
    assert app_named(apps, "１400000001") is None and app_named(apps, "9" * 40) is None  # not decimal / too long
