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
from enum import Enum

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from cloudrec.core.layout import Placement
from cloudrec.core.spec import ImageRef, Layout, RenderMode, TrackKind
from cloudrec.media.fonts import Fonts
from cloudrec.media.overlay import Overlays
from cloudrec.media.picture import Layer, Picture, blend
from cloudrec.media.planes import Plane, fit, plane_views, rgb_to_yuv


logger = logging.getLogger(__name__)

# Shrinking averages the covered source pixels (area): sharper than bilinear at 2:1 and cheaper;
# enlarging interpolates (bilinear).
DOWNSCALE_INTERPOLATION = Interpolation.AREA
UPSCALE_INTERPOLATION = Interpolation.BILINEAR

FrameKey = tuple[str, TrackKind]


class Fill(Enum):
    """What a tile shows instead of a frame."""

    BLACK = "black"  # FillType 1 after a source's gap


@dataclass(slots=True)
class _Scaled:
    source: av.VideoFrame  # the frame these views were made from (identity is the cache key)
    frame: av.VideoFrame  # keeps the scaled buffers alive
    layer: Layer  # the window to copy (cut to Fit.width × height) and where it goes in the tile


@dataclass(frozen=True, slots=True)
class _TileKey:
    user_id: str
    track: TrackKind
    width: int
    height: int
    render: RenderMode


class Compositor:
    """Renders, back to front, the background colour, the background image, the placements (video,
    or a placeholder image when a tile has none) and the watermarks onto a `width`×`height`
    yuv420p canvas.

    `render()` returns the same `av.VideoFrame` object each time, repainted: encode it (encoders
    copy the picture) before the next `render()`. Pictures arrive later than the layout (they are
    fetched): until `set_images()` has one, its area shows what is behind it.
    """

    def __init__(self, width: int, height: int, background_rgb: tuple[int, int, int] = (0, 0, 0), *,
                 fonts: Fonts | None = None) -> None:
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError("canvas size must be positive and even")
        self.width = width
        self.height = height
        self._frame = av.VideoFrame(width, height, "yuv420p")
        self._y, self._u, self._v = plane_views(self._frame)
        self._bg = rgb_to_yuv(background_rgb)
        self._bg_image: ImageRef | None = None
        self._images: dict[str, Picture] = {}
        # The static background (colour + image), rebuilt only when one of them changes.
        self._base: tuple[Plane, Plane, Plane] | None = None
        self._base_key: tuple[object, ...] | None = None
        self._fonts = fonts if fonts is not None else Fonts()
        self.overlays = Overlays((), width, height, self._fonts)
        self._cache: dict[_TileKey, _Scaled] = {}
        self._scalers: dict[_TileKey, VideoReformatter] = {}
        self.scaled = 0  # how many source frames were scaled (cache misses)

    def set_scene(self, layout: Layout) -> None:
        """Take the layout's background colour and image and its watermarks."""
        self._bg = rgb_to_yuv(layout.background)
        self._bg_image = layout.background_image
        if layout.watermarks != self.overlays.watermarks:
            self.overlays = Overlays(layout.watermarks, self.width, self.height, self._fonts)

    def set_images(self, images: Mapping[str, Picture]) -> None:
        """The pictures available now, by URL (decoded once, shared read-only)."""
        self._images = dict(images)

    def _canvas(self) -> tuple[Plane, Plane, Plane]:
        return self._y, self._u, self._v

    def _paint_base(self) -> None:
        ref = self._bg_image
        picture = self._images.get(ref.url) if ref is not None else None
        if ref is None or picture is None:
            self._base = None
            for plane, value in zip(self._canvas(), self._bg):
                plane.fill(value)
            return
        key = (self._bg, ref, picture)
        if self._base is None or key != self._base_key:
            base = (np.full_like(self._y, self._bg[0]), np.full_like(self._u, self._bg[1]), np.full_like(self._v, self._bg[2]))
            blend(base, picture.layer(self.width, self.height, ref.render), 0, 0)
            self._base, self._base_key = base, key
        for plane, src in zip(self._canvas(), self._base):
            np.copyto(plane, src)

    def render(self, placements: Sequence[Placement], frames: Mapping[FrameKey, av.VideoFrame | Fill | None],
               wall_time: float | None = None) -> av.VideoFrame:
        """`wall_time`: the frame's wall-clock time (Unix seconds) for timestamp watermarks."""
        self._paint_base()
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
            if frame is Fill.BLACK:  # FillType black: the whole tile, whatever its RenderMode
                self._paint_empty(x, y, w, h, p.alpha, (0, 0, 0))
                continue
            if frame is None or p.user_id is None:
                self._paint_empty(x, y, w, h, p.alpha, p.background)
                picture = self._images.get(p.placeholder.url) if p.placeholder is not None else None
                if picture is not None and p.placeholder is not None:
                    blend(self._canvas(), picture.layer(w, h, p.placeholder.render), x, y, 255 - p.alpha)
                continue
            if p.background is not None:
                self._paint_empty(x, y, w, h, p.alpha, p.background)
            key = _TileKey(user_id=p.user_id, track=p.track, width=w, height=h, render=p.render)
            used.add(key)
            blend(self._canvas(), self._scaled(key, frame).layer, x, y, 255 - p.alpha)
        for stale in [k for k in self._cache if k not in used]:
            del self._cache[stale]
            self._scalers.pop(stale, None)
        for x, y, layer in self.overlays.layers(self._images, wall_time):
            blend(self._canvas(), layer, x, y)
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
            shrink = g.scaled_width <= frame.width and g.scaled_height <= frame.height
            scaled_frame = scaler.reformat(frame, width=g.scaled_width, height=g.scaled_height, format="yuv420p",
                                           interpolation=DOWNSCALE_INTERPOLATION if shrink else UPSCALE_INTERPOLATION,
                                           threads=1)
        py, pu, pv = plane_views(scaled_frame)
        cy, cx, ch, cw = g.src_y // 2, g.src_x // 2, g.height // 2, g.width // 2
        layer = Layer(dx=g.dst_x, dy=g.dst_y, y=py[g.src_y:g.src_y + g.height, g.src_x:g.src_x + g.width],
                      u=pu[cy:cy + ch, cx:cx + cw], v=pv[cy:cy + ch, cx:cx + cw])
        entry = _Scaled(source=frame, frame=scaled_frame, layer=layer)
        self._cache[key] = entry
        self.scaled += 1
        return entry

    def _paint_empty(self, x: int, y: int, w: int, h: int, alpha: int, rgb: tuple[int, int, int] | None) -> None:
        """A tile without video: its own colour, else the background (colour and image) shows."""
        colour = rgb_to_yuv(rgb) if rgb is not None else None
        for i, plane in enumerate(self._canvas()):
            s = 1 if i == 0 else 2
            px, py, pw, ph = x // s, y // s, w // s, h // s
            region = plane[py:py + ph, px:px + pw]
            if colour is None and self._base is None:
                value: int | Plane = self._bg[i]
            elif colour is None:
                assert self._base is not None
                value = self._base[i][py:py + ph, px:px + pw]
            else:
                value = colour[i]
            if alpha == 0:
                region[...] = value
            else:
                mixed = region.astype(np.uint16) * alpha
                mixed += np.asarray(value, dtype=np.uint16) * (255 - alpha) + 127
                mixed //= 255
                region[...] = mixed.astype(np.uint8)
