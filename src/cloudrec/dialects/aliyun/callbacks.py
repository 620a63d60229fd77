"""ARTC task callbacks (spec §10): neutral events → `{appId, channelId, taskId, eventType, callbackTs, payload}`.

Signed with the task's `NotifyAuthKey`: `ALI-LIVE-TIMESTAMP` (unix seconds) and `ALI-LIVE-SIGNATURE` =
MD5(timestamp + "|" + key), lowercase hex. `payload` is a JSON string (the docs type it "json string").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cloudrec.core.events import CallbackRequest, CallbackTarget, EventKind, OutboxEvent
from cloudrec.core.states import StopReason

# Lifecycle: TaskRunning once the recorder runs, TaskRecovering after a takeover, TaskStopping when the
# recorder exits, TaskStopped once every file is stored (so the file list is complete).
NOTIFY_FORMATS = {"SLICE": "segment", "HLS": "hls", "MP4": "mp4", "MP3": "mp3"}  # NotifyFileUploadedFormat → FILE_STORED
_FORMAT_NAMES = {v: k for k, v in NOTIFY_FORMATS.items()}
_REASONS = {StopReason.API: "api", StopReason.IDLE: "idle", StopReason.TIMEOUT: "lifetime",
            StopReason.SHUTDOWN: "shutdown", StopReason.FAILED: "failed"}


def callback_signature(timestamp: int, key: str) -> str:
    return hashlib.md5(f"{timestamp}|{key}".encode()).hexdigest()


def event(kind: EventKind, p: Mapping[str, Any], target: CallbackTarget) -> tuple[str, dict[str, Any]] | None:
    """(eventType, payload) of one neutral event, or None when ARTC has no callback for it."""
    if kind is EventKind.RECORDER_STARTED:
        return ("TaskRunning", {}) if p.get("ok", True) else ("TaskStartFailed", {"error": p.get("error", "")})
    if kind is EventKind.TASK_MIGRATED:
        return "TaskRecovering", {}
    if kind is EventKind.RECORDER_STOPPED:
        return "TaskStopping", {"reason": _REASONS.get(StopReason(p["reason"]), "other")}
    if kind in (EventKind.UPLOAD_FINISHED, EventKind.VOD_FINISHED):
        return "TaskStopped", {}
    if kind is EventKind.FILE_STORED and p.get("format") in target.file_formats:
        return "RecordFileUploaded", {
            "format": _FORMAT_NAMES.get(str(p["format"]), str(p["format"]).upper()), "fileName": p["name"],
            "url": p.get("url", ""), "userId": p.get("user_id", ""), "startTs": p.get("begin_ms"),
            "endTs": p.get("end_ms"), "size": p.get("size"),
        }
    return None


class ArtcCallbacks:
    """Formats and signs outbox events of tasks created through the ARTC API (`NotifyUrl` of the task)."""

    def format(self, ev: OutboxEvent, target: CallbackTarget, *, sent_ms: int) -> CallbackRequest | None:
        found = event(ev.event.kind, ev.event.payload, target)
        if found is None:
            return None
        event_type, payload = found
        body = json.dumps({
            "appId": str(ev.room.app_id), "channelId": ev.room.room_id, "taskId": ev.task_id, "eventType": event_type,
            "callbackTs": sent_ms, "payload": json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
        }, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if target.key:
            ts = sent_ms // 1000
            headers["ALI-LIVE-TIMESTAMP"] = str(ts)
            headers["ALI-LIVE-SIGNATURE"] = callback_signature(ts, target.key)
        return CallbackRequest(body=body, headers=headers)
