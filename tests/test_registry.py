"""Room registry: late subscribers start at the last keyframe; removal calls the publisher back."""

from __future__ import annotations

from fractions import Fraction

from cloudrec.core.media import MediaUnit, StreamInfo
from cloudrec.core.rooms import RoomKey
from cloudrec.core.spec import TrackKind
from cloudrec.rooms.registry import RoomRegistry

VIDEO = StreamInfo(kind=TrackKind.MAIN, codec="h264", time_base=Fraction(1, 1000))
AUDIO = StreamInfo(kind=TrackKind.AUDIO, codec="aac", time_base=Fraction(1, 1000))


def unit(info: StreamInfo, ms: int, key: bool = False) -> MediaUnit:
    return MediaUnit(data=b"x", pts=ms, dts=ms, duration=20, key=key, info=info)


def test_late_subscriber_gets_the_current_gop_and_recent_audio() -> None:
    registry = RoomRegistry()
    room = registry.room(RoomKey(1, "1"))
    user = room.join("u")
    video, audio = user.add_track(TrackKind.MAIN), user.add_track(TrackKind.AUDIO)
    video.publish(unit(VIDEO, 0))  # before any keyframe: never replayed
    for ms in range(0, 5000, 100):
        video.publish(unit(VIDEO, 1000 + ms, key=ms % 2000 == 0))
        audio.publish(unit(AUDIO, 1000 + ms))
    late_v, late_a = video.subscribe(), audio.subscribe()
    got = late_v.drain()
    assert got[0].key and got[0].pts == 5000 and [u.pts for u in got] == list(range(5000, 6000, 100))
    assert [u.pts for u in late_a.drain()][0] >= 5900 - 3000
    video.publish(unit(VIDEO, 6000))
    assert [u.pts for u in late_v.drain()] == [6000]  # then live, exactly once


def test_removal_calls_the_publisher_and_displacement_too() -> None:
    registry = RoomRegistry()
    key = RoomKey(1, "2")
    room = registry.room(key)
    calls: list[str] = []
    first = room.join("u")
    first.on_removed = lambda: calls.append("displaced")
    second = room.join("u")  # the same user again: the older connection is told to go
    second.on_removed = lambda: calls.append("removed")
    assert registry.remove_users(key, ["u", "nobody"]) == 1
    assert calls == ["displaced", "removed"] and room.participant("u") is None
    room.join("v")
    assert registry.dismiss(key) == 1 and not registry.exists(key)
