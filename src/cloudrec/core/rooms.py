"""Room identity: rooms are keyed by app, room id and whether the id is a string or a number."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class RoomIdType(IntEnum):
    STRING = 0
    INTEGER = 1


@dataclass(frozen=True, slots=True)
class RoomKey:
    app_id: int
    room_id: str
    id_type: RoomIdType = RoomIdType.INTEGER

    def __str__(self) -> str:
        kind = "str" if self.id_type is RoomIdType.STRING else "int"
        return f"{self.app_id}/{kind}:{self.room_id}"
