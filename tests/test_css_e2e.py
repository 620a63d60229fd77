"""Tencent CSS end to end: a real ffmpeg RTMP push signed with txSecret, a record task and its template
created with the official LiveClient, the files reopened with PyAV, and the event_type 100 callbacks
received by a real HTTP receiver and checked with the spec's rule (sign = md5(key + t))."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudrec.service import Service
from cloudrec.tools.samples import SampleSpec, write_sample
from tests.callback_receiver import Receiver
from tests.support import in_process_service, SECRET_ID, SECRET_KEY, free_port, probe
from tests.test_css_api import lcall, live
from tests.test_css_push import push_query
from tests.test_css_push_e2e import FFMPEG, exit_code, publisher

pytestmark = pytest.mark.slow
DOMAIN = "e2e.push.example.com"
PUSH_KEY = "e2e-push-key"
CB_KEY = "e2e-callback-key"
CSS_APPID = 1250000000


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample(SampleSpec(path=tmp_path_factory.mktemp("css-e2e") / "clip.mp4", label="css", color=(200, 40, 40),
                                   seconds=4, gop=15))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().up()
    yield r
    r.close()


@pytest.fixture
async def service(tmp_path: Path, receiver: Receiver) -> AsyncIterator[Service]:
    raw = {
        "server": {"http_listen": f"127.0.0.1:{free_port()}", "rtmp_listen": f"127.0.0.1:{free_port()}", "data_dir": "data"},
        "media": {"hls_segment_seconds": 2},
        "credentials": [{"id": SECRET_ID, "secret": SECRET_KEY}],
        "callbacks": {"backoff_initial_seconds": 0.2, "poll_seconds": 0.1},
        "css": {"appid": CSS_APPID,
                "domains": [{"name": DOMAIN, "push_key": PUSH_KEY, "callback_url": receiver.url, "callback_key": CB_KEY}]},
    }
    async with in_process_service(raw, tmp_path) as svc:
        yield svc


async def api(svc: Service, action: str, params: dict[str, Any]) -> Any:
    return await asyncio.to_thread(lcall, live(f"127.0.0.1:{svc.settings.http_port}"), action, params)


async def push(svc: Service, stream: str, clip: Path, loops: int, query: str = "") -> asyncio.subprocess.Process:
    """ffmpeg pushing `clip` `loops` + 1 times in real time, signed for `stream`, to the push domain
    (with `query`'s parameters after the signature's)."""
    port = svc.rtmp.port
    url = f"rtmp://127.0.0.1:{port}/live/{stream}?{push_query(PUSH_KEY, stream, int(time.time()) + 600)}{query}"
    return await asyncio.create_subprocess_exec(
        FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", str(loops), "-i", str(clip), "-c", "copy",
        "-rtmp_tcurl", f"rtmp://{DOMAIN}:{port}/live", "-f", "flv", url,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


def record_callbacks(receiver: Receiver, task_id: str) -> list[dict[str, Any]]:
    return [g.json for g in receiver.got if g.answered == 200 and g.json.get("task_id") == task_id]


async def test_push_record_task_template_files_and_signed_callbacks(service: Service, receiver: Receiver, clip: Path,
                                                                    tmp_path: Path) -> None:
    template = (await api(service, "CreateLiveRecordTemplate", {
        "TemplateName": "e2e", "Mp4Param": {"Enable": 1, "RecordInterval": 1800},
        "FlvParam": {"Enable": 1, "RecordInterval": 1800}, "HlsParam": {"Enable": 1}})).TemplateId
    stream = "e2elive"
    proc = await push(service, stream, clip, loops=1)  # ~8 s
    await publisher(service, DOMAIN, "live", stream)
    now = int(time.time())
    task_id = (await api(service, "CreateRecordTask", {
        "DomainName": DOMAIN, "AppName": "live", "StreamName": stream, "EndTime": now + 3600,
        "TemplateId": template})).TaskId
    assert await exit_code(proc, 40) == 0  # the push ends: its file set is closed and stored

    async with asyncio.timeout(40):
        while {c["file_format"] for c in record_callbacks(receiver, task_id)} != {"mp4", "flv", "hls"}:
            await asyncio.sleep(0.2)
    await api(service, "StopRecordTask", {"TaskId": task_id})
    listed = (await api(service, "DescribeRecordTask", {"StartTime": now - 60, "EndTime": now + 3700,
                                                         "StreamName": stream})).TaskList
    assert [(t.TaskId, t.TemplateId) for t in listed] == [(task_id, template)] and listed[0].Stopped >= now

    calls = record_callbacks(receiver, task_id)
    http = httpx.AsyncClient(timeout=10)  # the service runs on this event loop: never block it
    assert len(calls) == 3  # one per file: the push was shorter than RecordInterval
    for body in calls:
        # The spec's check: sign = md5(key + t), t = the expiry, not yet passed.
        assert body["sign"] == hashlib.md5(f"{CB_KEY}{body['t']}".encode()).hexdigest()
        assert body["t"] > time.time()
        assert body["event_type"] == 100 and body["appid"] == CSS_APPID
        assert (body["app"], body["appname"], body["stream_id"], body["channel_id"]) == (DOMAIN, "live", stream, stream)
        assert body["file_id"] == body["record_file_id"] and body["file_size"] > 0
        assert body["record_temp_id"] == body["stream_param"] == ""  # a CreateRecordTask recording: no rule, no push URL
        assert 5 <= body["end_time"] - body["start_time"] <= 12 and 5 <= body["duration"] <= 12
        assert isinstance(body["callback_ext"], str)
        # The download URL serves the stored file; PyAV reopens it.
        got = await http.get(body["video_url"])
        assert got.status_code == 200 and len(got.content) == body["file_size"] or body["file_format"] == "hls"
        local = tmp_path / body["video_url"].rsplit("/", 1)[-1]
        local.write_bytes(got.content)
        if body["file_format"] == "hls":  # the playlist plays with its segments, fetched next to it
            base = body["video_url"].rsplit("/", 1)[0]
            for line in got.text.splitlines():
                if line and not line.startswith("#"):
                    (tmp_path / line.removeprefix("./")).write_bytes((await http.get(f"{base}/{line}")).content)
        report = await asyncio.to_thread(probe, local)
        assert report.video is not None and report.audio is not None and 6 < report.duration < 10, body["file_format"]
    await http.aclose()


async def test_a_rule_recording_reports_its_template_and_the_push_urls_parameters(service: Service, receiver: Receiver,
                                                                                  clip: Path) -> None:
    template = (await api(service, "CreateLiveRecordTemplate", {
        "TemplateName": "rule", "Mp4Param": {"Enable": 1, "RecordInterval": 1800}})).TemplateId
    await api(service, "CreateLiveRecordRule", {"DomainName": DOMAIN, "AppName": "live", "TemplateId": template})
    stream = "rulelive"
    proc = await push(service, stream, clip, loops=0, query="&room=a%20b&x=1")  # ~4 s
    assert await exit_code(proc, 40) == 0
    async with asyncio.timeout(40):
        while not (calls := [g.json for g in receiver.got if g.answered == 200 and g.json.get("stream_id") == stream]):
            await asyncio.sleep(0.2)
    (body,) = calls
    assert body["file_format"] == "mp4" and body["record_temp_id"] == str(template)
    params = body["stream_param"].split("&")  # the push URL's query, signature included
    assert params[0].startswith("txSecret=") and params[1].startswith("txTime=") and params[2:] == ["room=a%20b", "x=1"]
    assert body["task_id"] and body["sign"] == hashlib.md5(f"{CB_KEY}{body['t']}".encode()).hexdigest()
