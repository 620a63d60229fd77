"""What `GET /metrics` reports: this process's counters plus gauges read from the store at scrape time.

Store gauges (tasks, callback backlog) are shared by every process on one database; counters
(bytes written, callback attempts, dropped units) are this process's own, as Prometheus expects.
"""

from __future__ import annotations

import time

from cloudrec.core.metrics import Family, Labels, Metrics, gauge, render
from cloudrec.core.states import TaskKind, TaskState
from cloudrec.store.base import EventOutbox

EVENT_STATES = ("pending", "delivered", "dead", "skipped")


class MetricsReport:
    def __init__(self, store: EventOutbox, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics

    async def families(self) -> list[Family]:
        tasks = await self.store.task_counts()
        events = await self.store.event_counts()
        oldest = await self.store.oldest_pending_ms()
        task_samples: dict[Labels, float] = {(("kind", k.value), ("state", s.value)): float(tasks.get((k.value, s.value), 0))
                        for k in TaskKind for s in TaskState}
        age = max(0.0, time.time() - oldest / 1000) if oldest is not None else 0.0
        return [
            *self.metrics.families(),
            gauge("cloudrec_tasks", "tasks in the store by kind and state", task_samples),
            gauge("cloudrec_callback_events", "callback outbox events by delivery state",
                  {(("state", s),): float(events.get(s, 0)) for s in EVENT_STATES}),
            gauge("cloudrec_callback_backlog", "callback events not yet delivered (pending)",
                  {(): float(events.get("pending", 0))}),
            gauge("cloudrec_callback_oldest_pending_seconds", "age of the oldest undelivered callback event",
                  {(): round(age, 3)}),
        ]

    async def text(self) -> str:
        return render(await self.families())
