"""The TRTC recording API driven by the official SDK (and raw HTTP for what the SDK can't send)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from cloudrec.dialects.tencent.signing import IncomingRequest, sign_tc3
from tests.support import (
    APP_ID, LIMITED_APP_ID, OTHER_APP_ID, OTHER_APP_KEY, SECRET_ID, SECRET_KEY, Server, call, client,
    storage_params, usersig,
)


def create_params(**over: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "SdkAppId": APP_ID, "RoomId": "1234", "RoomIdType": 1, "UserId": "rec_1234", "UserSig": usersig("rec_1234"),
        "RecordParams": {"RecordMode": 2, "MaxIdleTime": 5},
        "StorageParams": storage_params(),
    }
    params.update(over)
    return params


def error_code(server: Server, action: str, params: dict[str, Any], **kw: Any) -> str:
    with pytest.raises(TencentCloudSDKException) as info:
        call(client(server, **kw), action, params)
    return str(info.value.code)


def raw(server: Server, body: bytes, *, action: str = "DescribeCloudRecording", version: str = "2019-07-22",
        ts: int | None = None, secret: str = SECRET_KEY, content_type: str = "application/json",
        method: str = "POST", extra: dict[str, str] | None = None) -> httpx.Response:
    """A TC3-signed request built by hand (to send what no SDK would)."""
    ts = ts or int(time.time())
    headers = {"content-type": content_type, "host": server.endpoint, "x-tc-action": action,
               "x-tc-version": version, "x-tc-timestamp": str(ts), "x-tc-region": "ap-guangzhou", **(extra or {})}
    req = IncomingRequest(method=method, host=server.endpoint, headers=headers, query_string="", body=body)
    headers["authorization"] = sign_tc3(req, secret_id=SECRET_ID, secret_key=secret, service="trtc")
    return httpx.request(method, server.url + "/", content=body, headers=headers)


def test_create_describe_modify_delete(server: Server) -> None:
    c = client(server)
    created = call(c, "CreateCloudRecording", create_params(RoomId="5001", UserId="rec_5001", UserSig=usersig("rec_5001")))
    assert created.TaskId and created.RequestId
    desc = call(c, "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": created.TaskId})
    assert desc.TaskId == created.TaskId
    assert desc.Status == "Idle"  # nobody publishes in room 5001
    assert desc.StorageFileList == []
    mod = call(c, "ModifyCloudRecording", {
        "SdkAppId": APP_ID, "TaskId": created.TaskId,
        "MixLayoutParams": {"MixLayoutMode": 3}, "SubscribeStreamUserIds": {"SubscribeAudioUserIds": ["a"]}})
    assert mod.TaskId == created.TaskId
    deleted = call(c, "DeleteCloudRecording", {"SdkAppId": APP_ID, "TaskId": created.TaskId})
    assert deleted.TaskId == created.TaskId
    # After stop the task exits; once ended it is no longer found.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            d = call(c, "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": created.TaskId})
            assert d.Status == "Exited"
        except TencentCloudSDKException as exc:
            assert exc.code == "ResourceNotFound"
            break
        time.sleep(0.2)
    else:
        pytest.fail("task did not end")


def test_idle_task_stops_itself_after_max_idle_time(server: Server) -> None:
    c = client(server)
    created = call(c, "CreateCloudRecording", create_params(RoomId="5002", UserId="rec_5002", UserSig=usersig("rec_5002")))
    time.sleep(3)
    assert call(c, "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": created.TaskId}).Status == "Idle"
    time.sleep(4)  # MaxIdleTime 5 s
    assert error_code(server, "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": created.TaskId}) == "ResourceNotFound"


@pytest.mark.parametrize("sign_method,req_method", [("HmacSHA1", "POST"), ("HmacSHA256", "GET"), ("TC3-HMAC-SHA256", "GET")])
def test_other_signing_methods_and_get(server: Server, sign_method: str, req_method: str) -> None:
    c = client(server, sign_method=sign_method, req_method=req_method)
    created = call(c, "CreateCloudRecording", create_params(
        RoomId="room-x", RoomIdType=0, UserId="rec_x", UserSig=usersig("rec_x"),
        RecordParams={"RecordMode": 1, "MaxIdleTime": 5, "SubscribeStreamUserIds": {"UnSubscribeVideoUserIds": ["u1", "u2"]}},
        MixTranscodeParams={"VideoParams": {"Width": 640, "Height": 360, "Fps": 15, "BitRate": 600000, "Gop": 2}},
        MixLayoutParams={"MixLayoutMode": 4, "MixLayoutList": [
            {"Top": 0, "Left": 0, "Width": 320, "Height": 180, "UserId": "u1"},
            {"Top": 180, "Left": 320, "Width": 320, "Height": 180}]}))
    desc = call(c, "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": created.TaskId})
    assert desc.Status in ("Idle", "InProgress")
    call(c, "DeleteCloudRecording", {"SdkAppId": APP_ID, "TaskId": created.TaskId})


INVALID_CREATE = [
    ({"SdkAppId": None}, "MissingParameter.SdkAppId"),
    ({"SdkAppId": 999}, "InvalidParameter.SdkAppId"),
    ({"RoomId": None}, "MissingParameter.RoomId"),
    ({"RoomId": "abc"}, "InvalidParameter.RoomId"),  # RoomIdType 1 needs digits
    ({"RoomId": "1²"}, "InvalidParameter.RoomId"),  # a digit to str.isdigit(), not to int()
    ({"UserId": None}, "MissingParameter.UserId"),
    ({"UserSig": None}, "MissingParameter.UserSig"),
    ({"UserSig": "garbage"}, "InvalidParameter.UserSig"),
    ({"UserSig": usersig("someone_else")}, "InvalidParameter.UserSig"),
    ({"UserSig": usersig("rec_1234", app_id=OTHER_APP_ID, key=OTHER_APP_KEY)}, "InvalidParameter.UserSig"),
    ({"RecordParams": None}, "MissingParameter.RecordParams"),
    ({"RecordParams": {"MaxIdleTime": 5}}, "MissingParameter.RecordMode"),
    ({"RecordParams": {"RecordMode": 3}}, "InvalidParameter.OutOfRange"),
    ({"RecordParams": {"RecordMode": 1, "MaxIdleTime": 1}}, "InvalidParameter.OutOfRange"),
    ({"RecordParams": {"RecordMode": 1, "StreamType": 5}}, "InvalidParameter.OutOfRange"),
    ({"RecordParams": {"RecordMode": 1, "OutputFormat": 9}}, "InvalidParameter.OutOfRange"),
    ({"RecordParams": {"RecordMode": 1, "MaxMediaFileDuration": 2000}}, "InvalidParameter.OutOfRange"),
    ({"StorageParams": None}, "MissingParameter.StorageParams"),
    ({"StorageParams": {}}, "MissingParameter.CloudStorage"),
    ({"StorageParams": {"CloudStorage": {"Region": "r", "Bucket": "b", "AccessKey": "a", "SecretKey": "s"}}}, "MissingParameter.Vendor"),
    ({"StorageParams": {"CloudStorage": {"Vendor": 1, "Bucket": "b", "AccessKey": "a", "SecretKey": "s"}}}, "MissingParameter.Region"),
    ({"StorageParams": {"CloudStorage": {"Vendor": 1, "Region": "r", "AccessKey": "a", "SecretKey": "s"}}}, "MissingParameter.Bucket"),
    ({"StorageParams": {"CloudStorage": {"Vendor": 1, "Region": "r", "Bucket": "b", "SecretKey": "s"}}}, "MissingParameter.AccessKey"),
    ({"StorageParams": {"CloudStorage": {"Vendor": 1, "Region": "r", "Bucket": "b", "AccessKey": "a"}}}, "MissingParameter.SecretKey"),
    ({"StorageParams": {"CloudStorage": {"Vendor": 7, "Region": "r", "Bucket": "b", "AccessKey": "a", "SecretKey": "s"}}}, "InvalidParameter.OutOfRange"),
    ({"MixTranscodeParams": {"VideoParams": {"Width": 4000, "Height": 100, "Fps": 15, "BitRate": 500000, "Gop": 2}}}, "InvalidParameter.OutOfRange"),
    ({"MixTranscodeParams": {"VideoParams": {"Width": 1920, "Height": 1920, "Fps": 15, "BitRate": 500000, "Gop": 2}}}, "InvalidParameter.OutOfRange"),
    ({"MixTranscodeParams": {"AudioParams": {"SampleRate": 44100, "Channel": 2, "BitRate": 64000}}}, "InvalidParameter.OutOfRange"),
    ({"MixLayoutParams": {"MixLayoutMode": 4, "MixLayoutList": [{"Top": 0, "Left": 300, "Width": 100, "Height": 100}]}}, "InvalidParameter.OutOfRange"),
    ({"ResourceExpiredHour": 2}, "InvalidParameter.OutOfRange"),
]


@pytest.mark.parametrize("override,code", INVALID_CREATE)
def test_create_validation(server: Server, override: dict[str, Any], code: str) -> None:
    params = create_params()
    for k, v in override.items():
        if v is None:
            params.pop(k, None)
        else:
            params[k] = v
    assert error_code(server, "CreateCloudRecording", params) == code


def test_missing_task_and_foreign_app(server: Server) -> None:
    assert error_code(server, "DescribeCloudRecording", {"SdkAppId": APP_ID}) == "MissingParameter.TaskId"
    assert error_code(server, "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "nope"}) == "ResourceNotFound"
    assert error_code(server, "DeleteCloudRecording", {"SdkAppId": APP_ID, "TaskId": "nope"}) == "ResourceNotFound"
    created = call(client(server), "CreateCloudRecording", create_params(RoomId="5003", UserId="rec_5003", UserSig=usersig("rec_5003")))
    # Another app cannot see or stop this task (apps are isolated).
    assert error_code(server, "DescribeCloudRecording", {"SdkAppId": OTHER_APP_ID, "TaskId": created.TaskId}) == "ResourceNotFound"
    assert error_code(server, "DeleteCloudRecording", {"SdkAppId": OTHER_APP_ID, "TaskId": created.TaskId}) == "ResourceNotFound"
    call(client(server), "DeleteCloudRecording", {"SdkAppId": APP_ID, "TaskId": created.TaskId})


def test_wrong_key_and_region(server: Server) -> None:
    assert error_code(server, "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "x"}, secret_key="wrong") == "AuthFailure.SignatureFailure"
    assert error_code(server, "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "x"}, sign_method="HmacSHA1", secret_key="wrong") == "AuthFailure.SignatureFailure"
    assert error_code(server, "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "x"}, region="eu-frankfurt") == "UnsupportedRegion"


def test_concurrency_limit_and_rate_limit(server: Server) -> None:
    c = client(server)
    ids = []
    for i in range(2):
        uid = f"rec_limit_{i}"
        ids.append(call(c, "CreateCloudRecording", create_params(SdkAppId=LIMITED_APP_ID, RoomId=str(7000 + i), UserId=uid, UserSig=usersig(uid, app_id=LIMITED_APP_ID))).TaskId)
    code = error_code(server, "CreateCloudRecording", create_params(SdkAppId=LIMITED_APP_ID, RoomId="7009", UserId="rec_l9", UserSig=usersig("rec_l9", app_id=LIMITED_APP_ID)))
    assert code in ("FailedOperation.RestrictedConcurrency", "RequestLimitExceeded")
    codes = []
    for _ in range(6):
        try:
            call(c, "DescribeCloudRecording", {"SdkAppId": LIMITED_APP_ID, "TaskId": ids[0]})
            codes.append("ok")
        except TencentCloudSDKException as exc:
            codes.append(exc.code)
    assert "RequestLimitExceeded" in codes  # 2 per second for this app
    time.sleep(1.5)
    for task_id in ids:
        call(c, "DeleteCloudRecording", {"SdkAppId": LIMITED_APP_ID, "TaskId": task_id})
        time.sleep(0.6)


def envelope(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()["Response"]
    assert body["RequestId"]
    return body


@pytest.mark.parametrize("body,code", [
    (b"{not json", "InvalidParameter"),
    (b"[1, 2]", "InvalidParameter"),
    (json.dumps({"SdkAppId": "abc", "TaskId": "x"}).encode(), "InvalidParameter.SdkAppId"),
    (json.dumps({"SdkAppId": APP_ID, "TaskId": ["x"]}).encode(), "InvalidParameter.TaskId"),
    (json.dumps({"SdkAppId": APP_ID, "TaskId": "x", "Unknown": {"a": 1}}).encode(), "ResourceNotFound"),
    (b"x" * (2 << 20), "RequestSizeLimitExceeded"),
])
def test_malformed_requests_get_error_envelopes(server: Server, body: bytes, code: str) -> None:
    assert envelope(raw(server, body))["Error"]["Code"] == code


def test_protocol_errors(server: Server) -> None:
    ok = json.dumps({"SdkAppId": APP_ID, "TaskId": "x"}).encode()
    assert envelope(raw(server, ok, action="NoSuchThing"))["Error"]["Code"] == "InvalidAction"
    assert envelope(raw(server, ok, version="2000-01-01"))["Error"]["Code"] == "NoSuchVersion"
    assert envelope(raw(server, ok, ts=int(time.time()) - 400))["Error"]["Code"] == "AuthFailure.SignatureExpire"
    assert envelope(raw(server, ok, secret="nope"))["Error"]["Code"] == "AuthFailure.SignatureFailure"
    resp = httpx.put(server.url + "/", content=ok, headers={"x-tc-action": "DescribeCloudRecording"})
    assert envelope(resp)["Error"]["Code"] == "UnsupportedProtocol"
    resp = httpx.post(server.url + "/", content=ok, headers={"x-tc-action": "DescribeCloudRecording", "authorization": "bogus"})
    assert envelope(resp)["Error"]["Code"] == "AuthFailure.InvalidAuthorization"
    assert "secret" not in resp.text.lower()
