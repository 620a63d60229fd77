"""Room operations (dismiss, remove, block) and their effect on the tasks running in the room."""

from __future__ import annotations

import logging
from typing import Protocol

from cloudrec.control.tasks import TaskControl
from cloudrec.core.rooms import RoomKey
from cloudrec.core.states import StopReason
from cloudrec.errors import NotFound

logger = logging.getLogger(__name__)


class RoomDirectory(Protocol):
    """The live rooms (the room registry is the implementation)."""

    def exists(self, room: RoomKey) -> bool: ...

    def dismiss(self, room: RoomKey) -> int:
        """Everyone leaves; returns how many left."""
        ...

    def remove_users(self, room: RoomKey, user_ids: list[str]) -> int: ...

    def set_blocked(self, room: RoomKey, user_id: str, blocked: bool) -> None: ...


class RoomControl:
    def __init__(self, rooms: RoomDirectory, tasks: TaskControl) -> None:
        self.rooms = rooms
        self.tasks = tasks

    async def dismiss(self, room: RoomKey) -> None:
        """Everyone leaves; recordings of the room stop and finalize (LeaveCode 2), ingests end."""
        self._require(room)
        left = self.rooms.dismiss(room)
        stopped = await self.tasks.stop_room_tasks(room, StopReason.ROOM_DISMISSED)
        logger.info("room dismissed", extra={"room": str(room), "users": left, "tasks": stopped})

    async def remove_users(self, room: RoomKey, user_ids: list[str]) -> None:
        """The users leave (a mix re-flows without them); a removed robot ends its recording."""
        self._require(room)
        removed = self.rooms.remove_users(room, user_ids)
        stopped = 0
        for task in await self.tasks.store.list_tasks():
            if task.room == room and task.user_id in user_ids:
                reason = StopReason.USER_REMOVED
                if await self.tasks.store.request_stop(task.id, reason):
                    stopped += 1
        logger.info("users removed", extra={"room": str(room), "users": removed, "tasks": stopped})
        self.tasks.wake()  # recordings re-read the room now, not at their next poll

    async def set_blocked(self, room: RoomKey, user_id: str, blocked: bool) -> None:
        """A blocked user stays in the room but is not recorded until unblocked."""
        self._require(room)
        self.rooms.set_blocked(room, user_id, blocked)
        self.tasks.wake()
        logger.info("user blocked" if blocked else "user unblocked", extra={"room": str(room), "user_id": user_id})


    def _require(self, room: RoomKey) -> None:
        if not self.rooms.exists(room):
            raise NotFound("room does not exist", reason="room")
