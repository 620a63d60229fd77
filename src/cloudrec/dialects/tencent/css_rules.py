"""Recording rules at work (spec §4): every push of a stream a rule matches is recorded with the
rule's template, one task per push session (it ends when the push does).

The service hands in what is live (`live_streams`: CSS rooms with a publisher, and the query string
of each one's push, which the task keeps for its callbacks' `stream_param`); rules are looked up
most specific first: domain/app/stream, then domain/app (empty StreamName), then domain alone.
Rule tasks are not listed by DescribeRecordTask (only CreateRecordTask's are) and do not count
against the 3 overlapping tasks of a stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from cloudrec.control.schedules import ScheduleControl
from cloudrec.core.rooms import RoomKey
from cloudrec.core.states import TaskState
from cloudrec.dialects.tencent.css_rooms import stream_of
from cloudrec.dialects.tencent.css_spec import recording_spec
from cloudrec.errors import CloudrecError, NotFound

logger = logging.getLogger(__name__)

RULE_SCOPE_PREFIX = "rule:"  # rule tasks' schedule scope: apart from CreateRecordTask's overlap count
RULE_TASK_SECONDS = 24 * 3600  # a rule task's window; a push longer than this continues in a new task
IDLE_SECONDS = 3  # the push is over when its stream has had no publisher this long


class RuleRecorder:
    def __init__(self, control: ScheduleControl, live_streams: Callable[[], Mapping[RoomKey, str]], *,
                 poll_seconds: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.control = control
        self.live_streams = live_streams
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.active: dict[RoomKey, str] = {}  # stream → its rule task

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:
                logger.exception("recording rules: check failed")
            try:
                await asyncio.wait_for(stop.wait(), self.poll_seconds)
            except asyncio.TimeoutError:
                pass

    async def tick(self) -> None:
        await self._forget_ended()
        live = {room: query for room, query in self.live_streams().items() if room not in self.active}
        if not live:
            return
        rules = {r.scope: r.template_id for r in await self.control.rules()}
        for room, query in live.items():
            domain, app_name, stream = stream_of(room)
            template_id = next((rules[k] for k in (f"{domain}/{app_name}/{stream}", f"{domain}/{app_name}/", f"{domain}//")
                                if k in rules), None)
            if template_id is not None:
                await self._start(room, domain, app_name, stream, template_id, query)

    async def _forget_ended(self) -> None:
        for room, task_id in list(self.active.items()):
            task = await self.control.store.get_task(task_id)
            if task is None or task.state is TaskState.ENDED:
                del self.active[room]

    async def _start(self, room: RoomKey, domain: str, app_name: str, stream: str, template_id: int, query: str) -> None:
        try:
            template = (await self.control.template(template_id)).body
        except NotFound:
            return
        now = int(self.clock())
        spec = recording_spec(room, domain=domain, app_name=app_name, stream=stream, template=json.loads(template),
                              start_s=now, end_s=now + RULE_TASK_SECONDS)
        spec = replace(spec, idle_stop=True, max_idle_seconds=IDLE_SECONDS)  # one task per push session
        try:
            self.active[room] = await self.control.create(spec, scope=RULE_SCOPE_PREFIX + room.room_id, start_s=now,
                                                          end_s=now + RULE_TASK_SECONDS, template_id=template_id,
                                                          listed=False, source_query=query)
        except CloudrecError:
            logger.warning("recording rules: task not created", extra={"room": str(room)}, exc_info=True)
            return
        logger.info("recording rule applied", extra={"room": str(room), "template_id": template_id,
                                                      "task_id": self.active[room]})
