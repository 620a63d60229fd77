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
    for table in (tables.tasks, tables.files, tables.events):
        table.create(conn, checkfirst=True)


MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _v1_initial),
]


def migrate(conn: Connection) -> int:
    """Bring the schema up to date; returns the resulting version."""
    tables.schema_version.create(conn, checkfirst=True)
    current = conn.execute(sa.select(sa.func.max(tables.schema_version.c.version))).scalar() or 0
    for version, step in MIGRATIONS:
        if version > current:
            step(conn)
            conn.execute(tables.schema_version.insert().values(version=version, applied_at=time.time()))
            logger.info("schema migrated", extra={"version": version})
            current = version
    return current
