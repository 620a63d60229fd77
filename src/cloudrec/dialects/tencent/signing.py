"""Server-side checks of TencentCloud API 3.0 request signatures: TC3-HMAC-SHA256 and v1 (spec B.4, B.5).

Both verifiers either return who signed (`Authenticated`) or raise `TencentError` with a common
error code (spec B.9):

| case | code |
| --- | --- |
| HTTP method other than GET / POST | `UnsupportedProtocol` |
| TC3: no `Authorization` header, wrong algorithm, unparsable Credential / SignedHeaders / Signature, SignedHeaders lacking `content-type` or `host`, a signed header absent from the request | `AuthFailure.InvalidAuthorization` |
| TC3: `Authorization: SKIP` (SDK `SkipSign`) | `AuthFailure.SignatureFailure` |
| `X-TC-Timestamp` / `Timestamp`, v1 `Nonce`, `SecretId`, `Signature` absent | `MissingParameter` |
| timestamp or nonce not a decimal integer | `InvalidParameter` |
| v1 `SignatureMethod` other than HmacSHA1 / HmacSHA256 | `InvalidParameterValue` |
| timestamp further than `window` seconds from `now` | `AuthFailure.SignatureExpire` |
| TC3 scope date differs from the UTC date of `X-TC-Timestamp` | `AuthFailure.SignatureFailure` |
| `lookup_secret` knows no key for the SecretId | `AuthFailure.SecretIdNotFound` |
| signature mismatch (also undecodable v1 Base64) | `AuthFailure.SignatureFailure` |

Checks run in that order: method, Authorization syntax, timestamp, window, scope date, SecretId,
signature. Not checked here, on purpose: the temporary-credential token (returned as `Authenticated.token`
for the caller to judge, `AuthFailure.TokenFailure`) and v1 nonce replay (needs shared state).
Messages never carry the secret key or the expected signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cloudrec.dialects.tencent.errors import TencentError

TC3_ALGORITHM = "TC3-HMAC-SHA256"
V1_METHODS = ("HmacSHA1", "HmacSHA256")
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
DEFAULT_WINDOW = 300

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_HEX64_RE = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+", re.ASCII)
_INT_RE = re.compile(r"-?\d{1,19}", re.ASCII)
_DIGEST = {"HmacSHA1": hashlib.sha1, "HmacSHA256": hashlib.sha256}

LookupSecret = Callable[[str], str | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class IncomingRequest:
    method: str
    host: str
    headers: Mapping[str, str]  # lower-cased names
    query_string: str  # raw, exactly as on the request line, without '?'
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Authenticated:
    secret_id: str
    method: str  # "TC3-HMAC-SHA256" | "HmacSHA1" | "HmacSHA256"
    service: str | None  # TC3 credential-scope service; None for v1
    token: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Tc3Authorization:
    secret_id: str
    date: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str  # lower-case hex


# ---------------------------------------------------------------------------------------------
# TC3-HMAC-SHA256


def canonical_request(
    *, method: str, query_string: str, headers: Sequence[tuple[str, str]], payload_hash: str
) -> str:
    """B.4 step 2. `headers` are (lower-case name, value) pairs in SignedHeaders order."""
    block = "".join(f"{name}:{value}\n" for name, value in headers)
    signed = ";".join(name for name, _ in headers)
    return "\n".join((method.upper(), "/", query_string, block, signed, payload_hash))


def tc3_signature(*, secret_key: str, date: str, service: str, timestamp: str, canonical: str) -> str:
    """B.4 steps 3-6: lower-case hex signature of a canonical request."""
    scope = f"{date}/{service}/tc3_request"
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    string_to_sign = f"{TC3_ALGORITHM}\n{timestamp}\n{scope}\n{digest}"
    k_date = _hmac(("TC3" + secret_key).encode("utf-8"), date)
    k_service = _hmac(k_date, service)
    k_signing = _hmac(k_service, "tc3_request")
    return hmac.new(k_signing, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def sign_tc3(
    req: IncomingRequest,
    *,
    secret_id: str,
    secret_key: str,
    service: str,
    signed_headers: Sequence[str] = ("content-type", "host"),
) -> str:
    """The `Authorization` value a client would send for `req` (its headers must hold
    `x-tc-timestamp` and every signed header; `host` falls back to `req.host`)."""
    headers = _lower_headers(req)
    timestamp = headers["x-tc-timestamp"].strip()
    date = _utc_date(int(timestamp))
    pairs = [(name, _header_value(headers, req, name)) for name in signed_headers]
    canonical = canonical_request(
        method=req.method,
        query_string=_canonical_query(req),
        headers=pairs,
        payload_hash=_payload_hash(req, headers),
    )
    signature = tc3_signature(
        secret_key=secret_key, date=date, service=service, timestamp=timestamp, canonical=canonical
    )
    return (
        f"{TC3_ALGORITHM} Credential={secret_id}/{date}/{service}/tc3_request, "
        f"SignedHeaders={';'.join(signed_headers)}, Signature={signature}"
    )


def verify_tc3(
    req: IncomingRequest, lookup_secret: LookupSecret, now: float, window: int = DEFAULT_WINDOW
) -> Authenticated:
    """Check a TC3-HMAC-SHA256 request (B.4, B.4.1); raise `TencentError` on any failure."""
    _check_method(req.method)
    headers = _lower_headers(req)
    auth = _parse_tc3_authorization(headers.get("authorization"))

    timestamp = _require_int(headers.get("x-tc-timestamp"), "X-TC-Timestamp")
    ts_text = headers["x-tc-timestamp"].strip()
    _check_window(timestamp, now, window)
    if auth.date != _utc_date(timestamp):
        raise TencentError(
            "AuthFailure.SignatureFailure", "credential scope date does not match X-TC-Timestamp"
        )

    secret_key = lookup_secret(auth.secret_id)
    if secret_key is None:
        raise TencentError("AuthFailure.SecretIdNotFound", "the SecretId is unknown or disabled")

    query = _canonical_query(req)
    payload_hash = _payload_hash(req, headers)
    for pairs in _canonical_header_variants(auth.signed_headers, headers, req):
        canonical = canonical_request(
            method=req.method, query_string=query, headers=pairs, payload_hash=payload_hash
        )
        expected = tc3_signature(
            secret_key=secret_key,
            date=auth.date,
            service=auth.service,
            timestamp=ts_text,
            canonical=canonical,
        )
        if hmac.compare_digest(expected, auth.signature):
            token = headers.get("x-tc-token")
            return Authenticated(
                secret_id=auth.secret_id,
                method=TC3_ALGORITHM,
                service=auth.service,
                token=token.strip() if token else None,
            )
    raise TencentError("AuthFailure.SignatureFailure", "the request signature does not match")


def _parse_tc3_authorization(value: str | None) -> _Tc3Authorization:
    def bad(why: str) -> TencentError:
        return TencentError("AuthFailure.InvalidAuthorization", f"Authorization header {why}")

    if value is None or not value.strip():
        raise bad("is missing")
    value = value.strip()
    if value == "SKIP":
        # SDK SkipSign: an unsigned request is never authenticated.
        raise TencentError("AuthFailure.SignatureFailure", "unsigned requests (SKIP) are not accepted")
    algorithm, _, rest = value.partition(" ")
    if algorithm != TC3_ALGORITHM:
        raise bad("does not use TC3-HMAC-SHA256")
    parts: dict[str, str] = {}
    for item in rest.split(","):
        key, eq, val = item.strip().partition("=")
        if not eq or key in parts:
            raise bad("is malformed")
        parts[key] = val.strip()
    if set(parts) != {"Credential", "SignedHeaders", "Signature"}:
        raise bad("must hold exactly Credential, SignedHeaders and Signature")

    scope = parts["Credential"].split("/")
    if len(scope) != 4 or scope[3] != "tc3_request" or not scope[0] or not scope[2]:
        raise bad("has a malformed Credential")
    secret_id, date, service, _ = scope
    if not _DATE_RE.fullmatch(date):
        raise bad("has a malformed credential date")

    names = tuple(n.strip().lower() for n in parts["SignedHeaders"].split(";"))
    if not all(_HEADER_NAME_RE.fullmatch(n) for n in names) or len(set(names)) != len(names):
        raise bad("has malformed SignedHeaders")
    if "content-type" not in names or "host" not in names:
        # Tencent requires both; signing neither would let a body be replayed to any host.
        raise bad("must sign content-type and host")

    if not _HEX64_RE.fullmatch(parts["Signature"]):
        raise bad("has a malformed Signature")
    return _Tc3Authorization(
        secret_id=secret_id,
        date=date,
        service=service,
        signed_headers=names,
        signature=parts["Signature"].lower(),
    )


def _canonical_header_variants(
    names: Sequence[str], headers: Mapping[str, str], req: IncomingRequest
) -> list[list[tuple[str, str]]]:
    """What the client may have signed: the literal values (SDKs), the same with the port cut
    from `host` (Node signs the bare hostname), and both lower-cased (Tencent's docs lower-case
    values, e.g. `x-tc-action:describeinstances`). At most four HMACs per request."""
    literal: list[tuple[str, str]] = []
    for name in names:
        if name != "host" and name not in headers:
            raise TencentError(
                "AuthFailure.InvalidAuthorization", f"signed header {name!r} is absent from the request"
            )
        literal.append((name, _header_value(headers, req, name)))
    host = dict(literal)["host"]
    bare = _strip_port(host)
    candidates = [literal]
    if bare != host:
        candidates.append([(n, bare if n == "host" else v) for n, v in literal])
    for pairs in list(candidates):
        lowered = [(n, v.lower()) for n, v in pairs]
        if lowered != pairs:
            candidates.append(lowered)
    return candidates


def _header_value(headers: Mapping[str, str], req: IncomingRequest, name: str) -> str:
    if name == "host":
        return headers.get("host", req.host).strip()
    return headers[name].strip()


def _strip_port(host: str) -> str:
    if host.startswith("["):  # IPv6 literal: "[::1]:8080"
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() and ":" not in name else host


def _canonical_query(req: IncomingRequest) -> str:
    # SDKs sign an empty query for POST and the exact sent query for GET (Java does not sort).
    return req.query_string if req.method.upper() == "GET" else ""


def _payload_hash(req: IncomingRequest, headers: Mapping[str, str]) -> str:
    if headers.get("x-tc-content-sha256", "").strip() == UNSIGNED_PAYLOAD:
        payload = UNSIGNED_PAYLOAD.encode("ascii")
    elif req.method.upper() == "GET":
        payload = b""
    else:
        payload = req.body
    return hashlib.sha256(payload).hexdigest()


def _lower_headers(req: IncomingRequest) -> dict[str, str]:
    return {k.lower(): v for k, v in req.headers.items()}


# ---------------------------------------------------------------------------------------------
# v1: HmacSHA1 / HmacSHA256


def v1_string_to_sign(method: str, host: str, params: Mapping[str, str], *, dotted: bool = False) -> str:
    """B.5: `<METHOD><host>/?k=v&…` over every parameter but `Signature`, sorted, not URL-encoded.
    `dotted` reproduces the Python SDK, which turns `_` into `.` in names."""
    items: dict[str, str] = {}
    for name, value in params.items():
        if name == "Signature":
            continue
        items[name.replace("_", ".") if dotted else name] = value
    joined = "&".join(f"{k}={items[k]}" for k in sorted(items))
    return f"{method.upper()}{host}/?{joined}"


def sign_v1(method: str, host: str, params: Mapping[str, str], secret_key: str) -> str:
    """Base64 v1 signature; the algorithm comes from `SignatureMethod` (HmacSHA1 when absent)."""
    digest = _DIGEST[params.get("SignatureMethod", "HmacSHA1")]
    text = v1_string_to_sign(method, host, params).encode("utf-8")
    mac = hmac.new(secret_key.encode("utf-8"), text, digest)
    return base64.b64encode(mac.digest()).decode("ascii")


def verify_v1(
    method: str,
    host: str,
    params: Mapping[str, str],
    lookup_secret: LookupSecret,
    now: float,
    window: int = DEFAULT_WINDOW,
) -> Authenticated:
    """Check a v1-signed request (B.5). `params` are the URL-decoded query/form parameters,
    common ones included; `host` is the Host header value."""
    _check_method(method)
    secret_id = _require(params, "SecretId")
    signature_text = _require(params, "Signature")
    sign_method = params.get("SignatureMethod", "HmacSHA1")
    if sign_method not in _DIGEST:
        raise TencentError("InvalidParameterValue", "SignatureMethod must be HmacSHA1 or HmacSHA256")
    timestamp = _require_int(params.get("Timestamp"), "Timestamp")
    _require_int(params.get("Nonce"), "Nonce")
    _check_window(timestamp, now, window)

    secret_key = lookup_secret(secret_id)
    if secret_key is None:
        raise TencentError("AuthFailure.SecretIdNotFound", "the SecretId is unknown or disabled")

    try:
        # A '+' left unescaped in a query string arrives as a space.
        given = base64.b64decode(signature_text.replace(" ", "+"), validate=True)
    except (binascii.Error, ValueError):
        raise TencentError("AuthFailure.SignatureFailure", "the request signature does not match") from None

    key = secret_key.encode("utf-8")
    hosts = dict.fromkeys((host.strip(), _strip_port(host.strip())))
    spellings = (False, True) if any("_" in name for name in params) else (False,)
    for candidate_host in hosts:
        for dotted in spellings:
            text = v1_string_to_sign(method, candidate_host, params, dotted=dotted)
            expected = hmac.new(key, text.encode("utf-8"), _DIGEST[sign_method]).digest()
            if hmac.compare_digest(expected, given):
                return Authenticated(
                    secret_id=secret_id,
                    method=sign_method,
                    service=None,
                    token=params.get("Token") or None,
                )
    raise TencentError("AuthFailure.SignatureFailure", "the request signature does not match")


# ---------------------------------------------------------------------------------------------
# shared


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def _utc_date(timestamp: int) -> str:
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError):
        raise TencentError("InvalidParameter", "timestamp is out of range") from None


def _check_method(method: str) -> None:
    if method.upper() not in ("GET", "POST"):
        raise TencentError("UnsupportedProtocol", "only GET and POST are supported")


def _require(params: Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise TencentError("MissingParameter", f"the request is missing a required parameter `{name}`")
    return value


def _require_int(value: str | None, name: str) -> int:
    if value is None or not value.strip():
        raise TencentError("MissingParameter", f"the request is missing a required parameter `{name}`")
    if not _INT_RE.fullmatch(value.strip()):
        raise TencentError("InvalidParameter", f"`{name}` must be a decimal integer")
    return int(value.strip())


def _check_window(timestamp: int, now: float, window: int) -> None:
    if abs(now - timestamp) > window:
        raise TencentError(
            "AuthFailure.SignatureExpire",
            f"the request timestamp differs from server time by more than {window} seconds",
        )
