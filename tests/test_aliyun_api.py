"""The ARTC recording API through the official SDK (V3 ACS3 and RPC v2 signing): errors with their codes
and HTTP statuses, the task lifecycle, isolation, replayed nonces and stale timestamps."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from alibabacloud_tea_openapi.utils import Utils

from tests.aliyun_support import ARTC_APP, OSS, ali, ali_call, ali_error, ingest_string_room, start, status, stop_ingests
from tests.support import APP_ID, OTHER_APP_ID, Server, client, running_server, served_samples, usersig, wait_for, call

CHANNEL = "api-ch"
RESTRICTED = ("LTAIrestrictedKey0001", "restricted-secret-0001")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("aliyun-api")
    extra = f'[[credentials]]\nid = "{RESTRICTED[0]}"\nsecret = "{RESTRICTED[1]}"\napps = [{OTHER_APP_ID}]\n'
    with running_server(root / "srv", extra) as srv, served_samples(root / "media", ["alice"], seconds=30) as url:
        tasks = ingest_string_room(srv, CHANNEL, url, ["alice"], repeat=-1)
        wait_for(lambda: _has_users(srv), 20, what="the ingest joined")
        yield srv
        stop_ingests(srv, tasks)


def _has_users(srv: Server) -> bool:
    try:
        task = start(ali(srv), CHANNEL, oss=False)
    except Exception:
        return False
    ali_call(ali(srv), "StopRtcCloudRecording", {"TaskId": task})
    return True


def base(mode: int = 0) -> dict[str, Any]:
    return {
        "AppId": ARTC_APP, "ChannelId": CHANNEL,
        "SubscribeParams": {"SubscribeUserIdList": [{"UserId": "alice"}]},
        "RecordParams": {"RecordMode": mode},
        "StorageParams": {"StorageType": 1, "OSSParams": dict(OSS)},
    }


MIXED = {"MixTranscodeParams": {"AudioBitrate": 64, "AudioChannels": 2, "AudioSampleRate": 48000, "VideoBitrate": 800,
                                "VideoFramerate": 15, "VideoGop": 30, "VideoWidth": 320, "VideoHeight": 240},
         "MixLayoutParams": {"UserPanes": [{"UserId": "alice", "X": "0", "Y": "0", "Width": "1", "Height": "1"}]}}


def with_(params: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """`params` with `path` ("A.B.0.C") set (or removed when value is ...)."""
    out = copy.deepcopy(params)
    node: Any = out
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    if value is ...:
        del node[last]
    elif last.isdigit() and int(last) == len(node):
        node.append(value)
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return out


def mixed(**changes: Any) -> dict[str, Any]:
    p = {**base(1), **copy.deepcopy(MIXED)}
    for path, value in changes.items():
        p = with_(p, path.replace("__", "."), value)
    return p


START_ERRORS: list[tuple[str, dict[str, Any], str, int]] = [
    ("no AppId", with_(base(), "AppId", ...), "MissingParameter", 400),
    ("unknown AppId", with_(base(), "AppId", "999"), "InvalidParameter.AppId", 404),
    ("bad ChannelId", with_(base(), "ChannelId", "a b"), "InvalidParameter.ChannelId", 404),
    ("empty channel", with_(base(), "ChannelId", "nobody-here"), "InvalidParameter.ChannelId", 404),
    ("no subscriptions", with_(base(), "SubscribeParams.SubscribeUserIdList", []),
     "InvalidParameter.SubscribeParams.SubscribeUserIdList", 400),
    ("18 subscriptions", with_(base(), "SubscribeParams.SubscribeUserIdList", [{"UserId": f"u{i}"} for i in range(18)]),
     "InvalidParameter.SubscribeParams.SubscribeUserIdList", 400),
    ("R2 video-only in single mode", with_(base(), "SubscribeParams.SubscribeUserIdList.0.StreamType", 2),
     "InvalidParameter.SubscribeParams.SubscribeUserIdList", 400),
    ("R3 audio subscription, video output", with_(with_(base(), "RecordParams.StreamType", 2),
                                                  "SubscribeParams.SubscribeUserIdList.0.StreamType", 1),
     "InvalidParameter.SubscribeParams.SubscribeUserIdList", 400),
    ("no RecordParams", with_(base(), "RecordParams", ...), "MissingParameter", 400),
    ("RecordMode 5", with_(base(), "RecordParams.RecordMode", 5), "InvalidParameter.RecordParams", 405),
    ("MaxFileDuration 100", with_(base(), "RecordParams.MaxFileDuration", 100), "InvalidParameter.RecordParams", 405),
    ("StorageType 3", with_(base(), "StorageParams.StorageType", 3), "InvalidParameter.StorageParams.StorageType", 405),
    ("bad OSSEndpoint", with_(base(), "StorageParams.OSSParams.OSSEndpoint", "example.com"),
     "InvalidParameter.StorageParams.OSSParams", 400),
    ("FLV format", with_(base(), "StorageParams.FileInfo", [{"Format": "FLV"}]), "InvalidParameter.StorageParams.FileInfo", 400),
    ("pattern with -", with_(base(), "StorageParams.FileInfo", [{"Format": "MP4", "FileNamePattern": "{UserId}-{StartTime}"}]),
     "InvalidParameter.StorageParams.FileInfo", 400),
    ("pattern without StartTime", with_(base(), "StorageParams.FileInfo", [{"Format": "MP4", "FileNamePattern": "{UserId}"}]),
     "InvalidParameter.StorageParams.FileInfo", 400),
    ("single pattern without UserId", with_(base(), "StorageParams.FileInfo",
                                            [{"Format": "MP4", "FileNamePattern": "{ChannelId}_{StartTime}"}]),
     "InvalidParameter.StorageParams.FileInfo", 400),
    ("R1 camera+screen without SourceType",
     with_(with_(base(), "SubscribeParams.SubscribeUserIdList.1", {"UserId": "alice", "SourceType": 1}),
           "StorageParams.FileInfo", [{"Format": "MP4", "FileNamePattern": "{UserId}_{StartTime}"}]),
     "InvalidParameter.StorageParams.FileInfo", 400),
    ("prefix with /", with_(base(), "StorageParams.FileInfo", [{"Format": "HLS", "FilePathPrefix": ["a/b"]}]),
     "InvalidParameter.StorageParams.FileInfo", 400),
    ("SliceDuration 5", with_(base(), "StorageParams.FileInfo", [{"Format": "HLS", "SliceDuration": 5}]),
     "InvalidParameter.StorageParams.FileInfo", 400),
    ("VOD with FileInfo", with_(with_(base(), "StorageParams.StorageType", 0), "StorageParams.FileInfo", [{"Format": "MP4"}]),
     "InvalidParameter.StorageParams.FileInfo", 400),
    ("VOD AutoCompose without group", with_(with_(base(), "StorageParams.StorageType", 0), "StorageParams.VodParams",
                                            {"AutoCompose": 1}), "InvalidParameter.StorageParams.VodParams", 405),
    ("single with a layout", {**base(), "MixLayoutParams": MIXED["MixLayoutParams"]},
     "InvalidParameter.MixLayoutParams.UserPanes", 400),
    ("mixed without transcode", with_(mixed(), "MixTranscodeParams", ...), "MissingParameter", 400),
    ("mixed sample rate 22050", mixed(MixTranscodeParams__AudioSampleRate=22050), "InvalidParameter.MixTranscodeParams", 400),
    ("mixed codec VP8", mixed(MixTranscodeParams__VideoCodec="VP8"), "InvalidParameter.MixTranscodeParams", 400),
    ("mixed video without layout", with_(mixed(), "MixLayoutParams", ...), "MissingParameter", 400),
    ("pane of an unsubscribed user", mixed(MixLayoutParams__UserPanes__0__UserId="zed"),
     "InvalidParameter.MixLayoutParams.UserPanes", 400),
    ("pane X 1.5", mixed(MixLayoutParams__UserPanes__0__X="1.5"), "InvalidParameter.MixLayoutParams.UserPanes", 400),
    ("no panes", mixed(MixLayoutParams__UserPanes=[]), "InvalidParameter.MixLayoutParams.UserPanes", 400),
    ("ftp NotifyUrl", {**base(), "NotifyUrl": "ftp://x/y"}, "InvalidParameter.NotifyUrl", 400),
    ("short NotifyAuthKey", {**base(), "NotifyUrl": "http://127.0.0.1:9/x", "NotifyAuthKey": "short"},
     "InvalidParameter.NotifyAuthKey", 405),
    ("notify MP4 without MP4", {**base(), "NotifyUrl": "http://127.0.0.1:9/x", "NotifyFileUploadedFormat": ["MP4"]},
     "InvalidParameter.NotifyFileUploadedFormat", 405),
    ("MaxIdleTime 5", {**base(), "MaxIdleTime": 5}, "InvalidParameter.MaxIdleTime", 405),
]


@pytest.mark.parametrize("v2", [False, True], ids=["v3", "v2"])
@pytest.mark.parametrize(("case", "params", "code", "http"), START_ERRORS, ids=[c[0] for c in START_ERRORS])
def test_start_errors(server: Server, v2: bool, case: str, params: dict[str, Any], code: str, http: int) -> None:
    exc = ali_error(ali(server, v2=v2), "StartRtcCloudRecording", params)
    assert (exc.code, exc.status_code) == (code, http), (case, exc.message)
    assert exc.data["HostId"] == server.endpoint and exc.data["RequestId"] and code in exc.data["Recommend"]


def test_task_lifecycle_isolation_and_task_errors(server: Server) -> None:
    c, c2 = ali(server), ali(server, v2=True)
    task = start(c, CHANNEL)
    assert status(c2, task)["Status"] == "RUNNING"
    other = ali(server, key_id=RESTRICTED[0], secret=RESTRICTED[1])  # may use app OTHER_APP_ID only
    for action in ("DescribeRtcCloudRecordingFiles", "StopRtcCloudRecording"):
        exc = ali_error(other, action, {"TaskId": task})
        assert (exc.code, exc.status_code) == ("NotFound.Task", 400)
    assert ali_error(other, "StartRtcCloudRecording", base()).code == "InvalidParameter.AppId"
    # a TRTC task is no ARTC task
    trtc = call(client(server), "StartStreamIngest", {
        "SdkAppId": APP_ID, "RoomId": "9901", "RoomIdType": 1, "UserId": "x", "UserSig": usersig("x"),
        "StreamUrl": "http://127.0.0.1:9/none.mp4"}).TaskId
    assert ali_error(c, "DescribeRtcCloudRecordingFiles", {"TaskId": trtc}).code == "NotFound.Task"
    for action in ("StopRtcCloudRecording", "DescribeRtcCloudRecordingFiles", "UpdateRtcCloudRecording"):
        exc = ali_error(c, action, {"TaskId": ""})
        assert (exc.code, exc.status_code) == ("MissingParameter", 400)
        exc = ali_error(c, action, {"TaskId": "nope", "SubscribeParams": {"SubscribeUserIdList": [{"UserId": "a"}]}})
        assert (exc.code, exc.status_code) == ("NotFound.Task", 400)
    exc = ali_error(c, "UpdateRtcCloudRecording", {"TaskId": task, "SubscribeParams": {"SubscribeUserIdList": [
        {"UserId": "alice"}]}, "MixLayoutParams": MIXED["MixLayoutParams"]})
    assert exc.code == "InvalidParameter.MixLayoutParams.UserPanes"
    assert ali_call(c, "UpdateRtcCloudRecording", {"TaskId": task, "SubscribeParams": {"SubscribeUserIdList": [
        {"UserId": "alice", "StreamType": 1}]}})["TaskId"] == task
    assert ali_call(c2, "StopRtcCloudRecording", {"TaskId": task})["TaskId"] == task
    assert status(c, task)["Status"] in ("STOPPING", "STOPPED")
    exc = ali_error(c, "StopRtcCloudRecording", {"TaskId": task})
    assert (exc.code, exc.status_code) == ("InvalidParameter.TaskId", 400)
    info = wait_for(lambda: (s := status(c, task))["Status"] == "STOPPED" and s, 30, what="STOPPED")
    assert info["RecordFileList"]["VodMediaList"] == []  # an ended task is still described (3 days)


@pytest.mark.parametrize("v2", [False, True], ids=["v3", "v2"])
def test_replayed_nonce_and_stale_timestamp(server: Server, v2: bool) -> None:
    c = ali(server, v2=v2)
    nonce = "f" * 31 + ("1" if v2 else "0")
    with mock.patch.object(Utils, "get_nonce", staticmethod(lambda: nonce)):
        assert ali_error(c, "DescribeRtcCloudRecordingFiles", {"TaskId": "t1"}).code == "NotFound.Task"
        exc = ali_error(c, "DescribeRtcCloudRecordingFiles", {"TaskId": "t1"})
        assert (exc.code, exc.status_code) == ("SignatureNonceUsed", 400)
    with mock.patch.object(Utils, "get_timestamp", staticmethod(lambda: "2020-01-01T00:00:00Z")):
        exc = ali_error(c, "DescribeRtcCloudRecordingFiles", {"TaskId": "t1"})
        assert (exc.code, exc.status_code) == ("InvalidTimeStamp.Expired", 400)


@pytest.mark.parametrize("v2", [False, True], ids=["v3", "v2"])
def test_bad_credentials(server: Server, v2: bool) -> None:
    exc = ali_error(ali(server, v2=v2, secret="wrong"), "DescribeRtcCloudRecordingFiles", {"TaskId": "t"})
    assert (exc.code, exc.status_code) == ("SignatureDoesNotMatch", 400)
    exc = ali_error(ali(server, v2=v2, key_id="LTAInobody"), "DescribeRtcCloudRecordingFiles", {"TaskId": "t"})
    assert (exc.code, exc.status_code) == ("InvalidAccessKeyId.NotFound", 404)


def test_routing_keeps_tencent_and_refuses_unsigned(server: Server) -> None:
    # an Alibaba-shaped request without a signature, and the Tencent gateway still answering Tencent requests
    r = httpx.post(server.url + "/", headers={"x-acs-action": "DescribeRtcCloudRecordingFiles", "x-acs-version": "2016-11-01"})
    assert r.status_code == 400 and r.json()["Code"] == "IncompleteSignature"
    assert r.headers["content-type"].startswith("application/json")
    with pytest.raises(TencentCloudSDKException) as err:
        call(client(server), "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "x"})
    assert err.value.code == "ResourceNotFound"


def test_legacy_json_with_spaces_and_dotted_keys(server: Server, tmp_path: Path) -> None:
    """The legacy SDKs' shapes, signed like they sign (RPC v1, `SignatureType=` empty and signed)."""
    import datetime
    import uuid
    from urllib.parse import urlencode

    from cloudrec.dialects.aliyun.signing import rpc_signature
    from tests.support import SECRET_ID, SECRET_KEY

    def send(business: dict[str, str]) -> httpx.Response:
        q = {"Action": "StartRtcCloudRecording", "Version": "2016-11-01", "Format": "JSON", "AccessKeyId": SECRET_ID,
             "SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0", "SignatureNonce": uuid.uuid4().hex,
             "SignatureType": "", "RegionId": "cn-shanghai",
             "Timestamp": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), **business}
        q["Signature"] = rpc_signature(SECRET_KEY, "POST", q.items())
        return httpx.post(f"{server.url}/?{urlencode(q)}")

    spaced = {"AppId": ARTC_APP, "ChannelId": CHANNEL, "SubscribeParams": '{"SubscribeUserIdList": [{"UserId": "alice"}]}',
              "RecordParams": '{"RecordMode": 0}', "StorageParams": '{"StorageType": 0}'}
    r = send(spaced)
    assert r.status_code == 200, r.text
    dotted = {"AppId": ARTC_APP, "ChannelId": CHANNEL, "SubscribeParams.SubscribeUserIdList.1.UserId": "alice",
              "SubscribeParams.SubscribeUserIdList.1.StreamType": "0", "RecordParams.RecordMode": "0",
              "RecordParams.MaxFileDuration": "0", "StorageParams.StorageType": "1",
              "StorageParams.OSSParams.OSSBucket": "artc-bucket", "StorageParams.OSSParams.OSSEndpoint": OSS["OSSEndpoint"],
              "StorageParams.FileInfo.1.Format": "MP4", "StorageParams.FileInfo.1.SliceDuration": "0"}
    r2 = send(dotted)
    assert r2.status_code == 200, r2.text
    c = ali(server)
    for task in (r.json()["TaskId"], r2.json()["TaskId"]):
        ali_call(c, "StopRtcCloudRecording", {"TaskId": task})
