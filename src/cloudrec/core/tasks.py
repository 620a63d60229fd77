"""Task and file records as the store holds them."""

from __future__ import annotations

from dataclasses import dataclass

from cloudrec.core.rooms import RoomKey
from cloudrec.core.states import StopReason, TaskKind, TaskState


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRecord:
    id: str
    kind: TaskKind
    dialect: str
    room: RoomKey
    user_id: str
    state: TaskState
    spec: str  # JSON
    spec_version: int = 1
    created_at: float
    expires_at: float
    begin_ms: int | None = None
    ended_at: float | None = None
    stop_requested: StopReason | None = None
    stop_reason: StopReason | None = None
    worker_id: str | None = None
    heartbeat_at: float | None = None
    error: str | None = None
    not_before: float = 0.0  # unix s: no worker claims the task before (a scheduled recording)


@dataclass(frozen=True, slots=True, kw_only=True)
class FileRecord:
    name: str
    kind: str  # playlist | segment | file
    track_type: str
    user_id: str
    media: str
    begin_ms: int
    end_ms: int | None = None
    final: bool = False
    # A file whose name holds its end time is recorded under a provisional name while it is written;
    # this says how it is named when it ends (`naming.finish_pending`), also after a crash.
    pending: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadRecord:
    """One object waiting in (or gone from) a node's spool: a file of a task, or the task's
    `finish` marker (its last storage events are due once everything before it is stored)."""

    id: int
    task_id: str
    name: str  # file name relative to the task directory; "" for the finish marker
    kind: str  # playlist | segment | file | finish
    state: str  # pending | done | failed
    attempts: int = 0
    next_attempt_ms: int = 0
    created_ms: int = 0
    published_ms: int | None = None  # playlists: first published (a shorter version, maybe)
    size: int | None = None
    last_error: str | None = None
