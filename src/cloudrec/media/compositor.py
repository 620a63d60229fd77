"""`Compositor`: placements + decoded frames → one yuv420p picture.

Everything stays in yuv420p: sources are scaled (and converted, if they are not yuv420p) with
swscale, then copied as numpy plane slices into a canvas that is the planes of one reusable
`av.VideoFrame`. A scaled source is cached while the same source frame is shown again (sources at
a lower rate than the output, held frames, FillType), so it is scaled once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt
from av.video.reformatter import Interpolation, VideoReformatter

from cloudrec.core.layout import Placement
from cloudrec.core.spec import RenderMode, TrackKind

logger = logging.getLogger(__name__)

SMART_STRETCH_MAX_CROP = 0.2  # RenderMode 3 crops at most this share of width or height
SCALE_INTERPOLATION = Interpolation.BILINEAR

Plane = npt.NDArray[np.uint8]
FrameKey = tuple[str, TrackKind]


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


@dataclass(slots=True)
class _Scaled:
    source: av.VideoFrame  # the frame these views were made from (identity is the cache key)
    frame: av.VideoFrame  # keeps the scaled buffers alive
    planes: tuple[Plane, Plane, Plane]  # the windows to copy (already cut to Fit.width × height)


@dataclass(frozen=True, slots=True)
class _TileKey:
    user_id: str
    track: TrackKind
    width: int
    height: int
    render: RenderMode


class Compositor:
    """Renders placements (back to front) onto a `width`×`height` yuv420p canvas.

    `render()` returns the same `av.VideoFrame` object each time, repainted: encode it (encoders
    copy the picture) before the next `render()`.
    """

    def __init__(self, width: int, height: int, background_rgb: tuple[int, int, int] = (0, 0, 0)) -> None:
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError("canvas size must be positive and even")
        self.width = width
        self.height = height
        self._frame = av.VideoFrame(width, height, "yuv420p")
        self._y, self._u, self._v = plane_views(self._frame)
        self._bg = rgb_to_yuv(background_rgb)
        self._cache: dict[_TileKey, _Scaled] = {}
        self._scalers: dict[_TileKey, VideoReformatter] = {}
        self.scaled = 0  # how many source frames were scaled (cache misses)

    @property
    def background(self) -> tuple[int, int, int]:
        return self._bg

    def set_background(self, rgb: tuple[int, int, int]) -> None:
        self._bg = rgb_to_yuv(rgb)

    def render(self, placements: Sequence[Placement], frames: Mapping[FrameKey, av.VideoFrame | None]) -> av.VideoFrame:
        y_bg, u_bg, v_bg = self._bg
        self._y.fill(y_bg)
        self._u.fill(u_bg)
        self._v.fill(v_bg)
        used: set[_TileKey] = set()
        for p in placements:
            x, y = p.x, p.y
            w = min(p.width, self.width - x)
            h = min(p.height, self.height - y)
            if w < 2 or h < 2 or x < 0 or y < 0 or p.alpha >= 255:
                continue
            w -= w % 2
            h -= h % 2
            frame = frames.get((p.user_id, p.track)) if p.user_id is not None else None
            if frame is None or p.user_id is None:
                self._paint_background(x, y, w, h, p.alpha)
                continue
            key = _TileKey(user_id=p.user_id, track=p.track, width=w, height=h, render=p.render)
            used.add(key)
            scaled = self._scaled(key, frame)
            g = fit(p.render, frame.width, frame.height, w, h)
            sy, su, sv = scaled.planes
            self._blit(self._y, sy, x + g.dst_x, y + g.dst_y, p.alpha)
            self._blit(self._u, su, (x + g.dst_x) // 2, (y + g.dst_y) // 2, p.alpha)
            self._blit(self._v, sv, (x + g.dst_x) // 2, (y + g.dst_y) // 2, p.alpha)
        for stale in [k for k in self._cache if k not in used]:
            del self._cache[stale]
            self._scalers.pop(stale, None)
        return self._frame

    def _scaled(self, key: _TileKey, frame: av.VideoFrame) -> _Scaled:
        cached = self._cache.get(key)
        if cached is not None and cached.source is frame:
            return cached
        g = fit(key.render, frame.width, frame.height, key.width, key.height)
        if frame.format.name == "yuv420p" and frame.width == g.scaled_width and frame.height == g.scaled_height:
            scaled_frame = frame
        else:
            scaler = self._scalers.get(key)
            if scaler is None:
                scaler = self._scalers[key] = VideoReformatter()
            scaled_frame = scaler.reformat(frame, width=g.scaled_width, height=g.scaled_height, format="yuv420p",
                                           interpolation=SCALE_INTERPOLATION, threads=1)
        py, pu, pv = plane_views(scaled_frame)
        cy, cx, ch, cw = g.src_y // 2, g.src_x // 2, g.height // 2, g.width // 2
        planes = (
            py[g.src_y:g.src_y + g.height, g.src_x:g.src_x + g.width],
            pu[cy:cy + ch, cx:cx + cw],
            pv[cy:cy + ch, cx:cx + cw],
        )
        entry = _Scaled(source=frame, frame=scaled_frame, planes=planes)
        self._cache[key] = entry
        self.scaled += 1
        return entry

    @staticmethod
    def _blit(dst: Plane, src: Plane, x: int, y: int, alpha: int) -> None:
        h = min(src.shape[0], dst.shape[0] - y)
        w = min(src.shape[1], dst.shape[1] - x)
        if h <= 0 or w <= 0:
            return
        region = dst[y:y + h, x:x + w]
        if alpha == 0:
            region[...] = src[:h, :w]
            return
        # alpha: 0 opaque … 255 transparent. out = src·(255−a)/255 + dst·a/255, rounded.
        mixed = src[:h, :w].astype(np.uint16) * (255 - alpha)
        mixed += region.astype(np.uint16) * alpha
        mixed += 127
        mixed //= 255
        region[...] = mixed.astype(np.uint8)

    def _paint_background(self, x: int, y: int, w: int, h: int, alpha: int) -> None:
        for plane, value, px, py, pw, ph in (
            (self._y, self._bg[0], x, y, w, h),
            (self._u, self._bg[1], x // 2, y // 2, w // 2, h // 2),
            (self._v, self._bg[2], x // 2, y // 2, w // 2, h // 2),
        ):
            region = plane[py:py + ph, px:px + pw]
            if alpha == 0:
                region.fill(value)
            else:
                mixed = region.astype(np.uint16) * alpha
                mixed += value * (255 - alpha) + 127
                mixed //= 255
                region[...] = mixed.astype(np.uint8)
