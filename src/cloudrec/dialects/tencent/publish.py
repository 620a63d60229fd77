"""TRTC-style authentication of publishers and viewers (RTMP push, WHIP, WHEP).

A publisher names the app, the room and itself, and proves it with a UserSig (and a PrivateMapKey
when the app requires one). The same rules as for recording robots apply.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cloudrec.control.apps import AppInfo
from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.ids import is_decimal
from cloudrec.dialects.tencent.admission import AdmissionError, check_user, room_key

logger = logging.getLogger(__name__)

ROOM_ID_TYPES = {"0": RoomIdType.STRING, "1": RoomIdType.INTEGER}  # the `roomidtype` query parameter
RTMP_APP = "push"  # rtmp://host/push/<RoomId>?sdkappid=…&userid=…&usersig=…


class PublishDenied(Exception):
    """`status` is the HTTP answer for WHIP/WHEP: 401 no/invalid credentials, 403 not allowed here."""

    def __init__(self, reason: str, status: int = 403) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    room: RoomKey
    user_id: str


class PublisherAuth:
    def __init__(self, apps: Mapping[int, AppInfo], *, clock: Callable[[], float] = time.time) -> None:
        self.apps = apps
        self.clock = clock

    def admit(self, *, app_id: str, room_id: str, user_id: str, usersig: str | None, room_id_type: str | None = None,
              private_map_key: str | None = None) -> Admission:
        """Check a publisher's or viewer's credentials for a room; raises PublishDenied."""
        if not usersig:
            raise PublishDenied("missing UserSig", 401)
        app = self.apps.get(int(app_id)) if is_decimal(app_id) else None
        if app is None:
            raise PublishDenied("unknown SdkAppId", 403)
        id_type = ROOM_ID_TYPES.get(room_id_type or "1")
        if id_type is None:
            raise PublishDenied("roomidtype must be 0 (string) or 1 (integer)", 403)
        try:
            room = room_key(app, room_id, id_type)
            check_user(app, room, user_id, usersig, private_map_key, self.clock())
        except AdmissionError as exc:
            raise PublishDenied(exc.reason, 401 if exc.field == "UserSig" else 403) from exc
        return Admission(room=room, user_id=user_id)

    def admit_rtmp(self, app: str, stream: str, query: Mapping[str, str]) -> Admission:
        """`rtmp://host/push/<RoomId>?sdkappid=…&userid=…&usersig=…[&roomidtype=0][&privatemapkey=…]`."""
        if app != RTMP_APP:
            raise PublishDenied(f"unknown RTMP application {app!r}", 403)
        return self.admit(
            app_id=query.get("sdkappid", ""), room_id=stream, user_id=query.get("userid", ""),
            usersig=query.get("usersig"), room_id_type=query.get("roomidtype"),
            private_map_key=query.get("privatemapkey"),
        )
