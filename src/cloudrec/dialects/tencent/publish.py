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
from cloudrec.dialects.tencent.trtc import STRING_ROOM_ID
from cloudrec.dialects.tencent.usersig import UserSigError, verify_private_map_key, verify_usersig

logger = logging.getLogger(__name__)

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
        if not app_id.isdigit() or int(app_id) not in self.apps:
            raise PublishDenied("unknown SdkAppId", 403)
        app = self.apps[int(app_id)]
        if not user_id or len(user_id) > 64:
            raise PublishDenied("bad UserId", 403)
        id_type = RoomIdType.STRING if room_id_type == "0" else RoomIdType.INTEGER
        if id_type is RoomIdType.INTEGER:
            if not room_id.isdigit() or not 1 <= int(room_id) <= 4294967295:
                raise PublishDenied("RoomId must be a 32-bit integer (or pass roomidtype=0)", 403)
            room_id = str(int(room_id))
        elif not STRING_ROOM_ID.match(room_id):
            raise PublishDenied("bad string RoomId", 403)
        now = self.clock()
        try:
            verify_usersig(usersig, sdkappid=app.id, key=app.key, identifier=user_id, now=now)
        except UserSigError as exc:
            raise PublishDenied(f"UserSig rejected: {exc.reason}", 401) from exc
        room = RoomKey(app.id, room_id, id_type)
        if app.require_private_map_key or private_map_key:
            if not private_map_key:
                raise PublishDenied("this app requires a PrivateMapKey", 403)
            try:
                ticket = verify_private_map_key(private_map_key, sdkappid=app.id, key=app.key, identifier=user_id, now=now)
            except UserSigError as exc:
                raise PublishDenied(f"PrivateMapKey rejected: {exc.reason}", 403) from exc
            granted = ticket.str_room_id if id_type is RoomIdType.STRING else str(ticket.room_id)
            if granted != room_id:
                raise PublishDenied("PrivateMapKey is for another room", 403)
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
