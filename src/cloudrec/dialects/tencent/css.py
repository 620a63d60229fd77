"""CSS recording actions (service `live`, Version 2018-08-01): tasks, templates and rules (spec §2–5).

A task records one pushed stream (the CSS room of css_rooms) between StartTime and EndTime with a
template; `css_spec` turns the pair into the core RecordingSpec. Templates and rules belong to the
service, not to an app: a CSS account is the whole server (any configured SecretId sees them).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from cloudrec.control.schedules import ScheduleControl
from cloudrec.core.schedules import ScheduleRecord, TemplateRecord
from cloudrec.dialects.tencent import css_templates
from cloudrec.dialects.tencent.css_rooms import domain_key, stream_of, stream_room
from cloudrec.dialects.tencent.css_spec import recording_spec
from cloudrec.dialects.tencent.errors import TencentError
from cloudrec.dialects.tencent.fields import Obj
from cloudrec.errors import CloudrecError, Conflict, LimitReached, NotFound

SERVICE = "css"
VERSION = "2018-08-01"
# CreateRecordTask requires one of these (intl doc); the other actions accept any region or none.
TASK_REGIONS = frozenset({
    "ap-bangkok", "ap-guangzhou", "ap-hongkong", "ap-jakarta", "ap-mumbai", "ap-seoul", "ap-singapore", "ap-tokyo",
    "eu-frankfurt", "na-ashburn", "na-siliconvalley", "na-toronto", "sa-saopaulo",
})
REGIONAL_ACTIONS = frozenset({"CreateRecordTask"})
# Requests per second and SecretId: documented for CreateRecordTask (20) and CreateLiveRecordTemplate
# (200); the other task actions get 20, template and rule actions 200 (typical, unconfirmed).
RATES = {
    **{a: 20.0 for a in ("CreateRecordTask", "StopRecordTask", "DeleteRecordTask", "DescribeRecordTask")},
    **{a: 200.0 for a in ("CreateLiveRecordTemplate", "DescribeLiveRecordTemplate", "DescribeLiveRecordTemplates",
                          "ModifyLiveRecordTemplate", "DeleteLiveRecordTemplate", "CreateLiveRecordRule",
                          "DescribeLiveRecordRules", "DeleteLiveRecordRule")},
}
MAX_WINDOW_S = 24 * 3600  # EndTime − StartTime
MAX_LEAD_S = 6 * 86400  # StartTime ≤ now + 6 days
DESCRIBE_SPAN_S = 7 * 86400  # DescribeRecordTask EndTime − StartTime
RETENTION_S = 90 * 86400  # task records are kept 3 months
PAGE_SIZE = 50  # DescribeRecordTask (Tencent's page size is unconfirmed)
_BEIJING = timezone(timedelta(hours=8))
_DOMAIN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,256}$")  # AppName, StreamName: no "/" (they are parts of the room id)

Action = Callable[[Obj], Awaitable[dict[str, Any]]]


class CssActions:
    def __init__(self, control: ScheduleControl, *, clock: Callable[[], float] = time.time) -> None:
        self.control = control
        self.clock = clock
        self.actions: dict[str, Action] = {
            "CreateRecordTask": self.create_record_task,
            "StopRecordTask": self.stop_record_task,
            "DeleteRecordTask": self.delete_record_task,
            "DescribeRecordTask": self.describe_record_task,
            "CreateLiveRecordTemplate": self.create_template,
            "DescribeLiveRecordTemplate": self.describe_template,
            "DescribeLiveRecordTemplates": self.describe_templates,
            "ModifyLiveRecordTemplate": self.modify_template,
            "DeleteLiveRecordTemplate": self.delete_template,
            "CreateLiveRecordRule": self.create_rule,
            "DescribeLiveRecordRules": self.describe_rules,
            "DeleteLiveRecordRule": self.delete_rule,
        }

    async def call(self, action: str, params: Obj) -> dict[str, Any]:
        """`action` is one of `actions` (the gateway answered InvalidAction otherwise)."""
        try:
            return await self.actions[action](params)
        except CloudrecError as exc:  # anything the action did not map itself
            raise TencentError("InternalError", "internal error") from exc

    # --- tasks (§2) -----------------------------------------------------------------------------
    async def create_record_task(self, p: Obj) -> dict[str, Any]:
        stream = _name(p, "StreamName")
        domain = _domain(p, "DomainName")
        app_name = _name(p, "AppName")
        now = int(self.clock())
        end = p.req_int("EndTime", lo=0, out_of_range="InvalidParameter")
        start = p.integer("StartTime", lo=0, out_of_range="InvalidParameter") or None  # 0 = absent
        begin = max(now, start) if start else now  # absent (or past) = from now on
        if end <= now:
            raise TencentError("InvalidParameter", "EndTime must be later than now")
        if start is not None and end <= start:
            raise TencentError("InvalidParameter", "EndTime must be later than StartTime")
        if start is not None and start > now + MAX_LEAD_S:
            raise TencentError("InvalidParameter", "StartTime must not be later than now + 6 days")
        if end - (start if start is not None else now) > MAX_WINDOW_S:
            raise TencentError("InvalidParameter", "EndTime - StartTime must not exceed 24 hours")
        p.integer("StreamType", default=0, choices=(0, 1), out_of_range="InvalidParameter")  # a mix output is a stream too
        template_id = p.integer("TemplateId", default=0, lo=0, out_of_range="InvalidParameter") or 0
        p.string("Extension", max_len=4096)
        template = await self._template_or_none(template_id)  # absent or invalid: HLS to the VOD library
        room = stream_room(domain, app_name, stream)
        spec = recording_spec(room, domain=domain, app_name=app_name, stream=stream, template=template,
                              start_s=begin, end_s=end)
        try:
            task_id = await self.control.create(spec, scope=room.room_id, start_s=start if start is not None else now,
                                                end_s=end, template_id=template_id)
        except LimitReached as exc:
            why = "overlapping tasks for this stream (at most 3)" if exc.reason == "overlap" else "running tasks"
            raise TencentError("LimitExceeded.MaximumRunningTask", f"too many {why}") from exc
        return {"TaskId": task_id}

    async def _template_or_none(self, template_id: int) -> dict[str, Any] | None:
        if not template_id:
            return None
        try:
            return _body(await self.control.template(template_id))
        except NotFound:
            return None

    async def stop_record_task(self, p: Obj) -> dict[str, Any]:
        await self._on_task(p, self.control.stop)
        return {}

    async def delete_record_task(self, p: Obj) -> dict[str, Any]:
        await self._on_task(p, self.control.delete)
        return {}

    @staticmethod
    async def _on_task(p: Obj, operation: Callable[[str], Awaitable[None]]) -> None:
        """`operation` on the TaskId's task (it checks that the task exists, is listed and in time)."""
        try:
            await operation(p.req_str("TaskId", max_len=256))
        except NotFound as exc:
            raise TencentError("InvalidParameter", "TaskId does not exist") from exc

    async def describe_record_task(self, p: Obj) -> dict[str, Any]:
        now = int(self.clock())
        start = p.req_int("StartTime", lo=0, out_of_range="InvalidParameter")
        end = p.req_int("EndTime", lo=0, out_of_range="InvalidParameter")
        if start < now - RETENTION_S or end < now - RETENTION_S:
            raise TencentError("InvalidParameter", "StartTime and EndTime must not be earlier than 90 days ago")
        if end <= start:
            raise TencentError("InvalidParameter", "EndTime must be later than StartTime")
        if end - start > DESCRIBE_SPAN_S:
            raise TencentError("InvalidParameter", "EndTime - StartTime must not exceed one week")
        domain, app_name, stream = (p.string(k, max_len=256) or "" for k in ("DomainName", "AppName", "StreamName"))
        scope = (domain_key(domain) if domain else None, app_name or None, stream or None)
        after = _read_token(p.string("ScrollToken", max_len=1024) or "")
        page = await self.control.listed(start_from=start, end_to=end, scope=scope, after=after, limit=PAGE_SIZE + 1)
        found = page[:PAGE_SIZE]
        token = _token((found[-1].start_s, found[-1].task_id)) if len(page) > PAGE_SIZE else ""
        return {"ScrollToken": token, "TaskList": [_task(s) for s in found]}

    # --- templates (§3) ---------------------------------------------------------------------------
    async def create_template(self, p: Obj) -> dict[str, Any]:
        body = css_templates.merge(p, css_templates.blank(), creating=True)
        try:
            template_id = await self.control.create_template(body["TemplateName"], json.dumps(body))
        except LimitReached as exc:
            raise TencentError("InternalError.ConfOutLimit", "at most 50 recording templates") from exc
        return {"TemplateId": template_id}

    async def _template(self, p: Obj, missing_code: str = "FailedOperation.NotFound") -> TemplateRecord:
        template_id = p.req_int("TemplateId", lo=0, out_of_range="InvalidParameterValue")
        try:
            return await self.control.template(template_id)
        except NotFound as exc:
            raise TencentError(missing_code, "the template does not exist") from exc

    async def describe_template(self, p: Obj) -> dict[str, Any]:
        t = await self._template(p)
        return {"Template": css_templates.info(t.id, _body(t))}

    async def describe_templates(self, p: Obj) -> dict[str, Any]:
        delay = p.integer("IsDelayLive", default=0, choices=(0, 1), out_of_range="InvalidParameterValue")
        listed = [css_templates.info(t.id, body) for t in await self.control.templates()
                  if (body := _body(t))["IsDelayLive"] == delay]
        return {"Templates": listed}

    async def modify_template(self, p: Obj) -> dict[str, Any]:
        t = await self._template(p)
        body = css_templates.merge(p, _body(t), creating=False)
        try:
            await self.control.update_template(t.id, body["TemplateName"], json.dumps(body))
        except NotFound as exc:  # deleted meanwhile
            raise TencentError("FailedOperation.NotFound", "the template does not exist") from exc
        return {}

    async def delete_template(self, p: Obj) -> dict[str, Any]:
        template_id = p.req_int("TemplateId", lo=0, out_of_range="InvalidParameterValue")
        try:
            await self.control.delete_template(template_id)
        except NotFound as exc:
            raise TencentError("InternalError.ConfNotFound", "the template does not exist") from exc
        except Conflict as exc:
            raise TencentError("FailedOperation.ConfInUsed", "the template is used by a recording rule") from exc
        return {}

    # --- rules (§4) -------------------------------------------------------------------------------
    def _scope(self, p: Obj) -> str:
        domain = p.req_str("DomainName", max_len=253)
        if not _DOMAIN.match(domain):
            raise TencentError("InvalidParameter.DomainFormatError", "DomainName is not a domain name")
        parts = [domain_key(domain)]
        for name in ("AppName", "StreamName"):
            value = p.string(name, max_len=256) or ""
            if value and not _NAME.match(value):
                raise TencentError("InvalidParameterValue", f"{name} takes letters, digits, _, - and .")
            parts.append(value)
        return "/".join(parts)

    async def create_rule(self, p: Obj) -> dict[str, Any]:
        scope = self._scope(p)
        template_id = p.req_int("TemplateId", lo=0, out_of_range="InvalidParameterValue")
        try:
            await self.control.create_rule(scope, template_id)
        except NotFound as exc:
            raise TencentError("InvalidParameter.ConfNotFound", "the template does not exist") from exc
        except Conflict as exc:
            raise TencentError("FailedOperation.RuleAlreadyExist", "a rule for this domain, app and stream exists") from exc
        return {}

    async def describe_rules(self, p: Obj) -> dict[str, Any]:
        rules = []
        for r in await self.control.rules():
            domain, app_name, stream = r.scope.split("/", 2)
            rules.append({"CreateTime": _beijing(r.created_at), "UpdateTime": _beijing(r.updated_at),
                          "TemplateId": r.template_id, "DomainName": domain, "AppName": app_name, "StreamName": stream})
        return {"Rules": rules}

    async def delete_rule(self, p: Obj) -> dict[str, Any]:
        try:
            await self.control.delete_rule(self._scope(p))
        except NotFound as exc:
            raise TencentError("FailedOperation.NotFound", "no rule for this domain, app and stream") from exc
        return {}


