"""Alibaba Cloud request signatures, byte-exact (spec §4): RPC HMAC-SHA1 1.0 and V3 ACS3-HMAC-SHA256.

Both canonicalize with strict RFC 3986 percent-encoding of the *decoded* values (the Python SDK sends
spaces as `+` on the wire, the canonical form has `%20`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

ACS3 = "ACS3-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_AUTH = re.compile(r"^(?P<alg>ACS3-[A-Z0-9-]+)\s+Credential=(?P<cred>[^,\s]+),\s*SignedHeaders=(?P<sh>[^,\s]*),"
                   r"\s*Signature=(?P<sig>[0-9a-fA-F]+)\s*$")


def percent_encode(text: str) -> str:
    """RFC 3986: unreserved characters as they are, every other UTF-8 byte as %XX (uppercase)."""
    return quote(text, safe="~")


# --- RPC, SignatureVersion 1.0 -----------------------------------------------------------------


def rpc_string_to_sign(method: str, params: Iterable[tuple[str, str]]) -> str:
    """`POST&%2F&<enc(sorted name=value pairs)>`; `Signature` itself is left out, empty values kept."""
    pairs = sorted((k, v) for k, v in params if k != "Signature")
    canonical = "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in pairs)
    return f"{method.upper()}&{percent_encode('/')}&{percent_encode(canonical)}"


def rpc_signature(secret: str, method: str, params: Iterable[tuple[str, str]]) -> str:
    digest = hmac.new(f"{secret}&".encode(), rpc_string_to_sign(method, params).encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


# --- V3, ACS3-HMAC-SHA256 ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Authorization:
    algorithm: str
    access_key_id: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> Authorization | None:
    """`ACS3-HMAC-SHA256 Credential=<AK>,SignedHeaders=<a;b>,Signature=<hex>`, or None if malformed."""
    m = _AUTH.match(value.strip())
    if m is None:
        return None
    headers = tuple(h.strip().lower() for h in m.group("sh").split(";") if h.strip())
    return Authorization(algorithm=m.group("alg"), access_key_id=m.group("cred"), signed_headers=headers,
                         signature=m.group("sig").lower())


def acs3_canonical_request(method: str, path: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str],
                           signed_headers: Sequence[str], hashed_payload: str) -> str:
    """`headers` have lowercase names; only those in `signed_headers` (the client's own list) count."""
    canonical_query = "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(query))
    names = sorted(signed_headers)
    canonical_headers = "".join(f"{n}:{headers.get(n, '').strip()}\n" for n in names)
    uri = quote(path or "/", safe="/~")
    return "\n".join([method.upper(), uri, canonical_query, canonical_headers, ";".join(names), hashed_payload])


def acs3_signature(secret: str, canonical_request: str) -> str:
    return hmac.new(secret.encode(), acs3_string_to_sign(canonical_request).encode(), hashlib.sha256).hexdigest()


def acs3_string_to_sign(canonical_request: str) -> str:
    return f"{ACS3}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
