"""CSS recording templates (spec §3): request objects ⇄ the stored template ⇄ RecordTemplateInfo.

A template is stored as the complete, validated RecordTemplateInfo shape (minus TemplateId), so
Describe echoes every field back exactly as Tencent's sample does (all five formats, disabled ones
with `Enable: 0`). Modify merges field by field: an absent object or field stays as it was.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from cloudrec.dialects.tencent.errors import TencentError
from cloudrec.dialects.tencent.fields import Obj

FORMATS = ("FlvParam", "HlsParam", "Mp4Param", "AacParam", "Mp3Param")
BAD_VALUE = "InvalidParameterValue"
# RecordInterval (seconds per file): the union of the CN and intl ranges; HLS ignores it.
_INTERVAL = {"FlvParam": (30, 43200), "Mp4Param": (30, 43200), "AacParam": (30, 7200), "Mp3Param": (30, 7200),
             "HlsParam": (0, 43200)}
_NAME = re.compile(r"^[\w-]{1,64}$")  # CN: Chinese characters, letters, digits, _ and - (\w is Unicode)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{0,49}$")  # without the -<appid> suffix
_REGION = re.compile(r"^[a-z0-9-]{1,32}$")
TIME_FIELDS = ("Year", "Month", "Day", "Hour", "Minute", "Second", "Millisecond")
VOD_PLACEHOLDERS = frozenset({"StreamID"} | {f"{e}{f}" for e in ("Start", "End") for f in TIME_FIELDS})
COS_PLACEHOLDERS = VOD_PLACEHOLDERS | {"RecordSource", "Domain", "AppName", "RecordId", "RandomID"}
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_LITERAL = re.compile(r"^[A-Za-z0-9_.\-]*$")


def _param_defaults() -> dict[str, Any]:
    return {"RecordInterval": 1800, "StorageTime": 0, "Enable": 0, "VodSubAppId": 0, "VodFileName": "",
            "Procedure": "", "StorageMode": "", "ClassId": None, "CosBucketName": "", "CosBucketRegion": "",
            "CosBucketPath": ""}


def blank() -> dict[str, Any]:
    """A template with every field at its default (what Create starts from)."""
    return {"TemplateName": "", "Description": "", **{f: _param_defaults() for f in FORMATS}, "IsDelayLive": 0,
            "HlsSpecialParam": {"FlowContinueDuration": 0}, "RemoveWatermark": False, "CosStore": 0,
            "FlvSpecialParam": {"UploadInRecording": False}}


def check_pattern(pattern: str, allowed: frozenset[str], *, path: bool) -> bool:
    """A VodFileName (path=False) or CosBucketPath (path=True, a leading "/" and "/"-separated parts):
    known placeholders and [A-Za-z0-9_.-] only; no empty or dot-only part."""
    if len(pattern.encode()) > 512:
        return False
    if path:
        if not pattern.startswith("/"):
            return False
        parts = pattern[1:].split("/")
    else:
        parts = [pattern]
    for part in parts:
        if not part or part in (".", ".."):
            return False
        if any(name not in allowed for name in _PLACEHOLDER.findall(part)):
            return False
        if not _LITERAL.match(_PLACEHOLDER.sub("", part)):  # also refuses stray braces
            return False
    return True


def _merge_param(o: Obj, name: str, current: dict[str, Any]) -> dict[str, Any]:
    p = o.obj(name)
    if p is None:
        return current
    out = dict(current)
    lo, hi = _INTERVAL[name]
    for field, value in (
        ("RecordInterval", p.integer("RecordInterval", lo=lo, hi=hi, out_of_range=BAD_VALUE)),
        ("StorageTime", p.integer("StorageTime", lo=0, hi=129_600_000, out_of_range=BAD_VALUE)),
        ("Enable", p.integer("Enable", choices=(0, 1), out_of_range=BAD_VALUE)),
        ("VodSubAppId", p.integer("VodSubAppId", lo=0, out_of_range=BAD_VALUE)),
        ("Procedure", p.string("Procedure", max_len=256)),
        ("ClassId", p.integer("ClassId", lo=0, out_of_range=BAD_VALUE)),
        ("CosBucketName", p.string("CosBucketName", max_len=64)),
        ("CosBucketRegion", p.string("CosBucketRegion", max_len=32)),
        ("CosBucketPath", p.string("CosBucketPath", max_len=512)),
    ):
        if value is not None:
            out[field] = value
    mode = p.string("StorageMode", max_len=16)
    if mode is not None:
        if mode not in ("", "normal", "cold"):
            raise TencentError(BAD_VALUE, f"{p.path}.StorageMode must be normal or cold")
        out["StorageMode"] = mode
    vod_name = p.string("VodFileName", max_len=512)
    if vod_name is not None:
        if vod_name and not check_pattern(vod_name, VOD_PLACEHOLDERS, path=False):
            raise TencentError("InvalidParameter.InvalidVodFileName", f"{p.path}.VodFileName is not a valid file name template")
        out["VodFileName"] = vod_name
    return out


def merge(o: Obj, current: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    """`current` with the request's fields applied (Create: onto `blank()`), validated as a whole."""
    t = copy.deepcopy(current)
    name = o.string("TemplateName", required=creating, allow_empty=False, max_len=256)
    if name is not None:
        if not _NAME.match(name):
            raise TencentError(BAD_VALUE, "TemplateName takes 1-64 letters, digits, Chinese characters, _ and -")
        t["TemplateName"] = name
    description = o.string("Description", max_len=1024)
    if description is not None:
        t["Description"] = description
    for fmt in FORMATS:
        t[fmt] = _merge_param(o, fmt, t[fmt])
    if creating:
        t["IsDelayLive"] = o.integer("IsDelayLive", default=0, choices=(0, 1), out_of_range=BAD_VALUE)
        t["CosStore"] = o.integer("CosStore", default=0, choices=(0, 1), out_of_range=BAD_VALUE)
    hls = o.obj("HlsSpecialParam")
    if hls is not None:
        flow = hls.integer("FlowContinueDuration", lo=0, hi=1800, out_of_range=BAD_VALUE)
        if flow is not None:
            t["HlsSpecialParam"] = {"FlowContinueDuration": flow}
    if o.has("RemoveWatermark"):
        t["RemoveWatermark"] = o.boolean("RemoveWatermark")
    flv = o.obj("FlvSpecialParam")
    if flv is not None and flv.has("UploadInRecording"):
        t["FlvSpecialParam"] = {"UploadInRecording": flv.boolean("UploadInRecording")}
    _check_cos(t)
    return t


def _check_cos(t: dict[str, Any]) -> None:
    """With CosStore=1 every enabled format names its bucket, region and path."""
    if t["CosStore"] != 1:
        return
    for fmt in FORMATS:
        p = t[fmt]
        if not p["Enable"]:
            continue
        for field in ("CosBucketName", "CosBucketRegion", "CosBucketPath"):
            if not p[field]:
                raise TencentError("MissingParameter", f"missing parameter {fmt}.{field} (CosStore is 1)")
        if not _BUCKET.match(p["CosBucketName"]):
            raise TencentError(BAD_VALUE, f"{fmt}.CosBucketName is not a COS bucket name (without -appid)")
        if not _REGION.match(p["CosBucketRegion"]):
            raise TencentError(BAD_VALUE, f"{fmt}.CosBucketRegion is not a region")
        if not check_pattern(p["CosBucketPath"], COS_PLACEHOLDERS, path=True):
            raise TencentError(BAD_VALUE, f"{fmt}.CosBucketPath must start with / and use known placeholders")


def info(template_id: int, body: dict[str, Any]) -> dict[str, Any]:
    """RecordTemplateInfo."""
    return {"TemplateId": template_id, **body}
