"""yuv420p plane helpers shared by the compositor and pictures: colour conversion, numpy views
of frame planes, and the RenderMode geometry (`fit`)."""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt

from cloudrec.core.spec import RenderMode

SMART_STRETCH_MAX_CROP = 0.2  # RenderMode 3 crops at most this share of width or height

Plane = npt.NDArray[np.uint8]


def rgb_to_yuv(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """RGB (0–255) → Y'CbCr, BT.601 limited range (Y 16–235, Cb/Cr 16–240)."""
    r, g, b = (max(0, min(255, int(c))) for c in rgb)
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return round(y), round(u), round(v)


def plane_views(frame: av.VideoFrame) -> tuple[Plane, Plane, Plane]:
    """Numpy views (no copy) of a yuv420p frame's Y, U, V planes, padding cut off."""
    out: list[Plane] = []
    for i, plane in enumerate(frame.planes[:3]):
        h = frame.height if i == 0 else (frame.height + 1) // 2
        w = frame.width if i == 0 else (frame.width + 1) // 2
        arr = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(-1, plane.line_size)
        out.append(arr[:h, :w])
    return out[0], out[1], out[2]


def _even(v: float) -> int:
    return max(0, int(round(v / 2.0)) * 2)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fit:
    """How a source lands in a tile: scale the whole source to `scaled_*`, then copy the window
    (`src_x`, `src_y`, `width`, `height`) of it to (`dst_x`, `dst_y`) inside the tile. All even."""

    scaled_width: int
    scaled_height: int
    src_x: int
    src_y: int
    dst_x: int
    dst_y: int
    width: int
    height: int


def fit(mode: RenderMode, src_w: int, src_h: int, tile_w: int, tile_h: int) -> Fit:
    """Geometry of one RenderMode (0 stretch, 1 crop to fill, 2 letterbox, 3 smart stretch)."""
    if src_w <= 0 or src_h <= 0:
        src_w, src_h = tile_w, tile_h
    src_aspect = src_w / src_h
    tile_aspect = tile_w / tile_h
    if mode is RenderMode.STRETCH:
        return Fit(scaled_width=tile_w, scaled_height=tile_h, src_x=0, src_y=0, dst_x=0, dst_y=0, width=tile_w, height=tile_h)
    if mode is RenderMode.LETTERBOX:
        if src_aspect >= tile_aspect:
            w, h = tile_w, min(tile_h, max(2, _even(tile_w / src_aspect)))
        else:
            w, h = min(tile_w, max(2, _even(tile_h * src_aspect))), tile_h
        return Fit(scaled_width=w, scaled_height=h, src_x=0, src_y=0,
                   dst_x=_even((tile_w - w) / 2), dst_y=_even((tile_h - h) / 2), width=w, height=h)
    # CROP and SMART_STRETCH: keep a centred source window, scale it to the whole tile.
    crop_w, crop_h = float(src_w), float(src_h)
    if src_aspect > tile_aspect:  # source too wide: crop width
        crop_w = src_h * tile_aspect
        if mode is RenderMode.SMART_STRETCH:
            crop_w = max(crop_w, src_w * (1 - SMART_STRETCH_MAX_CROP))
    elif src_aspect < tile_aspect:  # source too tall: crop height
        crop_h = src_w / tile_aspect
        if mode is RenderMode.SMART_STRETCH:
            crop_h = max(crop_h, src_h * (1 - SMART_STRETCH_MAX_CROP))
    sw = max(tile_w, _even(tile_w * src_w / crop_w))
    sh = max(tile_h, _even(tile_h * src_h / crop_h))
    return Fit(scaled_width=sw, scaled_height=sh, src_x=_even((sw - tile_w) / 2), src_y=_even((sh - tile_h) / 2),
               dst_x=0, dst_y=0, width=tile_w, height=tile_h)
