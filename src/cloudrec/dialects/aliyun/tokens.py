"""ARTC channel join tokens (spec §12), verified for publishers joining a channel (WHIP, RTMP).

Three forms, told apart by their shape (a TRTC UserSig is Base64 of zlib and starts with "eJ"):
- classic: 64 lowercase hex, SHA-256(AppID + AppKey + ChannelID + UserID + Nonce + Timestamp); the
  channel, user, nonce and timestamp (expiry, unix s) travel beside it;
- single-parameter: Base64 of JSON {appid, channelid, userid, nonce, timestamp, token} ("eyJ…");
- AppToken: "000" + Base64(zlib(signed binary body)), with optional `*` channel/user wildcards and
  publish privileges.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from cloudrec.control.apps import AppInfo, app_named
from cloudrec.core.ids import is_decimal
from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.spec import TrackKind

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # ChannelID / UserID (§12.1)
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_TOKEN = 8192
PRIV_ENABLED, PRIV_AUDIO, PRIV_VIDEO, PRIV_SCREEN = 1, 2, 4, 8


class TokenRejected(Exception):
    """`status`: 401 bad or expired token, 403 a valid token that does not allow this."""

    def __init__(self, reason: str, status: int = 401) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def is_artc_token(token: str) -> bool:
    return bool(_HEX64.match(token)) or token.startswith(("000", "eyJ"))


def classic_token(app_id: str, app_key: str, channel_id: str, user_id: str, nonce: str, timestamp: int) -> str:
    return hashlib.sha256(f"{app_id}{app_key}{channel_id}{user_id}{nonce}{timestamp}".encode()).hexdigest()


def single_parameter_token(app_id: str, app_key: str, channel_id: str, user_id: str, timestamp: int, nonce: str = "") -> str:
    """The official sample's form (its hash leaves the nonce out)."""
    sha = hashlib.sha256(f"{app_id}{app_key}{channel_id}{user_id}{timestamp}".encode()).hexdigest()
    body = {"appid": app_id, "channelid": channel_id, "userid": user_id, "nonce": nonce, "timestamp": timestamp, "token": sha}
    return base64.b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()


# --- AppToken ------------------------------------------------------------------------------------


def _padded(data: bytes, size: int | None = None) -> bytes:
    size = size or _pad_size(len(data))
    return data + b"\0" * (size - len(data))


def _pad_size(n: int) -> int:
    size = 256
    while size < n:
        size *= 2
    return size


def _lp(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">I", len(raw)) + raw


def _sign_key(app_key: str, issue: int, salt: int) -> bytes:
    inner = hmac.new(struct.pack(">I", issue), app_key.encode(), hashlib.sha256).digest()
    return hmac.new(struct.pack(">I", salt), inner, hashlib.sha256).digest()


def make_app_token(app_id: str, app_key: str, channel_id: str, user_id: str, *, issue: int, salt: int, expire: int,
                   privilege: int | None = None, options: Mapping[str, str] | None = None) -> str:
    service = _lp(channel_id) + _lp(user_id) + (b"\x01" + struct.pack(">I", privilege) if privilege is not None else b"\x00")
    opts = b"\x00"
    if options:
        opts = b"\x01" + struct.pack(">I", len(options)) + b"".join(_lp(k) + _lp(options[k]) for k in sorted(options))
    body = _padded(_lp(app_id) + struct.pack(">III", issue, salt, expire) + service + opts)
    sig = hmac.new(_sign_key(app_key, issue, salt), body, hashlib.sha256).digest()
    outer = _padded(struct.pack(">I", len(sig)) + sig + body)
    return "000" + base64.b64encode(zlib.compress(outer)).decode()


@dataclass(frozen=True, slots=True, kw_only=True)
class AppToken:
    app_id: str
    channel_id: str
    user_id: str
    issue: int
    salt: int
    expire: int
    privilege: int | None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise TokenRejected("malformed AppToken")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u8(self) -> int:
        return self.take(1)[0]

    def text(self) -> str:
        try:
            return self.take(self.u32()).decode()
        except UnicodeDecodeError as exc:
            raise TokenRejected("malformed AppToken") from exc


