"""Pure core pieces: layout geometry (spec A.6), object names (A.8), subscription rules, records."""

from __future__ import annotations

import json

import pytest

from cloudrec.core import naming
from cloudrec.core.layout import Participant, float_cells, grid_cells, place
from cloudrec.core.records import from_plain, to_plain
from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.spec import (
    Container, Layout, LayoutMode, Pane, RecordingSpec, RecordMode, Subscription, TrackKind, UserFilter,
)

W, H = 1280, 720


@pytest.mark.parametrize("count,side", [(3, 2), (4, 2), (5, 3), (9, 3), (10, 4), (16, 4), (17, 5), (25, 5)])
def test_grid_sides(count: int, side: int) -> None:
    cells = grid_cells(count, W, H)
    assert len(cells) == count
    xs = sorted({c[0] for c in cells})
    assert len(xs) == side  # columns used
    for x, y, w, h in cells:
        assert abs(w - W / side) <= 2 and abs(h - H / side) <= 2
        assert x % 2 == y % 2 == w % 2 == h % 2 == 0  # yuv420p needs even geometry


def test_grid_one_and_two() -> None:
    assert grid_cells(1, W, H) == [(0, 0, W, H)]
    assert grid_cells(2, W, H) == [(0, 0, 640, H), (640, 0, 640, H)]
    assert grid_cells(0, W, H) == []
    assert len(grid_cells(30, W, H)) == 25  # at most 25 tiles


def test_grid_cells_tile_the_canvas_without_overlap() -> None:
    for n in (4, 9, 16, 25):
        cells = grid_cells(n, W, H)
        area = sum(w * h for _, _, w, h in cells)
        assert abs(area - W * H) <= W * H * 0.02


def test_float_layout() -> None:
    cells = float_cells(5, W, H)
    assert cells[0] == (0, 0, W, H)
    x, y, w, h = cells[1]
    assert abs(w - 0.235 * W) <= 2 and abs(h - 0.235 * H) <= 2
    assert abs(x - 0.012 * W) <= 2 and abs((y + h) - (H - 0.012 * H)) <= 2  # bottom-left first


def people(*names: str, video: bool = True) -> list[Participant]:
    return [Participant(user_id=n, video=frozenset({TrackKind.MAIN}) if video else frozenset()) for n in names]


def test_place_grid_in_entry_order_and_audio_only_users() -> None:
    ps = people("a", "b") + people("c", video=False)
    placed = place(Layout(mode=LayoutMode.GRID), W, H, ps)
    assert [p.user_id for p in placed] == ["a", "b", "c"]
    assert (placed[0].x, placed[0].y) == (0, 0) and (placed[1].x, placed[1].y) == (640, 0)
    placed = place(Layout(mode=LayoutMode.GRID, pure_audio_disable=True), W, H, ps)
    assert [p.user_id for p in placed] == ["a", "b"]


def test_place_custom_named_and_unnamed_panes_with_z_order() -> None:
    panes = (
        Pane(x=0, y=0, width=W, height=H, user_id=None, z=0),
        Pane(x=100, y=100, width=320, height=180, user_id="c", z=2),
        Pane(x=500, y=100, width=320, height=180, user_id=None, z=1),
    )
    placed = place(Layout(mode=LayoutMode.CUSTOM, panes=panes), W, H, people("a", "b", "c"))
    assert [(p.user_id, p.z) for p in placed] == [("a", 0), ("b", 1), ("c", 2)]  # back to front


def test_names_follow_a8() -> None:
    room = RoomKey(1400123456, "12345", RoomIdType.INTEGER)
    base = naming.user_base(room, "1686119", TrackKind.MAIN)
    assert naming.segment_name(base, "video", 2_001_145_551_825) == (
        "1400123456_12345__UserId_s_MTY4NjExOQ..__UserId_e_main_video_20330531094551825.ts")
    assert naming.playlist_name(naming.mixed_base(room), None) == "1400123456_12345.m3u8"
    assert naming.file_name(naming.mixed_base(room), None, 2, "mp4") == "1400123456_12345_2.mp4"
    string_room = RoomKey(1400123456, "room/a", RoomIdType.STRING)
    assert naming.mixed_base(string_room) == "1400123456_" + naming.encode_id("room/a")
    assert "/" not in naming.encode_id("??>>") and naming.decode_id(naming.encode_id("??>>")) == "??>>"


def test_subscription_rules() -> None:
    f = UserFilter(allow=("1.*$", "bob"))
    assert f.admits("123") and f.admits("bob") and not f.admits("alice")
    assert not f.admits("123", present=frozenset({"1.*$"}))  # a user literally named "1.*$" makes it exact
    block = UserFilter(block=("a.*$",))
    assert not block.admits("alice") and block.admits("bob")
    sub = Subscription(audio=UserFilter(allow=("x",)))
    assert sub.wants("x", TrackKind.AUDIO) and not sub.wants("y", TrackKind.AUDIO) and sub.wants("y", TrackKind.MAIN)


def test_spec_round_trips_through_json() -> None:
    spec = RecordingSpec(
        room=RoomKey(1, "r", RoomIdType.STRING), robot_user_id="rec", mode=RecordMode.MIXED,
        outputs=frozenset({Container.HLS, Container.MP4}),
        layout=Layout(mode=LayoutMode.CUSTOM, panes=(Pane(x=0, y=0, width=10, height=10, user_id="u"),)),
    )
    assert from_plain(RecordingSpec, json.loads(json.dumps(to_plain(spec)))) == spec
    assert "secret" not in repr(spec.storage).lower() or "secret_key" not in repr(spec.storage)
