"""TRTC recording callbacks (spec part D): event → EventGroupId 3 body, signed with the app's key.

The body is printed the way Tencent's servers print it (cJSON, tab-indented), and `Sign` is
Base64(HMAC-SHA256(callback_key, body)) over exactly those bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections.abc import Mapping
from typing import Any

from cloudrec.core.events import CallbackRequest, CallbackTarget, EventKind, OutboxEvent
from cloudrec.core.rooms import RoomIdType
from cloudrec.core.states import StopReason
from cloudrec.core.ids import is_decimal

EVENT_GROUP = 3

EVENT_TYPES: dict[EventKind, int] = {
    EventKind.RECORDER_STARTED: 301,
    EventKind.RECORDER_STOPPED: 302,
    EventKind.UPLOAD_STARTED: 303,
    EventKind.PLAYLIST_STORED: 304,
    EventKind.UPLOAD_FINISHED: 305,
    EventKind.TASK_MIGRATED: 306,
    EventKind.FIRST_SEGMENT: 307,
    EventKind.UPLOAD_FAILED: 308,
    EventKind.IMAGE_FAILED: 309,
    EventKind.FILES_FINISHED: 310,
    EventKind.VOD_COMMITTED: 311,
    EventKind.VOD_FINISHED: 312,
}

# StopReason → LeaveCode. Our own reasons without a TRTC code map to 3 ("the backend removed the robot").
LEAVE_CODES: dict[StopReason, int] = {
    StopReason.API: 0,
    StopReason.USER_REMOVED: 1,
    StopReason.ROOM_DISMISSED: 2,
    StopReason.SHUTDOWN: 3,
    StopReason.FAILED: 3,
    StopReason.IDLE: 99,
    StopReason.TIMEOUT: 100,
    StopReason.DISPLACED: 101,
}


def sign(key: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(key.encode(), body, hashlib.sha256).digest()).decode()


def cjson(value: Any, depth: int = 0) -> str:
    """`cJSON_Print` output: objects one member a line, tab-indented, `"key":\\t value`; arrays inline."""
    if isinstance(value, Mapping):
        if not value:
            return "{\n" + "\t" * depth + "}"
        inner = "\t" * (depth + 1)
        members = [f"{inner}{_string(str(k))}:\t{cjson(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(members) + "\n" + "\t" * depth + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(cjson(v, depth + 1) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "null"
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return _string(str(value))


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _string(s: str) -> str:
    # cJSON escapes quotes, backslashes and control characters; other UTF-8 passes through as is.
    out = [_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 else c) for c in s]
    return '"' + "".join(out) + '"'


def _file_message(f: Mapping[str, Any]) -> dict[str, Any]:
    return {"FileName": f["name"], "UserId": f["user_id"], "TrackType": f["track_type"], "MediaId": f["media"],
            "StartTimeStamp": f["begin_ms"], "EndTimeStamp": f["end_ms"] if f["end_ms"] is not None else f["begin_ms"]}


def payload(kind: EventKind, p: Mapping[str, Any]) -> dict[str, Any]:
    """The D.3 `Payload` of one event."""
    if kind in (EventKind.RECORDER_STARTED, EventKind.UPLOAD_STARTED):
        return {"Status": 0 if p["ok"] else 1}
    if kind is EventKind.RECORDER_STOPPED:
        return {"LeaveCode": LEAVE_CODES.get(StopReason(p["reason"]), 3)}
    if kind is EventKind.TASK_MIGRATED:
        return {"Status": 0}
    if kind is EventKind.PLAYLIST_STORED:
        return {"FileList": p["file"]}
    if kind is EventKind.UPLOAD_FINISHED:
        return {"Status": p["status"]}
    if kind is EventKind.FIRST_SEGMENT:
        return {"FileName": p["playlist"], "UserId": p["user_id"], "TrackType": p["track_type"],
                "BeginTimeStamp": p["begin_ms"]}
    if kind is EventKind.UPLOAD_FAILED:
        return {"Code": str(p["code"]), "Message": str(p["message"])}
    if kind is EventKind.IMAGE_FAILED:
        return {"Url": p["url"]}
    if kind is EventKind.FILES_FINISHED:
        files = p["files"]
        return {"Status": p["status"], "FileList": [f["name"] for f in files],
                "FileMessage": [_file_message(f) for f in files]}
    if kind is EventKind.VOD_COMMITTED:
        f = p["file"]
        out: dict[str, Any] = {"Status": 0 if p["ok"] else 2}
        if not p["ok"]:
            out["Errmsg"] = p["error"]
        msg = _file_message(f)
        out["TencentVod"] = {"UserId": f["user_id"], "TrackType": f["track_type"], "MediaId": f["media"],
                             "FileId": p["file_id"], "VideoUrl": p["url"], "CacheFile": f["name"],
                             "StartTimeStamp": msg["StartTimeStamp"], "EndTimeStamp": msg["EndTimeStamp"]}
        return out
    if kind is EventKind.VOD_FINISHED:
        return {"Status": 0 if p["ok"] else 1}
    raise ValueError(f"no TRTC callback for {kind}")


class TrtcCallbacks:
    """Formats and signs outbox events of tasks created through the TRTC API."""

    def format(self, ev: OutboxEvent, target: CallbackTarget, *, sent_ms: int) -> CallbackRequest | None:
        event_type = EVENT_TYPES.get(ev.event.kind)
        if event_type is None:
            return None
        room: int | str = ev.room.room_id
        if ev.room.id_type is RoomIdType.INTEGER and is_decimal(ev.room.room_id):
            room = int(ev.room.room_id)  # clients see the room id in the type they used
        at_ms = ev.event.at_ms
        body = cjson({
            "EventGroupId": EVENT_GROUP,
            "EventType": event_type,
            "CallbackTs": sent_ms,
            "EventInfo": {
                "RoomId": room,
                "EventTs": at_ms // 1000,
                "EventMsTs": at_ms,
                "UserId": ev.robot_user_id,
                "TaskId": ev.task_id,
                "Payload": payload(ev.event.kind, ev.event.payload),
            },
        }).encode()
        headers = {"Content-Type": "application/json", "SdkAppId": str(ev.room.app_id)}
        key = target.key
        if key:  # without a key Tencent's behaviour is unconfirmed; we send no Sign header
            headers["Sign"] = sign(key, body)
        return CallbackRequest(body=body, headers=headers)
