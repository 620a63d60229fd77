"""The CSS recording API (live 2018-08-01) driven by the official LiveClient: tasks, templates, rules,
their documented rules and error codes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.live.v20180801 import live_client, models

from tests.support import REGION, SECRET_ID, SECRET_KEY, Server, running_server

DOMAIN = "push.example.com"


def live(endpoint: str, *, region: str = REGION, sign_method: str | None = None,
         req_method: str = "POST") -> live_client.LiveClient:
    http = HttpProfile(protocol="http", endpoint=endpoint, reqMethod=req_method, reqTimeout=30)
    profile = ClientProfile(signMethod=sign_method, httpProfile=http) if sign_method else ClientProfile(httpProfile=http)
    return live_client.LiveClient(credential.Credential(SECRET_ID, SECRET_KEY), region, profile)


def lcall(c: live_client.LiveClient, action: str, params: dict[str, Any]) -> Any:
    req = getattr(models, f"{action}Request")()
    req.from_json_string(json.dumps(params))
    return getattr(c, action)(req)


def error_code(c: live_client.LiveClient, action: str, params: dict[str, Any]) -> str:
    with pytest.raises(TencentCloudSDKException) as info:
        lcall(c, action, params)
    return str(info.value.code)


def task_params(stream: str, *, start: int | None = None, seconds: int = 3600, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    params: dict[str, Any] = {"DomainName": DOMAIN, "AppName": "live", "StreamName": stream,
                              "StartTime": start if start is not None else now + 600}
    params["EndTime"] = params["StartTime"] + seconds
    params.update(over)
    return params


def describe_all(c: live_client.LiveClient, start: int, end: int, **filters: str) -> tuple[list[Any], int]:
    """Every task of the window, following ScrollToken; (tasks, pages)."""
    tasks: list[Any] = []
    token = ""
    for pages in range(1, 100):
        resp = lcall(c, "DescribeRecordTask", {"StartTime": start, "EndTime": end, "ScrollToken": token, **filters})
        tasks += resp.TaskList
        token = resp.ScrollToken
        if not token:
            return tasks, pages
    raise AssertionError("paging never ended")


HLS_MP4 = {
    "TemplateName": "hls_mp4",
    "Description": "HLS and MP4",
    "HlsParam": {"Enable": 1, "RecordInterval": 1800, "VodFileName": "{StreamID}_{StartYear}{StartMonth}{StartDay}"},
    "Mp4Param": {"Enable": 1, "RecordInterval": 600, "StorageTime": 86400},
    "HlsSpecialParam": {"FlowContinueDuration": 0},
}


def test_template_round_trip(server: Server) -> None:
    c = live(server.endpoint)
    template_id = lcall(c, "CreateLiveRecordTemplate", HLS_MP4).TemplateId
    assert isinstance(template_id, int) and template_id > 0
    t = lcall(c, "DescribeLiveRecordTemplate", {"TemplateId": template_id}).Template
    assert (t.TemplateId, t.TemplateName, t.Description) == (template_id, "hls_mp4", "HLS and MP4")
    assert (t.HlsParam.Enable, t.HlsParam.VodFileName) == (1, "{StreamID}_{StartYear}{StartMonth}{StartDay}")
    assert (t.Mp4Param.Enable, t.Mp4Param.RecordInterval, t.Mp4Param.StorageTime) == (1, 600, 86400)
    assert (t.FlvParam.Enable, t.AacParam.Enable, t.Mp3Param.Enable) == (0, 0, 0)  # every format is reported
    assert t.IsDelayLive == 0 and t.CosStore == 0 and t.RemoveWatermark is False
    assert t.HlsSpecialParam.FlowContinueDuration == 0

    # Absent objects and fields stay as they were.
    lcall(c, "ModifyLiveRecordTemplate", {"TemplateId": template_id, "Description": "changed",
                                          "Mp4Param": {"RecordInterval": 900}, "AacParam": {"Enable": 1}})
    t = lcall(c, "DescribeLiveRecordTemplate", {"TemplateId": template_id}).Template
    assert (t.TemplateName, t.Description) == ("hls_mp4", "changed")
    assert (t.Mp4Param.Enable, t.Mp4Param.RecordInterval, t.Mp4Param.StorageTime) == (1, 900, 86400)
    assert (t.AacParam.Enable, t.HlsParam.VodFileName) == (1, "{StreamID}_{StartYear}{StartMonth}{StartDay}")

    delayed = lcall(c, "CreateLiveRecordTemplate", {"TemplateName": "slow", "IsDelayLive": 1,
                                                    "FlvParam": {"Enable": 1}}).TemplateId
    standard = {x.TemplateId for x in lcall(c, "DescribeLiveRecordTemplates", {}).Templates}
    slow = {x.TemplateId for x in lcall(c, "DescribeLiveRecordTemplates", {"IsDelayLive": 1}).Templates}
    assert template_id in standard and delayed not in standard and slow == {delayed}

    lcall(c, "DeleteLiveRecordTemplate", {"TemplateId": template_id})
    assert error_code(c, "DescribeLiveRecordTemplate", {"TemplateId": template_id}) == "FailedOperation.NotFound"
    assert error_code(c, "DeleteLiveRecordTemplate", {"TemplateId": template_id}) == "InternalError.ConfNotFound"
    assert lcall(c, "CreateLiveRecordTemplate", {"TemplateName": "next"}).TemplateId > delayed  # ids never reused


def test_template_limit_and_rules(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        c = live(server.endpoint, region="")  # template and rule actions need no region
        ids = [lcall(c, "CreateLiveRecordTemplate", {"TemplateName": f"t{i}"}).TemplateId for i in range(50)]
        assert error_code(c, "CreateLiveRecordTemplate", {"TemplateName": "t50"}) == "InternalError.ConfOutLimit"

        lcall(c, "CreateLiveRecordRule", {"DomainName": DOMAIN, "AppName": "live", "StreamName": "s1", "TemplateId": ids[0]})
        lcall(c, "CreateLiveRecordRule", {"DomainName": DOMAIN, "TemplateId": ids[1]})
        assert error_code(c, "CreateLiveRecordRule", {"DomainName": DOMAIN, "AppName": "live", "StreamName": "s1",
                                                      "TemplateId": ids[2]}) == "FailedOperation.RuleAlreadyExist"
        assert error_code(c, "CreateLiveRecordRule", {"DomainName": DOMAIN, "AppName": "x",
                                                      "TemplateId": 999999}) == "InvalidParameter.ConfNotFound"
        assert error_code(c, "CreateLiveRecordRule", {"DomainName": "bad domain", "TemplateId": ids[0]}) \
            == "InvalidParameter.DomainFormatError"
        rules = lcall(c, "DescribeLiveRecordRules", {}).Rules
        assert [(r.DomainName, r.AppName, r.StreamName, r.TemplateId) for r in rules] == [
            (DOMAIN, "live", "s1", ids[0]), (DOMAIN, "", "", ids[1])]
        assert len(rules[0].CreateTime) == 19 and rules[0].CreateTime[4] == "-"  # "YYYY-MM-DD hh:mm:ss", Beijing time
        assert error_code(c, "DeleteLiveRecordTemplate", {"TemplateId": ids[0]}) == "FailedOperation.ConfInUsed"
        # The key must match exactly: an empty AppName/StreamName is its own rule.
        assert error_code(c, "DeleteLiveRecordRule", {"DomainName": DOMAIN, "AppName": "live"}) == "FailedOperation.NotFound"
        lcall(c, "DeleteLiveRecordRule", {"DomainName": DOMAIN, "AppName": "live", "StreamName": "s1"})
        lcall(c, "DeleteLiveRecordTemplate", {"TemplateId": ids[0]})
        assert [r.TemplateId for r in lcall(c, "DescribeLiveRecordRules", {}).Rules] == [ids[1]]
        lcall(c, "CreateLiveRecordTemplate", {"TemplateName": "t50"})  # room again below 50


NOW = int(time.time())
INVALID: list[tuple[str, dict[str, Any], str]] = [
    # CreateRecordTask: required fields and the time window (§2.6)
    ("CreateRecordTask", {"DomainName": DOMAIN, "AppName": "live", "EndTime": NOW + 60}, "MissingParameter"),
    ("CreateRecordTask", {"StreamName": "s", "AppName": "live", "EndTime": NOW + 60}, "MissingParameter"),
    ("CreateRecordTask", {"StreamName": "s", "DomainName": DOMAIN, "EndTime": NOW + 60}, "MissingParameter"),
    ("CreateRecordTask", {"StreamName": "s", "DomainName": DOMAIN, "AppName": "live"}, "MissingParameter"),
    ("CreateRecordTask", task_params("s", start=NOW - 7200, seconds=3600), "InvalidParameter"),  # EndTime passed
    ("CreateRecordTask", task_params("s", seconds=86401), "InvalidParameter"),  # window > 24 h
    ("CreateRecordTask", task_params("s", seconds=0), "InvalidParameter"),  # EndTime = StartTime
    # (margins of an hour: NOW is taken when the module is imported, long before some cases run)
    ("CreateRecordTask", task_params("s", start=NOW + 6 * 86400 + 3600), "InvalidParameter"),  # start > now + 6 days
    ("CreateRecordTask", {"StreamName": "s", "DomainName": DOMAIN, "AppName": "live", "EndTime": NOW + 86400 + 3600},
     "InvalidParameter"),  # no StartTime: from now, still ≤ 24 h
    ("CreateRecordTask", task_params("a/b"), "InvalidParameter"),
    ("CreateRecordTask", task_params("s", DomainName="not a domain"), "InvalidParameter"),
    ("CreateRecordTask", task_params("s", StreamType=2), "InvalidParameter"),
    ("StopRecordTask", {"TaskId": "no-such-task"}, "InvalidParameter"),
    ("StopRecordTask", {}, "MissingParameter"),
    ("DeleteRecordTask", {"TaskId": "no-such-task"}, "InvalidParameter"),
    # DescribeRecordTask window: ≤ 1 week, not before 90 days ago, End > Start
    ("DescribeRecordTask", {"StartTime": NOW, "EndTime": NOW + 7 * 86400 + 1}, "InvalidParameter"),
    ("DescribeRecordTask", {"StartTime": NOW - 91 * 86400, "EndTime": NOW - 90 * 86400 + 3600}, "InvalidParameter"),
    ("DescribeRecordTask", {"StartTime": NOW, "EndTime": NOW}, "InvalidParameter"),
    ("DescribeRecordTask", {"StartTime": NOW, "EndTime": NOW + 60, "ScrollToken": "garbage!"}, "InvalidParameter"),
    ("DescribeRecordTask", {"EndTime": NOW + 60}, "MissingParameter"),
    # templates
    ("CreateLiveRecordTemplate", {}, "MissingParameter"),
    ("CreateLiveRecordTemplate", {"TemplateName": "a b"}, "InvalidParameterValue"),
    ("CreateLiveRecordTemplate", {"TemplateName": "t", "Mp4Param": {"Enable": 1, "RecordInterval": 10}},
     "InvalidParameterValue"),
    ("CreateLiveRecordTemplate", {"TemplateName": "t", "AacParam": {"Enable": 1, "RecordInterval": 7201}},
     "InvalidParameterValue"),
    ("CreateLiveRecordTemplate", {"TemplateName": "t", "Mp4Param": {"Enable": 2}}, "InvalidParameterValue"),
    ("CreateLiveRecordTemplate", {"TemplateName": "t", "HlsParam": {"Enable": 1, "VodFileName": "{Nope}"}},
     "InvalidParameter.InvalidVodFileName"),
    ("CreateLiveRecordTemplate", {"TemplateName": "t", "HlsParam": {"Enable": 1, "VodFileName": "a/../b"}},
     "InvalidParameter.InvalidVodFileName"),
    ("CreateLiveRecordTemplate", {"TemplateName": "t", "HlsSpecialParam": {"FlowContinueDuration": 1801}},
     "InvalidParameterValue"),
    ("CreateLiveRecordTemplate", {"TemplateName": "t", "CosStore": 1, "Mp4Param": {"Enable": 1}}, "MissingParameter"),
    ("CreateLiveRecordTemplate", {"TemplateName": "t", "CosStore": 1, "Mp4Param": {
        "Enable": 1, "CosBucketName": "b", "CosBucketRegion": "ap-guangzhou", "CosBucketPath": "no-slash"}},
     "InvalidParameterValue"),
    ("CreateLiveRecordTemplate", {"TemplateName": "t", "CosStore": 1, "Mp4Param": {
        "Enable": 1, "CosBucketName": "b", "CosBucketRegion": "ap-guangzhou", "CosBucketPath": "/x/../y"}},
     "InvalidParameterValue"),
    ("DescribeLiveRecordTemplate", {"TemplateId": 987654}, "FailedOperation.NotFound"),
    ("DescribeLiveRecordTemplate", {}, "MissingParameter"),
    ("ModifyLiveRecordTemplate", {"TemplateId": 987654, "Description": "x"}, "FailedOperation.NotFound"),
    ("DeleteLiveRecordTemplate", {"TemplateId": 987654}, "InternalError.ConfNotFound"),
    ("DeleteLiveRecordRule", {"DomainName": DOMAIN, "AppName": "none"}, "FailedOperation.NotFound"),
    ("CreateLiveRecordRule", {"DomainName": DOMAIN}, "MissingParameter"),
]


@pytest.mark.parametrize(("action", "params", "code"), INVALID, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(INVALID)])
def test_invalid_requests(server: Server, action: str, params: dict[str, Any], code: str) -> None:
    assert error_code(live(server.endpoint), action, params) == code


def test_regions(server: Server) -> None:
    """CreateRecordTask needs one of its regions; the others take any region or none."""
    assert error_code(live(server.endpoint, region=""), "CreateRecordTask", task_params("r1")) == "MissingParameter"
    assert error_code(live(server.endpoint, region="ap-beijing"), "CreateRecordTask", task_params("r1")) \
        == "UnsupportedRegion"
    assert lcall(live(server.endpoint, region="na-ashburn"), "CreateRecordTask", task_params("r1")).TaskId
    assert lcall(live(server.endpoint, region=""), "DescribeLiveRecordTemplates", {}).Templates is not None
    assert lcall(live(server.endpoint, region="xx-nowhere"), "DescribeLiveRecordRules", {}).Rules is not None


def test_tasks_listed_paged_filtered_stopped_deleted(server: Server) -> None:
    c = live(server.endpoint)
    base = int(time.time()) + 3 * 86400  # a window no other test uses
    created = []
    for i in range(56):  # more than one page (50); paced under the 20/s rate limit
        created.append(lcall(c, "CreateRecordTask", task_params(f"page{i % 8}", start=base + i * 60, seconds=30)).TaskId)
        time.sleep(0.055)
    assert all(isinstance(t, str) and t for t in created) and len(set(created)) == 56
    tasks, pages = describe_all(c, base, base + 86400)
    assert pages == 2 and [t.TaskId for t in tasks] == created  # ordered by StartTime
    t0 = tasks[0]
    assert (t0.DomainName, t0.AppName, t0.StreamName, t0.StartTime, t0.EndTime, t0.TemplateId, t0.Stopped) == (
        DOMAIN, "live", "page0", base, base + 30, 0, 0)
    assert [t.TaskId for t in describe_all(c, base, base + 86400, StreamName="page3")[0]] == created[3::8]
    assert describe_all(c, base, base + 86400, AppName="other")[0] == []
    assert describe_all(c, base, base + 86400, DomainName="other.example.com")[0] == []
    # A filter matching more than a page pages like the unfiltered list (the filter is applied before paging).
    filtered, filtered_pages = describe_all(c, base, base + 86400, AppName="live", DomainName=DOMAIN.upper())
    assert [t.TaskId for t in filtered] == created and filtered_pages == 2  # domain names ignore case …
    assert describe_all(c, base, base + 86400, StreamName="PAGE3")[0] == []  # … stream names do not
    # both start and end must lie in the window
    assert [t.TaskId for t in describe_all(c, base, base + 60 + 29)[0]] == created[:1]

    lcall(c, "StopRecordTask", {"TaskId": created[1]})
    before = int(time.time())
    stopped = {t.TaskId: t.Stopped for t in describe_all(c, base, base + 86400)[0]}
    assert before - 5 <= stopped[created[1]] <= before and stopped[created[0]] == 0
    lcall(c, "DeleteRecordTask", {"TaskId": created[2]})
    assert created[2] not in {t.TaskId for t in describe_all(c, base, base + 86400)[0]}
    assert error_code(c, "StopRecordTask", {"TaskId": created[2]}) == "InvalidParameter"  # deleted: gone


def test_overlapping_tasks(server: Server) -> None:
    """At most 3 tasks of one stream may overlap; the 4th is refused (LimitExceeded.MaximumRunningTask)."""
    c = live(server.endpoint)
    start = int(time.time()) + 4 * 86400
    ids = [lcall(c, "CreateRecordTask", task_params("overlap", start=start + i * 600, seconds=3600)).TaskId
           for i in range(3)]
    assert error_code(c, "CreateRecordTask", task_params("overlap", start=start + 1800, seconds=600)) \
        == "LimitExceeded.MaximumRunningTask"
    assert lcall(c, "CreateRecordTask", task_params("overlap", start=start + 7200, seconds=600)).TaskId  # after them
    assert lcall(c, "CreateRecordTask", task_params("overlap2", start=start, seconds=600)).TaskId  # another stream
    lcall(c, "StopRecordTask", {"TaskId": ids[0]})  # a stopped task no longer counts
    assert lcall(c, "CreateRecordTask", task_params("overlap", start=start + 1800, seconds=600)).TaskId


def test_v1_get_request(server: Server) -> None:
    """Tencent's own CSS examples are GET requests with the common parameters in the query (HmacSHA256)."""
    c = live(server.endpoint, sign_method="HmacSHA256", req_method="GET")
    tid = lcall(c, "CreateLiveRecordTemplate", {"TemplateName": "v1", "Mp4Param": {"Enable": 1}}).TemplateId
    assert lcall(c, "DescribeLiveRecordTemplate", {"TemplateId": tid}).Template.Mp4Param.Enable == 1
