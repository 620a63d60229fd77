"""Room management through the TRTC API and its effect on running recordings."""

from __future__ import annotations

import json
import time

import pytest
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from cloudrec.core import naming
from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.spec import TrackKind
from tests.support import APP_ID, USERS, Server, call, client, ingest, probe, storage_params, usersig, wait_ended, wait_for
from tests.test_api_trtc import envelope, raw
from tests.test_recording_e2e import media_url  # noqa: F401  (the module's sample-media fixture)


def test_remove_user_then_dismiss_room(server: Server, media_url: str) -> None:  # noqa: F811
    room = "9301"
    ingests = ingest(server, room, media_url, USERS[:3])
    c = client(server)
    task = call(c, "CreateCloudRecording", {
        "SdkAppId": APP_ID, "RoomId": room, "UserId": "rec_9301", "UserSig": usersig("rec_9301"),
        "RecordParams": {"RecordMode": 1, "OutputFormat": 3, "AvMerge": 1, "MaxIdleTime": 60},
        "StorageParams": storage_params("rooms")}).TaskId
    wait_for(lambda: len(call(c, "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": task}).StorageFileList) >= 3,
             15, what="3 users recorded")
    time.sleep(2)
    call(c, "RemoveUser", {"SdkAppId": APP_ID, "RoomId": int(room), "UserIds": [USERS[0]]})
    body = json.dumps({"SdkAppId": APP_ID, "RoomId": int(room), "UserId": USERS[2], "IsMute": 1}).encode()
    assert "Error" not in envelope(raw(server, body, action="SetUserBlocked"))  # stays, but is not recorded
    # the removed user's ingest ends; the others go on
    wait_for(lambda: call(c, "DescribeStreamIngest", {"SdkAppId": APP_ID, "TaskId": ingests[0]}).Status == "NotExist",
             10, what="removed user's ingest to end")
    assert call(c, "DescribeStreamIngest", {"SdkAppId": APP_ID, "TaskId": ingests[1]}).Status == "InProgress"
    time.sleep(2)
    call(c, "DismissRoom", {"SdkAppId": APP_ID, "RoomId": int(room)})
    wait_ended(server, task)  # the recording ends through the normal stop path, files finalized
    for t in ingests:
        assert call(c, "DescribeStreamIngest", {"SdkAppId": APP_ID, "TaskId": t}).Status == "NotExist"
    key = RoomKey(APP_ID, room, RoomIdType.INTEGER)
    out = server.storage / "rooms" / task
    durations = {u: probe(next(out.glob(naming.user_base(key, u, TrackKind.MAIN) + "*.mp4"))).duration for u in USERS[:3]}
    assert durations[USERS[0]] < durations[USERS[1]] - 1.5, durations  # removed ~2 s earlier
    assert durations[USERS[2]] < durations[USERS[1]] - 1.0, durations  # blocked ~2 s earlier
    with pytest.raises(TencentCloudSDKException) as info:
        call(c, "DismissRoom", {"SdkAppId": APP_ID, "RoomId": int(room)})
    assert info.value.code == "FailedOperation.RoomNotExist"


def test_set_user_blocked_and_string_rooms(server: Server) -> None:
    body = json.dumps({"SdkAppId": APP_ID, "RoomId": "nobody-here", "UserId": "u", "IsMute": 1}).encode()
    assert envelope(raw(server, body, action="SetUserBlockedByStrRoomId"))["Error"]["Code"] == "FailedOperation.RoomNotExist"
    body = json.dumps({"SdkAppId": APP_ID, "RoomId": 1, "UserId": "u", "IsMute": 7}).encode()
    assert envelope(raw(server, body, action="SetUserBlocked"))["Error"]["Code"] == "InvalidParameter.OutOfRange"
    with pytest.raises(TencentCloudSDKException) as info:
        call(client(server), "RemoveUserByStrRoomId", {"SdkAppId": APP_ID, "RoomId": "x", "UserIds": []})
    assert info.value.code == "MissingParameter.UserIds"
