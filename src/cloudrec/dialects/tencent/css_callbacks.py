"""Tencent CSS record callbacks (spec §6): a stored file → the `event_type` 100 body.

One callback per whole file (FLV/MP4/AAC/MP3, each split of `RecordInterval`) and one for an HLS
recording's final playlist; segments and every other event have none. Authenticity is in the body:
`t` is when the notification expires (sent + 10 minutes) and `sign` = MD5(key + str(t)) in lower-case
hex — it covers only the key and `t`, not the payload (a receiver checks it and `now ≤ t`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cloudrec.core.events import CallbackRequest, CallbackTarget, EventKind, OutboxEvent, file_id
from cloudrec.dialects.tencent.css_rooms import stream_of

DIALECT = "css"  # OutboxEvent.dialect of tasks created through the CSS API
EVENT_TYPE = 100  # "new recording file"
VALIDITY_SECONDS = 600  # Tencent's default: a notification expires 10 minutes after it is sent
# FILE_STORED formats with a callback: whole files and the HLS playlist (reported once, when final).
REPORTED_FORMATS = frozenset({"flv", "hls", "mp4", "aac", "mp3"})


def sign(key: str, t: int) -> str:
    return hashlib.md5(f"{key}{t}".encode()).hexdigest()


def body(ev: OutboxEvent, key: str, *, sent_ms: int, appid: int, record_temp_id: str = "",
         stream_param: str = "") -> dict[str, Any] | None:
    """The event_type 100 body for a FILE_STORED event of a reported format, else None. A rule's
    (template-bound) recording names its template and the push URL's query string; a
    CreateRecordTask recording leaves both empty, as Tencent does."""
    p: Mapping[str, Any] = ev.event.payload
    if ev.event.kind is not EventKind.FILE_STORED or p.get("format") not in REPORTED_FORMATS:
        return None
    domain, app_name, stream_name = stream_of(ev.room)
    begin_ms = int(p.get("begin_ms") or 0)
    end_ms = int(p["end_ms"]) if p.get("end_ms") is not None else begin_ms
    fid = file_id(ev.task_id, str(p.get("name", "")))
    t = sent_ms // 1000 + VALIDITY_SECONDS
    return {
        "event_type": EVENT_TYPE,
        "t": t,
        "sign": sign(key, t),
        "appid": appid,
        "app": domain,
        "appname": app_name,
        "stream_id": stream_name,
        "channel_id": stream_name,
        "file_id": fid,
        "record_file_id": fid,
        "record_temp_id": record_temp_id,
        "file_format": p["format"],
        "task_id": ev.task_id,
        "start_time": begin_ms // 1000,
        "end_time": end_ms // 1000,
        "start_time_usec": begin_ms % 1000 * 1000,
        "end_time_usec": end_ms % 1000 * 1000,
        "duration": round(max(0, end_ms - begin_ms) / 1000),
        "file_size": int(p.get("size") or 0),
        "stream_param": stream_param,
        "video_url": str(p.get("url", "")),
        "media_start_time": 0,  # we do not keep the pulled stream's first PTS
        "record_bps": 0,  # recorded from the original stream, not a transcode
        # A JSON object as a string; Tencent's also names the codec and resolution, which events do not carry.
        "callback_ext": json.dumps({"session_id": ev.task_id}, separators=(",", ":")),
    }


class CssCallbacks:
    """Formats and signs outbox events of tasks created through the CSS API (see the module docstring)."""

    def __init__(self, *, appid: int = 0) -> None:
        self.appid = appid  # the account APPID receivers see as `appid` ([css] appid)

    def format(self, ev: OutboxEvent, target: CallbackTarget, *, sent_ms: int) -> CallbackRequest | None:
        if target.file_formats and ev.event.payload.get("format") not in target.file_formats:
            return None
        task = dict(target.fields)  # a rule's task: record_temp_id, stream_param
        fields = body(ev, target.key, sent_ms=sent_ms, appid=self.appid, record_temp_id=task.get("record_temp_id", ""),
                      stream_param=task.get("stream_param", ""))
        if fields is None:
            return None
        return CallbackRequest(body=json.dumps(fields, separators=(",", ":")).encode(),
                               headers={"Content-Type": "application/json"})
