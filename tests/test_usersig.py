"""UserSig v2 and PrivateMapKey (spec part C) against the C.2 vector and the official `tls-sig-api-v2`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import struct
import time
import zlib
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
import TLSSigAPIv2 as official

from cloudrec.dialects.tencent.usersig import (
    PrivateMapKey,
    UserSigClaims,
    UserSigError,
    make_private_map_key,
    make_usersig,
    verify_private_map_key,
    verify_usersig,
)

APP = 1400000001
KEY = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e"
USER = "recorder_1"
T0 = 1700000000
VECTOR = (
    "eJyrVgrxCdYrSy1SslJQMtIzUNJRAItkpqTmlWSmZUIkilKT84tSUoviDWHyxSnZiQUFmSlAWUMTAwgwhMqlVhRkFqUCZSzMgFJQwZLMXJC"
    "QoTlUMUy8ODMdZENyuLavW5VprrFvUVhBSLBpfmVKprZhTnBAsJlnZnmlcU5RaraFUUlYVkC2rVItAD8ONCo_"
)
VECTOR_TLS_SIG = "cW+MFz5m3MrVpTS5oydi+1lSPS6Iiwy3lrek82tVjPk="


def decode(sig: str) -> dict[str, Any]:
    """Independent decoder: the official library's own URL-Base64 reversal, then zlib and JSON."""
    doc: dict[str, Any] = json.loads(zlib.decompress(official.base64_decode_url(sig.encode())))
    return doc


def encode(doc: dict[str, Any], *, level: int = -1, trailing: str = "") -> str:
    raw = (json.dumps(doc, separators=(",", ":")) + trailing).encode()
    sig: str = official.base64_encode_url(zlib.compress(raw, level))
    return sig


def tls_sig(key: str, ident: str, app: int, t: int, expire: int, userbuf_b64: str | None = None) -> str:
    content = f"TLS.identifier:{ident}\nTLS.sdkappid:{app}\nTLS.time:{t}\nTLS.expire:{expire}\n"
    if userbuf_b64 is not None:
        content += f"TLS.userbuf:{userbuf_b64}\n"
    return base64.b64encode(hmac.new(key.encode(), content.encode(), hashlib.sha256).digest()).decode()


def userbuf(
    user: str, app: int, room: int, expires_at: int, privileges: int = 255, str_room: str | None = None
) -> bytes:
    """The C.4 layout, written out independently of the module under test."""
    u = user.encode()
    out = bytes([0 if str_room is None else 1]) + struct.pack(">H", len(u)) + u
    out += struct.pack(">IIIII", app, room, expires_at, privileges, 0)
    if str_room is not None:
        r = str_room.encode()
        out += struct.pack(">H", len(r)) + r
    return out


def expect_error(sig: Any, **kw: Any) -> UserSigError:
    args: dict[str, Any] = {"sdkappid": APP, "key": KEY, "identifier": USER, "now": T0}
    args.update(kw)
    with pytest.raises(UserSigError) as exc:
        verify_usersig(sig, **args)
    return exc.value


# ---------------------------------------------------------------------------------------------
# C.2 vector and the official generator


def test_spec_vector() -> None:
    claims = verify_usersig(VECTOR, sdkappid=APP, key=KEY, identifier=USER, now=T0)
    assert claims == UserSigClaims(sdkappid=APP, identifier=USER, time=T0, expire=86400, userbuf=None)
    assert decode(VECTOR)["TLS.sig"] == VECTOR_TLS_SIG
    # Valid up to and including time + expire.
    verify_usersig(VECTOR, sdkappid=APP, key=KEY, identifier=USER, now=T0 + 86400)
    assert "expired" in expect_error(VECTOR, now=T0 + 86401).reason


def test_official_generator_with_fixed_clock_reproduces_vector_sig() -> None:
    with mock.patch.object(official, "time", SimpleNamespace(time=lambda: T0)):
        sig = official.TLSSigAPIv2(APP, KEY).gen_sig(USER, 86400)
    assert decode(sig)["TLS.sig"] == VECTOR_TLS_SIG
    assert verify_usersig(sig, sdkappid=APP, key=KEY, identifier=USER, now=T0).time == T0


def test_official_sig_accepted_at_live_clock() -> None:
    sig = official.TLSSigAPIv2(APP, KEY).gen_sig("user-42")
    claims = verify_usersig(sig, sdkappid=APP, key=KEY, identifier="user-42", now=time.time())
    assert claims.expire == 180 * 86400 and claims.userbuf is None