# --- readers and views ----------------------------------------------------------------------------
def _name(p: Obj, field: str) -> str:
    value = p.req_str(field, max_len=256)
    if not _NAME.match(value):
        raise TencentError("InvalidParameter", f"{field} takes letters, digits, _, - and .")
    return value


def _domain(p: Obj, field: str) -> str:
    value = p.req_str(field, max_len=253)
    if not _DOMAIN.match(value):
        raise TencentError("InvalidParameter", f"{field} is not a domain name")
    return domain_key(value)  # pushes name their domain in any case


def _body(t: TemplateRecord) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(t.body)
    return body


def _task(s: ScheduleRecord) -> dict[str, Any]:
    domain, app_name, stream = stream_of_scope(s.scope)
    return {"TaskId": s.task_id, "DomainName": domain, "AppName": app_name, "StreamName": stream,
            "StartTime": s.start_s, "EndTime": s.end_s, "TemplateId": s.template_id, "Stopped": s.stopped_s}


def stream_of_scope(scope: str) -> tuple[str, str, str]:
    """A task's scope is its room id, "domain/app/stream"."""
    return stream_of(stream_room(*scope.split("/", 2)))


def _token(position: tuple[int, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(position)).encode()).decode().rstrip("=")


def _read_token(token: str) -> tuple[int, str] | None:
    if not token:
        return None
    try:
        start, task_id = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if isinstance(start, int) and isinstance(task_id, str):
            return start, task_id
    except (ValueError, TypeError, binascii.Error):
        pass
    raise TencentError("InvalidParameter", "ScrollToken is not a token of this API")


def _beijing(unix: float) -> str:
    return datetime.fromtimestamp(unix, tz=_BEIJING).strftime("%Y-%m-%d %H:%M:%S")
