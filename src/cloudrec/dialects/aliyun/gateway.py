"""Alibaba Cloud RPC front door (spec §2–§4, §11): verify the signature, route the action, wrap replies.

Two signing schemes reach `/`: V3 (`Authorization: ACS3-HMAC-SHA256 …`, action in `x-acs-action`,
the default of current SDKs) and RPC signature 1.0 (`Signature`, `SignatureNonce`, `Timestamp` …
in the query; Tea SDKs with `signature_algorithm="v2"` and every legacy SDK). Both: ±15 minutes of
clock skew, and a nonce is accepted once within that window (`use_nonce`, kept in the store so that
every node of a cluster agrees).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from cloudrec.control.apps import AppInfo, app_named
from cloudrec.control.limits import RateLimiter, caller
from cloudrec.dialects.aliyun import signing
from cloudrec.dialects.aliyun.errors import AliyunError, envelope
from cloudrec.dialects.aliyun.params import decode_form, to_dict

logger = logging.getLogger(__name__)

VERSION = "2016-11-01"
WINDOW_SECONDS = 15 * 60  # Timestamp / x-acs-date skew, and how long a nonce stays used (§4.4)
MAX_QUERY_BYTES = 64 * 1024
CONTENT_TYPE = "application/json;charset=utf-8"
# Common RPC parameters: signed, but not business input.
RPC_COMMON = frozenset({"Action", "Version", "Format", "Timestamp", "SignatureNonce", "SignatureMethod",
                        "SignatureVersion", "AccessKeyId", "SignatureType", "RegionId", "SecurityToken", "Signature"})
# What a V3 signature must cover, whatever else the client chose to sign.
V3_REQUIRED = ("host", "x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256")

class UseNonce(Protocol):
    def __call__(self, nonce: str, *, now: float, expires_at: float) -> Awaitable[bool]:
        """True if the scoped nonce was new; it is then taken until `expires_at` (unix s)."""
        ...


class Actions(Protocol):
    @property
    def actions(self) -> Mapping[str, Callable[[dict[str, str], frozenset[int] | None], Awaitable[dict[str, Any]]]]:
        """handler(business parameters, the apps the caller's AccessKey may use (None: every app))."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    status: int
    body: bytes
    content_type: str = CONTENT_TYPE
    headers: Mapping[str, str] = field(default_factory=dict)


def is_aliyun_request(headers: Mapping[str, str], query_string: str) -> bool:
    """Alibaba-shaped: an `x-acs-action` header, an ACS3 Authorization, or an RPC-signed query."""
    if "x-acs-action" in headers or headers.get("authorization", "").startswith("ACS3-"):
        return True
    if "Signature" not in query_string or "AccessKeyId" not in query_string:
        return False
    names = {k for k, _ in decode_form(query_string)} if len(query_string) <= MAX_QUERY_BYTES else set()
    return {"AccessKeyId", "Signature"} <= names


class AliyunGateway:
    def __init__(
        self,
        *,
        artc: Actions,
        lookup_secret: Callable[[str], str | None],
        use_nonce: UseNonce,
        rate_limiter: RateLimiter,
        apps: Mapping[int, AppInfo] | None = None,
        key_apps: Callable[[str], frozenset[int] | None] = lambda _key: None,
        max_body_bytes: int = 1 << 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.artc = artc
        self.lookup_secret = lookup_secret
        self.use_nonce = use_nonce
        self.rate_limiter = rate_limiter
        self.apps = apps or {}
        self.key_apps = key_apps
        self.max_body = max_body_bytes
        self.clock = clock

    async def handle(self, *, method: str, host: str, path: str = "/", headers: Mapping[str, str], query_string: str,
                     body: bytes, too_large: bool = False) -> Reply:
        request_id = str(uuid.uuid4()).upper()
        action = headers.get("x-acs-action", "")
        try:
            if too_large or len(body) > self.max_body or len(query_string) > MAX_QUERY_BYTES:
                raise AliyunError("RequestTooLarge", "the request is too large", 413)
            action, result = await self._handle(method.upper(), host, path, headers, query_string, body)
            status, payload = 200, {"RequestId": request_id, **result}
        except AliyunError as exc:
            status, payload = exc.status, envelope(exc, request_id=request_id, host=host)
            logger.info("api error", extra={"action": action, "code": exc.code, "request_id": request_id})
        except Exception:
            logger.exception("api internal error", extra={"action": action, "request_id": request_id})
            err = AliyunError("InternalError", "The request processing has failed due to some unknown error.", 500)
            status, payload = 500, envelope(err, request_id=request_id, host=host)
        return Reply(status=status, body=json.dumps(payload, ensure_ascii=False).encode(),
                     headers={"x-acs-request-id": request_id})

    async def _handle(self, method: str, host: str, path: str, headers: Mapping[str, str], query_string: str,
                      body: bytes) -> tuple[str, dict[str, Any]]:
        if method not in ("GET", "POST"):
            raise AliyunError("UnsupportedHTTPMethod", "only GET and POST are supported", 400)
        query = decode_form(query_string)
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        form = decode_form(body.decode("utf-8", "replace")) if ctype == "application/x-www-form-urlencoded" and body else []
        now = self.clock()
        auth = headers.get("authorization", "")
        if auth.startswith("ACS3-"):
            access_key, nonce, stamp = self._verify_v3(method, host, path, headers, query, body, auth, now)
            params = to_dict(query + form)
            action, version = headers.get("x-acs-action", ""), headers.get("x-acs-version", "")
        else:
            params = to_dict(query + form)
            if "Signature" not in params:
                raise AliyunError("IncompleteSignature", "The request signature does not conform to Aliyun standards.", 400)
            access_key, nonce, stamp = self._verify_rpc(method, query + form, params, now)
            # From the signed parameters only: the x-acs-* headers are not signed in RPC mode.
            action, version = params.get("Action", ""), params.get("Version", "")
            params = {k: v for k, v in params.items() if k not in RPC_COMMON}
        # Only signed requests reach the nonce table, so nobody can fill it without a key.
        if not await self.use_nonce(f"{access_key}:{nonce}", now=now, expires_at=max(now, stamp) + WINDOW_SECONDS):
            raise AliyunError("SignatureNonceUsed", "Specified signature nonce was used already.", 400)
        if not action:
            raise AliyunError("MissingParameter", "The input parameter \"Action\" that is mandatory for processing "
                              "this request is not supplied.", 400)
        if version != VERSION:
            raise AliyunError("InvalidVersion", f"Specified parameter Version {version!r} is not valid.", 400)
        handler = self.artc.actions.get(action)
        if handler is None:
            raise AliyunError("InvalidAction.NotFound", "Specified api is not found, please check your url and method.", 404)
        key, rate = caller(app_named(self.apps, params.get("AppId", "")), access_key)
        if not self.rate_limiter.allow((key, action), rate):
            raise AliyunError("Throttling.User", "Request was denied due to user flow control.", 400)
        return action, await handler(params, self.key_apps(access_key))

    def _secret(self, access_key: str) -> str:
        if not access_key:
            raise AliyunError("MissingAccessKeyId", "AccessKeyId is mandatory for this action.", 400)
        secret = self.lookup_secret(access_key)
        if secret is None:
            raise AliyunError("InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404)
        return secret

    def _verify_v3(self, method: str, host: str, path: str, headers: Mapping[str, str], query: list[tuple[str, str]],
                   body: bytes, auth: str, now: float) -> tuple[str, str, float]:
        parsed = signing.parse_authorization(auth)
        if parsed is None:
            raise AliyunError("IncompleteSignature", "The request signature does not conform to Aliyun standards.", 400)
        secret = self._secret(parsed.access_key_id)
        if parsed.algorithm != signing.ACS3:
            raise AliyunError("SignatureDoesNotMatch", f"Specified signature algorithm {parsed.algorithm} is not supported.", 400)
        unsigned = [h for h in V3_REQUIRED if h not in parsed.signed_headers]
        if unsigned:
            raise AliyunError("IncompleteSignature", f"The signed headers must include {', '.join(unsigned)}.", 400)
        stamp = self._timestamp(headers.get("x-acs-date", ""), now)
        payload_hash = hashlib.sha256(body).hexdigest()
        if headers.get("x-acs-content-sha256", "").lower() != payload_hash:
            raise AliyunError("SignatureDoesNotMatch", "x-acs-content-sha256 does not match the request body.", 400)
        hdrs = {**headers, "host": host}
        canonical = signing.acs3_canonical_request(method, path, query, hdrs, parsed.signed_headers,
                                                   headers.get("x-acs-content-sha256", ""))
        if not hmac.compare_digest(signing.acs3_signature(secret, canonical), parsed.signature):
            raise AliyunError("SignatureDoesNotMatch", "Specified signature does not match our calculation. "
                              f"server StringToSign is [{signing.acs3_string_to_sign(canonical)}]", 400)
        nonce = headers.get("x-acs-signature-nonce", "")
        if not nonce:
            raise AliyunError("MissingSignatureNonce", "SignatureNonce is mandatory for this action.", 400)
        return parsed.access_key_id, nonce, stamp

    def _verify_rpc(self, method: str, pairs: list[tuple[str, str]], params: Mapping[str, str],
                    now: float) -> tuple[str, str, float]:
        secret = self._secret(params.get("AccessKeyId", ""))
        if params.get("SignatureMethod", "HMAC-SHA1") != "HMAC-SHA1" or params.get("SignatureVersion", "1.0") != "1.0":
            raise AliyunError("InvalidParameter.SignatureMethod", "only HMAC-SHA1 signature version 1.0 is supported", 400)
        if "Timestamp" not in params:
            raise AliyunError("MissingTimestamp", "Timestamp is mandatory for this action.", 400)
        stamp = self._timestamp(params["Timestamp"], now)
        want = signing.rpc_signature(secret, method, pairs)
        if not hmac.compare_digest(want, params.get("Signature", "")):
            raise AliyunError("SignatureDoesNotMatch", "Specified signature is not matched with our calculation. "
                              f"server string to sign is:{signing.rpc_string_to_sign(method, pairs)}", 400)
        nonce = params.get("SignatureNonce", "")
        if not nonce:
            raise AliyunError("MissingSignatureNonce", "SignatureNonce is mandatory for this action.", 400)
        return params["AccessKeyId"], nonce, stamp

    @staticmethod
    def _timestamp(text: str, now: float) -> float:
        for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ"):
            try:
                stamp = datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp()
                break
            except ValueError:
                continue
        else:
            raise AliyunError("IllegalTimestamp", "The input parameter \"Timestamp\" that is mandatory for processing "
                              "this request is not supplied.", 400)
        if abs(now - stamp) > WINDOW_SECONDS:
            raise AliyunError("InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.", 400)
        return stamp
