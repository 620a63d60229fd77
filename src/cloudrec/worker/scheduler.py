"""The worker: claims tasks from the store, runs a session per task, heartbeats, shuts down cleanly."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from cloudrec.core import events as ev
from cloudrec.core.states import StopReason, TaskKind, TaskState
from cloudrec.core.tasks import TaskRecord
from cloudrec.rooms.registry import RoomRegistry
from cloudrec.store.base import TaskStore
from cloudrec.worker.session import IngestSession, RecordingSession, Session, SessionConfig

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
STALE_AFTER_SECONDS = 10.0  # a task whose worker has not heartbeated this long is taken over


class Worker:
    def __init__(self, store: TaskStore, registry: RoomRegistry, config: SessionConfig, *, worker_id: str | None = None) -> None:
        self.store = store
        self.registry = registry
        self.config = config
        self.worker_id = worker_id or f"w-{uuid.uuid4().hex[:12]}"
        self.sessions: dict[str, tuple[Session, asyncio.Task[None]]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Look at the store now (new task, stop or change request) instead of at the next poll."""
        self._wake.set()
        for session, _ in self.sessions.values():
            session.kick.set()

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="worker")

    async def _run(self) -> None:
        last_beat = 0.0
        while not self._stopping:
            try:
                for task in await self.store.claim(self.worker_id, stale_after=STALE_AFTER_SECONDS):
                    self._spawn(task)
                if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                    await self.store.heartbeat(self.worker_id)
                    last_beat = time.monotonic()
            except Exception:
                logger.exception("worker loop error", extra={"worker_id": self.worker_id})
            if self.config.metrics is not None:
                lag = max((s.lag_seconds() for s, _ in self.sessions.values()), default=0.0)
                self.config.metrics.set("cloudrec_pipeline_lag_seconds", round(lag, 3))
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.poll_seconds)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    def _spawn(self, task: TaskRecord) -> None:
        if task.id in self.sessions:
            return
        runner = asyncio.create_task(self._run_session(task), name=f"session-{task.id[:8]}")
        task_id = task.id

        def forget(_: asyncio.Task[None]) -> None:
            self.sessions.pop(task_id, None)

        runner.add_done_callback(forget)

    async def _run_session(self, task: TaskRecord) -> None:
        """One task end to end. A session that cannot be built or fails outside its own handling
        ends the task as failed: a claimed task must never stay claimed with nothing running it."""
        try:
            session: Session
            if task.kind is TaskKind.RECORDING:
                session = RecordingSession(task, self.store, self.config, self.registry)
            else:
                session = IngestSession(task, self.store, self.config, self.registry)
            runner = asyncio.current_task()
            assert runner is not None
            self.sessions[task.id] = (session, runner)
            await session.run()
        except Exception:
            logger.exception("session failed; task ended", extra={"task_id": task.id})
            try:
                await self.store.set_state(task.id, TaskState.ENDED, stop_reason=StopReason.FAILED,
                                           events=[ev.recorder_stopped(int(time.time() * 1000), StopReason.FAILED)])
            except Exception:
                logger.exception("could not end the failed task", extra={"task_id": task.id})

    async def stop(self) -> None:
        """Finalize every running task (files closed, tasks ended) and stop claiming."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        # Ingest first, so recordings see their publishers leave; then recordings finalize.
        for kind in (TaskKind.INGEST, TaskKind.RECORDING):
            runners = []
            for session, runner in list(self.sessions.values()):
                if session.task.kind is kind:
                    session.request_stop(StopReason.SHUTDOWN)
                    runners.append(runner)
            if runners:
                await asyncio.gather(*runners, return_exceptions=True)
        logger.info("worker stopped", extra={"worker_id": self.worker_id})
