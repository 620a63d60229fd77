"""Tencent CSS push authentication (spec §7) and the `[[css.domains]]` settings behind it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.dialects.tencent.css_push import (CssPushAuth, PushDomain, PushRefused, push_query, tx_secret,
                                                tx_time)
from cloudrec.dialects.tencent.css_rooms import CSS_APP_ID, stream_of
from cloudrec.errors import InvalidRequest
from cloudrec.settings import parse_settings

NOW = 1_700_000_000.0
EXPIRY = 1_700_003_600  # the spec example: txTime 6553FF10


def test_spec_vector() -> None:
    assert tx_time(EXPIRY) == "6553FF10"
    assert tx_secret("abc", "livetest", "6553FF10") == "182586c929143855a08a20a76f3edbe4"
    assert hashlib.md5(b"abclivetest6553FF10").hexdigest() == "182586c929143855a08a20a76f3edbe4"  # the rule, spelt out
    assert push_query("abc", "livetest", EXPIRY) == "txSecret=182586c929143855a08a20a76f3edbe4&txTime=6553FF10"


def auth(*domains: PushDomain, now: float = NOW) -> CssPushAuth:
    return CssPushAuth(domains, clock=lambda: now)


PUSH = PushDomain(name="push.example.com", key="abc", backup_key="backup")
OPEN = PushDomain(name="open.example.com", default=True)  # no key: push authentication off


def admit(a: CssPushAuth, query: dict[str, str], *, host: str = "push.example.com", stream: str = "livetest",
          app: str = "live") -> Any:
    return a.admit(host=host, app_name=app, stream_name=stream, query=query)


def test_spec_example_url_is_admitted_into_the_streams_room() -> None:
    push = admit(auth(PUSH), {"txSecret": "182586c929143855a08a20a76f3edbe4", "txTime": "6553FF10", "userid": "x"})
    assert push.room == RoomKey(CSS_APP_ID, "push.example.com/live/livetest", RoomIdType.STRING)
    assert stream_of(push.room) == ("push.example.com", "live", "livetest")
    assert push.user_id == "livetest" and push.domain == "push.example.com"
    assert push.stream_param == "txSecret=182586c929143855a08a20a76f3edbe4&txTime=6553FF10&userid=x"


@pytest.mark.parametrize(("secret", "time_text"), [
    ("182586C929143855A08A20A76F3EDBE4", "6553FF10"),  # txSecret compared without case
    (tx_secret("abc", "livetest", "6553ff10"), "6553ff10"),  # lower-case txTime, signed as written
    (tx_secret("backup", "livetest", "6553FF10"), "6553FF10"),  # the backup key validates too
])
def test_accepted_variants(secret: str, time_text: str) -> None:
    assert admit(auth(PUSH), {"txSecret": secret, "txTime": time_text}).user_id == "livetest"


@pytest.mark.parametrize(("query", "now", "reason"), [
    ({}, NOW, "required"),
    ({"txTime": "6553FF10"}, NOW, "required"),
    ({"txSecret": "182586c929143855a08a20a76f3edbe4", "txTime": "6553FF10"}, EXPIRY, "expired"),  # now == txTime
    ({"txSecret": "182586c929143855a08a20a76f3edbe4", "txTime": "6553FF10"}, EXPIRY + 1, "expired"),
    ({"txSecret": "182586c929143855a08a20a76f3edbe4", "txTime": "6553ff10"}, NOW, "match"),  # signed upper, sent lower
    ({"txSecret": tx_secret("abc", "other", "6553FF10"), "txTime": "6553FF10"}, NOW, "match"),  # another stream's
    ({"txSecret": tx_secret("wrong", "livetest", "6553FF10"), "txTime": "6553FF10"}, NOW, "match"),
    ({"txSecret": tx_secret("abc", "livetest", "0x6553FF10"), "txTime": "0x6553FF10"}, NOW, "hexadecimal"),
    ({"txSecret": "x", "txTime": "1" * 17}, NOW, "hexadecimal"),
])
def test_refused(query: dict[str, str], now: float, reason: str) -> None:
    with pytest.raises(PushRefused, match=reason):
        admit(auth(PUSH, now=now), query)


def test_just_before_expiry_is_still_admitted() -> None:
    q = {"txSecret": "182586c929143855a08a20a76f3edbe4", "txTime": "6553FF10"}
    assert admit(auth(PUSH, now=EXPIRY - 0.001), q).user_id == "livetest"


def test_domain_by_host_then_default_then_refused() -> None:
    a = auth(PUSH, OPEN)
    assert a.domain_for("PUSH.Example.com.") == PUSH  # DNS names: no case, trailing dot
    assert a.domain_for("127.0.0.1") == OPEN
    # An unknown host falls to the default domain, whose key is empty: no signature needed.
    assert admit(a, {}, host="127.0.0.1").room.room_id == "open.example.com/live/livetest"
    # The configured domain's key still applies to its own host.
    with pytest.raises(PushRefused, match="required"):
        admit(a, {}, host="push.example.com")
    with pytest.raises(PushRefused, match="no CSS push domain"):
        admit(auth(PUSH), {}, host="127.0.0.1")


@pytest.mark.parametrize(("app", "stream"), [("", "s"), ("live", ""), ("a/b", "s"), ("live", "../x"), ("live", "a//b"),
                                              ("live", "x\ny"), ("live", "s" * 257), ("..", "s")])
def test_unsafe_names_are_refused(app: str, stream: str) -> None:
    with pytest.raises(PushRefused):
        admit(auth(OPEN), {}, app=app, stream=stream)


# ---------------------------------------------------------------------------------------------
# [[css.domains]]


def settings(css: dict[str, Any]) -> Any:
    return parse_settings({"css": css}, Path("."))


def test_settings_domains() -> None:
    s = settings({"appid": 1250000000, "domains": [
        {"name": "Push.Example.com", "push_key": "pk-secret", "backup_push_key": "bk-secret",
         "callback_url": "http://127.0.0.1:9/cb", "callback_key": "ck-secret", "default": True},
        {"name": "other.example.com"}]})
    assert s.css.appid == 1250000000
    d = s.css.domain("push.example.com")
    assert d is not None and (d.push_key, d.backup_push_key, d.callback_url, d.callback_key, d.default) == \
        ("pk-secret", "bk-secret", "http://127.0.0.1:9/cb", "ck-secret", True)
    assert s.css.domain("PUSH.example.COM") is d
    other = s.css.domain("other.example.com")
    assert other is not None and (other.push_key, other.callback_url, other.default) == ("", "", False)
    assert "secret" not in repr(s)  # keys never in a repr (logs)
    assert parse_settings({}, Path(".")).css.domains == ()


@pytest.mark.parametrize("css", [
    {"domains": [{"name": "a"}, {"name": "A"}]},  # names are unique (without case)
    {"domains": [{"name": "a", "default": True}, {"name": "b", "default": True}]},
    {"domains": [{"push_key": "k"}]},
    {"domains": [{"name": "a", "push_key": 5}]},
    {"domains": [{"name": "a", "default": "yes"}]},
    {"domains": [{"name": "a", "callback_url": "ftp://x"}]},
    {"appid": "1250000000"},
    {"appid": -1},
])
def test_settings_refused(css: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        settings(css)
