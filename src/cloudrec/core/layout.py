"""Layout geometry: (layout, canvas, participants) → rectangles. Pure functions, no media.

Rectangles are snapped to even pixels because the compositor works on yuv420p planes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from cloudrec.core.spec import RGB, Area, ImageRef, Layout, LayoutMode, RenderMode, TrackKind

MAX_TILES = 25


@dataclass(frozen=True, slots=True, kw_only=True)
class Participant:
    """What layout needs to know of a user, in room-entry order."""

    user_id: str
    video: frozenset[TrackKind]  # published (and subscribed) video tracks


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    x: int
    y: int
    width: int
    height: int
    user_id: str | None  # None = an empty tile (placeholder)
    track: TrackKind
    z: int = 0
    alpha: int = 0
    render: RenderMode = RenderMode.CROP
    background: RGB | None = None  # painted behind the video (None: the canvas shows through)
    placeholder: ImageRef | None = None  # drawn when the tile has no video (placeholders on only)


def _even(v: float) -> int:
    return int(round(v / 2.0)) * 2


def _rect(x: float, y: float, w: float, h: float) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = _even(x), _even(y), _even(x + w), _even(y + h)
    return x0, y0, max(2, x1 - x0), max(2, y1 - y0)


def grid_cells(count: int, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Grid ("nine-grid") cells: 1 full, 2 side by side, ≤4 2×2, ≤9 3×3, ≤16 4×4, else 5×5."""
    if count <= 0:
        return []
    count = min(count, MAX_TILES)
    if count == 1:
        return [_rect(0, 0, width, height)]
    if count == 2:
        return [_rect(0, 0, width / 2, height), _rect(width / 2, 0, width / 2, height)]
    side = 2 if count <= 4 else 3 if count <= 9 else 4 if count <= 16 else 5
    cw, ch = width / side, height / side
    return [_rect((i % side) * cw, (i // side) * ch, cw, ch) for i in range(count)]


def float_cells(count: int, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Floating: cell 0 is the whole canvas; small tiles rise in rows from the bottom-left."""
    if count <= 0:
        return []
    count = min(count, MAX_TILES)
    cells = [_rect(0, 0, width, height)]
    small = count - 1
    per_row, size, gap = (4, 0.235, 0.012) if count <= 17 else (5, 0.188, 0.01)
    for i in range(small):
        row, col = divmod(i, per_row)
        x = gap * width + col * (size + gap) * width
        y = height - (row + 1) * (size + gap) * height
        cells.append(_rect(x, y, size * width, size * height))
    return cells


def screen_share_cells(count: int, width: int, height: int, big_right: bool = False) -> list[tuple[int, int, int, int]]:
    """Screen sharing: a big window and a column (or columns) of small tiles."""
    if count <= 0:
        return []
    count = min(count, MAX_TILES)
    small = count - 1
    if small <= 4:
        sw, sh, bw = width / 5, height / 4, width * 4 / 5
    elif small <= 6:
        sw, sh, bw = width / 7, height / 6, width * 6 / 7
    elif small <= 8:
        sw, sh, bw = width / 9, height / 8, width * 8 / 9
    else:
        sw, sh, bw = width / 10, height / 8, width * 4 / 5
    bh = height if small <= 16 else height * 7 / 8
    bx = width - bw if big_right else 0
    sx0 = 0 if big_right else bw
    cells = [_rect(bx, 0, bw, bh)]
    cols = max(1, math.ceil(min(small, 16) / 8)) if small > 8 else 1
    for i in range(small):
        if i < 8 * cols:
            col, row = divmod(i, 8 if small > 8 else max(small, 1))
            cells.append(_rect(sx0 + col * sw, row * sh, sw, sh))
        else:  # beyond 16: along the bottom
            j = i - 8 * cols
            cells.append(_rect(j * sw, bh, sw, height - bh))
    return cells


def place(layout: Layout, width: int, height: int, participants: list[Participant]) -> list[Placement]:
    """Where each participant's video goes, in paint order (back to front)."""
    if layout.mode is LayoutMode.CUSTOM:
        return _place_custom(layout, width, height, participants)
    out = _place_template(layout, width, height, participants)
    if layout.placeholders and layout.default_placeholder is not None:
        out = [replace(p, placeholder=layout.default_placeholder) for p in out]
    return out


def _place_template(layout: Layout, width: int, height: int, participants: list[Participant]) -> list[Placement]:
    shown = [p for p in participants if p.video or not layout.pure_audio_disable]
    order = [(p.user_id, TrackKind.MAIN if TrackKind.MAIN in p.video or not p.video else next(iter(p.video))) for p in shown]
    if layout.mode is LayoutMode.GRID:
        cells = grid_cells(len(order), width, height)
        return [
            Placement(x=c[0], y=c[1], width=c[2], height=c[3], user_id=u, track=t, render=layout.render)
            for c, (u, t) in zip(cells, order)
        ]
    # FLOAT / SCREEN_SHARE: the big window goes to main_user_id (or, in FLOAT, the first to enter).
    big: tuple[str, TrackKind] | None = None
    if layout.main_user_id:
        big = (layout.main_user_id, layout.main_track)
        order = [o for o in order if o[0] != layout.main_user_id]
    elif layout.mode is LayoutMode.FLOAT and order:
        big, order = order[0], order[1:]
    cells = (float_cells if layout.mode is LayoutMode.FLOAT else screen_share_cells)(len(order) + 1, width, height)
    out: list[Placement] = []
    if big is not None:
        c = cells[0]
        out.append(Placement(x=c[0], y=c[1], width=c[2], height=c[3], user_id=big[0], track=big[1], render=layout.render))
    for c, (u, t) in zip(cells[1:], order):
        out.append(Placement(x=c[0], y=c[1], width=c[2], height=c[3], user_id=u, track=t, z=1, render=layout.render))
    return out


def area_rect(area: Area, width: int, height: int) -> tuple[int, int, int, int]:
    """A normalized rectangle in canvas pixels, clamped to the canvas (fractions outside 0–1 are cut)."""
    x0, y0 = min(max(area.x, 0.0), 1.0), min(max(area.y, 0.0), 1.0)
    x1, y1 = min(max(area.x + area.width, x0), 1.0), min(max(area.y + area.height, y0), 1.0)
    return _rect(x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height)


def _place_custom(layout: Layout, width: int, height: int, participants: list[Participant]) -> list[Placement]:
    panes = layout.panes
    named = {p.user_id for p in panes if p.user_id}
    free = iter([p.user_id for p in participants if p.user_id not in named and p.video])
    # Unnamed panes take users in room-entry order, in the order the panes were listed.
    users = [pane.user_id or next(free, None) for pane in panes]
    out: list[Placement] = []
    for pane, user in zip(panes, users):
        if pane.area is not None:
            x, y, w, h = area_rect(pane.area, width, height)
        else:
            x, y, w, h = _even(pane.x), _even(pane.y), max(2, _even(pane.width)), max(2, _even(pane.height))
        placeholder = (pane.placeholder or layout.default_placeholder) if layout.placeholders else None
        out.append(Placement(
            x=x, y=y, width=w, height=h, user_id=user, track=pane.track, z=pane.z, alpha=pane.alpha,
            render=pane.render, background=pane.background, placeholder=placeholder,
        ))
    return sorted(out, key=lambda p: p.z)  # stable: equal z keeps list order
