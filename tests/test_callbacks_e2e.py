"""Callbacks end to end: recordings driven by the official TRTC SDK, delivered to real HTTP receivers.

Receivers check `Sign` the way the spec tells them to (HMAC over the raw bytes); the outbox is
also read straight from the SQLite file to prove nothing was lost.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from tests.callback_receiver import Receiver
from tests.support import (
    Server, call, client, running_server, served_samples, storage_params, usersig, wait_for,
)

OK_APP, DOWN_APP, HANG_APP = 1400000011, 1400000012, 1400000013
KEYS = {OK_APP: "cbKey0011", DOWN_APP: "cbKey0012", HANG_APP: "cbKey0013"}
APP_SECRET = "00112233445566778899aabbccddeeff"  # UserSig key of the callback apps

CALLBACKS = """
[callbacks]
timeout_seconds = 2
backoff_initial_seconds = 0.2
backoff_max_seconds = 1
poll_seconds = 0.2
"""


def app_config(app_id: int, receiver: Receiver) -> str:
    return f"""
[[apps]]
id = {app_id}
key = "{APP_SECRET}"
callback_url = "{receiver.url}"
callback_key = "{KEYS[app_id]}"
rate_per_second = 100
"""


def start_ingest(server: Server, app_id: int, room: str, url: str, user: str) -> str:
    return str(call(client(server), "StartStreamIngest", {
        "SdkAppId": app_id, "RoomId": room, "RoomIdType": 1, "UserId": user,
        "UserSig": usersig(user, app_id, APP_SECRET), "StreamUrl": f"{url}/{user}.mp4"}).TaskId)


def stop_ingest(server: Server, app_id: int, task: str) -> None:
    call(client(server), "StopStreamIngest", {"SdkAppId": app_id, "TaskId": task})


def create_recording(server: Server, app_id: int, room: str, *, mode: int = 2, storage: dict[str, Any] | None = None,
                     output_format: int = 1, robot: str = "") -> str:
    robot = robot or f"rec_{room}"
    return str(call(client(server), "CreateCloudRecording", {
        "SdkAppId": app_id, "RoomId": room, "UserId": robot, "UserSig": usersig(robot, app_id, APP_SECRET),
        "RecordParams": {"RecordMode": mode, "MaxIdleTime": 10, "OutputFormat": output_format},
        "StorageParams": storage or storage_params("cbbucket"),
    }).TaskId)


def describe(server: Server, app_id: int, task: str) -> Any:
    return call(client(server), "DescribeCloudRecording", {"SdkAppId": app_id, "TaskId": task})


def wait_recording(server: Server, app_id: int, task: str, timeout: float = 20) -> Any:
    return wait_for(lambda: (d := describe(server, app_id, task)) and d.Status == "InProgress" and d.StorageFileList and d,
                    timeout, what="InProgress with files")


def stop_recording(server: Server, app_id: int, task: str) -> None:
    call(client(server), "DeleteCloudRecording", {"SdkAppId": app_id, "TaskId": task})


def wait_gone(server: Server, app_id: int, task: str) -> None:
    def gone() -> bool:
        try:
            describe(server, app_id, task)
            return False
        except TencentCloudSDKException as exc:
            return exc.code == "ResourceNotFound"

    wait_for(gone, 30, what="task end")


def outbox(server: Server, task: str, *, file_stored: bool = False) -> list[tuple[int, str, str, int]]:
    """(id, type, delivery state, attempts) of a task's events, straight from the database; without
    the per-file `file_stored` events (TRTC has no callback for them) unless asked."""
    with sqlite3.connect(f"file:{server.root / 'data' / 'cloudrec.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT id, type, state, attempts FROM events WHERE task_id = ? ORDER BY id", (task,))
        return [r for r in rows if file_stored or r[1] != "file_stored"]


def wait_delivered(server: Server, task: str) -> None:
    """Every event of the task marked delivered. The receiver sees a request before the server has its
    answer and commits the state, so the outbox is read until it agrees (or the wait fails)."""
    wait_for(lambda: {state for _, _, state, _ in outbox(server, task)} == {"delivered"}, 10,
             what="the outbox to record every delivery")


@pytest.fixture(scope="module")
def media_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_samples(tmp_path_factory.mktemp("media"), ["alice", "bob", "carol"], 30) as url:
        yield url


@pytest.fixture(scope="module")
def receivers() -> Iterator[dict[int, Receiver]]:
    r = {OK_APP: Receiver().up(), DOWN_APP: Receiver(), HANG_APP: Receiver()}
    r[HANG_APP].mode = "hang"
    r[HANG_APP].up()
    yield r
    for rec in r.values():
        rec.close()


@pytest.fixture(scope="module")
def cb_server(tmp_path_factory: pytest.TempPathFactory, receivers: dict[int, Receiver]) -> Iterator[Server]:
    extra = CALLBACKS + "max_in_flight = 1\n" + "".join(app_config(a, r) for a, r in receivers.items())
    with running_server(tmp_path_factory.mktemp("cbserver"), extra) as s:
        yield s


def test_recording_reports_every_event_in_order_signed(cb_server: Server, receivers: dict[int, Receiver],
                                                       media_url: str) -> None:
    rec = receivers[OK_APP]
    room = "9101"
    ingest = start_ingest(cb_server, OK_APP, room, media_url, "alice")
    mixed = create_recording(cb_server, OK_APP, room, output_format=1)  # COS, HLS + MP4
    vod = create_recording(cb_server, OK_APP, room, mode=1, robot="rec_vod",
                           storage={"CloudVod": {"TencentVod": {"MediaType": 0}}})  # VOD, MP4 per user and track
    desc = wait_recording(cb_server, OK_APP, mixed)
    begin_ms = desc.StorageFileList[0].BeginTimeStamp
    wait_for(lambda: 307 in rec.types(mixed), 15, what="307 first segment")
    stop_recording(cb_server, OK_APP, mixed)
    stop_recording(cb_server, OK_APP, vod)
    stop_ingest(cb_server, OK_APP, ingest)
    wait_gone(cb_server, OK_APP, mixed)
    wait_for(lambda: 310 in rec.types(mixed) and 312 in rec.types(vod), 20, what="last events")

    assert rec.types(mixed) == [301, 303, 304, 307, 302, 305, 310]
    for got in rec.got:
        assert got.headers["content-type"] == "application/json"
        assert got.headers["sdkappid"] == str(OK_APP)
        assert got.signed_with(KEYS[OK_APP]), got.body
        assert got.body.startswith(b'{\n\t"EventGroupId":\t3,\n\t"EventType":\t')  # printed as Tencent prints it
    events = {g.event_type: g.json for g in rec.delivered(mixed)}
    for body in events.values():
        info = body["EventInfo"]
        assert info["RoomId"] == 9101 and info["UserId"] == f"rec_{room}" and info["TaskId"] == mixed
        assert abs(info["EventMsTs"] / 1000 - time.time()) < 120 and info["EventTs"] == info["EventMsTs"] // 1000
        assert body["CallbackTs"] >= info["EventMsTs"]
    playlist = f"{OK_APP}_{room}.m3u8"
    assert events[301]["EventInfo"]["Payload"] == {"Status": 0}
    assert events[303]["EventInfo"]["Payload"] == {"Status": 0}
    assert events[304]["EventInfo"]["Payload"] == {"FileList": playlist}
    assert events[307]["EventInfo"]["Payload"] == {"FileName": playlist, "UserId": "", "TrackType": "audio_video",
                                                   "BeginTimeStamp": begin_ms}
    assert events[302]["EventInfo"]["Payload"] == {"LeaveCode": 0}  # stopped through the API
    assert events[305]["EventInfo"]["Payload"] == {"Status": 0}
    p310 = events[310]["EventInfo"]["Payload"]
    out = cb_server.storage / "cbbucket" / mixed
    assert p310["Status"] == 0 and p310["FileList"] == [f"{OK_APP}_{room}_1.mp4"]
    assert all((out / name).exists() for name in p310["FileList"])
    msg = p310["FileMessage"][0]
    assert msg["MediaId"] == "mix" and msg["TrackType"] == "audio_video"
    assert abs(msg["StartTimeStamp"] - begin_ms) < 1000  # the MP4 may start a few frames before the first HLS keyframe
    assert msg["EndTimeStamp"] - msg["StartTimeStamp"] > 1000

    # VOD: each committed file gets a 311, then one 312 ends the task.
    vod_types = rec.types(vod)
    vod_files = sorted(p.name for p in (cb_server.storage / "vod" / vod).glob("*.mp4"))
    assert vod_types == [301, 302] + [311] * len(vod_files) + [312] and len(vod_files) == 2  # alice's audio and video
    commits = [g.json["EventInfo"]["Payload"] for g in rec.delivered(vod) if g.event_type == 311]
    assert sorted(c["TencentVod"]["CacheFile"] for c in commits) == vod_files
    for c in commits:
        assert c["Status"] == 0 and c["TencentVod"]["UserId"] == "alice" and c["TencentVod"]["MediaId"] == "main"
        assert c["TencentVod"]["TrackType"] in ("audio", "video") and c["TencentVod"]["FileId"].isdigit()
    # The outbox agrees: everything delivered, once each (nothing failed here).
    for task in (mixed, vod):
        wait_delivered(cb_server, task)
        assert {(state, attempts) for _, _, state, attempts in outbox(cb_server, task)} == {("delivered", 1)}
        # TRTC reports no file one by one: its tasks write no per-file (file_stored) events at all.
        assert [kind for _, kind, _, _ in outbox(cb_server, task, file_stored=True) if kind == "file_stored"] == []


def test_receiver_down_then_up_loses_nothing(cb_server: Server, receivers: dict[int, Receiver], media_url: str) -> None:
    rec = receivers[DOWN_APP]  # not listening yet: connection refused
    room = "9102"
    ingest = start_ingest(cb_server, DOWN_APP, room, media_url, "bob")
    task = create_recording(cb_server, DOWN_APP, room, output_format=0)
    wait_recording(cb_server, DOWN_APP, task)
    time.sleep(3)
    stop_recording(cb_server, DOWN_APP, task)
    stop_ingest(cb_server, DOWN_APP, ingest)
    wait_gone(cb_server, DOWN_APP, task)
    rows = outbox(cb_server, task)
    assert [t for _, t, _, _ in rows][-2:] == ["recorder_stopped", "upload_finished"]
    assert all(state == "pending" for _, _, state, _ in rows) and rows[0][3] >= 2  # retried while down
    # Up, but failing after reading each body: those requests are duplicates the receiver must drop.
    rec.mode = "fail"
    rec.up()
    wait_for(lambda: len(rec.got) >= 3, 15, what="requests to the failing receiver")
    rec.mode = "ok"
    wait_for(lambda: rec.types(task)[-1:] == [305], 20, what="all events after the receiver came back")
    assert rec.types(task) == [301, 303, 304, 307, 302, 305]
    assert all(g.key and g.signed_with(KEYS[DOWN_APP]) for g in rec.got)  # no request without the idempotency key
    by_key: dict[str, list[Any]] = {}
    for g in rec.got:
        by_key.setdefault(g.key, []).append(g)
    dups = [gs for gs in by_key.values() if len(gs) > 1]
    assert dups, "the failing receiver should have caused retries"
    for gs in dups:
        # Same event, same key, same event time; attempts count up; each retry is signed anew.
        assert len({g.json["EventInfo"]["EventMsTs"] for g in gs}) == 1
        assert len({g.event_type for g in gs}) == 1
        attempts = [int(g.headers["x-cloudrec-attempt"]) for g in gs]
        assert attempts == sorted(attempts) and len(set(attempts)) == len(attempts)
    wait_delivered(cb_server, task)


def test_hanging_receiver_delays_neither_recording_nor_other_apps(cb_server: Server, receivers: dict[int, Receiver],
                                                                  media_url: str) -> None:
    hung, ok = receivers[HANG_APP], receivers[OK_APP]
    ing_h = start_ingest(cb_server, HANG_APP, "9103", media_url, "carol")
    ing_o = start_ingest(cb_server, OK_APP, "9104", media_url, "alice")
    hung_task = create_recording(cb_server, HANG_APP, "9103", output_format=0)
    created = time.time()
    ok_task = create_recording(cb_server, OK_APP, "9104", output_format=0)
    wait_for(lambda: 301 in ok.types(ok_task), 5, what="the other app's 301 while a receiver hangs")
    assert time.time() - created < 5
    # The hung app's own recording runs as usual.
    wait_recording(cb_server, HANG_APP, hung_task)
    wait_recording(cb_server, OK_APP, ok_task)
    wait_for(lambda: 307 in ok.types(ok_task), 15, what="307 of the other app")
    stopped = time.time()
    for app, task in ((HANG_APP, hung_task), (OK_APP, ok_task)):
        stop_recording(cb_server, app, task)
    stop_ingest(cb_server, HANG_APP, ing_h)
    stop_ingest(cb_server, OK_APP, ing_o)
    wait_gone(cb_server, HANG_APP, hung_task)
    wait_for(lambda: 305 in ok.types(ok_task), 10, what="the other app's last event")
    assert time.time() - stopped < 10
    assert (cb_server.storage / "cbbucket" / hung_task / "1400000013_9103.m3u8").exists()
    # The hung receiver got the 301 (max_in_flight = 1, so only that), retried after each 2 s timeout.
    assert hung.got and {g.event_type for g in hung.got} == {301}
    states = {state for _, _, state, _ in outbox(cb_server, hung_task)}
    assert states == {"pending"}


def test_restart_delivers_what_was_left(tmp_path: Path, media_url: str) -> None:
    rec = Receiver()  # down during the whole first run
    extra = CALLBACKS + app_config(DOWN_APP, rec)
    with running_server(tmp_path, extra) as server:
        ingest = start_ingest(server, DOWN_APP, "9105", media_url, "bob")
        task = create_recording(server, DOWN_APP, "9105", output_format=3)  # MP4 only
        wait_recording(server, DOWN_APP, task)
        time.sleep(2)
        stop_recording(server, DOWN_APP, task)
        stop_ingest(server, DOWN_APP, ingest)
        wait_gone(server, DOWN_APP, task)
    assert server.proc.returncode == 0
    rows = outbox(server, task)
    assert [t for _, t, _, _ in rows] == ["recorder_started", "upload_started", "recorder_stopped", "upload_finished",
                                          "files_finished"]
    assert {state for _, _, state, _ in rows} == {"pending"}
    rec.up()
    try:
        with running_server(tmp_path, extra) as again:
            wait_for(lambda: rec.types(task)[-1:] == [310], 15, what="delivery after the restart")
            assert rec.types(task) == [301, 303, 302, 305, 310]
            assert all(g.signed_with(KEYS[DOWN_APP]) for g in rec.got)
            wait_delivered(again, task)
    finally:
        rec.close()


def test_callback_apps_do_not_leak_secrets_in_logs(cb_server: Server) -> None:
    log = cb_server.log_text()
    assert "callback delivered" in log
    for key in (*KEYS.values(), APP_SECRET):
        assert key not in log
