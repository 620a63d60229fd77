"""Task states and the transitions allowed between them."""

from __future__ import annotations

from enum import Enum, IntEnum


class TaskState(Enum):
    IDLE = "idle"  # alive, nothing recorded yet (or nobody publishing)
    IN_PROGRESS = "in_progress"  # media is being written
    EXITING = "exiting"  # stop decided; finalizing files
    ENDED = "ended"  # gone: no longer visible to the vendor APIs

    @property
    def alive(self) -> bool:
        return self is not TaskState.ENDED


TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.IDLE: frozenset({TaskState.IN_PROGRESS, TaskState.EXITING, TaskState.ENDED}),
    TaskState.IN_PROGRESS: frozenset({TaskState.IDLE, TaskState.EXITING, TaskState.ENDED}),
    TaskState.EXITING: frozenset({TaskState.ENDED}),
    TaskState.ENDED: frozenset(),
}


class TaskKind(Enum):
    RECORDING = "recording"
    INGEST = "ingest"


class StopReason(IntEnum):
    """Why a task ended; the values are the TRTC LeaveCodes, which dialects may re-map."""

    API = 0
    USER_REMOVED = 1
    ROOM_DISMISSED = 2
    IDLE = 99
    TIMEOUT = 100
    DISPLACED = 101
    SHUTDOWN = 3  # the service stopped (graceful shutdown)
    FAILED = 98  # the pipeline failed
