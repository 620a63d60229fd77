"""UserSig v2 and PrivateMapKey (spec part C): make them (demo, tests) and verify them.

A sig is `base64(zlib(json))` with `+/=` swapped for `*-_`; the JSON carries the claims and
`TLS.sig`, an HMAC-SHA256 over a fixed text of the claims keyed with the app's secret key.
A PrivateMapKey is the same container with a binary user buffer (`TLS.userbuf`, C.4).

Every failure of a verifier is a `UserSigError` whose `reason` is safe to log (no key, no sig).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any

DEFAULT_EXPIRE = 180 * 86400
# Real sigs inflate to ~200 bytes; the caps bound work on hostile input.
MAX_SIG_CHARS = 8192
MAX_JSON_BYTES = 8192
_VERSION = "2.0"


class UserSigError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class UserSigClaims:
    sdkappid: int
    identifier: str
    time: int
    expire: int
    userbuf: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivateMapKey:
    user_id: str
    sdkappid: int
    room_id: int
    str_room_id: str | None
    expires_at: int
    privileges: int


# ---------------------------------------------------------------------------------------------
# making


def make_usersig(
    sdkappid: int,
    key: str,
    identifier: str,
    expire: int = DEFAULT_EXPIRE,
    now: int | None = None,
    userbuf: bytes | None = None,
) -> str:
    issued = int(time.time()) if now is None else now
    userbuf_b64 = None if userbuf is None else base64.b64encode(userbuf).decode("ascii")
    doc: dict[str, Any] = {
        "TLS.ver": _VERSION,
        "TLS.identifier": identifier,
        "TLS.sdkappid": sdkappid,
        "TLS.expire": expire,
        "TLS.time": issued,
    }
    if userbuf_b64 is not None:
        doc["TLS.userbuf"] = userbuf_b64
    mac = _mac(key, _content(identifier, sdkappid, issued, expire, userbuf_b64))
    doc["TLS.sig"] = base64.b64encode(mac).decode("ascii")
    packed = base64.b64encode(zlib.compress(json.dumps(doc).encode("utf-8"))).decode("ascii")
    return packed.translate(_ENCODE)


def make_private_map_key(
    *,
    sdkappid: int,
    key: str,
    user_id: str,
    room_id: int = 0,
    str_room_id: str | None = None,
    expire: int = DEFAULT_EXPIRE,
    privileges: int = 255,
    now: int | None = None,
) -> str:
    """Version 1 (string room) when `str_room_id` is given, else version 0 (numeric room)."""
    issued = int(time.time()) if now is None else now
    user = user_id.encode("utf-8")
    buf = struct.pack(">BH", 0 if str_room_id is None else 1, len(user)) + user
    buf += struct.pack(">IIIII", sdkappid, room_id, issued + expire, privileges, 0)
    if str_room_id is not None:
        room = str_room_id.encode("utf-8")
        buf += struct.pack(">H", len(room)) + room
    return make_usersig(sdkappid, key, user_id, expire, now=issued, userbuf=buf)


# ---------------------------------------------------------------------------------------------
# verifying


def verify_usersig(sig: str, *, sdkappid: int, key: str, identifier: str, now: float) -> UserSigClaims:
    """C.2: accept a plain UserSig (no user buffer) for this app and user."""
    claims = _verify(sig, sdkappid=sdkappid, key=key, identifier=identifier, now=now)
    if claims.userbuf is not None:
        raise UserSigError("a UserSig must not carry a user buffer")
    return claims


def verify_private_map_key(
    sig: str, *, sdkappid: int, key: str, identifier: str, now: float
) -> PrivateMapKey:
    """C.4: accept a PrivateMapKey for this app and user; expiry is checked in both the
    container and the buffer."""
    claims = _verify(sig, sdkappid=sdkappid, key=key, identifier=identifier, now=now)
    if claims.userbuf is None:
        raise UserSigError("a PrivateMapKey must carry a user buffer")
    pmk = _parse_userbuf(claims.userbuf)
    if pmk.user_id != identifier:
        raise UserSigError("user buffer names another user")
    if pmk.sdkappid != sdkappid:
        raise UserSigError("user buffer names another SdkAppId")
    if now > pmk.expires_at:
        raise UserSigError("PrivateMapKey expired")
    return pmk


def _verify(sig: str, *, sdkappid: int, key: str, identifier: str, now: float) -> UserSigClaims:
    doc = _decode(sig)
    if doc.get("TLS.ver") != _VERSION:
        raise UserSigError("unsupported TLS.ver")
    got_identifier = _field(doc, "TLS.identifier", str)
    got_sdkappid = _field(doc, "TLS.sdkappid", int)
    issued = _field(doc, "TLS.time", int)
    expire = _field(doc, "TLS.expire", int)
    sig_b64 = _field(doc, "TLS.sig", str)
    userbuf_b64 = doc.get("TLS.userbuf")
    if userbuf_b64 is not None and not isinstance(userbuf_b64, str):
        raise UserSigError("TLS.userbuf has the wrong type")

    if got_sdkappid != sdkappid:
        raise UserSigError("sig was issued for another SdkAppId")
    if got_identifier != identifier:
        raise UserSigError("sig was issued for another user")

    given = _b64(sig_b64, "TLS.sig")
    # Decoded before signing so a non-ASCII value is refused here, not by the UTF-8 encoder.
    userbuf = None if userbuf_b64 is None else _b64(userbuf_b64, "TLS.userbuf")
    # The text is rebuilt from the parsed fields exactly as the generators print them.
    expected = _mac(key, _content(got_identifier, got_sdkappid, issued, expire, userbuf_b64))
    if not hmac.compare_digest(expected, given):
        raise UserSigError("signature mismatch")
    if now > issued + expire:
        raise UserSigError("sig expired")
    return UserSigClaims(
        sdkappid=got_sdkappid,
        identifier=got_identifier,
        time=issued,
        expire=expire,
        userbuf=userbuf,
    )


def _decode(sig: str) -> dict[str, Any]:
    if not isinstance(sig, str) or not sig:
        raise UserSigError("sig is empty or not text")
    if len(sig) > MAX_SIG_CHARS:
        raise UserSigError("sig is too long")
    compressed = _b64(sig.translate(_DECODE), "sig")
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(compressed, MAX_JSON_BYTES + 1)
    except zlib.error:
        raise UserSigError("sig is not a zlib stream") from None
    if len(raw) > MAX_JSON_BYTES:
        raise UserSigError("sig inflates beyond the size limit")
    if not inflater.eof or inflater.unused_data:
        raise UserSigError("sig zlib stream is truncated or followed by garbage")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise UserSigError("sig does not hold JSON") from None
    if not isinstance(doc, dict):
        raise UserSigError("sig does not hold a JSON object")
    return doc


def _parse_userbuf(buf: bytes) -> PrivateMapKey:
    try:
        version, user_len = struct.unpack_from(">BH", buf, 0)
        if version not in (0, 1):
            raise UserSigError("unknown user buffer version")
        user = buf[3 : 3 + user_len]
        if len(user) != user_len:
            raise UserSigError("user buffer is truncated")
        offset = 3 + user_len
        app, room_id, expires_at, privileges, _account_type = struct.unpack_from(">IIIII", buf, offset)
        offset += 20
        str_room: str | None = None
        if version == 1:
            (room_len,) = struct.unpack_from(">H", buf, offset)
            room = buf[offset + 2 : offset + 2 + room_len]
            if len(room) != room_len:
                raise UserSigError("user buffer is truncated")
            str_room = room.decode("utf-8")
            offset += 2 + room_len
        if offset != len(buf):
            raise UserSigError("user buffer has trailing bytes")
        return PrivateMapKey(
            user_id=user.decode("utf-8"),
            sdkappid=app,
            room_id=room_id,
            str_room_id=str_room,
            expires_at=expires_at,
            privileges=privileges,
        )
    except struct.error:
        raise UserSigError("user buffer is truncated") from None
    except UnicodeDecodeError:
        raise UserSigError("user buffer holds invalid UTF-8") from None


# ---------------------------------------------------------------------------------------------
# shared


_ENCODE = str.maketrans("+/=", "*-_")
_DECODE = str.maketrans("*-_", "+/=")


def _content(identifier: str, sdkappid: int, issued: int, expire: int, userbuf_b64: str | None) -> str:
    text = (
        f"TLS.identifier:{identifier}\n"
        f"TLS.sdkappid:{sdkappid}\n"
        f"TLS.time:{issued}\n"
        f"TLS.expire:{expire}\n"
    )
    if userbuf_b64 is not None:
        text += f"TLS.userbuf:{userbuf_b64}\n"
    return text


def _mac(key: str, content: str) -> bytes:
    return hmac.new(key.encode("utf-8"), content.encode("utf-8"), hashlib.sha256).digest()


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UserSigError(f"{what} is not valid Base64") from None


def _field(doc: dict[str, Any], name: str, kind: type[Any]) -> Any:
    value = doc.get(name)
    # bool is an int subclass; a JSON true is never a valid number here.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UserSigError(f"{name} is missing or has the wrong type")
    return value
