"""Pictures in a mixed recording driven by the official SDK: background image, placeholder images
(default and per tile), z-order, image / text / timestamp watermarks; a broken picture URL only
costs its picture. The pictures are made with Pillow at test time and served from loopback."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from cloudrec.core.spec import CJK_FONT_FACE, Corner, ImageRef, Layout, RenderMode, VideoEncoding, WatermarkKind
from cloudrec.dialects.tencent.fields import Obj
from cloudrec.dialects.tencent.trtc import TrtcActions
from tests.support import (
    APP_ID, COLORS, Server, call, client, ingest, rgb_close, sample_frame, served_samples, storage_params, usersig,
    stop_all, wait_ended, wait_for,
)

USERS = ["alice", "bob"]
TEAL, MAGENTA, YELLOW, RED, BG = (0, 150, 150), (230, 30, 230), (240, 220, 0), (250, 20, 20), (0, 0, 160)


def write_pictures(root: Path) -> None:
    Image.new("RGB", (320, 180), TEAL).save(root / "bg.jpg", "JPEG", quality=95)
    Image.new("RGBA", (40, 30), (*MAGENTA, 255)).save(root / "placeholder.png")
    Image.new("RGB", (40, 30), YELLOW).save(root / "own.jpg", "JPEG", quality=95)
    mark = Image.new("RGBA", (64, 32), (*RED, 0))  # left half transparent, right half opaque red
    mark.paste((*RED, 255), (32, 0, 64, 32))
    mark.save(root / "mark.png")


@pytest.fixture(scope="module")
def media_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("visuals")
    write_pictures(root)
    with served_samples(root, USERS, 30) as url:
        yield url


def record(server: Server, room: str, robot: str, layout: dict[str, object], seconds: float) -> tuple[str, float]:
    c = client(server)
    task = call(c, "CreateCloudRecording", {
        "SdkAppId": APP_ID, "RoomId": room, "UserId": robot, "UserSig": usersig(robot),
        "RecordParams": {"RecordMode": 2, "MaxIdleTime": 10, "OutputFormat": 3},
        "MixTranscodeParams": {"VideoParams": {"Width": 640, "Height": 360, "Fps": 15, "BitRate": 1_000_000, "Gop": 1}},
        "MixLayoutParams": layout, "StorageParams": storage_params("visuals"),
    }).TaskId
    desc = wait_for(lambda: (d := call(c, "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": task}))
                    and d.Status == "InProgress" and d.StorageFileList and d, 15, what="recording")
    begin = desc.StorageFileList[0].BeginTimeStamp / 1000
    time.sleep(seconds)
    return task, begin


def test_pictures_and_watermarks_in_the_mix(server: Server, media_url: str) -> None:
    room = "9201"
    ingests = ingest(server, room, media_url, USERS)
    layout = {
        "MixLayoutMode": 4, "BackGroundColor": "#0000A0",
        "BackgroundImageUrl": f"{media_url}/bg.jpg", "BackgroundImageRenderMode": 0,
        "PlaceHolderMode": 1, "DefaultSubBackgroundImage": f"{media_url}/placeholder.png",
        "MixLayoutList": [
            {"Top": 0, "Left": 0, "Width": 320, "Height": 180, "UserId": "alice", "ImageLayer": 1},
            {"Top": 120, "Left": 240, "Width": 160, "Height": 120, "UserId": "nobody", "ImageLayer": 0},
            {"Top": 100, "Left": 560, "Width": 80, "Height": 60, "UserId": "ghost",
             "SubBackgroundImage": f"{media_url}/own.jpg"},
            {"Top": 180, "Left": 320, "Width": 320, "Height": 180, "UserId": "bob"},
        ],
        "WaterMarkList": [
            {"WaterMarkType": 0, "WaterMarkImage": {"WaterMarkUrl": f"{media_url}/mark.png",
                                                    "Top": 20, "Left": 400, "Width": 128, "Height": 64}},
            {"WaterMarkType": 1, "WaterMarkChar": {"Top": 250, "Left": 20, "Width": 200, "Height": 60, "Chars": "REC 1",
                                                   "FontSize": 40, "FontColor": "0xFA1414"}},
            {"WaterMarkType": 2, "WaterMarkTimestamp": {"Pos": 3, "TimeZone": 8}},
            {"WaterMarkType": 1, "WaterMarkChar": {"Top": 190, "Left": 20, "Width": 200, "Height": 56, "Chars": "录制",
                                                   "FontSize": 40, "FontColor": "0xFFFFFF", "Font": "SourceHanSans"}},
        ],
    }
    task, begin = record(server, room, "rec_9201", layout, 5)
    stop_all(server, task, ingests)
    wait_ended(server, task)
    mp4 = server.storage / "visuals" / task / f"{APP_ID}_{room}_1.mp4"
    a, b = sample_frame(mp4, 2.6), sample_frame(mp4, 3.6)
    for rgb in (a, b):
        assert rgb_close(rgb[100, 450], TEAL)  # background image outside the tiles (not the colour)
        assert rgb_close(rgb[90, 160], COLORS[0]) and rgb_close(rgb[270, 480], COLORS[1])  # the users
        assert rgb_close(rgb[150, 360], MAGENTA)  # absent user: the default placeholder
        assert rgb_close(rgb[150, 280], COLORS[0])  # alice (ImageLayer 1) over nobody's tile (0)
        assert rgb_close(rgb[130, 600], YELLOW)  # the tile's own SubBackgroundImage
        assert rgb_close(rgb[50, 430], TEAL)  # watermark: its transparent half shows the picture below
        assert rgb_close(rgb[50, 500], RED)  # … its opaque half is drawn
        text = rgb[250:310, 20:220].astype(int)
        reds = np.all(np.abs(text - np.array([250, 20, 20])) < 60, axis=2).sum()
        assert reds > 100, reds  # the text in its font colour over the background picture
        white = np.all(rgb[190:246, 20:220] > 190, axis=2)  # "录制" in Source Han Sans
        cols = np.flatnonzero(white.any(axis=0))
        assert white.sum() > 150 and cols.size, white.sum()
        half = (cols[-1] - cols[0] + 1) // 2
        first, second = white[:, cols[0]:cols[0] + half], white[:, cols[0] + half:cols[0] + 2 * half]
        assert (first != second).sum() > 0.3 * max(first.sum(), second.sum())  # two different glyphs, not two boxes
    corner = (np.abs(a[300:, 400:].astype(int) - b[300:, 400:].astype(int)).max(axis=2) > 80).sum()
    assert corner > 5  # the timestamp (bottom right) moved on by a second


def test_broken_picture_costs_only_its_area(server: Server, media_url: str) -> None:
    room = "9202"
    ingests = ingest(server, room, media_url, USERS[:1])
    layout = {"MixLayoutMode": 4, "BackGroundColor": "#0000A0", "BackgroundImageUrl": f"{media_url}/missing.jpg",
              "BackgroundImageRenderMode": 2,
              "MixLayoutList": [{"Top": 0, "Left": 0, "Width": 320, "Height": 180, "UserId": "alice"}]}
    task, _ = record(server, room, "rec_9202", layout, 3)
    stop_all(server, task, ingests)
    wait_ended(server, task)
    rgb = sample_frame(server.storage / "visuals" / task / f"{APP_ID}_{room}_1.mp4", 2.0)
    assert rgb_close(rgb[90, 160], COLORS[0])  # the recording itself is fine
    assert rgb_close(rgb[270, 480], BG)  # and the missing picture's area shows the background colour
    log = server.log_text()
    assert "layout picture not used" in log and "HTTP 404" in log
    with sqlite3.connect(f"file:{server.root / 'data' / 'cloudrec.db'}?mode=ro", uri=True) as db:
        failed = list(db.execute("SELECT payload FROM events WHERE task_id = ? AND type = 'image_failed'", (task,)))
    assert len(failed) == 1 and "missing.jpg" in failed[0][0]  # callback 309, once


# -- the TRTC fields → the core layout ----------------------------------------------------------------

IMG = "https://cdn.example.com/a/logo.png?x=1"


def trtc_layout(params: dict[str, object]) -> Layout:
    actions = TrtcActions.__new__(TrtcActions)  # layout() reads only its arguments
    return actions.layout(Obj(params, "MixLayoutParams"), VideoEncoding(width=640, height=360))


def test_trtc_fields_map_to_the_layout() -> None:
    layout = trtc_layout({
        "MixLayoutMode": 4, "RenderMode": 2, "BackgroundImageUrl": IMG, "BackgroundImageRenderMode": 1,
        "PlaceHolderMode": 1, "DefaultSubBackgroundImage": IMG + "&d",
        "MixLayoutList": [{"Top": 0, "Left": 0, "Width": 10, "Height": 10, "UserId": "u", "RenderMode": 3,
                           "SubBackgroundImage": IMG + "&s"}],
        "WaterMarkList": [
            {"WaterMarkImage": {"WaterMarkUrl": IMG, "Top": 1, "Left": 2, "Width": 30, "Height": 40}},
            {"WaterMarkType": 1, "WaterMarkChar": {"Top": 5, "Left": 6, "Width": 70, "Height": 80, "Chars": "直播",
                                                   "FontColor": "0x10Ff20", "BackGroundColor": "#010203", "Font": "Tencent"}},
            {"WaterMarkType": 1, "WaterMarkChar": {"Top": 5, "Left": 6, "Width": 70, "Height": 80, "Chars": "x"}},
            {"WaterMarkType": 2, "WaterMarkTimestamp": {"Pos": 5, "Font": "SourceHanSans"}},
        ],
    })
    assert layout.background_image == ImageRef(url=IMG, render=RenderMode.CROP)
    assert layout.placeholders and layout.default_placeholder == ImageRef(url=IMG + "&d", render=RenderMode.LETTERBOX)
    assert layout.panes[0].placeholder == ImageRef(url=IMG + "&s", render=RenderMode.SMART_STRETCH)
    image, text, plain, stamp = layout.watermarks
    assert (image.kind, image.x, image.y, image.width, image.height, image.image) == (
        WatermarkKind.IMAGE, 2, 1, 30, 40, ImageRef(url=IMG, render=RenderMode.STRETCH))
    assert (text.text, text.font_size, text.font_color, text.text_background) == ("直播", 14, (16, 255, 32), (1, 2, 3))
    assert (plain.font_color, plain.text_background) == ((255, 255, 255), None)  # white on transparent
    assert text.font == plain.font == ""  # "Tencent" (the default): the default face
    assert (stamp.kind, stamp.position, stamp.tz_hours, stamp.font) == (
        WatermarkKind.TIMESTAMP, Corner.BOTTOM_CENTER, 8.0, CJK_FONT_FACE)
    assert layout.image_urls() == (IMG, IMG + "&d", IMG + "&s")


@pytest.mark.parametrize("params, code", [
    ({"WaterMarkList": [{"WaterMarkType": 0}]}, "MissingParameter"),
    ({"WaterMarkList": [{"WaterMarkImage": {"Top": 0, "Left": 0, "Width": 1, "Height": 1}}]}, "MissingParameter"),
    ({"WaterMarkList": [{"WaterMarkImage": {"WaterMarkUrl": IMG, "Top": 0, "Left": 600, "Width": 100, "Height": 1}}]},
     "InvalidParameter.OutOfRange"),
    ({"WaterMarkList": [{"WaterMarkType": 1, "WaterMarkChar": {"Top": 0, "Left": 0, "Width": 9, "Height": 9, "Chars": "a",
                                                               "FontColor": "red"}}]}, "InvalidParameter"),
    ({"WaterMarkList": [{"WaterMarkType": 1, "WaterMarkChar": {"Top": 0, "Left": 0, "Width": 9, "Height": 9}}]},
     "MissingParameter"),
    ({"WaterMarkList": [{"WaterMarkType": 2, "WaterMarkTimestamp": {"Pos": 7}}]}, "InvalidParameter.OutOfRange"),
    ({"WaterMarkList": [{"WaterMarkType": 1, "WaterMarkChar": {"Top": 0, "Left": 0, "Width": 9, "Height": 9, "Chars": "a",
                                                               "Font": "Arial"}}]}, "InvalidParameter"),
    ({"WaterMarkList": [{"WaterMarkType": 2, "WaterMarkTimestamp": {"Pos": 0}}] * 26}, "InvalidParameter.OutOfRange"),
    ({"BackgroundImageUrl": "ftp://example.com/a.png"}, "InvalidParameter"),
    ({"DefaultSubBackgroundImage": "https://example.com/a b.png"}, "InvalidParameter"),
    ({"PlaceHolderMode": 2}, "InvalidParameter.OutOfRange"),
])
def test_trtc_picture_fields_are_validated(server: Server, params: dict[str, object], code: str) -> None:
    with pytest.raises(TencentCloudSDKException) as info:
        call(client(server), "CreateCloudRecording", {
            "SdkAppId": APP_ID, "RoomId": "9299", "UserId": "rec_9299", "UserSig": usersig("rec_9299"),
            "RecordParams": {"RecordMode": 2, "MaxIdleTime": 5}, "StorageParams": storage_params(),
            "MixLayoutParams": {"MixLayoutMode": 3, **params}})
    assert info.value.code == code
