"""TencentCloud API 3.0 front door: verify the signature, route by version and action, wrap replies.

Every reply is HTTP 200 with `Content-Type: application/json` exactly: the SDKs only read an error
code out of that shape (spec B.8).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from cloudrec.control.apps import AppInfo, app_named
from cloudrec.control.limits import RateLimiter, caller
from cloudrec.core.ids import new_request_id
from cloudrec.dialects.tencent import css, trtc
from cloudrec.dialects.tencent.errors import TencentError
from cloudrec.dialects.tencent.fields import Obj
from cloudrec.dialects.tencent.params import COMMON_PARAMS, unflatten
from cloudrec.dialects.tencent.signing import IncomingRequest, verify_tc3, verify_v1

logger = logging.getLogger(__name__)

MAX_QUERY_BYTES = 32 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"


def _required_region(regions: frozenset[str], actions: frozenset[str] | None = None) -> Callable[[str, str], None]:
    """A region rule: one of `regions` is required (by `actions` only, if given; the others take any or none)."""
    def check(action: str, region: str) -> None:
        if actions is not None and action not in actions:
            return
        if not region:
            raise TencentError("MissingParameter", "missing parameter Region")
        if region not in regions:
            raise TencentError("UnsupportedRegion", f"region {region} is not supported")

    return check


class TencentGateway:
    def __init__(
        self,
        *,
        trtc_actions: trtc.TrtcActions,
        css_actions: css.CssActions | None = None,
        lookup_secret: Callable[[str], str | None],
        rate_limiter: RateLimiter,
        apps: Mapping[int, AppInfo] | None = None,
        window_seconds: int = 300,
        max_body_bytes: int = 1 << 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Services by version; each checks the region its own way (TRTC: always one of its regions).
        self.services: dict[str, trtc.TrtcActions | css.CssActions] = {trtc.VERSION: trtc_actions}
        self.region_rules: dict[str, Callable[[str, str], None]] = {trtc.VERSION: _required_region(trtc.REGIONS)}
        self.action_rates: dict[str, Mapping[str, float]] = {}  # documented per-action limits (no app to key on)
        if css_actions is not None:
            self.services[css.VERSION] = css_actions
            self.region_rules[css.VERSION] = _required_region(css.TASK_REGIONS, css.REGIONAL_ACTIONS)
            self.action_rates[css.VERSION] = css.RATES
        self.lookup_secret = lookup_secret
        self.rate_limiter = rate_limiter
        self.apps = apps or {}
        self.window = window_seconds
        self.max_body = max_body_bytes
        self.clock = clock

    async def handle(
        self, *, method: str, host: str, headers: Mapping[str, str], query_string: str, body: bytes, too_large: bool = False
    ) -> Reply:
        request_id = new_request_id()
        action = headers.get("x-tc-action", "")
        try:
            if too_large:
                raise TencentError("RequestSizeLimitExceeded", "request is too large")
            action, result = await self._handle(method, host, headers, query_string, body)
            payload: dict[str, Any] = {**result, "RequestId": request_id}
        except TencentError as exc:
            payload = {"Error": {"Code": exc.code, "Message": exc.message}, "RequestId": request_id}
            logger.info("api error", extra={"action": action, "code": exc.code, "request_id": request_id})
        except Exception:  # never a 5xx: the SDKs could not read it
            logger.exception("api internal error", extra={"action": action, "request_id": request_id})
            payload = {"Error": {"Code": "InternalError", "Message": "internal error"}, "RequestId": request_id}
        return Reply(status=200, body=json.dumps({"Response": payload}, ensure_ascii=False).encode())

    async def _handle(self, method: str, host: str, headers: Mapping[str, str], query_string: str, body: bytes) -> tuple[str, dict[str, Any]]:
        method = method.upper()
        if method not in ("GET", "POST"):
            raise TencentError("UnsupportedProtocol", "only GET and POST are supported")
        if len(body) > self.max_body or len(query_string) > MAX_QUERY_BYTES:
            raise TencentError("RequestSizeLimitExceeded", "request is too large")
        now = self.clock()
        auth = headers.get("authorization", "")
        if auth or "x-tc-action" in headers:
            req = IncomingRequest(method=method, host=host, headers=headers, query_string=query_string, body=body)
            who = verify_tc3(req, self.lookup_secret, now, self.window)
            action = headers.get("x-tc-action", "")
            version = headers.get("x-tc-version", "")
            region = headers.get("x-tc-region", "")
            params = self._tc3_params(method, headers, query_string, body)
        else:
            raw = self._form(query_string if method == "GET" else body.decode("utf-8", "replace"))
            if method == "POST" and query_string:
                raw = {**self._form(query_string), **raw}
            if "Signature" not in raw:
                raise TencentError("AuthFailure.InvalidAuthorization", "request is not signed")
            who = verify_v1(method, host, raw, self.lookup_secret, now, self.window)
            action, version, region = raw.get("Action", ""), raw.get("Version", ""), raw.get("Region", "")
            params = unflatten({k: v for k, v in raw.items() if k not in COMMON_PARAMS})
        if not action:
            raise TencentError("MissingParameter", "missing parameter Action")
        if not version:
            raise TencentError("MissingParameter", "missing parameter Version")
        service = self.services.get(version)
        if service is None:
            raise TencentError("NoSuchVersion", f"version {version} does not exist")
        if action not in service.actions:
            raise TencentError("InvalidAction", f"action {action} does not exist")
        self.region_rules[version](action, region)
        key, rate = caller(app_named(self.apps, str(params.get("SdkAppId", ""))), who.secret_id,
                           self.action_rates.get(version, {}).get(action))
        if not self.rate_limiter.allow((key, action), rate):
            raise TencentError("RequestLimitExceeded", "request rate limit exceeded")
        return action, await service.call(action, Obj(params))

    @staticmethod
    def _form(text: str) -> dict[str, str]:
        try:
            return dict(parse_qsl(text, keep_blank_values=True, strict_parsing=False))
        except ValueError as exc:
            raise TencentError("InvalidParameter", "malformed form parameters") from exc

    def _tc3_params(self, method: str, headers: Mapping[str, str], query_string: str, body: bytes) -> dict[str, Any]:
        if method == "GET":
            return unflatten(self._form(query_string))
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/x-www-form-urlencoded":
            return unflatten(self._form(body.decode("utf-8", "replace")))
        if ctype not in ("application/json", ""):
            raise TencentError("InvalidParameter", f"unsupported Content-Type {ctype}")
        if not body.strip():
            return {}
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TencentError("InvalidParameter", "request body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise TencentError("InvalidParameter", "request body must be a JSON object")
        return data
