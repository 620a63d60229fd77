"""`GET /metrics`: Prometheus text that a real parser accepts, with counts that follow what happened."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.callback_receiver import Receiver
from tests.support import (
    APP_ID, Server, call, client, ingest, running_server, served_samples, storage_params, usersig, wait_ended, wait_for,
)

CB_APP = 1400000021
CB_SECRET = "00112233445566778899aabbccddeeff"


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = httpx.get(f"{server.url}/metrics", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def value(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def metrics_server(tmp_path: Path, receiver: Receiver) -> Iterator[Server]:
    extra = f"""
[callbacks]
retry_seconds = 2
timeout_seconds = 1
backoff_initial_seconds = 0.2
backoff_max_seconds = 0.5
poll_seconds = 0.2

[[apps]]
id = {CB_APP}
key = "{CB_SECRET}"
callback_url = "{receiver.url}"
callback_key = "k"
"""
    with running_server(tmp_path, extra) as s:
        yield s


def create_idle_recording(server: Server) -> str:
    return str(call(client(server), "CreateCloudRecording", {
        "SdkAppId": CB_APP, "RoomId": "7001", "UserId": "rec_7001", "UserSig": usersig("rec_7001", CB_APP, CB_SECRET),
        "RecordParams": {"RecordMode": 2, "MaxIdleTime": 60}, "StorageParams": storage_params("metricsbucket"),
    }).TaskId)


def test_tasks_backlog_dead_and_delivered(metrics_server: Server, receiver: Receiver) -> None:
    before = scrape(metrics_server)
    assert value(before, "cloudrec_callback_backlog") == 0
    assert value(before, "cloudrec_tasks", kind="recording", state="idle") == 0
    task = create_idle_recording(metrics_server)  # nobody publishes: it stays idle
    m = wait_for(lambda: (m := scrape(metrics_server)) and value(m, "cloudrec_tasks", kind="recording", state="idle") == 1
                 and value(m, "cloudrec_callback_backlog") == 2 and m, 10, what="an idle task with 2 pending events")
    assert value(m, "cloudrec_callback_events", state="pending") == 2
    assert value(m, "cloudrec_callback_oldest_pending_seconds") >= 0
    # The receiver is down and retry_seconds = 2: both events are given up on, kept as dead.
    m = wait_for(lambda: (m := scrape(metrics_server)) and value(m, "cloudrec_callback_events", state="dead") == 2 and m,
                 15, what="dead events")
    assert value(m, "cloudrec_callback_backlog") == 0
    assert value(m, "cloudrec_callback_dead_total") == 2
    assert value(m, "cloudrec_callback_attempts_total", outcome="failed") >= 3
    assert "callback dead" in metrics_server.log_text()
    # Receiver up: the stop's events are delivered.
    receiver.up()
    call(client(metrics_server), "DeleteCloudRecording", {"SdkAppId": CB_APP, "TaskId": task})
    m = wait_for(lambda: (m := scrape(metrics_server)) and value(m, "cloudrec_callback_events", state="delivered") == 2
                 and m, 15, what="delivered events")
    assert value(m, "cloudrec_callback_attempts_total", outcome="delivered") == 2
    assert value(m, "cloudrec_tasks", kind="recording", state="ended") == 1
    assert value(m, "cloudrec_tasks", kind="recording", state="idle") == 0
    assert [g.event_type for g in receiver.delivered(task)] == [302, 305]


def test_recording_counters(tmp_path: Path) -> None:
    with served_samples(tmp_path / "media", ["alice"], 20) as url, running_server(tmp_path / "srv") as server:
        m0 = scrape(server)
        assert value(m0, "cloudrec_bytes_written_total") == 0 and value(m0, "cloudrec_dropped_units_total") == 0
        ingests = ingest(server, "7002", url, ["alice"])
        c = client(server)
        task = call(c, "CreateCloudRecording", {
            "SdkAppId": APP_ID, "RoomId": "7002", "UserId": "rec_7002", "UserSig": usersig("rec_7002"),
            "RecordParams": {"RecordMode": 2, "MaxIdleTime": 10, "OutputFormat": 1},
            "StorageParams": storage_params("metricsbucket")}).TaskId
        m = wait_for(lambda: (m := scrape(server)) and value(m, "cloudrec_tasks", kind="recording", state="in_progress") == 1
                     and m, 15, what="in-progress task")
        assert value(m, "cloudrec_tasks", kind="ingest", state="in_progress") == 1
        assert 0 <= value(m, "cloudrec_pipeline_lag_seconds") < 1.0  # the mix keeps up with real time
        time.sleep(3)
        call(c, "DeleteCloudRecording", {"SdkAppId": APP_ID, "TaskId": task})
        call(c, "StopStreamIngest", {"SdkAppId": APP_ID, "TaskId": ingests[0]})
        wait_ended(server, task)
        m = scrape(server)
        out = server.storage / "metricsbucket" / task
        on_disk = sum(p.stat().st_size for p in out.iterdir() if p.suffix in (".ts", ".mp4"))
        assert value(m, "cloudrec_bytes_written_total") == on_disk > 0
        segments = len(list(out.glob("*.ts")))
        assert value(m, "cloudrec_files_written_total", kind="segment") == segments >= 1
        assert value(m, "cloudrec_files_written_total", kind="file") == 1
        # This app has no callback_url: its events are kept, marked skipped.
        m = wait_for(lambda: (m := scrape(server)) and value(m, "cloudrec_callback_backlog") == 0 and m, 10,
                     what="an empty backlog")
        assert value(m, "cloudrec_callback_events", state="skipped") == 7  # 301 303 304 307 302 305 310
