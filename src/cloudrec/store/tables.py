"""The task store's tables (SQLAlchemy Core; the same definitions serve SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # recording | ingest
    sa.Column("dialect", sa.String(32), nullable=False),  # which API created it (formats its views)
    sa.Column("app_id", sa.BigInteger, nullable=False),
    sa.Column("room_id", sa.String(256), nullable=False),
    sa.Column("room_id_type", sa.Integer, nullable=False),
    sa.Column("user_id", sa.String(256), nullable=False),  # robot (recording) or ingest user
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),  # JSON of RecordingSpec / IngestSpec
    sa.Column("spec_version", sa.Integer, nullable=False, default=1),
    sa.Column("created_at", sa.Float, nullable=False),  # unix seconds
    sa.Column("expires_at", sa.Float, nullable=False),  # API lifetime end
    sa.Column("begin_ms", sa.BigInteger),  # first media recorded (unix ms)
    sa.Column("ended_at", sa.Float),
    sa.Column("stop_requested", sa.Integer),  # StopReason asked for by the API
    sa.Column("stop_reason", sa.Integer),  # StopReason the task ended with
    sa.Column("worker_id", sa.String(64)),
    sa.Column("heartbeat_at", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("not_before", sa.Float, nullable=False, default=0.0),  # unix s: not claimed before (migration 6)
)
sa.Index("tasks_app_state", tasks.c.app_id, tasks.c.kind, tasks.c.state)
sa.Index("tasks_claim", tasks.c.state, tasks.c.worker_id, tasks.c.not_before)  # the workers' claim scan

files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.String(128), sa.ForeignKey("tasks.id"), nullable=False, index=True),
    sa.Column("name", sa.String(512), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # playlist | segment | file
    sa.Column("track_type", sa.String(16), nullable=False),
    sa.Column("user_id", sa.String(256), nullable=False),
    sa.Column("media", sa.String(8), nullable=False),
    sa.Column("begin_ms", sa.BigInteger, nullable=False),
    sa.Column("end_ms", sa.BigInteger),
    sa.Column("final", sa.Boolean, nullable=False, default=False),
    sa.Column("pending", sa.Text, nullable=False, default=""),  # FileRecord.pending
    sa.UniqueConstraint("task_id", "name", name="files_task_name"),
)

events = sa.Table(  # the callback outbox: written in the same transaction as the change it reports
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.String(128), nullable=False, index=True),
    sa.Column("app_id", sa.BigInteger, nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("delivered_ms", sa.BigInteger),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    # Delivery state (migration 2): pending → delivered | dead | skipped. A claim is a lease, so a
    # process that dies mid-request leaves the event to be sent again (at least once).
    sa.Column("state", sa.String(16), nullable=False, default="pending", server_default="pending"),
    sa.Column("next_attempt_ms", sa.BigInteger, nullable=False, default=0, server_default="0"),
    sa.Column("claimed_by", sa.String(64)),
    sa.Column("claimed_until_ms", sa.BigInteger),
    sa.Column("last_error", sa.Text),
)
sa.Index("events_state_task", events.c.state, events.c.task_id, events.c.id)

uploads = sa.Table(  # the upload queue (migration 3): what a node's spool still has to store
    "uploads",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.String(128), nullable=False),
    sa.Column("node", sa.String(128), nullable=False),  # whose spool holds the file
    sa.Column("name", sa.String(512), nullable=False),  # "" for a task's finish marker
    sa.Column("kind", sa.String(16), nullable=False),  # playlist | segment | file | finish
    sa.Column("state", sa.String(16), nullable=False, default="pending"),  # pending → done | failed
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_ms", sa.BigInteger, nullable=False, default=0),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("published_ms", sa.BigInteger),
    sa.Column("done_ms", sa.BigInteger),
    sa.Column("size", sa.BigInteger),
    sa.Column("last_error", sa.Text),
    sa.UniqueConstraint("task_id", "name", name="uploads_task_name"),
)
sa.Index("uploads_node_state", uploads.c.node, uploads.c.state, uploads.c.id)

nonces = sa.Table(  # signed-request nonces already seen (migration 4): replays are refused on every node
    "nonces",
    metadata,
    sa.Column("nonce", sa.String(320), primary_key=True),  # SHA-256 hex of "<AccessKeyId>:<nonce>"
    sa.Column("expires_at", sa.Float, nullable=False, index=True),  # unix s; after it the timestamp check refuses a replay
)

# --- scheduled recordings, recording templates and rules (migration 5; CSS) ---------------------
schedules = sa.Table(  # the time window and API state of a scheduled task (one row per such task)
    "schedules",
    metadata,
    sa.Column("task_id", sa.String(128), primary_key=True),
    sa.Column("service", sa.String(16), nullable=False),
    sa.Column("scope", sa.String(768), nullable=False),  # what is recorded, in the dialect's terms
    sa.Column("start_s", sa.BigInteger, nullable=False),
    sa.Column("end_s", sa.BigInteger, nullable=False),
    sa.Column("template_id", sa.BigInteger, nullable=False, default=0),
    sa.Column("stopped_s", sa.BigInteger, nullable=False, default=0),
    sa.Column("hidden", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("source_query", sa.Text, nullable=False, default=""),  # ScheduleRecord.source_query
)
sa.Index("schedules_service_start", schedules.c.service, schedules.c.start_s)
sa.Index("schedules_scope", schedules.c.service, schedules.c.scope)

record_templates = sa.Table(
    "record_templates",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("service", sa.String(16), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sqlite_autoincrement=True,  # a deleted template's id is never handed out again
)

record_rules = sa.Table(
    "record_rules",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("service", sa.String(16), nullable=False),
    sa.Column("scope", sa.String(768), nullable=False),
    sa.Column("template_id", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("service", "scope", name="record_rules_scope"),
)

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.Float, nullable=False),
)
