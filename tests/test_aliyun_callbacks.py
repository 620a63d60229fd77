"""ARTC callback bodies and signatures (spec §10): neutral events → eventType/payload, ALI-LIVE-* headers."""

from __future__ import annotations

import hashlib
import json

from cloudrec.core.events import CallbackTarget, Event, EventKind, OutboxEvent, recorder_started, recorder_stopped
from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.states import StopReason
from cloudrec.dialects.aliyun.callbacks import ArtcCallbacks, callback_signature

ROOM = RoomKey(1400000001, "ch-1", RoomIdType.STRING)
KEY = "mytestkeymytestkey"


def outbox(event: Event) -> OutboxEvent:
    return OutboxEvent(id=7, task_id="task-1", room=ROOM, robot_user_id="artc-recorder-x", dialect="artc", event=event)


def test_signature_vector() -> None:
    assert callback_signature(1748417138, KEY) == "91c9ec5c07bb529c68f9ad95fd775a9b"


def test_lifecycle_bodies_and_headers() -> None:
    fmt = ArtcCallbacks()
    target = CallbackTarget(url="http://127.0.0.1:9/cb", key=KEY)
    sent = 1744774345595
    cases = [
        (recorder_started(1, ok=True), "TaskRunning"),
        (recorder_started(1, ok=False, error="storage"), "TaskStartFailed"),
        (Event(kind=EventKind.TASK_MIGRATED, at_ms=1, payload={"ok": True}), "TaskRecovering"),
        (recorder_stopped(1, StopReason.IDLE), "TaskStopping"),
        (Event(kind=EventKind.UPLOAD_FINISHED, at_ms=1, payload={"status": 0}), "TaskStopped"),
    ]
    for event, name in cases:
        req = fmt.format(outbox(event), target, sent_ms=sent)
        assert req is not None
        body = json.loads(req.body)
        assert body == {"appId": "1400000001", "channelId": "ch-1", "taskId": "task-1", "eventType": name,
                        "callbackTs": sent, "payload": body["payload"]}
        assert isinstance(json.loads(body["payload"]), dict)  # a JSON string
        assert req.headers["ALI-LIVE-TIMESTAMP"] == "1744774345"
        assert req.headers["ALI-LIVE-SIGNATURE"] == hashlib.md5(f"1744774345|{KEY}".encode()).hexdigest()
    stopping = json.loads(json.loads(fmt.format(outbox(cases[3][0]), target, sent_ms=sent).body)["payload"])  # type: ignore[union-attr]
    assert stopping == {"reason": "idle"}
    # no key: no signature headers; events ARTC has no callback for: nothing
    unsigned = fmt.format(outbox(cases[0][0]), CallbackTarget(url="http://x/"), sent_ms=sent)
    assert unsigned is not None and "ALI-LIVE-SIGNATURE" not in unsigned.headers
    assert fmt.format(outbox(Event(kind=EventKind.IMAGE_FAILED, at_ms=1, payload={"url": "u"})), target, sent_ms=sent) is None


def test_file_uploaded_only_for_requested_formats() -> None:
    fmt = ArtcCallbacks()
    target = CallbackTarget(url="http://x/", key=KEY, file_formats=frozenset({"mp4", "segment"}))
    stored = {"name": "d1/task-1/a.mp4", "kind": "file", "user_id": "", "track_type": "audio_video", "media": "mix",
              "begin_ms": 1000, "end_ms": 9000, "size": 123, "url": ""}
    got = fmt.format(outbox(Event(kind=EventKind.FILE_STORED, at_ms=1, payload={**stored, "format": "mp4"})), target, sent_ms=5)
    assert got is not None
    body = json.loads(got.body)
    assert body["eventType"] == "RecordFileUploaded"
    assert json.loads(body["payload"])["fileName"] == "d1/task-1/a.mp4" and json.loads(body["payload"])["format"] == "MP4"
    seg = fmt.format(outbox(Event(kind=EventKind.FILE_STORED, at_ms=1, payload={**stored, "format": "segment"})), target, sent_ms=5)
    assert seg is not None and json.loads(json.loads(seg.body)["payload"])["format"] == "SLICE"
    assert fmt.format(outbox(Event(kind=EventKind.FILE_STORED, at_ms=1, payload={**stored, "format": "hls"})), target,
                      sent_ms=5) is None
