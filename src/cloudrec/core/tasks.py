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