def test_make_usersig_matches_official_decoding() -> None:
    sig = make_usersig(APP, KEY, USER, 86400, now=T0)
    doc = decode(sig)
    assert doc["TLS.ver"] == "2.0"
    assert doc["TLS.sdkappid"] == APP and doc["TLS.identifier"] == USER
    assert doc["TLS.time"] == T0 and doc["TLS.expire"] == 86400
    # The official library's own HMAC over the same claims.
    lib = official.TLSSigAPIv2(APP, KEY)
    assert doc["TLS.sig"] == lib._TLSSigAPIv2__hmacsha256(USER, T0, 86400).decode() == VECTOR_TLS_SIG
    assert verify_usersig(sig, sdkappid=APP, key=KEY, identifier=USER, now=T0).expire == 86400


def test_go_style_encoding_compact_json_newline_and_stored_zlib() -> None:
    doc = {
        "TLS.ver": "2.0",
        "TLS.identifier": USER,
        "TLS.sdkappid": APP,
        "TLS.expire": 600,
        "TLS.time": T0,
        "TLS.sig": tls_sig(KEY, USER, APP, T0, 600),
    }
    for level in (0, 9):
        sig = encode(doc, level=level, trailing="\n")
        assert verify_usersig(sig, sdkappid=APP, key=KEY, identifier=USER, now=T0 + 600).expire == 600


# ---------------------------------------------------------------------------------------------
# rejections


def test_wrong_key_app_user_and_expired() -> None:
    sig = make_usersig(APP, KEY, USER, 600, now=T0)
    assert expect_error(sig, key="another-key").reason == "signature mismatch"
    assert "SdkAppId" in expect_error(sig, sdkappid=APP + 1).reason
    assert "user" in expect_error(sig, identifier="recorder_2").reason
    assert "expired" in expect_error(sig, now=T0 + 601).reason


def test_claims_are_covered_by_the_signature() -> None:
    doc = decode(make_usersig(APP, KEY, USER, 600, now=T0))
    for field, value in [("TLS.expire", 10**6), ("TLS.time", T0 + 5)]:
        forged = encode({**doc, field: value})
        assert expect_error(forged).reason == "signature mismatch"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("TLS.ver", "1.0"),
        ("TLS.ver", None),
        ("TLS.sdkappid", str(APP)),
        ("TLS.sdkappid", True),
        ("TLS.time", float(T0)),
        ("TLS.expire", "600"),
        ("TLS.identifier", 7),
        ("TLS.sig", 12),
        ("TLS.sig", "###"),
        ("TLS.userbuf", 5),
        ("TLS.userbuf", "***"),
        ("TLS.userbuf", "\ud800"),
    ],
)
def test_wrong_types(field: str, value: Any) -> None:
    doc = decode(make_usersig(APP, KEY, USER, 600, now=T0))
    doc[field] = value
    expect_error(encode(doc))


def test_truncated_and_garbage() -> None:
    sig = make_usersig(APP, KEY, USER, 600, now=T0)
    zipped = official.base64_decode_url(sig.encode())
    cases: list[Any] = [
        "",
        sig[:-10],
        sig[:20],
        official.base64_encode_url(zipped[:-4]),  # zlib stream without its checksum
        official.base64_encode_url(zipped + b"junk"),  # trailing bytes after the stream
        "not base64 !",
        "ÄÖÜ",
        official.base64_encode_url(b"plain bytes, not zlib"),
        official.base64_encode_url(zlib.compress(b"\xff\xfe not utf-8")),
        official.base64_encode_url(zlib.compress(b"not json")),
        official.base64_encode_url(zlib.compress(b"[1, 2, 3]")),
        official.base64_encode_url(zlib.compress(b"9" * 5000)),  # int beyond Python's digit limit
        official.base64_encode_url(zlib.compress(b"[" * 8000)),  # nesting beyond the recursion limit
        official.base64_encode_url(zlib.compress(b" " * 10**6)),  # inflates past the size cap
        "A" * 100_000,
        b"bytes instead of text",
        None,
        12345,
    ]
    for case in cases:
        expect_error(case)


def test_random_garbage_only_raises_usersig_error() -> None:
    rng = random.Random(1234)
    sig = make_usersig(APP, KEY, USER, 600, now=T0)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-_"
    for _ in range(400):
        chars = list(sig)
        for _ in range(rng.randint(1, 4)):
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        mutated = "".join(chars)
        if _same_bytes(mutated, sig):
            continue  # the same character, or only Base64 padding bits changed
        expect_error(mutated)
        expect_error(official.base64_encode_url(rng.randbytes(rng.randint(1, 300))))


def _same_bytes(a: str, b: str) -> bool:
    try:
        return bool(official.base64_decode_url(a.encode()) == official.base64_decode_url(b.encode()))
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# PrivateMapKey


