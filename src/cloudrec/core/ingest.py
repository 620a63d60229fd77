"""`IngestSpec`: pull a media URL into a room as a user."""

from __future__ import annotations

from dataclasses import dataclass

from cloudrec.core.rooms import RoomKey


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestSpec:
    room: RoomKey
    user_id: str
    urls: tuple[str, ...]  # played one after the other
    repeat: int = 1  # -1 = loop forever
    max_duration_seconds: int = 360 * 60
    seek_seconds: float = 0.0
    volume: int = 100
