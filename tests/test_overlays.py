"""Pictures in the mix: normalized panes (golden geometry), background image, placeholders, per-pane
background, z-order, watermarks (image with transparency, text, timestamp); the layout records
survive the task store; and H.265 through the mixed pipeline into MP4 (hvc1) and HLS."""

from __future__ import annotations

import io
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from cloudrec.core.naming import A8Names
from cloudrec.core.layout import Participant, area_rect, place
from cloudrec.core.records import from_plain, to_plain
from cloudrec.core.spec import (
    CJK_FONT_FACE, Area, AudioEncoding, Corner, FillType, ImageRef, Layout, LayoutMode, Pane, RenderMode, TrackKind, VideoEncoding,
    Watermark, WatermarkKind,
)
from cloudrec.errors import InvalidRequest
from cloudrec.media.compositor import Compositor
from cloudrec.media.mixed import MixedPipeline
from cloudrec.media.fonts import Font, FontFile, FontFiles, Fonts, font_files, glyph_shape
from cloudrec.media.overlay import Overlays, timestamp_text
from cloudrec.media.picture import Picture
from cloudrec.output.hls import HlsSink
from cloudrec.output.target import SinkTarget
from cloudrec.settings import parse_settings
from tests.test_mixed_pipeline import (
    COLOURS, FPS, Feeder, QueueSource, close_to, make_sink, participants, read_output, run_pipeline, source_media,
)

W, H = 640, 360
BLUE, GREEN, MAGENTA, RED = (0, 0, 160), (20, 180, 60), (230, 30, 230), (240, 20, 20)


def picture(size: tuple[int, int], rgba: tuple[int, int, int, int], fmt: str = "PNG") -> Picture:
    """A solid picture encoded as PNG/JPEG and decoded back, as the fetcher would hand it over."""
    img = Image.new("RGBA", size, rgba)
    buf = io.BytesIO()
    (img.convert("RGB") if fmt == "JPEG" else img).save(buf, fmt)
    return Picture.decode(buf.getvalue())


