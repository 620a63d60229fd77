"""Schema migrations: an ordered list of steps; each runs once, in its own transaction.

Written against SQLAlchemy Core so one list serves SQLite and PostgreSQL. Append, never edit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloudrec.store import tables

logger = logging.getLogger(__name__)


def _v1_initial(conn: Connection) -> None:
    for table in (tables.tasks, tables.files, tables.events):  # later tables come with their own steps
        table.create(conn, checkfirst=True)


def _v2_event_delivery(conn: Connection) -> None:
    """Delivery state for the callback outbox (the notifier). A fresh database got these columns
    from `_v1_initial` already (it creates the current tables), so add only what is missing."""
    present = {c["name"] for c in sa.inspect(conn).get_columns("events")}
    added = {
        "state": "VARCHAR(16) NOT NULL DEFAULT 'pending'",
        "next_attempt_ms": "BIGINT NOT NULL DEFAULT 0",
        "claimed_by": "VARCHAR(64)",
        "claimed_until_ms": "BIGINT",
        "last_error": "TEXT",
    }
    for name, ddl in added.items():
        if name not in present:
            conn.execute(sa.text(f"ALTER TABLE events ADD COLUMN {name} {ddl}"))
    if "state" not in present:
        # Rows written before anything delivered them are history, not news: sending days-old
        # events on upgrade would surprise receivers. Keep them, marked skipped.
        conn.execute(tables.events.update().values(state="skipped", last_error="written before callbacks were delivered"))
    for index in tables.events.indexes:
        index.create(conn, checkfirst=True)


def _v3_uploads(conn: Connection) -> None:
    """The upload queue: files wait in the spool until stored, across restarts."""
    tables.uploads.create(conn, checkfirst=True)
    for index in tables.uploads.indexes:
        index.create(conn, checkfirst=True)


def _v4_nonces(conn: Connection) -> None:
    """Nonces of signed API requests (Alibaba's SignatureNonce), shared by every node."""
    tables.nonces.create(conn, checkfirst=True)
    for index in tables.nonces.indexes:
        index.create(conn, checkfirst=True)


def _v5_schedules_templates(conn: Connection) -> None:
    """Scheduled recordings, recording templates and rules (Tencent CSS)."""
    for table in (tables.schedules, tables.record_templates, tables.record_rules):
        table.create(conn, checkfirst=True)
        for index in table.indexes:
            index.create(conn, checkfirst=True)


def _v6_task_not_before(conn: Connection) -> None:
    """Claims filter on the task's own `not_before` (was: a scan of the CSS schedules), with an index
    for the claim scan. A fresh database got the column from `_v1_initial`."""
    if "not_before" not in {c["name"] for c in sa.inspect(conn).get_columns("tasks")}:
        conn.execute(sa.text("ALTER TABLE tasks ADD COLUMN not_before FLOAT NOT NULL DEFAULT 0"))
        s = tables.schedules
        starts = sa.select(s.c.start_s).where(s.c.task_id == tables.tasks.c.id).scalar_subquery()
        conn.execute(tables.tasks.update().where(tables.tasks.c.id.in_(sa.select(s.c.task_id))).values(not_before=starts))
    for index in tables.tasks.indexes:
        index.create(conn, checkfirst=True)


def _v7_file_pending(conn: Connection) -> None:
    """How a provisionally named file is named when it ends (also after a crash). A fresh database
    got the column from `_v1_initial`."""
    if "pending" not in {c["name"] for c in sa.inspect(conn).get_columns("files")}:
        conn.execute(sa.text("ALTER TABLE files ADD COLUMN pending TEXT NOT NULL DEFAULT ''"))


def _v8_schedule_source_query(conn: Connection) -> None:
    """The push a rule's task records (its query string, reported in CSS callbacks). A fresh
    database got the column from `_v5_schedules_templates`."""
    if "source_query" not in {c["name"] for c in sa.inspect(conn).get_columns("schedules")}:
        conn.execute(sa.text("ALTER TABLE schedules ADD COLUMN source_query TEXT NOT NULL DEFAULT ''"))


MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _v1_initial),
    (2, _v2_event_delivery),
    (3, _v3_uploads),
    (4, _v4_nonces),
    (5, _v5_schedules_templates),
    (6, _v6_task_not_before),
    (7, _v7_file_pending),
    (8, _v8_schedule_source_query),
]


def migrate(conn: Connection) -> int:
    """Bring the schema up to date; returns the resulting version.

    Every step not yet recorded runs, in version order: branches that take numbers out of order
    (5 merged before 4) still get each step exactly once."""
    tables.schema_version.create(conn, checkfirst=True)
    applied = set(conn.execute(sa.select(tables.schema_version.c.version)).scalars())
    for version, step in sorted(MIGRATIONS, key=lambda m: m[0]):
        if version not in applied:
            step(conn)
            conn.execute(tables.schema_version.insert().values(version=version, applied_at=time.time()))
            logger.info("schema migrated", extra={"version": version})
            applied.add(version)
    return max(applied, default=0)
