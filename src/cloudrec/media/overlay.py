"""`Overlays`: the watermarks of a layout (image, text, timestamp) as ready-to-blend layers.

Text is rendered once with Pillow (FreeType, in the watermark's face: `media/fonts.py`) into an
RGBA picture; a timestamp is re-rendered only when its displayed second changes. Everything else
per frame is the alpha blend of each watermark's rectangle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
from PIL import Image, ImageDraw

from cloudrec.core.spec import RGB, Corner, RenderMode, Watermark, WatermarkKind
from cloudrec.media.fonts import Font, Fonts
from cloudrec.media.picture import Layer, Picture

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
TIMESTAMP_TEMPLATE = "8888-88-88 88:88:88"  # sizes the box (8 is about the widest digit)
TIMESTAMP_HEIGHT_SHARE = 0.04  # timestamp font size when none is given: 4 % of the canvas height
TEXT_PAD = 2  # pixels between a text watermark's box edge and its text
MARGIN_SHARE = 0.02  # timestamp distance from the canvas edges


def text_picture(text: str, font: Font, color: RGB, background: RGB | None,
                 size: tuple[int, int] | None = None, pad: int = 0, stroke: RGB | None = None) -> Picture:
    """`text` drawn left-aligned and vertically centred in a box of `size` (default: fitted)."""
    stroke_width = 1 if stroke is not None else 0
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox(
        (0, 0), text, font=font, stroke_width=stroke_width)
    bw, bh = size if size is not None else (math.ceil(right - left) + 2 * pad, math.ceil(bottom - top) + 2 * pad)
    w, h = max(2, bw + bw % 2), max(2, bh + bh % 2)
    # A transparent box still carries the text colour, so antialiased edges do not darken.
    fill = (*background, 255) if background is not None else (*color, 0)
    img = Image.new("RGBA", (w, h), fill)
    draw = ImageDraw.Draw(img)
    y = (h - (bottom - top)) / 2 - top
    draw.text((pad - left, y), text, font=font, fill=(*color, 255), stroke_width=stroke_width,
              stroke_fill=(*stroke, 255) if stroke is not None else None)
    return Picture(np.asarray(img, dtype=np.uint8))


def timestamp_text(wall_time: float, tz_hours: float) -> str:
    tz = timezone(timedelta(hours=tz_hours))
    return datetime.fromtimestamp(wall_time, tz).strftime(TIMESTAMP_FORMAT)


def corner_origin(position: Corner, box: tuple[int, int], canvas: tuple[int, int]) -> tuple[int, int]:
    """Top-left of a `box` placed at `position` on the canvas, `MARGIN_SHARE` from the edges, even."""
    (w, h), (cw, ch) = box, canvas
    mx, my = round(cw * MARGIN_SHARE), round(ch * MARGIN_SHARE)
    x = {Corner.TOP_LEFT: mx, Corner.BOTTOM_LEFT: mx, Corner.TOP_RIGHT: cw - w - mx, Corner.BOTTOM_RIGHT: cw - w - mx}
    y = {Corner.TOP_LEFT: my, Corner.TOP_RIGHT: my, Corner.TOP_CENTER: my, Corner.BOTTOM_LEFT: ch - h - my,
         Corner.BOTTOM_RIGHT: ch - h - my, Corner.BOTTOM_CENTER: ch - h - my}
    ox = x.get(position, (cw - w) // 2)
    oy = y.get(position, (ch - h) // 2)
    return max(0, ox - ox % 2), max(0, oy - oy % 2)


@dataclass(slots=True)
class _Timestamp:
    second: int | None = None  # the displayed second of the cached rendering
    layer: Layer | None = None
    box: tuple[int, int] | None = None  # fixed for the watermark, so the text does not jitter
    x: int = 0
    y: int = 0


class Overlays:
    """Watermarks in list order; `layers()` gives (x, y, layer) to blend, back to front."""

    def __init__(self, watermarks: tuple[Watermark, ...], width: int, height: int, fonts: Fonts) -> None:
        self.watermarks = watermarks
        self.width = width
        self.height = height
        self.fonts = fonts
        self._text: dict[int, tuple[int, int, Layer] | None] = {}
        self._times: dict[int, _Timestamp] = {}
        self.renders = 0  # text/timestamp renderings so far (a timestamp: once per second)

    def _rect(self, wm: Watermark) -> tuple[int, int, int, int] | None:
        x, y = max(0, wm.x - wm.x % 2), max(0, wm.y - wm.y % 2)
        w, h = min(wm.width, self.width - x), min(wm.height, self.height - y)
        w, h = w - w % 2, h - h % 2
        return (x, y, w, h) if w >= 2 and h >= 2 else None

    def layers(self, images: Mapping[str, Picture], wall_time: float | None) -> list[tuple[int, int, Layer]]:
        out: list[tuple[int, int, Layer]] = []
        for i, wm in enumerate(self.watermarks):
            placed: tuple[int, int, Layer] | None = None
            if wm.kind is WatermarkKind.IMAGE:
                picture = images.get(wm.image.url) if wm.image is not None else None
                rect = self._rect(wm)
                if picture is not None and rect is not None:
                    x, y, w, h = rect
                    render = wm.image.render if wm.image is not None else RenderMode.STRETCH
                    placed = (x, y, picture.layer(w, h, render))
            elif wm.kind is WatermarkKind.TEXT:
                placed = self._text_layer(i, wm)
            elif wall_time is not None:
                placed = self._timestamp_layer(i, wm, wall_time)
            if placed is not None:
                out.append(placed)
        return out

    def _text_layer(self, i: int, wm: Watermark) -> tuple[int, int, Layer] | None:
        if i not in self._text:
            rect = self._rect(wm)
            if rect is None or not wm.text:
                self._text[i] = None
            else:
                x, y, w, h = rect
                font = self.fonts.get(wm.font_size, wm.font, wm.text)
                picture = text_picture(wm.text, font, wm.font_color, wm.text_background, (w, h), pad=TEXT_PAD)
                self._text[i] = (x, y, picture.layer(w, h, RenderMode.STRETCH))
                self.renders += 1
        return self._text[i]

    def _timestamp_layer(self, i: int, wm: Watermark, wall_time: float) -> tuple[int, int, Layer]:
        ts = self._times.setdefault(i, _Timestamp())
        second = math.floor(wall_time)
        if ts.second != second or ts.layer is None:
            font = self.fonts.get(wm.font_size or round(self.height * TIMESTAMP_HEIGHT_SHARE), wm.font)
            stroke = None if wm.text_background else (0, 0, 0)  # an outline keeps it legible on any picture
            if ts.box is None:
                widest = text_picture(TIMESTAMP_TEMPLATE, font, wm.font_color, None, pad=2, stroke=stroke)
                w, h = min(widest.width, self.width), min(widest.height, self.height)
                ts.box = (w - w % 2, h - h % 2)
            w, h = ts.box
            picture = text_picture(timestamp_text(second, wm.tz_hours), font, wm.font_color, wm.text_background,
                                   size=(w, h), pad=2, stroke=stroke)
            ts.x, ts.y = corner_origin(wm.position, (w, h), (self.width, self.height))
            ts.layer = picture.layer(w, h, RenderMode.STRETCH)
            ts.second = second
            self.renders += 1
        return ts.x, ts.y, ts.layer
