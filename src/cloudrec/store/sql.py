"""`SqlTaskStore`: the task store on SQLAlchemy Core (async), for SQLite and PostgreSQL alike."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from cloudrec.core.events import Event, EventKind, OutboxEvent
from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.schedules import RuleRecord, ScheduleRecord, TemplateRecord
from cloudrec.core.states import StopReason, TaskKind, TaskState
from cloudrec.core.tasks import FileRecord, TaskRecord, UploadRecord
from cloudrec.errors import Conflict, LimitReached, NotFound
from cloudrec.store import tables
from cloudrec.store.migrations import migrate

logger = logging.getLogger(__name__)

CLAIM_LEAD_SECONDS = 2.0  # a scheduled task is claimed this long before its start, so it is ready then
_ALIVE = [s.value for s in TaskState if s.alive]
_KINDS = {k.value for k in EventKind}
NONCE_SWEEP_SECONDS = 60.0


def _task_from_row(row: Any) -> TaskRecord:
    return TaskRecord(
        id=row.id,
        kind=TaskKind(row.kind),
        dialect=row.dialect,
        room=RoomKey(int(row.app_id), row.room_id, RoomIdType(row.room_id_type)),
        user_id=row.user_id,
        state=TaskState(row.state),
        spec=row.spec,
        spec_version=row.spec_version,
        created_at=row.created_at,
        expires_at=row.expires_at,
        begin_ms=row.begin_ms,
        ended_at=row.ended_at,
        stop_requested=None if row.stop_requested is None else StopReason(row.stop_requested),
        stop_reason=None if row.stop_reason is None else StopReason(row.stop_reason),
        worker_id=row.worker_id,
        heartbeat_at=row.heartbeat_at,
        error=row.error,
        not_before=row.not_before,
    )


def _upload_from_row(r: Any) -> UploadRecord:
    return UploadRecord(id=r.id, task_id=r.task_id, name=r.name, kind=r.kind, state=r.state, attempts=r.attempts,
                        next_attempt_ms=r.next_attempt_ms, created_ms=r.created_ms, published_ms=r.published_ms,
                        size=r.size, last_error=r.last_error)


class SqlTaskStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine | None = None
        self._nonces_swept = 0.0

    @property
    def engine(self) -> AsyncEngine:
        assert self._engine is not None, "store not started"
        return self._engine

    async def start(self) -> None:
        if self.url.startswith("sqlite"):
            path = self.url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._engine = create_async_engine(self.url)
        if self.url.startswith("sqlite"):
            # WAL lets readers (API) and the writer (worker) proceed together; wait instead of failing.
            @event.listens_for(self._engine.sync_engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA busy_timeout=5000")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

        async with self._engine.begin() as conn:
            version = await conn.run_sync(migrate)
        logger.info("task store ready", extra={"schema_version": version})

    async def stop(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def create_task(self, task: TaskRecord, *, max_alive: int | None = None,
                          displace: StopReason | None = None) -> None:
        t = tables.tasks
        same = sa.and_(t.c.kind == task.kind.value, t.c.app_id == task.room.app_id, t.c.room_id == task.room.room_id,
                       t.c.room_id_type == int(task.room.id_type), t.c.user_id == task.user_id,
                       t.c.state.in_(_ALIVE), t.c.stop_requested.is_(None))
        async with self.engine.begin() as conn:
            if max_alive is not None:
                counted = sa.and_(t.c.app_id == task.room.app_id, t.c.kind == task.kind.value, t.c.state.in_(_ALIVE))
                if displace is not None:
                    counted = sa.and_(counted, sa.not_(same))
                alive = await conn.scalar(sa.select(sa.func.count()).select_from(t).where(counted))
                if (alive or 0) >= max_alive:
                    raise LimitReached("too many concurrent tasks", reason="concurrency")
            if displace is not None:
                await conn.execute(t.update().where(same).values(stop_requested=int(displace)))
            await self._insert_task(conn, task)

    @staticmethod
    async def _insert_task(conn: AsyncConnection, task: TaskRecord) -> None:
        await conn.execute(
            tables.tasks.insert().values(
                id=task.id, kind=task.kind.value, dialect=task.dialect, app_id=task.room.app_id,
                room_id=task.room.room_id, room_id_type=int(task.room.id_type), user_id=task.user_id,
                state=task.state.value, spec=task.spec, spec_version=task.spec_version,
                created_at=task.created_at, expires_at=task.expires_at, not_before=task.not_before,
            )
        )

    async def get_task(self, task_id: str) -> TaskRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(tables.tasks).where(tables.tasks.c.id == task_id))).first()
        return None if row is None else _task_from_row(row)

    async def list_tasks(self, *, kind: TaskKind | None = None, alive_only: bool = True) -> list[TaskRecord]:
        t = tables.tasks
        q = sa.select(t).order_by(t.c.created_at)
        if kind is not None:
            q = q.where(t.c.kind == kind.value)
        if alive_only:
            q = q.where(t.c.state.in_(_ALIVE))
        async with self.engine.connect() as conn:
            return [_task_from_row(r) for r in (await conn.execute(q)).all()]

    async def request_stop(self, task_id: str, reason: StopReason) -> bool:
        t = tables.tasks
        async with self.engine.begin() as conn:
            res = await conn.execute(
                t.update()
                .where(t.c.id == task_id, t.c.state.in_(_ALIVE), t.c.stop_requested.is_(None))
                .values(stop_requested=int(reason))
            )
        return bool(res.rowcount)

    async def replace_spec(self, task_id: str, spec: str) -> int:
        t = tables.tasks
        async with self.engine.begin() as conn:
            await conn.execute(t.update().where(t.c.id == task_id).values(spec=spec, spec_version=t.c.spec_version + 1))
            return int(await conn.scalar(sa.select(t.c.spec_version).where(t.c.id == task_id)) or 0)

    async def claim(self, worker_id: str, *, stale_after: float, limit: int = 10) -> list[TaskRecord]:
        """Take alive tasks nobody runs (or whose worker stopped heartbeating)."""
        t = tables.tasks
        now = time.time()
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(
                    sa.select(t.c.id, t.c.worker_id).where(
                        t.c.state.in_(_ALIVE),
                        sa.or_(t.c.worker_id.is_(None), t.c.heartbeat_at < now - stale_after),
                        sa.or_(t.c.stop_requested.is_not(None), t.c.not_before <= now + CLAIM_LEAD_SECONDS),
                    ).limit(limit)
                )
            ).all()
            claimed: list[str] = []
            for row in rows:
                # Compare-and-set on the previous owner, so two workers never both win.
                cond = t.c.worker_id.is_(None) if row.worker_id is None else t.c.worker_id == row.worker_id
                res = await conn.execute(
                    t.update().where(t.c.id == row.id, cond).values(worker_id=worker_id, heartbeat_at=now)
                )
                if res.rowcount:
                    claimed.append(row.id)
            if not claimed:
                return []
            out = (await conn.execute(sa.select(t).where(t.c.id.in_(claimed)))).all()
        return [_task_from_row(r) for r in out]

    async def heartbeat(self, worker_id: str) -> None:
        t = tables.tasks
        async with self.engine.begin() as conn:
            await conn.execute(
                t.update().where(t.c.worker_id == worker_id, t.c.state.in_(_ALIVE)).values(heartbeat_at=time.time())
            )

    async def set_state(self, task_id: str, state: TaskState, *, events: Sequence[Event] = (),
                        finish_uploads_on: str | None = None, **fields: Any) -> None:
        t = tables.tasks
        values: dict[str, Any] = {"state": state.value}
        for k, v in fields.items():
            values[k] = int(v) if isinstance(v, StopReason) else v
        if state is TaskState.ENDED:
            values.setdefault("ended_at", time.time())
        async with self.engine.begin() as conn:
            await conn.execute(t.update().where(t.c.id == task_id).values(**values))
            await self._insert_events(conn, task_id, events)
            if finish_uploads_on is not None:
                await self._queue_upload(conn, task_id, finish_uploads_on, "", "finish")

    async def put_file(self, task_id: str, file: FileRecord, *, events: Sequence[Event] = (),
                       upload_on: str | None = None, replaces: str = "") -> None:
        """Record `file`; with `upload_on` (a node), also queue it for upload from that node's spool;
        `replaces`: the provisional name it had, whose record it takes the place of."""
        f = tables.files
        async with self.engine.begin() as conn:
            if replaces and replaces != file.name:
                await conn.execute(f.delete().where(f.c.task_id == task_id, f.c.name == replaces))
            if upload_on is not None:
                await self._queue_upload(conn, task_id, upload_on, file.name, file.kind)
            res = await conn.execute(
                f.update().where(f.c.task_id == task_id, f.c.name == file.name).values(end_ms=file.end_ms, final=file.final)
            )
            if not res.rowcount:
                await conn.execute(
                    f.insert().values(
                        task_id=task_id, name=file.name, kind=file.kind, track_type=file.track_type,
                        user_id=file.user_id, media=file.media, begin_ms=file.begin_ms, end_ms=file.end_ms, final=file.final,
                        pending=file.pending,
                    )
                )
            await self._insert_events(conn, task_id, events)

    async def list_files(self, task_id: str) -> list[FileRecord]:
        f = tables.files
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(f).where(f.c.task_id == task_id).order_by(f.c.id))).all()
        return [_file_from_row(r) for r in rows]

    async def get_file(self, task_id: str, name: str) -> FileRecord | None:
        f = tables.files
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(f).where(f.c.task_id == task_id, f.c.name == name))).first()
        return _file_from_row(row) if row is not None else None

    # --- the upload queue (storage/uploader.py) -------------------------------------------------------
    async def _queue_upload(self, conn: AsyncConnection, task_id: str, node: str, name: str, kind: str) -> None:
        u = tables.uploads
        present = (await conn.execute(sa.select(u.c.id, u.c.state).where(u.c.task_id == task_id, u.c.name == name))).first()
        if present is not None and kind == "playlist" and present.state != "pending":
            # A finished playlist that goes on (its user published again): publish it anew, as a new row
            # (the uploader remembers finished rows by id).
            await conn.execute(u.delete().where(u.c.id == present.id))
            present = None
        if present is None:
            await conn.execute(u.insert().values(task_id=task_id, node=node, name=name, kind=kind, state="pending",
                                                 attempts=0, next_attempt_ms=0, created_ms=int(time.time() * 1000)))

    async def pending_uploads(self, node: str, *, limit: int = 1000) -> list[UploadRecord]:
        u = tables.uploads
        q = sa.select(u).where(u.c.node == node, u.c.state == "pending").order_by(u.c.id).limit(limit)
        async with self.engine.connect() as conn:
            return [_upload_from_row(r) for r in (await conn.execute(q)).all()]

    async def task_uploads(self, task_id: str) -> list[UploadRecord]:
        u = tables.uploads
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(u).where(u.c.task_id == task_id).order_by(u.c.id))).all()
        return [_upload_from_row(r) for r in rows]

    async def upload_published(self, upload_id: int, *, now_ms: int, events: Sequence[Event] = ()) -> None:
        """A playlist was published (maybe listing fewer segments than it will): remember the first time."""
        u = tables.uploads
        async with self.engine.begin() as conn:
            await conn.execute(u.update().where(u.c.id == upload_id, u.c.published_ms.is_(None)).values(published_ms=now_ms))
            task_id = await conn.scalar(sa.select(u.c.task_id).where(u.c.id == upload_id))
            if task_id is not None:
                await self._insert_events(conn, task_id, events)

    async def upload_done(self, upload_id: int, *, now_ms: int, size: int | None = None,
                          events: Sequence[Event] = ()) -> None:
        await self._upload_final(upload_id, {"state": "done", "done_ms": now_ms, "size": size, "last_error": None}, events)

    async def upload_failed(self, upload_id: int, *, error: str, events: Sequence[Event] = ()) -> None:
        await self._upload_final(upload_id, {"state": "failed", "last_error": error[:1000]}, events)

    async def _upload_final(self, upload_id: int, values: dict[str, Any], events: Sequence[Event]) -> None:
        u = tables.uploads
        async with self.engine.begin() as conn:
            task_id = await conn.scalar(sa.select(u.c.task_id).where(u.c.id == upload_id, u.c.state == "pending"))
            if task_id is None:
                return
            await conn.execute(u.update().where(u.c.id == upload_id).values(**values))
            await self._insert_events(conn, task_id, events)

    async def upload_retry(self, upload_id: int, *, error: str, next_ms: int) -> None:
        u = tables.uploads
        async with self.engine.begin() as conn:
            await conn.execute(u.update().where(u.c.id == upload_id, u.c.state == "pending").values(
                attempts=u.c.attempts + 1, next_attempt_ms=next_ms, last_error=error[:1000]))

    async def revive_failed_uploads(self, node: str, *, since_ms: int) -> list[tuple[int, str, str]]:
        """Failed (stranded) uploads of `node` queued after `since_ms` go back to the queue, due now;
        returns their (id, task id, name)."""
        u = tables.uploads
        async with self.engine.begin() as conn:
            rows = [(int(r[0]), str(r[1]), str(r[2])) for r in (await conn.execute(sa.select(u.c.id, u.c.task_id, u.c.name).where(
                u.c.node == node, u.c.state == "failed", u.c.created_ms >= since_ms))).all()]
            if rows:
                await conn.execute(u.update().where(u.c.id.in_([i for i, _, _ in rows]), u.c.state == "failed").values(
                    state="pending", next_attempt_ms=0))
        return rows

    async def upload_counts(self, node: str | None = None) -> dict[str, int]:
        u = tables.uploads
        q = sa.select(u.c.state, sa.func.count()).where(u.c.kind != "finish").group_by(u.c.state)
        if node is not None:
            q = q.where(u.c.node == node)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return {str(r[0]): int(r[1]) for r in rows}

    # --- request nonces (replay protection of signed API calls) ----------------------------------
    async def use_nonce(self, nonce: str, *, now: float, expires_at: float) -> bool:
        """True if `nonce` was not seen (or its earlier use has expired); it is then taken until `expires_at`.
        Kept as a SHA-256, so a nonce of any length fits the column."""
        n = tables.nonces
        digest = hashlib.sha256(nonce.encode()).hexdigest()
        try:
            async with self.engine.begin() as conn:
                if now - self._nonces_swept > NONCE_SWEEP_SECONDS:  # expired rows go now and then, from any node
                    self._nonces_swept = now
                    await conn.execute(n.delete().where(n.c.expires_at < now))
                else:  # an expired use of this nonce: its timestamp window has passed, it may be used again
                    await conn.execute(n.delete().where(n.c.nonce == digest, n.c.expires_at < now))
                await conn.execute(n.insert().values(nonce=digest, expires_at=expires_at))
                return True
        except sa.exc.IntegrityError:  # in use (also: another request or node inserted it at the same moment)
            return False

    # --- the callback outbox -----------------------------------------------------------------------
    async def add_events(self, task_id: str, events: Sequence[Event]) -> None:
        async with self.engine.begin() as conn:
            await self._insert_events(conn, task_id, events)

    async def _insert_events(self, conn: AsyncConnection, task_id: str, events: Sequence[Event]) -> None:
        if not events:
            return
        app_id = await conn.scalar(sa.select(tables.tasks.c.app_id).where(tables.tasks.c.id == task_id))
        if app_id is None:
            raise LookupError(f"no task {task_id}")
        await conn.execute(
            tables.events.insert(),
            [{"task_id": task_id, "app_id": app_id, "type": e.kind.value, "payload": json.dumps(dict(e.payload)),
              "created_ms": e.at_ms, "attempts": 0, "state": "pending", "next_attempt_ms": 0} for e in events],
        )

    async def event_kinds(self, task_id: str) -> set[EventKind]:
        e = tables.events
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(e.c.type).where(e.c.task_id == task_id).distinct())).all()
        return {EventKind(r.type) for r in rows if r.type in _KINDS}

    async def event_payloads(self, task_id: str, kind: EventKind) -> list[dict[str, Any]]:
        e = tables.events
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(e.c.payload).where(e.c.task_id == task_id, e.c.type == kind.value)
                                       .order_by(e.c.id))).all()
        return [json.loads(r.payload) for r in rows]

    async def due_events(self, now_ms: int, *, limit: int) -> list[OutboxEvent]:
        e, t = tables.events, tables.tasks
        # One head per task: a later event of a task waits until the earlier one leaves `pending`.
        heads = sa.select(sa.func.min(e.c.id)).where(e.c.state == "pending").group_by(e.c.task_id)
        q = (
            sa.select(e, t.c.room_id, t.c.room_id_type, t.c.user_id.label("robot"), t.c.dialect)
            .select_from(e.outerjoin(t, t.c.id == e.c.task_id))
            .where(e.c.id.in_(heads), e.c.next_attempt_ms <= now_ms,
                   sa.or_(e.c.claimed_until_ms.is_(None), e.c.claimed_until_ms < now_ms))
            .order_by(e.c.next_attempt_ms, e.c.id)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        out = []
        unknown = []
        for r in rows:
            if r.type not in _KINDS:
                unknown.append(r.id)  # written by a newer version, or garbage: never blocks the task's queue
                continue
            out.append(OutboxEvent(
                id=r.id, task_id=r.task_id,
                room=RoomKey(int(r.app_id), r.room_id or "", RoomIdType(1 if r.room_id_type is None else r.room_id_type)),
                robot_user_id=r.robot or "", dialect=r.dialect or "",
                event=Event(kind=EventKind(r.type), at_ms=r.created_ms, payload=json.loads(r.payload)),
                attempts=r.attempts,
            ))
        for event_id in unknown:
            await self.event_final(event_id, "skipped", error="unknown event type")
        return out

    async def claim_event(self, event_id: int, owner: str, *, now_ms: int, until_ms: int) -> bool:
        e = tables.events
        async with self.engine.begin() as conn:
            res = await conn.execute(
                e.update()
                .where(e.c.id == event_id, e.c.state == "pending",
                       sa.or_(e.c.claimed_until_ms.is_(None), e.c.claimed_until_ms < now_ms))
                .values(claimed_by=owner, claimed_until_ms=until_ms)
            )
        return bool(res.rowcount)

    async def event_delivered(self, event_id: int, *, now_ms: int) -> None:
        e = tables.events
        async with self.engine.begin() as conn:
            await conn.execute(
                e.update().where(e.c.id == event_id, e.c.state == "pending").values(
                    state="delivered", delivered_ms=now_ms, attempts=e.c.attempts + 1, claimed_by=None,
                    claimed_until_ms=None, last_error=None)
            )

    async def event_retry(self, event_id: int, owner: str, *, error: str, next_ms: int) -> None:
        e = tables.events
        async with self.engine.begin() as conn:
            await conn.execute(
                e.update().where(e.c.id == event_id, e.c.state == "pending", e.c.claimed_by == owner).values(
                    attempts=e.c.attempts + 1, next_attempt_ms=next_ms, last_error=error[:1000], claimed_by=None,
                    claimed_until_ms=None)
            )

    async def event_final(self, event_id: int, state: str, *, error: str) -> None:
        assert state in ("dead", "skipped")
        e = tables.events
        async with self.engine.begin() as conn:
            await conn.execute(
                e.update().where(e.c.id == event_id, e.c.state == "pending").values(
                    state=state, last_error=error[:1000], claimed_by=None, claimed_until_ms=None)
            )

    async def release_claims(self, owner: str) -> None:
        e = tables.events
        async with self.engine.begin() as conn:
            await conn.execute(
                e.update().where(e.c.claimed_by == owner, e.c.state == "pending").values(claimed_by=None, claimed_until_ms=None)
            )

    async def event_counts(self) -> dict[str, int]:
        e = tables.events
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(e.c.state, sa.func.count()).group_by(e.c.state))).all()
        return {str(r[0]): int(r[1]) for r in rows}

    async def oldest_pending_ms(self) -> int | None:
        e = tables.events
        async with self.engine.connect() as conn:
            value = await conn.scalar(sa.select(sa.func.min(e.c.created_ms)).where(e.c.state == "pending"))
        return None if value is None else int(value)

    async def task_counts(self) -> dict[tuple[str, str], int]:
        t = tables.tasks
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(t.c.kind, t.c.state, sa.func.count()).group_by(t.c.kind, t.c.state))).all()
        return {(str(r[0]), str(r[1])): int(r[2]) for r in rows}

    # --- scheduled recordings, templates and rules (migration 5) --------------------------------------
    async def create_scheduled(self, task: TaskRecord, schedule: ScheduleRecord, *, max_alive: int,
                               max_overlap: int) -> None:
        """Insert the task and its window in one transaction. LimitReached (reason "concurrency") when
        the service has `max_alive` alive tasks; (reason "overlap") when `max_overlap` tasks of the same
        scope, neither stopped nor ending, already overlap the window."""
        t, s = tables.tasks, tables.schedules
        async with self.engine.begin() as conn:
            alive = await conn.scalar(
                sa.select(sa.func.count()).select_from(t.join(s, s.c.task_id == t.c.id))
                .where(s.c.service == schedule.service, t.c.state.in_(_ALIVE)))
            if (alive or 0) >= max_alive:
                raise LimitReached("too many scheduled tasks", reason="concurrency")
            overlapping = await conn.scalar(
                sa.select(sa.func.count()).select_from(t.join(s, s.c.task_id == t.c.id)).where(
                    s.c.service == schedule.service, s.c.scope == schedule.scope, t.c.state.in_(_ALIVE),
                    t.c.stop_requested.is_(None), s.c.stopped_s == 0,
                    s.c.start_s < schedule.end_s, s.c.end_s > schedule.start_s))
            if (overlapping or 0) >= max_overlap:
                raise LimitReached("too many overlapping tasks for this scope", reason="overlap")
            await self._insert_task(conn, task)
            await conn.execute(s.insert().values(
                task_id=schedule.task_id, service=schedule.service, scope=schedule.scope, start_s=schedule.start_s,
                end_s=schedule.end_s, template_id=schedule.template_id, stopped_s=0, hidden=schedule.hidden,
                created_at=schedule.created_at, source_query=schedule.source_query))

    async def get_schedule(self, task_id: str) -> ScheduleRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(tables.schedules).where(tables.schedules.c.task_id == task_id))).first()
        return None if row is None else _schedule_from_row(row)

    async def list_schedules(self, service: str, *, start_from: int, end_to: int, created_after: float,
                             scope: tuple[str | None, ...] = (), after: tuple[int, str] | None = None,
                             limit: int = 100) -> list[ScheduleRecord]:
        """Visible schedules whose window lies inside [start_from, end_to], ordered by (start, task id),
        from after the `after` position (paging); `scope` filters the "/"-separated parts of the scope
        (None = any part)."""
        s = tables.schedules
        q = sa.select(s).where(s.c.service == service, s.c.hidden.is_(False), s.c.start_s >= start_from,
                               s.c.end_s <= end_to, s.c.created_at >= created_after)
        if any(part is not None for part in scope):
            q = q.where(_parts_match(s.c.scope, scope, sqlite=self.engine.dialect.name == "sqlite"))
        if after is not None:
            q = q.where(sa.or_(s.c.start_s > after[0], sa.and_(s.c.start_s == after[0], s.c.task_id > after[1])))
        q = q.order_by(s.c.start_s, s.c.task_id).limit(limit)
        async with self.engine.connect() as conn:
            return [_schedule_from_row(r) for r in (await conn.execute(q)).all()]

    async def update_schedule(self, task_id: str, **values: Any) -> None:
        """Set `stopped_s` (only the first time) and/or `hidden`."""
        s = tables.schedules
        async with self.engine.begin() as conn:
            if "stopped_s" in values:
                await conn.execute(s.update().where(s.c.task_id == task_id, s.c.stopped_s == 0)
                                   .values(stopped_s=values.pop("stopped_s")))
            if values:
                await conn.execute(s.update().where(s.c.task_id == task_id).values(**values))

    async def create_template(self, service: str, name: str, body: str, *, max_count: int) -> int:
        r = tables.record_templates
        now = time.time()
        async with self.engine.begin() as conn:
            count = await conn.scalar(sa.select(sa.func.count()).select_from(r).where(r.c.service == service))
            if (count or 0) >= max_count:
                raise LimitReached("too many templates", reason="templates")
            res = await conn.execute(r.insert().values(service=service, name=name, body=body, created_at=now, updated_at=now))
            key = res.inserted_primary_key
            assert key is not None
            return int(key[0])

    async def get_template(self, service: str, template_id: int) -> TemplateRecord | None:
        r = tables.record_templates
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(r).where(r.c.service == service, r.c.id == template_id))).first()
        return None if row is None else _template_from_row(row)

    async def list_templates(self, service: str) -> list[TemplateRecord]:
        r = tables.record_templates
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(r).where(r.c.service == service).order_by(r.c.id))).all()
        return [_template_from_row(x) for x in rows]

    async def update_template(self, service: str, template_id: int, name: str, body: str) -> None:
        r = tables.record_templates
        async with self.engine.begin() as conn:
            res = await conn.execute(r.update().where(r.c.service == service, r.c.id == template_id)
                                     .values(name=name, body=body, updated_at=time.time()))
        if not res.rowcount:
            raise NotFound("no such template", reason="template")

    async def delete_template(self, service: str, template_id: int) -> None:
        """NotFound if absent; Conflict (reason "in_use") while a rule uses it."""
        r, rules = tables.record_templates, tables.record_rules
        async with self.engine.begin() as conn:
            used = await conn.scalar(sa.select(sa.func.count()).select_from(rules)
                                     .where(rules.c.service == service, rules.c.template_id == template_id))
            if used:
                raise Conflict("the template is used by a rule", reason="in_use")
            res = await conn.execute(r.delete().where(r.c.service == service, r.c.id == template_id))
        if not res.rowcount:
            raise NotFound("no such template", reason="template")

    async def create_rule(self, service: str, scope: str, template_id: int) -> None:
        """NotFound (reason "template") without the template; Conflict (reason "exists") for a taken scope."""
        r, rules = tables.record_templates, tables.record_rules
        now = time.time()
        async with self.engine.begin() as conn:
            if await conn.scalar(sa.select(r.c.id).where(r.c.service == service, r.c.id == template_id)) is None:
                raise NotFound("no such template", reason="template")
            if await conn.scalar(sa.select(rules.c.id).where(rules.c.service == service, rules.c.scope == scope)) is not None:
                raise Conflict("a rule for this scope exists", reason="exists")
            await conn.execute(rules.insert().values(service=service, scope=scope, template_id=template_id,
                                                     created_at=now, updated_at=now))

    async def list_rules(self, service: str) -> list[RuleRecord]:
        rules = tables.record_rules
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(rules).where(rules.c.service == service).order_by(rules.c.id))).all()
        return [RuleRecord(id=x.id, service=x.service, scope=x.scope, template_id=int(x.template_id),
                           created_at=x.created_at, updated_at=x.updated_at) for x in rows]

    async def delete_rule(self, service: str, scope: str) -> None:
        rules = tables.record_rules
        async with self.engine.begin() as conn:
            res = await conn.execute(rules.delete().where(rules.c.service == service, rules.c.scope == scope))
        if not res.rowcount:
            raise NotFound("no such rule", reason="rule")


def _schedule_from_row(r: Any) -> ScheduleRecord:
    return ScheduleRecord(task_id=r.task_id, service=r.service, scope=r.scope, start_s=int(r.start_s), end_s=int(r.end_s),
                          template_id=int(r.template_id), stopped_s=int(r.stopped_s), hidden=bool(r.hidden),
                          created_at=r.created_at, source_query=r.source_query or "")


def _template_from_row(r: Any) -> TemplateRecord:
    return TemplateRecord(id=int(r.id), service=r.service, name=r.name, body=r.body, created_at=r.created_at,
                          updated_at=r.updated_at)


def _parts_match(column: sa.ColumnElement[str], parts: tuple[str | None, ...], *, sqlite: bool) -> sa.ColumnElement[bool]:
    """`column` ("a/b/c") has these "/"-separated parts (None: any), compared case-sensitively:
    SQLite's LIKE ignores case, its GLOB does not (PostgreSQL's LIKE does not either)."""
    if sqlite:
        def glob(part: str | None) -> str:
            return "*" if part is None else "".join(f"[{c}]" if c in "*?[" else c for c in part)
        return column.op("GLOB")("/".join(glob(part) for part in parts))

    def like(part: str | None) -> str:
        return "%" if part is None else part.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like("/".join(like(part) for part in parts), escape="\\")


def _file_from_row(r: Any) -> FileRecord:
    return FileRecord(name=r.name, kind=r.kind, track_type=r.track_type, user_id=r.user_id, media=r.media,
                      begin_ms=r.begin_ms, end_ms=r.end_ms, final=bool(r.final), pending=r.pending or "")
