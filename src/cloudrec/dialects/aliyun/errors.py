"""Alibaba Cloud API errors and the error envelope (spec §11.2).

Every error carries its HTTP status (Alibaba answers errors with 4xx/5xx, unlike Tencent); the SDKs
raise `ClientException`/`ServerException` from the status and read `Code`/`Message`/`RequestId`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

PRODUCT = "live"

# Code → (HTTP status, message template) for the documented business errors (§5.10, §6).
TEMPLATES: dict[str, tuple[int, str]] = {
    "InvalidParameter.NotifyUrl": (400, "%s, please check the notifyUrl."),
    "InvalidParameter.StorageParams.FileInfo": (400, "%s, please check the fileInfo of storageParams."),
    "InvalidParameter.StorageParams.OSSParams": (400, "%s, please check the ossParams of storageParams."),
    "NotFound.OSSBucket": (400, "%s, please check the ossBucket of storageParams."),
    "InvalidParameter.SubscribeParams.SubscribeUserIdList": (
        400, "%s, please check the subscribeUserIdList of subscribeParams."),
    "InvalidParameter.MixLayoutParams.UserPanes": (400, "%s, please check the userPanes of mixLayoutParams."),
    "InvalidParameter.MixTranscodeParams": (400, "%s, please check the transcodeParams."),
    "MissingParameter": (400, "%s."),
    "InvalidParameter.UserId": (403, "%s, please check the UserId."),
    "InvalidParameter.ChannelId": (404, "%s, please check the channelId."),
    "InvalidParameter.AppId": (404, "%s, please check the appId."),
    "InvalidParameter.StorageParams.VodParams": (405, "%s, please check the vodParams of storageParams."),
    "InvalidParameter.NotifyAuthKey": (405, "%s, please check the notifyAuthKey."),
    "InvalidParameter.MaxIdleTime": (405, "%s, please check the maxIdleTime."),
    "InvalidParameter.RecordParams": (405, "%s, please check the recordParams."),
    "InvalidParameter.StorageParams.StorageType": (405, "%s, please check the storageType of storageParams."),
    "InvalidParameter.NotifyFileUploadedFormat": (405, "%s, please check the notifyFileUploadedFormat."),
    "NotFound.Task": (400, "%s, please check the TaskId."),
    "InvalidParameter.TaskId": (400, "%s, please check the TaskId."),
}


class AliyunError(Exception):
    """An error answered as `{RequestId, HostId, Code, Message, Recommend}` with `status`."""

    def __init__(self, code: str, message: str = "", status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message or code
        self.status = status


def business(code: str, detail: str) -> AliyunError:
    """A documented business error: its status and message template from `TEMPLATES`."""
    status, template = TEMPLATES[code]
    return AliyunError(code, template.replace("%s", detail), status)


def missing(name: str) -> AliyunError:
    return business("MissingParameter", name)


def envelope(exc: AliyunError, *, request_id: str, host: str) -> dict[str, Any]:
    recommend = (f"https://api.aliyun.com/troubleshoot?q={quote(exc.code, safe='')}&product={PRODUCT}"
                 f"&requestId={quote(request_id, safe='')}")
    return {"RequestId": request_id, "HostId": host, "Code": exc.code, "Message": exc.message, "Recommend": recommend}