def half_transparent_png(size: tuple[int, int], rgb: tuple[int, int, int]) -> Picture:
    """Left half fully transparent, right half opaque `rgb`."""
    img = Image.new("RGBA", size, (*rgb, 0))
    img.paste((*rgb, 255), (size[0] // 2, 0, size[0], size[1]))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return Picture.decode(buf.getvalue())


def solid_frame(rgb: tuple[int, int, int], w: int = 320, h: int = 180) -> av.VideoFrame:
    arr = np.empty((h, w, 3), np.uint8)
    arr[...] = rgb
    return av.VideoFrame.from_ndarray(arr, format="rgb24").reformat(format="yuv420p")


def people(*ids: str) -> list[Participant]:
    return [Participant(user_id=u, video=frozenset({TrackKind.MAIN})) for u in ids]


def rgb_of(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


# -- golden geometry of normalized panes ------------------------------------------------------------


@pytest.mark.parametrize("area, canvas, expected", [
    (Area(x=0, y=0, width=0.5, height=0.5), (1280, 720), (0, 0, 640, 360)),
    (Area(x=0.5, y=0.5, width=0.5, height=0.5), (1280, 720), (640, 360, 640, 360)),
    (Area(x=0.25, y=0.25, width=0.5, height=0.5), (1280, 720), (320, 180, 640, 360)),
    (Area(x=0.1, y=0.1, width=0.3333, height=0.3333), (1280, 720), (128, 72, 426, 240)),
    (Area(x=0.9, y=0.9, width=0.5, height=0.5), (1280, 720), (1152, 648, 128, 72)),  # cut at the edge
    (Area(x=-0.1, y=0, width=0.3, height=1), (1280, 720), (0, 0, 256, 720)),
    (Area(x=1 / 3, y=0, width=1 / 3, height=0.5), (360, 640), (120, 0, 120, 320)),
    (Area(x=0, y=0, width=1, height=1), (1920, 1080), (0, 0, 1920, 1080)),
])
def test_normalized_pane_geometry(area: Area, canvas: tuple[int, int], expected: tuple[int, int, int, int]) -> None:
    assert area_rect(area, *canvas) == expected


def test_normalized_panes_z_order_fill_and_pictures() -> None:
    bg_black, own = ImageRef(url="http://img/default.png"), ImageRef(url="http://img/own.png", render=RenderMode.LETTERBOX)
    panes = (
        Pane(area=Area(x=0.25, y=0.25, width=0.5, height=0.5), user_id="top", z=2, background=(0, 0, 0), placeholder=own),
        Pane(area=Area(x=0, y=0, width=1, height=1), z=0),  # unnamed: the first user without a pane
        Pane(area=Area(x=0.5, y=0, width=0.5, height=0.5), user_id="absent", z=1),
    )
    layout = Layout(mode=LayoutMode.CUSTOM, panes=panes, placeholders=True, default_placeholder=bg_black)
    placed = place(layout, 1280, 720, people("a", "top", "b"))
    assert [(p.user_id, p.z, p.x, p.y, p.width, p.height) for p in placed] == [
        ("a", 0, 0, 0, 1280, 720), ("absent", 1, 640, 0, 640, 360), ("top", 2, 320, 180, 640, 360)]
    assert [p.placeholder for p in placed] == [bg_black, bg_black, own]
    assert placed[2].background == (0, 0, 0) and placed[0].background is None
    off = place(Layout(mode=LayoutMode.CUSTOM, panes=panes, default_placeholder=bg_black), 1280, 720, people("a"))
    assert all(p.placeholder is None for p in off)  # PlaceHolderMode off: no pictures in empty tiles
    grid = place(Layout(mode=LayoutMode.GRID, placeholders=True, default_placeholder=bg_black), 640, 360, people("a", "b"))
    assert [p.placeholder for p in grid] == [bg_black, bg_black]
    assert layout.image_urls() == ("http://img/default.png", "http://img/own.png")


def test_layout_with_pictures_survives_the_task_store() -> None:
    layout = Layout(
        mode=LayoutMode.CUSTOM, background=(1, 2, 3), background_image=ImageRef(url="http://x/bg.jpg", render=RenderMode.LETTERBOX),
        panes=(Pane(area=Area(x=0.1, y=0.2, width=0.3, height=0.4), background=(9, 9, 9), placeholder=ImageRef(url="http://x/p.png")),),
        placeholders=True, default_placeholder=ImageRef(url="http://x/d.png"),
        watermarks=(Watermark(kind=WatermarkKind.IMAGE, x=1, y=2, width=3, height=4, image=ImageRef(url="http://x/w.png")),
                    Watermark(kind=WatermarkKind.TEXT, text="hi", font_color=(1, 2, 3), text_background=None),
                    Watermark(kind=WatermarkKind.TIMESTAMP, position=Corner.CENTER, tz_hours=-5.0)),
    )
    assert from_plain(Layout, to_plain(layout)) == layout


# -- compositor: exact pixels -----------------------------------------------------------------------


def test_background_image_placeholder_pane_background_and_z_order() -> None:
    comp = Compositor(W, H)
    layout = Layout(
        mode=LayoutMode.CUSTOM, background=BLUE, background_image=ImageRef(url="bg", render=RenderMode.LETTERBOX),
        placeholders=True, default_placeholder=ImageRef(url="ph"),
        panes=(
            Pane(area=Area(x=0.5, y=0.5, width=0.5, height=0.5), user_id="front", z=3, render=RenderMode.LETTERBOX,
                 background=(250, 250, 250)),
            Pane(area=Area(x=0.25, y=0.25, width=0.5, height=0.5), user_id="back", z=1),
            Pane(x=0, y=0, width=160, height=90, user_id="absent"),
        ),
    )
    comp.set_scene(layout)
    placements = place(layout, W, H, people("front", "back"))
    frames = {("front", TrackKind.MAIN): solid_frame(COLOURS[0], 160, 180),  # tall: letterboxed with bars
              ("back", TrackKind.MAIN): solid_frame(COLOURS[1])}
    before = rgb_of(comp.render(placements, frames))
    assert close_to(before[340, 20], BLUE)  # no pictures yet: the colour
    assert close_to(before[45, 80], BLUE)  # the empty tile shows the background until its picture comes
    comp.set_images({"bg": picture((320, 320), (*GREEN, 255), "JPEG"), "ph": picture((32, 18), (*MAGENTA, 255))})
    rgb = rgb_of(comp.render(placements, frames))
    assert close_to(rgb[60, 200], GREEN)  # square background image letterboxed in the middle of the canvas
    assert close_to(rgb[180, 20], BLUE) and close_to(rgb[60, 620], BLUE)  # … with the colour in its bars
    assert close_to(rgb[45, 80], MAGENTA)  # placeholder in the absent user's tile
    assert close_to(rgb[200, 250], COLOURS[1])  # back tile
    assert close_to(rgb[270, 480], COLOURS[0])  # front tile over the back tile (z 3 > z 1)
    assert close_to(rgb[120, 400], COLOURS[1])  # back tile where the front one does not reach
    assert close_to(rgb[200, 340], (250, 250, 250))  # letterbox bar of the front tile: its own background, over back
    assert close_to(rgb[300, 600], (250, 250, 250))


def test_image_watermark_respects_png_transparency_and_tile_alpha() -> None:
    comp = Compositor(W, H, BLUE)
    wm = Watermark(kind=WatermarkKind.IMAGE, x=100, y=100, width=200, height=100, image=ImageRef(url="wm"))
    semi = Watermark(kind=WatermarkKind.IMAGE, x=400, y=100, width=100, height=100, image=ImageRef(url="semi"))
    comp.set_scene(Layout(background=BLUE, watermarks=(wm, semi)))
    comp.set_images({"wm": half_transparent_png((64, 32), RED), "semi": picture((8, 8), (255, 255, 255, 128))})
    rgb = rgb_of(comp.render([], {}))
    assert close_to(rgb[150, 150], BLUE, tol=6)  # the transparent half shows the canvas
    assert close_to(rgb[150, 250], RED, tol=12)  # the opaque half is drawn
    assert close_to(rgb[150, 450], tuple((np.array(BLUE) + 255) // 2), tol=10)  # 50 % white over blue
    assert close_to(rgb[50, 50], BLUE, tol=4)  # nothing outside


def test_text_watermark_colour_and_background() -> None:
    comp = Compositor(W, H, BLUE)
    plain = Watermark(kind=WatermarkKind.TEXT, x=20, y=20, width=300, height=60, text="cloudrec ABC", font_size=40,
                      font_color=(250, 20, 20))
    boxed = Watermark(kind=WatermarkKind.TEXT, x=20, y=200, width=300, height=60, text="boxed", font_size=40,
                      font_color=(250, 250, 250), text_background=(20, 160, 20))
    comp.set_scene(Layout(background=BLUE, watermarks=(plain, boxed)))
    rgb = rgb_of(comp.render([], {})).astype(int)
    region = rgb[20:80, 20:320]
    reds = np.all(np.abs(region - np.array([250, 20, 20])) < 40, axis=2)
    blues = np.all(np.abs(region - np.array(BLUE)) < 10, axis=2)
    assert reds.sum() > 300  # glyphs in the font colour
    assert blues.sum() > region.shape[0] * region.shape[1] * 0.5  # transparent box: mostly canvas
    box = rgb[200:260, 20:320]
    assert np.all(np.abs(box[2, 2] - np.array([20, 160, 20])) < 12)  # its background colour
    assert np.all(np.abs(box - np.array([250, 250, 250])) < 30, axis=2).sum() > 200  # white glyphs on it
    assert close_to(rgb[100, 400].astype(np.uint8), BLUE, tol=4)


def glyph_shapes(font: Font, text: str) -> set[tuple[tuple[int, int], bytes]]:
    """Each character's mask: a face without glyphs for them draws the same box for all."""
    return {glyph_shape(font, ch) for ch in text}


def test_cjk_text_is_drawn_in_the_cjk_face_whichever_face_is_asked_for() -> None:
    files = font_files(None, {})
    cjk = files.cjk()
    assert cjk is not None, "Source Han Sans / Noto Sans CJK is installed by `make test` (fonts-noto-cjk)"
    fonts = Fonts(files)
    text = "录制中"
    builtin = fonts.get(40)  # the default face: Pillow's built-in, Latin only
    assert len(glyph_shapes(builtin, text)) == 1  # three different characters, one "missing glyph" box
    for face in (CJK_FONT_FACE, ""):  # asked for, or the fallback for text the default face cannot draw
        font = fonts.get(40, face, text)
        assert font.getname()[0].endswith(" SC")  # the collection's Simplified Chinese face
        assert len(glyph_shapes(font, text)) == 3
    assert fonts.get(40, "", "REC 1") is builtin  # Latin text stays in the face asked for


def test_named_faces_from_the_config_and_a_broken_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cjk = font_files(None, {}).cjk()
    assert cjk is not None
    broken = tmp_path / "broken.ttf"
    broken.write_bytes(b"not a font")
    files = font_files(broken, {"Brand": cjk.path})
    assert files.file("brand") == files.file("Brand") == FontFile(cjk.path, cjk.index)
    assert files.file("unknown") == files.default == FontFile(broken)
    fonts = Fonts(files)
    assert fonts.get(20, "Brand").getname()[0].endswith(" SC")
    with caplog.at_level("WARNING"):
        fallback = fonts.get(20, "unknown")
    assert "font not loaded" in caplog.text and "not a font" not in caplog.text
    assert len(glyph_shapes(fallback, "ab")) == 2  # the built-in face, which draws Latin
    same = font_files(None, {"sourcehansans": cjk.path})  # names are case-insensitive: no second CJK face
    assert same.cjk() == same.file(CJK_FONT_FACE) == FontFile(cjk.path, cjk.index) and len(same.named) == 1
    caplog.clear()
    with caplog.at_level("WARNING"):  # no CJK file anywhere: the built-in face, said once
        bare = Fonts(FontFiles())
        assert bare.get(20, CJK_FONT_FACE, "录").getname() == bare.get(20, CJK_FONT_FACE).getname() == fallback.getname()
    assert caplog.text.count("font face not installed") == 1


def test_a_watermark_is_drawn_in_its_face_and_falls_back_only_for_what_its_face_lacks() -> None:
    fonts = Fonts(font_files(None, {}))
    builtin = fonts.get(30)
    assert fonts.get(30, "", "REC \U0001f534") is builtin  # the CJK face lacks the emoji too: no gain, no switch
    assert fonts.get(30, "", "录制 \U0001f534") is fonts.get(30, CJK_FONT_FACE)  # it draws two of the three
    comp = Compositor(W, H, BLUE, fonts=fonts)
    marks = tuple(Watermark(kind=WatermarkKind.TEXT, x=20, y=y, width=200, height=50, text="Abc", font_size=30, font=face)
                  for y, face in ((20, ""), (100, CJK_FONT_FACE)))
    comp.set_scene(Layout(background=BLUE, watermarks=marks))
    rgb = rgb_of(comp.render([], {})).astype(int)
    default, cjk = (np.abs(rgb[y:y + 50, 20:220] - np.array(BLUE)).max(axis=2) > 100 for y in (20, 100))
    assert default.sum() > 100 and cjk.sum() > 100
    assert (default != cjk).sum() > 0.2 * default.sum()  # the same text, two faces: the watermark's face is used


def test_font_settings() -> None:
    s = parse_settings({"media": {"font_path": "f/brand.ttf", "fonts": {"SourceHanSans": "/x/cjk.otf", "Logo": "l.otf"}}},
                       Path("/etc/cloudrec"))
    assert s.font_path == Path("/etc/cloudrec/f/brand.ttf")  # relative to the config file
    assert s.fonts == (("Logo", Path("/etc/cloudrec/l.otf")), ("SourceHanSans", Path("/x/cjk.otf")))
    with pytest.raises(InvalidRequest):
        parse_settings({"media": {"fonts": {"Logo": 3}}}, Path("."))


def test_timestamp_rendered_once_per_second_in_its_time_zone() -> None:
    assert timestamp_text(0, 8) == "1970-01-01 08:00:00"
    assert timestamp_text(1_700_000_000.9, -5) == "2023-11-14 17:13:20"
    overlays = Overlays((Watermark(kind=WatermarkKind.TIMESTAMP, position=Corner.BOTTOM_RIGHT, tz_hours=0),),
                        W, H, Fonts())
    comp = Compositor(W, H, BLUE)
    comp.overlays = overlays
    shots = {t: rgb_of(comp.render([], {}, t)).astype(int) for t in (100.1, 100.5, 100.9, 101.2, 101.7, 102.0)}
    assert overlays.renders == 3  # seconds 100, 101, 102
    changed = np.argwhere(np.any(shots[100.9] != shots[101.2], axis=2))
    assert changed.size and changed[:, 0].min() > H * 0.8 and changed[:, 1].min() > W * 0.5  # bottom-right
    assert np.array_equal(shots[100.1], shots[100.9])  # same second: same picture
    assert not np.array_equal(shots[101.7], shots[102.0])


# -- the mixed pipeline: pictures arrive late, placeholder after a stop, timestamp, H.265 -----------


def test_pipeline_pictures_arrive_late_and_placeholder_after_stop(tmp_path: Path) -> None:
    RUN, STOP_AT, GAP, PLACEHOLDER, IMAGE_AT = 5.0, 1.5, 0.5, 1.5, 1.0
    ph, bg = ImageRef(url="http://img/ph.png"), ImageRef(url="http://img/bg.jpg", render=RenderMode.STRETCH)
    layout = Layout(
        mode=LayoutMode.CUSTOM, background=BLUE, background_image=bg, placeholders=True,
        panes=(Pane(x=0, y=0, width=320, height=180, user_id="alice"),
               Pane(x=320, y=180, width=320, height=180, user_id="bob", placeholder=ph),
               Pane(x=0, y=240, width=120, height=120, user_id="nobody", placeholder=ph)),
        watermarks=(Watermark(kind=WatermarkKind.TIMESTAMP, position=Corner.TOP_RIGHT, tz_hours=8),),
    )
    t0 = time.monotonic()
    vsrc, asrc = [QueueSource() for _ in range(2)], [QueueSource() for _ in range(2)]
    feeder = Feeder([(source_media(0), vsrc[0], asrc[0], t0, 1e10), (source_media(1), vsrc[1], asrc[1], t0, STOP_AT)])
    sink = make_sink(tmp_path)
    pipe = MixedPipeline(video=VideoEncoding(width=W, height=H, fps=FPS, bitrate=1_000_000, gop_seconds=1),
                         audio=AudioEncoding(), layout=layout, fill_type=FillType.LAST_FRAME, sinks=[sink], t0=t0,
                         gap_seconds=GAP, placeholder_seconds=PLACEHOLDER, wall0=1_700_000_000.0)
    users = ["alice", "bob"]
    pipe.update(participants=participants(users), video={(u, TrackKind.MAIN): vsrc[i] for i, u in enumerate(users)},
                audio={u: asrc[i] for i, u in enumerate(users)})
    pipe.set_image(ph.url, picture((40, 40), (*MAGENTA, 255)))  # already fetched when the task starts
    late_bg = picture((64, 36), (*GREEN, 255), "JPEG")
    run_pipeline(pipe, feeder, RUN, t0, [(IMAGE_AT, lambda: pipe.set_image(bg.url, late_bg))])

    out = read_output(tmp_path / sink.files[0])
    first = out.frames[0][0]
    outside, bob_tile, nobody_tile = (120, 480), (270, 480), (300, 60)
    seen = {"blue": 0, "green": 0, "bob": 0, "held": 0, "placeholder": 0}
    for t, rgb in out.frames:
        rel = t - first
        assert close_to(rgb[nobody_tile], MAGENTA), rel  # absent user: placeholder from the first frame
        # Output for task time T is made at T + latency (0.3 s): a picture handed over at IMAGE_AT shows from there.
        if rel < IMAGE_AT - 0.45:
            assert close_to(rgb[outside], BLUE), rel  # the recording did not wait for the picture
            seen["blue"] += 1
        elif rel > IMAGE_AT + 0.2:
            assert close_to(rgb[outside], GREEN), rel
            seen["green"] += 1
        if 0.5 <= rel <= STOP_AT - 0.2:
            assert close_to(rgb[bob_tile], COLOURS[1]), rel
            seen["bob"] += 1
        elif STOP_AT + GAP + 0.2 <= rel <= STOP_AT + PLACEHOLDER - 0.2:
            assert close_to(rgb[bob_tile], COLOURS[1]), rel  # FillType: the last frame
            seen["held"] += 1
        elif rel >= STOP_AT + PLACEHOLDER + 0.2:
            assert close_to(rgb[bob_tile], MAGENTA), rel  # then the placeholder
            seen["placeholder"] += 1
    assert all(n >= 5 for n in seen.values()), seen
    # Timestamp (top right): the same within a second, changed across one (wall0 is on a whole second).
    by_time = {round(t - first, 3): rgb.astype(int) for t, rgb in out.frames}

    def ts_diff(a: float, b: float) -> int:
        ra, rb = by_time[min(by_time, key=lambda k: abs(k - a))], by_time[min(by_time, key=lambda k: abs(k - b))]
        return int((np.abs(ra[: H // 8, W // 2:] - rb[: H // 8, W // 2:]).max(axis=2) > 80).sum())

    assert ts_diff(2.2, 2.8) == 0 and ts_diff(2.8, 3.2) > 5 and ts_diff(3.8, 4.2) > 5


def test_pipeline_h265_into_mp4_and_hls(tmp_path: Path) -> None:
    RUN = 3.0
    t0 = time.monotonic()
    vsrc, asrc = [QueueSource() for _ in range(2)], [QueueSource() for _ in range(2)]
    feeder = Feeder([(source_media(i), vsrc[i], asrc[i], t0, 1e10) for i in range(2)])
    mp4 = make_sink(tmp_path)
    hls = HlsSink(SinkTarget(directory=tmp_path, names=A8Names("mix", None), track_type=None, user_id="", media="mix", wall0_ms=0),
                  segment_seconds=1.0)
    pipe = MixedPipeline(video=VideoEncoding(width=W, height=H, fps=FPS, gop_seconds=1, codec="h265"),
                         audio=AudioEncoding(), layout=Layout(mode=LayoutMode.GRID), fill_type=FillType.LAST_FRAME,
                         sinks=[mp4, hls], t0=t0)
    users = ["alice", "bob"]
    pipe.update(participants=participants(users), video={(u, TrackKind.MAIN): vsrc[i] for i, u in enumerate(users)},
                audio={u: asrc[i] for i, u in enumerate(users)})
    run_pipeline(pipe, feeder, RUN, t0)

    with av.open(str(tmp_path / mp4.files[0])) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "hevc" and stream.codec_tag == "hvc1"
        assert c.streams.audio[0].codec_context.name == "aac"
    out = read_output(tmp_path / mp4.files[0])
    assert abs(len(out.frames) - RUN * FPS) <= 3
    last = out.frames[-1][1]
    assert close_to(last[H // 2, W // 4], COLOURS[0]) and close_to(last[H // 2, 3 * W // 4], COLOURS[1])
    segments = sorted(tmp_path.glob("mix_*.ts"))
    assert len(segments) >= 2
    for seg in segments[:-1]:  # every full segment decodes on its own (parameter sets before each keyframe)
        with av.open(str(seg)) as c:
            assert c.streams.video[0].codec_context.name == "hevc"
            assert sum(1 for _ in c.decode(video=0)) >= FPS
    with av.open(str(tmp_path / "mix.m3u8")) as c:
        assert abs(sum(1 for _ in c.decode(video=0)) - len(out.frames)) <= 1
