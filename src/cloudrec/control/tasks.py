"""Operations every dialect needs: create, look up, change and stop recording and ingest tasks.

Business rules live here once (lifetimes, app isolation, concurrency, state checks); dialects only
translate requests and errors.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from cloudrec.core.events import EventKind
from cloudrec.core.ids import new_task_id
from cloudrec.core.ingest import IngestSpec
from cloudrec.core.records import from_plain, to_plain
from cloudrec.core.rooms import RoomKey
from cloudrec.core.spec import Layout, MediaSelect, RecordingSpec, RecordMode, Subscription
from cloudrec.core.states import StopReason, TaskKind, TaskState
from cloudrec.core.tasks import FileRecord, TaskRecord
from cloudrec.errors import Conflict, NotFound
from cloudrec.store.base import TaskStore



logger = logging.getLogger(__name__)


def recording_record(spec: RecordingSpec, *, dialect: str, now: float, expires_at: float) -> TaskRecord:
    """The store row of a new recording task."""
    return TaskRecord(
        id=new_task_id(), kind=TaskKind.RECORDING, dialect=dialect, room=spec.room, user_id=spec.robot_user_id,
        state=TaskState.IDLE, spec=json.dumps(to_plain(spec)), created_at=now, expires_at=expires_at,
        not_before=spec.not_before_ms / 1000,
    )


class TaskControl:
    def __init__(
        self,
        store: TaskStore,
        *,
        max_concurrent: Callable[[int], int],
        wake_workers: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._max_concurrent = max_concurrent
        self.wake = wake_workers  # in the embedded setup, lets the worker start without polling delay
        self._clock = clock

    # --- recordings -------------------------------------------------------------------------
    async def create_recording(self, spec: RecordingSpec, *, dialect: str, lifetime_hours: int) -> str:
        now = self._clock()
        task = recording_record(spec, dialect=dialect, now=now, expires_at=now + lifetime_hours * 3600)
        # A robot UserId already recording this room is displaced by the newcomer (LeaveCode 101),
        # only if the newcomer is accepted.
        await self.store.create_task(task, max_alive=self._max_concurrent(spec.room.app_id), displace=StopReason.DISPLACED)
        logger.info("recording created", extra={"task_id": task.id, "room": str(spec.room), "mode": spec.mode.name})
        self.wake()
        return task.id

    async def recording(self, app_id: int, task_id: str) -> tuple[TaskRecord, RecordingSpec]:
        task = await self._visible(app_id, task_id, TaskKind.RECORDING)
        return task, from_plain(RecordingSpec, json.loads(task.spec))

    async def recording_by_id(self, task_id: str, *, dialect: str, apps: frozenset[int] | None,
                              max_age_seconds: float) -> tuple[TaskRecord, RecordingSpec]:
        """A recording addressed by its id alone (ARTC), ended or not, created within `max_age_seconds`:
        only a task of this dialect and of one of `apps` (None: any app the caller has) is visible."""
        task = await self.store.get_task(task_id) if len(task_id) <= 128 else None
        if task is None or task.kind is not TaskKind.RECORDING or task.dialect != dialect \
                or (apps is not None and task.room.app_id not in apps) or self._clock() - task.created_at > max_age_seconds:
            raise NotFound("task not found", reason="task")
        return task, from_plain(RecordingSpec, json.loads(task.spec))

    async def event_kinds(self, task_id: str) -> set[EventKind]:
        return await self.store.event_kinds(task_id)

    async def files(self, task_id: str) -> list[FileRecord]:
        """The task's files; one still being written under a provisional name is not listed (its
        name is not known before it ends)."""
        return [f for f in await self.store.list_files(task_id) if not f.pending]

    async def modify_recording(self, app_id: int, task_id: str, *, layout: Layout | None, subscription: Subscription | None,
                               media_select: MediaSelect | None = None) -> None:
        task, spec = await self.recording(app_id, task_id)
        if task.state is TaskState.EXITING:
            raise Conflict("the task is exiting", reason="exiting")
        if layout is not None and spec.mode is not RecordMode.MIXED:
            layout = None  # layout only means something to a mixed recording; ignored like the vendor does
        new = spec.modified(layout=layout, subscription=subscription, media_select=media_select)
        await self.store.replace_spec(task_id, json.dumps(to_plain(new)))
        logger.info("recording modified", extra={"task_id": task_id})
        self.wake()

    async def stop(self, app_id: int, task_id: str, kind: TaskKind, reason: StopReason = StopReason.API) -> None:
        await self._visible(app_id, task_id, kind)
        await self.store.request_stop(task_id, reason)
        logger.info("stop requested", extra={"task_id": task_id, "reason": reason.name})
        self.wake()

    # --- ingest -----------------------------------------------------------------------------
    async def create_ingest(self, spec: IngestSpec, *, dialect: str, lifetime_hours: int = 24 * 8) -> str:
        now = self._clock()
        task = TaskRecord(
            id=new_task_id(), kind=TaskKind.INGEST, dialect=dialect, room=spec.room, user_id=spec.user_id,
            state=TaskState.IDLE, spec=json.dumps(to_plain(spec)), created_at=now, expires_at=now + lifetime_hours * 3600,
        )
        await self.store.create_task(task, max_alive=self._max_concurrent(spec.room.app_id))
        logger.info("ingest created", extra={"task_id": task.id, "room": str(spec.room), "user_id": spec.user_id})
        self.wake()
        return task.id

    async def ingest(self, app_id: int, task_id: str) -> tuple[TaskRecord, IngestSpec]:
        task = await self._visible(app_id, task_id, TaskKind.INGEST)
        return task, from_plain(IngestSpec, json.loads(task.spec))

    async def replace_ingest(self, app_id: int, task_id: str, spec: IngestSpec) -> None:
        await self._visible(app_id, task_id, TaskKind.INGEST)
        await self.store.replace_spec(task_id, json.dumps(to_plain(spec)))
        self.wake()

    async def stop_room_tasks(self, room: RoomKey, reason: StopReason) -> int:
        n = 0
        for task in await self.store.list_tasks():
            if task.room == room and await self.store.request_stop(task.id, reason):
                n += 1
        self.wake()
        return n

    # --- shared -----------------------------------------------------------------------------
    async def _visible(self, app_id: int, task_id: str, kind: TaskKind) -> TaskRecord:
        """The task, if this app may see it: same app (apps are isolated), alive, within its API lifetime."""
        task = await self.store.get_task(task_id)
        if task is None or task.kind is not kind or task.room.app_id != app_id or not task.state.alive:
            raise NotFound("task not found or already ended", reason="task")
        if self._clock() > task.expires_at:
            raise NotFound("task's API lifetime has expired", reason="expired")
        return task