def parse_app_token(token: str, app_key: str) -> AppToken:
    """Decode and check the signature (not the expiry or the names: `admit` does)."""
    try:
        raw = base64.b64decode(token[3:], validate=True)
        d = zlib.decompressobj()
        outer = d.decompress(raw, 1 << 16)
    except (binascii.Error, ValueError, zlib.error) as exc:
        raise TokenRejected("malformed AppToken") from exc
    r = _Reader(outer)
    sig = r.take(r.u32())
    start = r.pos
    app_id = r.text()
    issue, salt, expire = r.u32(), r.u32(), r.u32()
    channel_id, user_id = r.text(), r.text()
    privilege = r.u32() if r.u8() == 1 else None
    if r.u8() == 1:
        for _ in range(min(r.u32(), 64)):
            r.text(), r.text()
    body_len = r.pos - start
    key = _sign_key(app_key, issue, salt)
    sizes = [s for s in (_pad_size(body_len), _pad_size(body_len + 1)) if start + s <= len(outer)]
    if not any(hmac.compare_digest(hmac.new(key, outer[start:start + s], hashlib.sha256).digest(), sig) for s in sizes):
        raise TokenRejected("AppToken signature does not match")
    return AppToken(app_id=app_id, channel_id=channel_id, user_id=user_id, issue=issue, salt=salt, expire=expire,
                    privilege=privilege)


# --- publishers ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Join:
    room: RoomKey
    user_id: str


def admit(apps: Mapping[int, AppInfo], *, token: str, app_id: str = "", channel_id: str = "", user_id: str = "",
          nonce: str = "", timestamp: str = "", now: float, track: TrackKind = TrackKind.MAIN) -> Join:
    """Check an ARTC join token for app/channel/user (given beside it, or inside it); raises TokenRejected.
    The ARTC AppId names the `[[apps]]` entry with that id, whose `key` is the AppKey."""
    if not token or len(token) > MAX_TOKEN:
        raise TokenRejected("missing token")
    if token.startswith("eyJ"):
        try:
            fields = json.loads(base64.b64decode(token, validate=True))
            app_id, channel_id, user_id = str(fields["appid"]), str(fields["channelid"]), str(fields["userid"])
            nonce, timestamp, token = str(fields.get("nonce", "")), str(fields["timestamp"]), str(fields["token"])
        except (binascii.Error, ValueError, KeyError, TypeError) as exc:
            raise TokenRejected("malformed single-parameter token") from exc
        single = True
    else:
        single = False
    app = app_named(apps, app_id)
    if token.startswith("000"):
        if app is None:
            raise TokenRejected("unknown AppId", 403)
        parsed = parse_app_token(token, app.key)
        if parsed.app_id != app_id:
            raise TokenRejected("AppToken is for another app")
        if now > parsed.expire:
            raise TokenRejected("AppToken has expired")
        for given, granted, what in ((channel_id, parsed.channel_id, "channel"), (user_id, parsed.user_id, "user")):
            if granted != "*" and given and given != granted:
                raise TokenRejected(f"AppToken is for another {what}", 403)
        channel_id = channel_id or parsed.channel_id
        user_id = user_id or parsed.user_id
        need = {TrackKind.MAIN: PRIV_VIDEO, TrackKind.AUX: PRIV_SCREEN, TrackKind.AUDIO: PRIV_AUDIO}[track]
        if parsed.privilege is not None and parsed.privilege & PRIV_ENABLED and not parsed.privilege & need:
            raise TokenRejected("AppToken does not allow publishing this stream", 403)
    else:
        if app is None:
            raise TokenRejected("unknown AppId", 403)
        if not is_decimal(timestamp):
            raise TokenRejected("timestamp must be the token's expiry in unix seconds")
        expected = [classic_token(app_id, app.key, channel_id, user_id, nonce, int(timestamp))]
        if single:  # the official single-parameter sample hashes without the nonce
            expected.append(classic_token(app_id, app.key, channel_id, user_id, "", int(timestamp)))
        if not any(hmac.compare_digest(e, token.lower()) for e in expected):
            raise TokenRejected("token does not match")
        if now > int(timestamp):
            raise TokenRejected("token has expired")
    if not NAME.match(channel_id) or not NAME.match(user_id):
        raise TokenRejected("channel and user ids must be 1-64 letters, digits, - or _", 403)
    return Join(room=RoomKey(app.id, channel_id, RoomIdType.STRING), user_id=user_id)
