"""`SqlTaskStore`: the task store on SQLAlchemy Core (async), for SQLite and PostgreSQL alike."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.states import StopReason, TaskKind, TaskState
from cloudrec.core.tasks import FileRecord, TaskRecord
from cloudrec.errors import LimitReached
from cloudrec.store import tables
from cloudrec.store.migrations import migrate

logger = logging.getLogger(__name__)

_ALIVE = [s.value for s in TaskState if s.alive]


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
    )


class SqlTaskStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine | None = None

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

    async def create_task(self, task: TaskRecord, *, max_alive: int | None = None) -> None:
        t = tables.tasks
        async with self.engine.begin() as conn:
            if max_alive is not None:
                alive = await conn.scalar(
                    sa.select(sa.func.count()).select_from(t).where(
                        t.c.app_id == task.room.app_id, t.c.kind == task.kind.value, t.c.state.in_(_ALIVE)
                    )
                )
                if (alive or 0) >= max_alive:
                    raise LimitReached("too many concurrent tasks", reason="concurrency")
            await conn.execute(
                t.insert().values(
                    id=task.id, kind=task.kind.value, dialect=task.dialect, app_id=task.room.app_id,
                    room_id=task.room.room_id, room_id_type=int(task.room.id_type), user_id=task.user_id,
                    state=task.state.value, spec=task.spec, spec_version=task.spec_version,
                    created_at=task.created_at, expires_at=task.expires_at,
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

    async def set_state(self, task_id: str, state: TaskState, **fields: Any) -> None:
        t = tables.tasks
        values: dict[str, Any] = {"state": state.value}
        for k, v in fields.items():
            values[k] = int(v) if isinstance(v, StopReason) else v
        if state is TaskState.ENDED:
            values.setdefault("ended_at", time.time())
        async with self.engine.begin() as conn:
            await conn.execute(t.update().where(t.c.id == task_id).values(**values))

    async def put_file(self, task_id: str, file: FileRecord) -> None:
        f = tables.files
        async with self.engine.begin() as conn:
            res = await conn.execute(
                f.update().where(f.c.task_id == task_id, f.c.name == file.name).values(end_ms=file.end_ms, final=file.final)
            )
            if not res.rowcount:
                await conn.execute(
                    f.insert().values(
                        task_id=task_id, name=file.name, kind=file.kind, track_type=file.track_type,
                        user_id=file.user_id, media=file.media, begin_ms=file.begin_ms, end_ms=file.end_ms, final=file.final,
                    )
                )

    async def list_files(self, task_id: str) -> list[FileRecord]:
        f = tables.files
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(f).where(f.c.task_id == task_id).order_by(f.c.id))).all()
        return [
            FileRecord(name=r.name, kind=r.kind, track_type=r.track_type, user_id=r.user_id, media=r.media,
                       begin_ms=r.begin_ms, end_ms=r.end_ms, final=bool(r.final))
            for r in rows
        ]

    async def add_event(self, task_id: str, app_id: int, type_: str, payload: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                tables.events.insert().values(
                    task_id=task_id, app_id=app_id, type=type_, payload=json.dumps(payload), created_ms=int(time.time() * 1000)
                )
            )
