"""TRTC callback bodies and signatures (spec part D), and the neutral storage events behind them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from cloudrec.core import events as ev
from cloudrec.core.events import CallbackTarget, Event, EventKind, OutboxEvent, StoredFile, UploadTracker
from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.states import StopReason
from cloudrec.dialects.tencent.callbacks import TrtcCallbacks, cjson, sign

# Spec D.1 test vector (Tencent's docs): the body as Tencent prints it, tab-indented cJSON.
VECTOR_KEY = "123654"
VECTOR_BODY = (
    '{\n\t"EventGroupId":\t2,\n\t"EventType":\t204,\n\t"CallbackTs":\t1664209748188,\n\t"EventInfo":\t{\n'
    '\t\t"RoomId":\t8489,\n\t\t"EventTs":\t1664209748,\n\t\t"EventMsTs":\t1664209748180,\n'
    '\t\t"UserId":\t"user_85034614",\n\t\t"Reason":\t0\n\t}\n}'
)
VECTOR_SIGN = "kkoFeO3Oh2ZHnjtg8tEAQhtXK16/KI05W3BQff8IvGA="


def receiver_sign(key: str, body: bytes) -> str:
    """How the spec tells receivers to check: HMAC-SHA256 over the raw bytes, standard Base64."""
    return base64.b64encode(hmac.new(key.encode(), body, hashlib.sha256).digest()).decode()


def test_sign_matches_spec_vector() -> None:
    assert sign(VECTOR_KEY, VECTOR_BODY.encode()) == VECTOR_SIGN
    assert receiver_sign(VECTOR_KEY, VECTOR_BODY.encode()) == VECTOR_SIGN


def test_cjson_prints_the_vector_body_byte_for_byte() -> None:
    body = json.loads(VECTOR_BODY)
    assert cjson(body) == VECTOR_BODY
    assert sign(VECTOR_KEY, cjson(body).encode()) == VECTOR_SIGN


def test_cjson_arrays_escapes_and_empty_objects() -> None:
    text = cjson({"A": [1, "x"], "B": {}, "C": 'q"\\\n\x01é', "D": [{"E": 1}]})
    assert text == '{\n\t"A":\t[1, "x"],\n\t"B":\t{\n\t},\n\t"C":\t"q\\"\\\\\\n\\u0001é",\n\t"D":\t[{\n\t\t\t"E":\t1\n\t\t}]\n}'
    assert json.loads(text) == {"A": [1, "x"], "B": {}, "C": 'q"\\\n\x01é', "D": [{"E": 1}]}


def outbox(event: Event, room: RoomKey = RoomKey(1400000001, "8489")) -> OutboxEvent:
    return OutboxEvent(id=7, task_id="task-1", room=room, robot_user_id="rec_8489", dialect="trtc", event=event)


def formatted(event: Event, room: RoomKey = RoomKey(1400000001, "8489"), key: str = "k3y") -> dict[str, object]:
    req = TrtcCallbacks().format(outbox(event, room), CallbackTarget(url="http://127.0.0.1/", key=key), sent_ms=1_700_000_000_500)
    assert req is not None
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["SdkAppId"] == str(room.app_id)
    assert req.headers["Sign"] == receiver_sign(key, req.body)
    body = json.loads(req.body)
    assert body["EventGroupId"] == 3 and body["CallbackTs"] == 1_700_000_000_500
    info = body["EventInfo"]
    assert info["EventTs"] == event.at_ms // 1000 and info["EventMsTs"] == event.at_ms
    assert info["UserId"] == "rec_8489" and info["TaskId"] == "task-1"
    return body


AT = 1_700_000_000_123


def test_envelope_room_id_keeps_the_clients_type() -> None:
    assert formatted(ev.recorder_started(AT))["EventInfo"]["RoomId"] == 8489  # type: ignore[index]
    room = RoomKey(1400000001, "room-a", RoomIdType.STRING)
    assert formatted(ev.recorder_started(AT), room)["EventInfo"]["RoomId"] == "room-a"  # type: ignore[index]
    digits_as_string = RoomKey(1400000001, "8489", RoomIdType.STRING)
    assert formatted(ev.recorder_started(AT), digits_as_string)["EventInfo"]["RoomId"] == "8489"  # type: ignore[index]


def test_no_key_means_no_sign_header() -> None:
    req = TrtcCallbacks().format(outbox(ev.recorder_started(AT)), CallbackTarget(url="http://127.0.0.1/", key=""), sent_ms=1)
    assert req is not None and "Sign" not in req.headers


@pytest.mark.parametrize(("reason", "code"), [(StopReason.API, 0), (StopReason.IDLE, 99), (StopReason.SHUTDOWN, 3),
                                              (StopReason.FAILED, 3), (StopReason.DISPLACED, 101)])
def test_recorder_stop_leave_codes(reason: StopReason, code: int) -> None:
    body = formatted(ev.recorder_stopped(AT, reason))
    assert body["EventType"] == 302 and body["EventInfo"]["Payload"] == {"LeaveCode": code}  # type: ignore[index]


PLAYLIST = StoredFile(name="1400000001_8489.m3u8", kind="playlist", user_id="", track_type="audio_video", media="mix",
                      begin_ms=AT)
SEGMENT = StoredFile(name="1400000001_8489_20231114221320123.ts", kind="segment", user_id="", track_type="audio_video",
                     media="mix", begin_ms=AT, end_ms=AT + 2000, size=1000)
MP4 = StoredFile(name="1400000001_8489_1.mp4", kind="file", user_id="", track_type="audio_video", media="mix",
                 begin_ms=AT, end_ms=AT + 9000, size=5000)


def payloads(events: list[Event]) -> list[tuple[int, dict[str, object]]]:
    out = []
    for e in events:
        body = formatted(e)
        out.append((int(body["EventType"]), body["EventInfo"]["Payload"]))  # type: ignore[call-overload,index]
    return out


def test_bucket_destination_events_and_payloads() -> None:
    up = UploadTracker(vod=False, task_id="task-1")
    got = up.start(AT) + up.stored(PLAYLIST, AT) + up.stored(PLAYLIST, AT + 1) + up.stored(SEGMENT, AT + 2000)
    got += up.stored(SEGMENT, AT + 4000)  # a second segment says nothing new
    got += up.failed_upload(AT + 5000, name=SEGMENT.name, code="AccessDenied", message="Access Denied")
    got += up.finish(AT + 9000, [PLAYLIST, SEGMENT, MP4])
    assert payloads(got) == [
        (303, {"Status": 0}),
        (304, {"FileList": PLAYLIST.name}),
        (307, {"FileName": PLAYLIST.name, "UserId": "", "TrackType": "audio_video", "BeginTimeStamp": AT}),
        (308, {"Code": "AccessDenied", "Message": "Access Denied"}),
        (305, {"Status": 0}),
        (310, {"Status": 0, "FileList": [MP4.name], "FileMessage": [
            {"FileName": MP4.name, "UserId": "", "TrackType": "audio_video", "MediaId": "mix",
             "StartTimeStamp": AT, "EndTimeStamp": AT + 9000}]}),
    ]


def test_hls_only_destination_has_no_310_and_a_resumed_task_repeats_nothing() -> None:
    up = UploadTracker(vod=False, task_id="task-1")
    up.seen({EventKind.UPLOAD_STARTED}, [PLAYLIST, SEGMENT])
    assert up.start(AT) == [] and up.stored(PLAYLIST, AT) == [] and up.stored(SEGMENT, AT) == []
    assert payloads(up.finish(AT, [PLAYLIST, SEGMENT], stranded=True)) == [(305, {"Status": 1})]


def test_vod_destination_commits_each_file_then_stops() -> None:
    up = UploadTracker(vod=True, task_id="task-1", playback_base_url="http://127.0.0.1:9/vod/")
    assert up.start(AT) == [] and up.stored(PLAYLIST, AT) == [] and up.stored(SEGMENT, AT) == []
    got = payloads(up.finish(AT + 9000, [PLAYLIST, SEGMENT, MP4]))
    assert [t for t, _ in got] == [311, 311, 312]
    commit = got[1][1]
    vod = commit["TencentVod"]
    assert commit["Status"] == 0 and "Errmsg" not in commit
    assert isinstance(vod, dict)
    assert vod["CacheFile"] == MP4.name and vod["VideoUrl"] == f"http://127.0.0.1:9/vod/task-1/{MP4.name}"
    assert vod["MediaId"] == "mix" and vod["StartTimeStamp"] == AT and vod["EndTimeStamp"] == AT + 9000
    assert vod["FileId"].isdigit() and vod["FileId"] == ev.file_id("task-1", MP4.name)
    assert got[2] == (312, {"Status": 0})


def test_migration_and_image_events() -> None:
    assert payloads([ev.task_migrated(AT), ev.image_failed(AT, "http://127.0.0.1/x.png")]) == [
        (306, {"Status": 0}), (309, {"Url": "http://127.0.0.1/x.png"})]


def test_idempotency_key_is_stable_per_event() -> None:
    a = outbox(ev.recorder_started(AT))
    assert a.idempotency_key == "task-1-7"
    # Retries re-sign a new CallbackTs; the key and the event time stay.
    r1 = TrtcCallbacks().format(a, CallbackTarget(url="http://127.0.0.1/", key="k"), sent_ms=1)
    r2 = TrtcCallbacks().format(a, CallbackTarget(url="http://127.0.0.1/", key="k"), sent_ms=2)
    assert r1 is not None and r2 is not None and r1.body != r2.body
    assert json.loads(r1.body)["EventInfo"] == json.loads(r2.body)["EventInfo"]


def test_callback_settings_as_documented() -> None:
    import tomllib
    from pathlib import Path

    from cloudrec.errors import InvalidRequest
    from cloudrec.settings import CallbackSettings, parse_settings

    raw = tomllib.loads("""
[callbacks]
retry_seconds = 3600
timeout_seconds = 3
max_in_flight = 2
backoff_initial_seconds = 0.5
backoff_max_seconds = 60
poll_seconds = 1

[vod]
playback_base_url = "https://media.example/vod"

[[apps]]
id = 1400000001
key = "k"
callback_url = "http://127.0.0.1:9000/cb"
callback_key = "abc123"
""")
    s = parse_settings(raw, Path("."))
    assert s.callbacks == CallbackSettings(retry_seconds=3600, timeout_seconds=3, max_in_flight=2,
                                           backoff_initial_seconds=0.5, backoff_max_seconds=60, poll_seconds=1)
    assert s.vod_playback_base_url == "https://media.example/vod"
    app = s.app(1400000001)
    assert app is not None and app.callback_url == "http://127.0.0.1:9000/cb" and app.callback_key == "abc123"
    assert "abc123" not in repr(app)
    assert parse_settings({}, Path(".")).callbacks.retry_seconds == 24 * 3600
    with pytest.raises(InvalidRequest):
        parse_settings({"callbacks": {"timeout_seconds": 0}}, Path("."))
