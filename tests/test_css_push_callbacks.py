"""Tencent CSS record callbacks (spec §6): the event_type 100 body and its `sign`, and their delivery
by the running service to the push domain's callback_url from the durable outbox."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cloudrec.core.events import (
    FILE_FORMATS, CallbackTarget, Event, EventKind, OutboxEvent, StoredFile, UploadTracker, file_id,
)
from cloudrec.core.states import TaskKind, TaskState
from cloudrec.core.tasks import TaskRecord
from cloudrec.dialects.tencent.css_callbacks import DIALECT, CssCallbacks, sign
from cloudrec.dialects.tencent.css_rooms import stream_room
from cloudrec.service import Service
from tests.callback_receiver import Receiver
from tests.support import in_process_service, free_port

ROOM = stream_room("5000.live.push.com", "live", "livetest")
SENT_MS = 1_700_000_000_250
BEGIN_MS, END_MS = 1_700_000_000_120, 1_700_001_800_450


def stored(name: str, kind: str = "file", *, vod: bool = True, end_ms: int | None = END_MS) -> Event:
    """The FILE_STORED event the uploader writes for `name` (through the real tracker)."""
    tracker = UploadTracker(vod=vod, task_id="UpTbk5EUb", playback_base_url="http://127.0.0.1:9/vod",
                            file_events=frozenset(FILE_FORMATS.values()))  # every kind, to see what the format skips
    f = StoredFile(name=name, kind=kind, user_id="livetest", track_type="audio_video", media="main", begin_ms=BEGIN_MS,
                   end_ms=end_ms, size=30045521)
    [event] = tracker.file_stored(f, SENT_MS, key=f"live/{name}")
    return event


def outbox(event: Event, task_id: str = "UpTbk5EUb") -> OutboxEvent:
    return OutboxEvent(id=3, task_id=task_id, room=ROOM, robot_user_id="", dialect=DIALECT, event=event)


def formatted(event: Event, target: CallbackTarget = CallbackTarget(url="http://127.0.0.1:9/cb", key="cbkey"),
              appid: int = 1250000000) -> dict[str, object] | None:
    req = CssCallbacks(appid=appid).format(outbox(event), target, sent_ms=SENT_MS)
    if req is None:
        return None
    assert req.headers["Content-Type"] == "application/json"
    body = json.loads(req.body)
    assert isinstance(body, dict)
    return body


def test_sign_is_md5_of_key_and_t() -> None:
    assert sign("cbkey", 1700000600) == hashlib.md5(b"cbkey1700000600").hexdigest()
    assert sign("cbkey", 1700000600) == sign("cbkey", 1700000600).lower() and len(sign("", 1)) == 32


def test_mp4_file_body_has_every_field() -> None:
    body = formatted(stored("live/livetest_1.mp4"))
    assert body is not None
    t = SENT_MS // 1000 + 600  # expires 10 minutes after it is sent
    fid = file_id("UpTbk5EUb", "live/livetest_1.mp4")
    assert body == {
        "event_type": 100, "t": t, "sign": hashlib.md5(f"cbkey{t}".encode()).hexdigest(), "appid": 1250000000,
        "app": "5000.live.push.com", "appname": "live", "stream_id": "livetest", "channel_id": "livetest",
        "file_id": fid, "record_file_id": fid, "record_temp_id": "", "file_format": "mp4", "task_id": "UpTbk5EUb",
        "start_time": 1_700_000_000, "end_time": 1_700_001_800, "start_time_usec": 120_000, "end_time_usec": 450_000,
        "duration": 1800, "file_size": 30045521, "stream_param": "",
        "video_url": "http://127.0.0.1:9/vod/UpTbk5EUb/live/livetest_1.mp4", "media_start_time": 0, "record_bps": 0,
        "callback_ext": '{"session_id":"UpTbk5EUb"}',
    }
    assert json.loads(str(body["callback_ext"])) == {"session_id": "UpTbk5EUb"}  # a JSON object as a string
    assert isinstance(body["file_id"], str) and fid.isdigit()


@pytest.mark.parametrize(("name", "kind", "fmt"), [("a.flv", "file", "flv"), ("a.aac", "file", "aac"),
                                                    ("a.mp3", "file", "mp3"), ("a.m3u8", "playlist", "hls")])
def test_whole_files_and_the_final_playlist_are_reported(name: str, kind: str, fmt: str) -> None:
    body = formatted(stored(name, kind, vod=False))
    assert body is not None and body["file_format"] == fmt
    assert body["video_url"] == ""  # storage without a playback URL


def test_segments_other_events_and_unwanted_formats_have_no_callback() -> None:
    assert formatted(stored("a_000001.ts", "segment")) is None
    assert formatted(Event(kind=EventKind.RECORDER_STARTED, at_ms=SENT_MS, payload={"ok": True, "error": ""})) is None
    assert formatted(stored("a.mp4"), CallbackTarget(url="http://127.0.0.1:9/cb", key="k", file_formats=frozenset({"hls"}))) is None


def test_an_open_file_reports_zero_duration_not_a_negative_one() -> None:
    body = formatted(stored("a.mp4", end_ms=None))
    assert body is not None and body["duration"] == 0 and body["end_time"] == body["start_time"]


# ---------------------------------------------------------------------------------------------
# Delivery by the service


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().up()
    yield r
    r.close()


@pytest.fixture
async def service(tmp_path: Path, receiver: Receiver) -> AsyncIterator[Service]:
    raw = {
        "server": {"http_listen": f"127.0.0.1:{free_port()}", "rtmp_listen": f"127.0.0.1:{free_port()}", "data_dir": "data"},
        "callbacks": {"poll_seconds": 0.05, "backoff_initial_seconds": 0.1},
        "css": {"appid": 1250000000, "domains": [
            {"name": "5000.live.push.com", "callback_url": receiver.url, "callback_key": "cbkey"},
            {"name": "quiet.example.com"}]},  # no callback_url: its events are skipped
    }
    async with in_process_service(raw, tmp_path) as svc:
        yield svc


async def test_service_delivers_to_the_domains_callback_url(service: Service, receiver: Receiver) -> None:
    now = time.time()
    for task_id, room in (("css-task-1", ROOM), ("css-task-2", stream_room("quiet.example.com", "live", "s"))):
        # An ended task: the worker leaves it alone, the notifier still sends its events.
        await service.store.create_task(TaskRecord(id=task_id, kind=TaskKind.RECORDING, dialect=DIALECT, room=room,
                                                   user_id="", state=TaskState.ENDED, spec="{}", created_at=now,
                                                   expires_at=now + 3600))
        await service.store.add_events(task_id, [stored("live/a_1.ts", "segment"), stored("live/a_1.flv"),
                                                 stored("live/a.m3u8", "playlist")])
    async with asyncio.timeout(20):
        while len(receiver.got) < 2:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # anything else (the segment, the quiet domain's) would arrive now
    bodies = [g.json for g in receiver.got]
    assert [(b["task_id"], b["file_format"]) for b in bodies] == [("css-task-1", "flv"), ("css-task-1", "hls")]
    for b in bodies:
        assert b["event_type"] == 100 and b["appid"] == 1250000000 and b["app"] == "5000.live.push.com"
        assert b["sign"] == hashlib.md5(f"cbkey{b['t']}".encode()).hexdigest()  # the receiver's check …
        assert time.time() <= b["t"] <= time.time() + 601  # … and not expired
