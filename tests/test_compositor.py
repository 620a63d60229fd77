"""Compositor: render modes, z-order, alpha, empty tiles, background, scale cache — on real yuv420p frames."""

from __future__ import annotations

import av
import numpy as np

from cloudrec.core.layout import Placement
from cloudrec.core.spec import RenderMode, TrackKind
from cloudrec.media.compositor import Compositor, Fill
from cloudrec.media.planes import fit, rgb_to_yuv

RED, GREEN, BLUE = (220, 30, 30), (30, 200, 40), (40, 60, 220)
BG = (0, 0, 160)


def solid(w: int, h: int, rgb: tuple[int, int, int]) -> av.VideoFrame:
    a = np.empty((h, w, 3), np.uint8)
    a[...] = rgb
    return av.VideoFrame.from_ndarray(a, format="rgb24").reformat(format="yuv420p")


def tile(x: int, y: int, w: int, h: int, user: str | None, render: RenderMode = RenderMode.CROP, alpha: int = 0) -> Placement:
    return Placement(x=x, y=y, width=w, height=h, user_id=user, track=TrackKind.MAIN, render=render, alpha=alpha)


def rgb_at(frame: av.VideoFrame, y: int, x: int) -> np.ndarray:
    rgb: np.ndarray = frame.to_ndarray(format="rgb24")[y, x].astype(int)
    return rgb


def near(pixel: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> bool:
    return bool(np.all(np.abs(pixel - np.array(rgb)) <= tol))


def test_background_bt601_limited() -> None:
    assert rgb_to_yuv((0, 0, 0)) == (16, 128, 128)
    assert rgb_to_yuv((255, 255, 255)) == (235, 128, 128)
    out = Compositor(64, 36, BG).render([], {})
    assert out.format.name == "yuv420p" and (out.width, out.height) == (64, 36)
    assert near(rgb_at(out, 10, 10), BG)


def test_render_modes() -> None:
    wide = solid(320, 180, RED)  # 16:9 into a square tile
    frames = {("u", TrackKind.MAIN): wide}
    comp = Compositor(200, 200, BG)
    for mode in (RenderMode.CROP, RenderMode.STRETCH, RenderMode.SMART_STRETCH):
        out = comp.render([tile(0, 0, 200, 200, "u", mode)], frames)
        assert near(rgb_at(out, 2, 100), RED) and near(rgb_at(out, 197, 100), RED), mode
    out = comp.render([tile(0, 0, 200, 200, "u", RenderMode.LETTERBOX)], frames)
    assert near(rgb_at(out, 100, 100), RED)
    assert near(rgb_at(out, 10, 100), BG) and near(rgb_at(out, 190, 100), BG)  # bars show the canvas
    g = fit(RenderMode.SMART_STRETCH, 1600, 900, 200, 200)  # would need 44 % crop: crops 20 %, stretches
    assert g.width == 200 and g.scaled_width == 250 and g.scaled_height == 200
    g = fit(RenderMode.CROP, 1600, 900, 200, 200)
    assert g.scaled_height == 200 and g.scaled_width == 356 and g.src_x == 78



def test_black_fill_covers_the_whole_tile_in_every_render_mode() -> None:
    comp = Compositor(200, 120, BG)
    for mode in RenderMode:  # a letterboxed tile too: FillType black is the tile, not a square frame
        out = comp.render([tile(0, 0, 200, 120, "u", mode)], {("u", TrackKind.MAIN): Fill.BLACK})
        for y, x in ((60, 100), (60, 4), (60, 195), (4, 100)):
            assert near(rgb_at(out, y, x), (0, 0, 0)), (mode, y, x)

def test_z_order_alpha_and_empty_tiles() -> None:
    frames = {("a", TrackKind.MAIN): solid(64, 64, RED), ("b", TrackKind.MAIN): solid(64, 64, GREEN)}
    comp = Compositor(128, 64, BG)
    placements = [tile(0, 0, 64, 64, "a"), tile(32, 0, 64, 64, "b"), tile(96, 0, 32, 64, None)]  # back to front
    out = comp.render(placements, frames)
    assert near(rgb_at(out, 32, 16), RED)
    assert near(rgb_at(out, 32, 48), GREEN)  # b is above a
    assert near(rgb_at(out, 32, 110), BG)  # empty tile paints the background over b
    half = comp.render([tile(0, 0, 64, 64, "a"), tile(0, 0, 64, 64, "b", alpha=128)], frames)
    mixed = rgb_at(half, 32, 32)
    expected = (np.array(RED) * 128 + np.array(GREEN) * 127) / 255
    assert np.all(np.abs(mixed - expected) <= 16), mixed
    gone = comp.render([tile(0, 0, 64, 64, "a"), tile(0, 0, 64, 64, "b", alpha=255)], frames)
    assert near(rgb_at(gone, 32, 32), RED)
    absent = comp.render([tile(0, 0, 64, 64, "zed")], {})
    assert near(rgb_at(absent, 32, 32), BG)


def test_scaled_source_is_cached_while_reused() -> None:
    frame = solid(640, 360, BLUE)
    comp = Compositor(320, 180)
    for _ in range(5):
        comp.render([tile(0, 0, 160, 90, "u")], {("u", TrackKind.MAIN): frame})
    assert comp.scaled == 1
    comp.render([tile(0, 0, 160, 90, "u")], {("u", TrackKind.MAIN): solid(640, 360, BLUE)})
    assert comp.scaled == 2
