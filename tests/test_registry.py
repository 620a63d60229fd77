"""Room registry: late subscribers start at the last keyframe; removal calls the publisher back."""

from __future__ import annotations

from fractions import Fraction

import pytest

from cloudrec.core.media import MediaUnit, StreamInfo
from cloudrec.core.rooms import RoomKey
from cloudrec.core.spec import TrackKind
from cloudrec.rooms.registry import CAMERA_KINDS, SCREEN_KINDS, RoomRegistry

VIDEO = StreamInfo(kind=TrackKind.MAIN, codec="h264", time_base=Fraction(1, 1000))
AUDIO = StreamInfo(kind=TrackKind.AUDIO, codec="aac", time_base=Fraction(1, 1000))


def unit(info: StreamInfo, ms: int, key: bool = False) -> MediaUnit:
    return MediaUnit(data=b"x", pts=ms, dts=ms, duration=20, key=key, info=info)


def test_late_subscriber_gets_the_current_gop_and_recent_audio() -> None:
    registry = RoomRegistry()
    room = registry.room(RoomKey(1, "1"))
    user = room.connect("u")
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
    first = room.connect("u", on_removed=lambda: calls.append("displaced"))
    room.connect("u", on_removed=lambda: calls.append("removed"))  # the same user again: the older connection goes
    assert not first.present
    assert registry.remove_users(key, ["u", "nobody"]) == 1
    assert calls == ["displaced", "removed"] and room.participant("u") is None
    room.connect("v")
    assert registry.dismiss(key) == 1 and not registry.exists(key)


def test_camera_and_screen_share_are_two_connections_of_one_user() -> None:
    room = RoomRegistry().room(RoomKey(1, "3"))
    calls: list[str] = []
    camera = room.connect("u", CAMERA_KINDS, on_removed=lambda: calls.append("camera"))
    cam_video, cam_audio = camera.add_track(TrackKind.MAIN), camera.add_track(TrackKind.AUDIO)
    room.connect("w")
    screen = room.connect("u", SCREEN_KINDS, on_removed=lambda: calls.append("screen"))
    aux = screen.add_track(TrackKind.AUX)
    with pytest.raises(ValueError):
        screen.add_track(TrackKind.AUDIO)  # a screen share publishes no audio of its own
    # both connections stand: the user keeps their entry order and all three tracks
    snapshot = room.snapshot()
    assert [p.user_id for p in snapshot.participants] == ["u", "w"] and calls == []
    assert room.participant("u").tracks == {TrackKind.MAIN: cam_video, TrackKind.AUDIO: cam_audio, TrackKind.AUX: aux}  # type: ignore[union-attr]
    # the screen share stops: the camera goes on
    sub = aux.subscribe()
    screen.leave()
    assert sub.drain() == [] and sub.ended and not cam_video.closed
    assert set(room.participant("u").tracks) == {TrackKind.MAIN, TrackKind.AUDIO}  # type: ignore[union-attr]
    # a second screen share, then a new camera connection: only the camera is displaced
    screen2 = room.connect("u", SCREEN_KINDS, on_removed=lambda: calls.append("screen2"))
    screen2.add_track(TrackKind.AUX)
    camera2 = room.connect("u", CAMERA_KINDS)
    assert calls == ["camera"] and cam_video.closed and cam_audio.closed and screen2.present
    assert set(room.participant("u").tracks) == {TrackKind.AUX}  # type: ignore[union-attr]
    assert [p.user_id for p in room.snapshot().participants] == ["u", "w"]
    # the user leaves with their last connection
    camera2.leave()
    screen2.leave()
    assert room.participant("u") is None and room.participant("w") is not None


def test_a_cached_gop_longer_than_the_queue_is_not_replayed_without_its_keyframe() -> None:
    room = RoomRegistry().room(RoomKey(1, "4"))
    video = room.connect("u").add_track(TrackKind.MAIN)
    for ms in range(0, 60_000, 100):  # one 60 s GOP: 600 cached units
        video.publish(unit(VIDEO, ms, key=ms == 0))
    small = video.subscribe(maxsize=512)
    assert small.drain() == [] and small.dropped == 0  # nothing half: it starts at the next keyframe
    video.publish(unit(VIDEO, 60_000, key=True))
    got = small.drain()
    assert [u.pts for u in got] == [60_000] and got[0].key
    big = video.subscribe(maxsize=1024)
    assert big.drain()[0].key  # the whole GOP fits: replayed from its keyframe


def test_watchers_hear_of_joins_tracks_first_media_blocks_and_leaves_until_they_stop() -> None:
    room = RoomRegistry().room(RoomKey(1, "1"))
    heard: list[int] = []
    unwatch = room.watch(lambda: heard.append(room.version))
    conn = room.connect("u")
    assert len(heard) == 1
    video = conn.add_track(TrackKind.MAIN)
    assert len(heard) == 2
    video.publish(unit(VIDEO, 0, key=True))  # the first unit: a recording waiting for media starts
    video.publish(unit(VIDEO, 100))  # later units: no news
    assert len(heard) == 3 and heard[-1] == room.version
    room.set_blocked("u", True)
    conn.leave()
    assert len(heard) == 5 and heard[-1] == room.version
    unwatch()
    room.connect("v")
    assert len(heard) == 5


def test_a_failing_watcher_neither_stops_the_others_nor_the_publisher() -> None:
    room = RoomRegistry().room(RoomKey(1, "1"))
    heard: list[str] = []

    def broken() -> None:
        raise RuntimeError("watcher bug")

    room.watch(broken)
    room.watch(lambda: heard.append("ok"))
    conn = room.connect("u")
    conn.add_track(TrackKind.AUDIO).publish(unit(AUDIO, 0))
    assert heard == ["ok", "ok", "ok"] and room.participant("u") is not None
