"""Tencent CSS push admission (spec §7): which CSS stream a push feeds and whether its URL is signed.

    rtmp://<push-domain>/<AppName>/<StreamName>?txSecret=<hex>&txTime=<hex expiry>[&…]

`txSecret` = MD5(key + StreamName + txTime) in hex, with `txTime` exactly as it appears in the URL;
either the domain's primary or its backup key validates. The URL is refused once now ≥ txTime (a push
admitted before stays). A domain without a key has push authentication off. The domain is the host
the client connected to (the RTMP tcUrl's); a host matching no configured domain goes to the
`default` domain, and without one the push is refused.

The pushed stream becomes the CSS room of `css_rooms.stream_room`, its publisher the stream name.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cloudrec.core.rooms import RoomKey
from cloudrec.dialects.tencent.css_rooms import domain_key, stream_room

MAX_NAME = 256  # AppName / StreamName length we accept (Tencent documents none; this bounds file names)
MAX_TX_TIME_DIGITS = 16  # a 64-bit expiry


@dataclass(frozen=True, slots=True, kw_only=True)
class PushDomain:
    """A configured push domain, as this module needs it (from `[[css.domains]]`)."""

    name: str  # lower case
    key: str = field(default="", repr=False)  # "" = push authentication off
    backup_key: str = field(default="", repr=False)
    default: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CssPush:
    """An admitted push: the stream's room, its publisher and what callbacks may report of the URL."""

    room: RoomKey
    user_id: str  # the stream name
    domain: str
    app_name: str
    stream_name: str
    stream_param: str  # the push URL's query string (Tencent's `stream_param`)


class PushRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def tx_time(expiry_unix: int) -> str:
    """The `txTime` of a URL valid until `expiry_unix` (upper-case hex, as Tencent's samples write it)."""
    return f"{expiry_unix:X}"


def tx_secret(key: str, stream_name: str, tx_time_text: str) -> str:
    """`txSecret` for `stream_name` signed with `key`; `tx_time_text` exactly as in the URL."""
    return hashlib.md5((key + stream_name + tx_time_text).encode()).hexdigest()


def push_query(key: str, stream_name: str, expiry_unix: int) -> str:
    """The `txSecret=…&txTime=…` query a push URL needs (for clients, tests and the docs)."""
    t = tx_time(expiry_unix)
    return f"txSecret={tx_secret(key, stream_name, t)}&txTime={t}"


def _safe_name(text: str, what: str, *, slash: bool) -> str:
    if not text or len(text) > MAX_NAME or text in (".", ".."):
        raise PushRefused(f"{what} must be 1–{MAX_NAME} characters")
    if any(ord(c) < 0x20 or c in "\\\x7f" for c in text) or (not slash and "/" in text):
        raise PushRefused(f"{what} has characters a stream name cannot hold")
    if slash and any(part in ("", ".", "..") for part in text.split("/")):
        raise PushRefused(f"{what} has an empty or relative path component")
    return text


class CssPushAuth:
    """Admits CSS pushes for the configured domains (see the module docstring)."""

    def __init__(self, domains: Sequence[PushDomain], *, clock: Callable[[], float] = time.time) -> None:
        self.domains = {d.name: d for d in domains}
        self.default = next((d for d in domains if d.default), None)
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return bool(self.domains)

    def domain_for(self, host: str) -> PushDomain | None:
        """The domain a client reached through `host` (the tcUrl host; port and case do not matter)."""
        return self.domains.get(domain_key(host)) or self.default

    def admit(self, *, host: str, app_name: str, stream_name: str, query: Mapping[str, str]) -> CssPush:
        """Check a push of `<AppName>/<StreamName>?<query>` that reached `host`; raises PushRefused."""
        domain = self.domain_for(host)
        if domain is None:
            raise PushRefused("no CSS push domain for this host and no default domain")
        _safe_name(app_name, "AppName", slash=False)
        _safe_name(stream_name, "StreamName", slash=True)
        if domain.key:
            self._check_signature(domain, stream_name, query)
        return CssPush(room=stream_room(domain.name, app_name, stream_name), user_id=stream_name, domain=domain.name,
                       app_name=app_name, stream_name=stream_name,
                       stream_param=urllib.parse.urlencode(dict(query), quote_via=urllib.parse.quote))

    def _check_signature(self, domain: PushDomain, stream_name: str, query: Mapping[str, str]) -> None:
        secret, expiry = query.get("txSecret", ""), query.get("txTime", "")
        if not secret or not expiry:
            raise PushRefused("txSecret and txTime are required")
        if len(expiry) > MAX_TX_TIME_DIGITS or any(c not in "0123456789abcdefABCDEF" for c in expiry):
            raise PushRefused("txTime must be a hexadecimal Unix time")
        if self.clock() >= int(expiry, 16):
            raise PushRefused("the push URL has expired (txTime)")
        given = secret.lower().encode()
        keys = [k for k in (domain.key, domain.backup_key) if k]
        # Every key is tried (no early exit): the answer's timing says nothing about which one matched.
        matched = [hmac.compare_digest(tx_secret(k, stream_name, expiry).encode(), given) for k in keys]
        if not any(matched):
            raise PushRefused("txSecret does not match")
