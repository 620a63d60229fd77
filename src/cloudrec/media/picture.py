"""`Picture`: a still image (background, placeholder, watermark, rendered text) as yuv420p + alpha.

A picture is decoded once (Pillow; PNG and JPEG only) into RGBA and converted with swscale to
`yuva420p` per target size and RenderMode (`fit`), cached, so the compositor only copies or
alpha-blends numpy plane slices per frame — the canvas never goes through RGB.
Alpha here is opacity: 0 transparent … 255 opaque.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt
from av.video.reformatter import Interpolation
from PIL import Image, ImageOps

from cloudrec.core.spec import RenderMode
from cloudrec.media.planes import Plane, fit, plane_views

FORMATS = ("PNG", "JPEG")
MAX_SIDE = 2560  # "≤ 2K resolution"
MAX_PIXELS = 2560 * 1440
LAYER_CACHE = 8  # scaled sizes kept per picture (tile sizes change only with the layout)

Planes = tuple[Plane, Plane, Plane]


class PictureError(ValueError):
    """Not a PNG/JPEG picture we accept (format, size, or undecodable)."""


@dataclass(frozen=True, slots=True)
class Layer:
    """A picture fitted into a `width`×`height` target: planes to put at (`dx`, `dy`) inside it.

    `a`/`a_c` are the luma/chroma-resolution opacity (None: opaque); `ya`, `ua`, `va` are the
    planes premultiplied by it and `inv`/`inv_c` are 255 − opacity, both uint16, so a blend per
    frame is one multiply-add per pixel.
    """

    dx: int
    dy: int
    y: Plane
    u: Plane
    v: Plane
    a: Plane | None = None
    a_c: Plane | None = None
    ya: npt.NDArray[np.uint16] | None = None
    ua: npt.NDArray[np.uint16] | None = None
    va: npt.NDArray[np.uint16] | None = None
    inv: npt.NDArray[np.uint16] | None = None
    inv_c: npt.NDArray[np.uint16] | None = None

    @property
    def width(self) -> int:
        return int(self.y.shape[1])

    @property
    def height(self) -> int:
        return int(self.y.shape[0])


def chroma_alpha(a: Plane) -> Plane:
    """Opacity at chroma resolution: the mean of each 2×2 block."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    blocks = a[:h, :w].astype(np.uint16).reshape(h // 2, 2, w // 2, 2)
    out: Plane = ((blocks.sum(axis=(1, 3)) + 2) // 4).astype(np.uint8)
    return out


def make_layer(y: Plane, u: Plane, v: Plane, a: Plane | None, dx: int = 0, dy: int = 0) -> Layer:
    if a is None or bool(np.all(a == 255)):
        return Layer(dx=dx, dy=dy, y=y, u=u, v=v)
    a_c = chroma_alpha(a)[: u.shape[0], : u.shape[1]]
    a16, c16 = a.astype(np.uint16), a_c.astype(np.uint16)
    return Layer(dx=dx, dy=dy, y=y, u=u, v=v, a=a, a_c=a_c, ya=y * a16, ua=u * c16, va=v * c16,
                 inv=255 - a16, inv_c=255 - c16)


class Picture:
    """A decoded RGBA picture; `layer()` gives it fitted to a target size, cached per size and mode.

    Read-only after construction, so one picture may be shared by several pipelines (threads).
    """

    def __init__(self, rgba: npt.NDArray[np.uint8]) -> None:
        if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.shape[0] < 1 or rgba.shape[1] < 1:
            raise PictureError("a picture needs an RGBA array")
        self.height, self.width = int(rgba.shape[0]), int(rgba.shape[1])
        self.opaque = bool(np.all(rgba[:, :, 3] == 255))
        self._frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgba), format="rgba")
        self._layers: OrderedDict[tuple[int, int, RenderMode], Layer] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def decode(cls, data: bytes, *, max_side: int = MAX_SIDE, max_pixels: int = MAX_PIXELS) -> Picture:
        """PNG or JPEG bytes → picture (EXIF orientation applied). Raises `PictureError`."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                opened = Image.open(io.BytesIO(data), formats=list(FORMATS))
                w, h = opened.size  # from the header: checked before the pixels are decoded
                if w > max_side or h > max_side or w * h > max_pixels:
                    raise PictureError(f"picture is {w}x{h}, larger than allowed")
                img = ImageOps.exif_transpose(opened).convert("RGBA")
                return cls(np.asarray(img, dtype=np.uint8))
        except PictureError:
            raise
        except (OSError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise PictureError(f"not a PNG/JPEG picture: {exc}") from exc

    def layer(self, width: int, height: int, render: RenderMode = RenderMode.STRETCH) -> Layer:
        """This picture fitted into `width`×`height` (even) with `render` (compositor `fit`)."""
        key = (width, height, render)
        with self._lock:
            cached = self._layers.get(key)
            if cached is not None:
                self._layers.move_to_end(key)
                return cached
        g = fit(render, self.width, self.height, width, height)
        scaled = self._frame.reformat(width=g.scaled_width, height=g.scaled_height, format="yuva420p",
                                      interpolation=Interpolation.BICUBIC)
        py, pu, pv = plane_views(scaled)
        pa = np.frombuffer(memoryview(scaled.planes[3]), dtype=np.uint8).reshape(-1, scaled.planes[3].line_size)
        pa = pa[: g.scaled_height, : g.scaled_width]
        cy, cx, ch, cw = g.src_y // 2, g.src_x // 2, g.height // 2, g.width // 2
        layer = make_layer(
            py[g.src_y:g.src_y + g.height, g.src_x:g.src_x + g.width].copy(),
            pu[cy:cy + ch, cx:cx + cw].copy(),
            pv[cy:cy + ch, cx:cx + cw].copy(),
            None if self.opaque else pa[g.src_y:g.src_y + g.height, g.src_x:g.src_x + g.width].copy(),
            dx=g.dst_x, dy=g.dst_y,
        )
        with self._lock:
            self._layers[key] = layer
            while len(self._layers) > LAYER_CACHE:
                self._layers.popitem(last=False)
        return layer


def blend(dst: Planes, layer: Layer, x: int, y: int, opacity: int = 255) -> None:
    """Draw `layer` with its top-left at (x + dx, y + dy) of the canvas planes (even), clipped.

    `opacity` (0–255) scales the layer's own opacity (a tile's Alpha).
    """
    x, y = x + layer.dx, y + layer.dy
    if opacity <= 0 or x < 0 or y < 0:
        return
    h = min(layer.height, dst[0].shape[0] - y)
    w = min(layer.width, dst[0].shape[1] - x)
    h, w = h - h % 2, w - w % 2
    if h <= 0 or w <= 0:
        return
    for i, (src, pre, inv) in enumerate(((layer.y, layer.ya, layer.inv), (layer.u, layer.ua, layer.inv_c),
                                         (layer.v, layer.va, layer.inv_c))):
        s = 1 if i == 0 else 2
        px, py, pw, ph = x // s, y // s, w // s, h // s
        region = dst[i][py:py + ph, px:px + pw]
        if opacity >= 255 and inv is None:  # opaque: a copy
            region[...] = src[:ph, :pw]
            continue
        if opacity >= 255 and pre is not None and inv is not None:
            mixed = region * inv[:ph, :pw]
            mixed += pre[:ph, :pw]
        else:  # scaled opacity (rare: a transparent tile): compute the weights now
            alpha = layer.a if i == 0 else layer.a_c
            a: np.uint16 | npt.NDArray[np.uint16] = (
                np.uint16(opacity) if alpha is None else (alpha[:ph, :pw].astype(np.uint16) * opacity + 127) // 255)
            mixed = src[:ph, :pw] * a
            mixed += region * (255 - a)
        mixed += 127
        mixed //= 255
        region[...] = mixed
