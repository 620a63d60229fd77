"""The official Alibaba Cloud SDK (`alibabacloud-live20161101`) pointed at a running cloudrec."""

from __future__ import annotations

import time
from typing import Any

from alibabacloud_live20161101 import models
from alibabacloud_live20161101.client import Client
from alibabacloud_tea_openapi.exceptions import ClientException
from alibabacloud_tea_openapi.models import Config

from tests.support import APP_ID, SECRET_ID, SECRET_KEY, Server, client, call, wait_for

ARTC_APP = str(APP_ID)  # the ARTC AppId names the [[apps]] entry with that id
OSS = {"OSSBucket": "artc-bucket", "OSSEndpoint": "oss-cn-shanghai.aliyuncs.com"}


def ali(server: Server, *, v2: bool = False, key_id: str = SECRET_ID, secret: str = SECRET_KEY) -> Client:
    cfg = Config(access_key_id=key_id, access_key_secret=secret, endpoint=server.endpoint, protocol="http",
                 read_timeout=30000, connect_timeout=5000)
    if v2:
        cfg.signature_algorithm = "v2"  # RPC HMAC-SHA1 signature 1.0 instead of the default ACS3
    return Client(cfg)


_METHODS = {"StartRtcCloudRecording": "start_rtc_cloud_recording", "StopRtcCloudRecording": "stop_rtc_cloud_recording",
            "UpdateRtcCloudRecording": "update_rtc_cloud_recording",
            "DescribeRtcCloudRecordingFiles": "describe_rtc_cloud_recording_files"}


def ali_call(c: Client, action: str, params: dict[str, Any]) -> dict[str, Any]:
    request = getattr(models, f"{action}Request")().from_map(params)
    body = getattr(c, _METHODS[action])(request).body.to_map()
    return dict(body)


def ali_error(c: Client, action: str, params: dict[str, Any]) -> ClientException:
    try:
        ali_call(c, action, params)
    except ClientException as exc:
        return exc
    raise AssertionError(f"{action} succeeded: {params}")


def start(c: Client, channel: str, *, mode: int = 0, oss: bool = True, **extra: Any) -> str:
    params: dict[str, Any] = {
        "AppId": ARTC_APP, "ChannelId": channel,
        "SubscribeParams": {"SubscribeUserIdList": [{"UserId": "alice"}]},
        "RecordParams": {"RecordMode": mode},
        "StorageParams": {"StorageType": 1, "OSSParams": OSS} if oss else {"StorageType": 0},
    }
    params.update(extra)
    return str(ali_call(c, "StartRtcCloudRecording", params)["TaskId"])


def status(c: Client, task_id: str) -> dict[str, Any]:
    return dict(ali_call(c, "DescribeRtcCloudRecordingFiles", {"TaskId": task_id})["TaskInfo"])


def wait_stopped(c: Client, task_id: str, timeout: float = 40) -> dict[str, Any]:
    return dict(wait_for(lambda: (s := status(c, task_id))["Status"] == "STOPPED" and s, timeout, what="STOPPED"))


def ingest_string_room(server: Server, channel: str, url: str, users: list[str], repeat: int = 1) -> list[str]:
    """Publishers via TRTC StartStreamIngest into the string room the ARTC channel is."""
    from tests.support import usersig

    c = client(server)
    return [call(c, "StartStreamIngest", {
        "SdkAppId": APP_ID, "RoomId": channel, "RoomIdType": 0, "UserId": u, "UserSig": usersig(u),
        "StreamUrl": f"{url}/{u}.mp4", "RepeatNum": repeat}).TaskId for u in users]


def stop_ingests(server: Server, tasks: list[str]) -> None:
    c = client(server)
    for t in tasks:
        call(c, "StopStreamIngest", {"SdkAppId": APP_ID, "TaskId": t})


def settle(seconds: float) -> None:
    time.sleep(seconds)