def test_official_userbuf_sig_accepted_as_private_map_key() -> None:
    now = int(time.time())
    buf = userbuf(USER, APP, 1234, now + 3600, privileges=42)
    sig = official.TLSSigAPIv2(APP, KEY).gen_sig_with_userbuf(USER, 3600, buf)
    pmk = verify_private_map_key(sig, sdkappid=APP, key=KEY, identifier=USER, now=now)
    assert pmk == PrivateMapKey(
        user_id=USER, sdkappid=APP, room_id=1234, str_room_id=None, expires_at=now + 3600, privileges=42
    )
    # Newer releases of the official library build the buffer themselves.
    lib = official.TLSSigAPIv2(APP, KEY)
    if hasattr(lib, "genPrivateMapKey"):
        sig = lib.genPrivateMapKey(USER, 3600, 1234, 255)
        assert verify_private_map_key(sig, sdkappid=APP, key=KEY, identifier=USER, now=now).room_id == 1234
    # A PrivateMapKey is not a UserSig.
    assert "user buffer" in expect_error(sig, now=now).reason


def test_make_private_map_key_layout() -> None:
    sig = make_private_map_key(sdkappid=APP, key=KEY, user_id=USER, room_id=99, expire=600, now=T0)
    doc = decode(sig)
    assert base64.b64decode(doc["TLS.userbuf"]) == userbuf(USER, APP, 99, T0 + 600)
    assert doc["TLS.sig"] == tls_sig(KEY, USER, APP, T0, 600, doc["TLS.userbuf"])
    pmk = verify_private_map_key(sig, sdkappid=APP, key=KEY, identifier=USER, now=T0)
    assert (pmk.room_id, pmk.expires_at, pmk.privileges, pmk.str_room_id) == (99, T0 + 600, 255, None)


def test_string_room() -> None:
    sig = make_private_map_key(
        sdkappid=APP, key=KEY, user_id=USER, str_room_id="会议-7", expire=600, privileges=2, now=T0
    )
    assert base64.b64decode(decode(sig)["TLS.userbuf"]) == userbuf(USER, APP, 0, T0 + 600, 2, "会议-7")
    pmk = verify_private_map_key(sig, sdkappid=APP, key=KEY, identifier=USER, now=T0)
    assert (pmk.room_id, pmk.str_room_id, pmk.privileges) == (0, "会议-7", 2)


def signed_with_buffer(buf: bytes, expire: int = 3600) -> str:
    b64 = base64.b64encode(buf).decode()
    doc = {
        "TLS.ver": "2.0",
        "TLS.identifier": USER,
        "TLS.sdkappid": APP,
        "TLS.expire": expire,
        "TLS.time": T0,
        "TLS.userbuf": b64,
        "TLS.sig": tls_sig(KEY, USER, APP, T0, expire, b64),
    }
    return encode(doc)


@pytest.mark.parametrize(
    ("buf", "now", "reason"),
    [
        (userbuf(USER, APP, 1, T0 + 10), T0 + 11, "expired"),  # buffer expiry before container expiry
        (userbuf(USER, APP, 1, T0 + 3600), T0 + 3601, "expired"),
        (userbuf("someone", APP, 1, T0 + 3600), T0, "another user"),
        (userbuf(USER, APP + 1, 1, T0 + 3600), T0, "another SdkAppId"),
        (userbuf(USER, APP, 1, T0 + 3600)[:-3], T0, "truncated"),
        (userbuf(USER, APP, 1, T0 + 3600, str_room="r")[:-1], T0, "truncated"),
        (userbuf(USER, APP, 1, T0 + 3600) + b"\0", T0, "trailing"),
        (b"\x02" + userbuf(USER, APP, 1, T0 + 3600)[1:], T0, "version"),
        (b"\x00\x00\x02\xff\xfe" + userbuf("", APP, 1, T0 + 3600)[3:], T0, "UTF-8"),
        (b"", T0, "truncated"),
    ],
)
def test_private_map_key_rejections(buf: bytes, now: int, reason: str) -> None:
    sig = signed_with_buffer(buf)
    with pytest.raises(UserSigError) as exc:
        verify_private_map_key(sig, sdkappid=APP, key=KEY, identifier=USER, now=now)
    assert reason in exc.value.reason


def test_plain_usersig_is_not_a_private_map_key() -> None:
    with pytest.raises(UserSigError) as exc:
        verify_private_map_key(VECTOR, sdkappid=APP, key=KEY, identifier=USER, now=T0)
    assert "user buffer" in exc.value.reason
