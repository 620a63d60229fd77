"""Scheduled recordings (a window per task, CSS style), recording templates and recording rules.

The limits here are the service's business rules: how many tasks may be alive, how many may
overlap on one scope, how long task records stay listed, how many templates an account keeps.
Templates and rules belong to the service as a whole (CSS has no app id: one account per server).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from cloudrec.control.tasks import recording_record
from cloudrec.core.records import from_plain, to_plain
from cloudrec.core.schedules import RuleRecord, ScheduleRecord, TemplateRecord
from cloudrec.core.spec import RecordingSpec
from cloudrec.core.states import StopReason, TaskState
from cloudrec.errors import NotFound
from cloudrec.store.base import ScheduleStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleLimits:
    max_alive: int = 1000  # alive scheduled tasks of the service (created, not yet ended)
    max_overlap: int = 3  # tasks of one scope whose windows overlap
    retention_days: int = 90  # task records are listed this long after their creation
    max_templates: int = 50


class ScheduleControl:
    def __init__(self, store: ScheduleStore, *, service: str, dialect: str, limits: ScheduleLimits = ScheduleLimits(),
                 wake_workers: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.service = service
        self.dialect = dialect
        self.limits = limits
        self.wake = wake_workers
        self.clock = clock

    # --- tasks ------------------------------------------------------------------------------
    async def create(self, spec: RecordingSpec, *, scope: str, start_s: int, end_s: int, template_id: int,
                     listed: bool = True, source_query: str = "") -> str:
        """A task that records `spec` from `start_s` to `end_s`. LimitReached: too many alive tasks
        ("concurrency") or overlapping ones on this scope ("overlap"). `listed=False`: a task the
        service started itself (a rule's, recording the push whose query is `source_query`), never listed."""
        now = self.clock()
        task = recording_record(spec, dialect=self.dialect, now=now, expires_at=float(end_s))
        schedule = ScheduleRecord(task_id=task.id, service=self.service, scope=scope, start_s=start_s, end_s=end_s,
                                  template_id=template_id, created_at=now, hidden=not listed, source_query=source_query)
        await self.store.create_scheduled(task, schedule, max_alive=self.limits.max_alive, max_overlap=self.limits.max_overlap)
        logger.info("scheduled recording created", extra={"task_id": task.id, "room": str(spec.room),
                                                          "start_s": start_s, "end_s": end_s})
        self.wake()
        return task.id

    async def get(self, task_id: str) -> ScheduleRecord:
        """The task's schedule, if it is listed: this service's, not deleted, within the retention."""
        schedule = await self.store.get_schedule(task_id)
        if schedule is None or schedule.service != self.service or schedule.hidden or \
                schedule.created_at < self.clock() - self.limits.retention_days * 86400:
            raise NotFound("no such task", reason="task")
        return schedule

    async def listed(self, *, start_from: int, end_to: int, scope: tuple[str | None, ...] = (),
                     after: tuple[int, str] | None, limit: int) -> list[ScheduleRecord]:
        """`scope`: the "/"-separated parts a task's scope must have (None: any)."""
        created_after = self.clock() - self.limits.retention_days * 86400
        return await self.store.list_schedules(self.service, start_from=start_from, end_to=end_to, scope=scope,
                                               created_after=created_after, after=after, limit=limit)

    async def stop(self, task_id: str) -> None:
        """End the task for good (the current file is closed); `stopped_s` is the time of the first stop."""
        await self.get(task_id)
        await self.store.update_schedule(task_id, stopped_s=int(self.clock()))
        await self.store.request_stop(task_id, StopReason.API)
        logger.info("scheduled recording stopped", extra={"task_id": task_id})
        self.wake()

    async def delete(self, task_id: str) -> None:
        """Hide the task. A recording in progress goes on until its publisher leaves (then the task
        ends instead of waiting for the next push); a task not recording now ends at once."""
        await self.get(task_id)
        await self.store.update_schedule(task_id, hidden=True)
        task = await self.store.get_task(task_id)
        if task is not None and task.state is TaskState.IN_PROGRESS and task.stop_requested is None:
            spec = from_plain(RecordingSpec, json.loads(task.spec))
            await self.store.replace_spec(task_id, json.dumps(to_plain(replace(spec, idle_stop=True, max_idle_seconds=0))))
        else:
            await self.store.request_stop(task_id, StopReason.API)
        logger.info("scheduled recording deleted", extra={"task_id": task_id})
        self.wake()

    # --- templates and rules ----------------------------------------------------------------
    async def create_template(self, name: str, body: str) -> int:
        """LimitReached (reason "templates") beyond `max_templates`."""
        return await self.store.create_template(self.service, name, body, max_count=self.limits.max_templates)

    async def template(self, template_id: int) -> TemplateRecord:
        found = await self.store.get_template(self.service, template_id)
        if found is None:
            raise NotFound("no such template", reason="template")
        return found

    async def templates(self) -> list[TemplateRecord]:
        return await self.store.list_templates(self.service)

    async def update_template(self, template_id: int, name: str, body: str) -> None:
        await self.store.update_template(self.service, template_id, name, body)

    async def delete_template(self, template_id: int) -> None:
        """NotFound; Conflict (reason "in_use") while a rule uses it."""
        await self.store.delete_template(self.service, template_id)

    async def create_rule(self, scope: str, template_id: int) -> None:
        await self.store.create_rule(self.service, scope, template_id)

    async def rules(self) -> list[RuleRecord]:
        return await self.store.list_rules(self.service)

    async def delete_rule(self, scope: str) -> None:
        await self.store.delete_rule(self.service, scope)
