"""Who may enter which TRTC room: room ids, user ids, UserSig and PrivateMapKey, checked once.

The recording API (robots) and the publishers (WHIP, WHEP, RTMP) both call these and translate
`AdmissionError` into their own answer (an API error code, or an HTTP/RTMP refusal).
"""

from __future__ import annotations

import re

from cloudrec.control.apps import AppInfo
from cloudrec.core.ids import is_decimal
from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.dialects.tencent.usersig import UserSigError, verify_private_map_key, verify_usersig

STRING_ROOM_ID = re.compile(r"^[A-Za-z0-9 !#$%&()+\-:;<=.>?@\[\]^_{}|~,]{1,64}$")
USER_ID = re.compile(r"^[^\x00-\x1f]{1,64}$")


class AdmissionError(Exception):
    """`field` is the TRTC parameter at fault: RoomId, UserId, UserSig or PrivateMapKey."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def room_key(app: AppInfo, room_id: str, id_type: RoomIdType) -> RoomKey:
    if id_type is RoomIdType.INTEGER:
        if not is_decimal(room_id) or not 1 <= int(room_id) <= 4294967295:
            raise AdmissionError("RoomId", "RoomId must be a 32-bit integer when RoomIdType is 1")
        room_id = str(int(room_id))
    elif not STRING_ROOM_ID.match(room_id):
        raise AdmissionError("RoomId", "string RoomId must be 1-64 allowed characters")
    return RoomKey(app.id, room_id, id_type)


def check_user(app: AppInfo, room: RoomKey, user_id: str, usersig: str, private_map_key: str | None, now: float) -> None:
    """The user id's form, its UserSig and, when given or required, a PrivateMapKey for `room`."""
    if not USER_ID.match(user_id):
        raise AdmissionError("UserId", "UserId must be 1-64 printable characters")
    try:
        verify_usersig(usersig, sdkappid=app.id, key=app.key, identifier=user_id, now=now)
    except UserSigError as exc:
        raise AdmissionError("UserSig", f"UserSig rejected: {exc.reason}") from exc
    if not (app.require_private_map_key or private_map_key):
        return
    if not private_map_key:
        raise AdmissionError("PrivateMapKey", "this app requires a PrivateMapKey")
    try:
        ticket = verify_private_map_key(private_map_key, sdkappid=app.id, key=app.key, identifier=user_id, now=now)
    except UserSigError as exc:
        raise AdmissionError("PrivateMapKey", f"PrivateMapKey rejected: {exc.reason}") from exc
    granted = ticket.str_room_id if room.id_type is RoomIdType.STRING else str(ticket.room_id)
    if granted != room.room_id:
        raise AdmissionError("PrivateMapKey", "PrivateMapKey is for another room")
