"""Publisher and viewer admission (RTMP push URL, WHIP/WHEP bearer) with real UserSigs."""

from __future__ import annotations

import pytest

from cloudrec.control.apps import AppInfo
from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.dialects.tencent.publish import PublishDenied, PublisherAuth
from cloudrec.dialects.tencent.usersig import make_private_map_key, make_usersig

APP, KEY = 1400000001, "k" * 32
auth = PublisherAuth({APP: AppInfo(id=APP, key=KEY), 7: AppInfo(id=7, key="other", require_private_map_key=True)})


def test_rtmp_push_url() -> None:
    grant = auth.admit_rtmp("push", "1234", {"sdkappid": str(APP), "userid": "u1", "usersig": make_usersig(APP, KEY, "u1")})
    assert grant.room == RoomKey(APP, "1234", RoomIdType.INTEGER) and grant.user_id == "u1"
    grant = auth.admit_rtmp("push", "room-a", {"sdkappid": str(APP), "userid": "u1", "roomidtype": "0",
                                               "usersig": make_usersig(APP, KEY, "u1")})
    assert grant.room == RoomKey(APP, "room-a", RoomIdType.STRING)


@pytest.mark.parametrize("query,status", [
    ({"sdkappid": str(APP), "userid": "u1"}, 401),
    ({"sdkappid": str(APP), "userid": "u1", "usersig": "garbage"}, 401),
    ({"sdkappid": str(APP), "userid": "u2", "usersig": make_usersig(APP, KEY, "u1")}, 401),
    ({"sdkappid": str(APP), "userid": "u1", "usersig": make_usersig(APP, KEY, "u1", expire=-10)}, 401),
    ({"sdkappid": "99", "userid": "u1", "usersig": make_usersig(99, KEY, "u1")}, 403),
    ({"sdkappid": str(APP), "userid": "u1", "usersig": make_usersig(APP, "wrong", "u1")}, 401),
])
def test_rtmp_refusals(query: dict[str, str], status: int) -> None:
    with pytest.raises(PublishDenied) as info:
        auth.admit_rtmp("push", "1234", query)
    assert info.value.status == status


def test_room_id_rules_and_private_map_key() -> None:
    sig = make_usersig(7, "other", "u")
    with pytest.raises(PublishDenied):
        auth.admit_rtmp("live", "1234", {"sdkappid": str(APP), "userid": "u1", "usersig": make_usersig(APP, KEY, "u1")})
    with pytest.raises(PublishDenied):
        auth.admit(app_id=str(APP), room_id="abc", user_id="u1", usersig=make_usersig(APP, KEY, "u1"))
    with pytest.raises(PublishDenied):  # app 7 requires a PrivateMapKey
        auth.admit(app_id="7", room_id="55", user_id="u", usersig=sig)
    pmk = make_private_map_key(sdkappid=7, key="other", user_id="u", room_id=55)
    assert auth.admit(app_id="7", room_id="55", user_id="u", usersig=sig, private_map_key=pmk).room.room_id == "55"
    with pytest.raises(PublishDenied):  # the ticket is for room 55 only
        auth.admit(app_id="7", room_id="56", user_id="u", usersig=sig, private_map_key=pmk)
