"""TRTC actions (Version 2019-07-22): recording and stream ingest, vendor request ⇄ core spec."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from functools import partial
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from cloudrec.control.apps import AppInfo
from cloudrec.control.rooms import RoomControl
from cloudrec.control.tasks import TaskControl
from cloudrec.core.ingest import IngestSpec
from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.spec import (
    CJK_FONT_FACE, RGB, AudioEncoding, Container, Corner, FillType, ImageRef, Layout, LayoutMode, MediaSelect, Pane,
    RecordingSpec, RecordMode, RenderMode, StorageTarget, StreamType, Subscription, TrackKind, UserFilter, VideoEncoding,
    Watermark, WatermarkKind,
)
from cloudrec.core.states import TaskKind, TaskState
from cloudrec.dialects.tencent.admission import AdmissionError, check_user, room_key
from cloudrec.dialects.tencent.errors import TencentError
from cloudrec.dialects.tencent.fields import OUT_OF_RANGE, Obj
from cloudrec.errors import CloudrecError, Conflict, LimitReached, NotFound

DIALECT = "trtc"
VERSION = "2019-07-22"
REGIONS = frozenset({"ap-beijing", "ap-guangzhou", "ap-mumbai", "ap-shanghai", "ap-singapore"})

_OUTPUTS = {
    0: frozenset({Container.HLS}),
    1: frozenset({Container.HLS, Container.MP4}),
    2: frozenset({Container.HLS, Container.AAC}),
    3: frozenset({Container.MP4}),
    4: frozenset({Container.AAC}),
}
_SAMPLE_RATES = {1: 48_000, 2: 44_100, 3: 16_000}
_STATUS = {TaskState.IDLE: "Idle", TaskState.IN_PROGRESS: "InProgress", TaskState.EXITING: "Exited"}
_COLOR = re.compile(r"^#[0-9A-Fa-f]{6}$")
_ANY_COLOR = re.compile(r"^(#|0[xX])([0-9A-Fa-f]{6})$")  # WaterMarkChar colours: examples use 0xRRGGBB
_IMAGE_URL = re.compile(r"^https?://[A-Za-z0-9\-._~:/?#\[\]@!&()*+,%=]+$", re.I)
_CANVAS_MAX = 2560  # WaterMark Top/Left/Width/Height
_PREFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-]{0,126}$")
_STREAM_URL = re.compile(r"^(https?|rtmp|rtmps|rtsp)://", re.I)  # never file:, concat: or a bare path


def _check_stream_url(url: str) -> None:
    if not _STREAM_URL.match(url):
        raise TencentError("InvalidParameter", "StreamUrl must be an http(s), rtmp or rtsp URL")

Action = Callable[[Obj], Awaitable[dict[str, Any]]]


class TrtcActions:
    def __init__(self, control: TaskControl, rooms: RoomControl, apps: Mapping[int, AppInfo], *,
                 clock: Callable[[], float] = time.time) -> None:
        self.control = control
        self.rooms = rooms
        self.apps = apps
        self.clock = clock
        self.actions: dict[str, Action] = {
            "CreateCloudRecording": self.create_cloud_recording,
            "DescribeCloudRecording": self.describe_cloud_recording,
            "ModifyCloudRecording": self.modify_cloud_recording,
            "DeleteCloudRecording": self.delete_cloud_recording,
            "StartStreamIngest": self.start_stream_ingest,
            "DescribeStreamIngest": self.describe_stream_ingest,
            "UpdateStreamIngest": self.update_stream_ingest,
            "StopStreamIngest": self.stop_stream_ingest,
            # the …ByStrRoomId twins differ only in the room id type they take
            "DismissRoom": partial(self.dismiss_room, id_type=1),
            "DismissRoomByStrRoomId": partial(self.dismiss_room, id_type=0),
            "RemoveUser": partial(self.remove_user, id_type=1),
            "RemoveUserByStrRoomId": partial(self.remove_user, id_type=0),
            "SetUserBlocked": partial(self.set_user_blocked, id_type=1),
            "SetUserBlockedByStrRoomId": partial(self.set_user_blocked, id_type=0),
        }

    async def call(self, action: str, params: Obj) -> dict[str, Any]:
        """`action` is one of `actions` (the gateway answered InvalidAction otherwise)."""
        try:
            return await self.actions[action](params)
        except NotFound as exc:
            if exc.reason == "room":
                raise TencentError("FailedOperation.RoomNotExist", exc.message) from exc
            raise TencentError("ResourceNotFound", exc.message) from exc
        except LimitReached as exc:
            raise TencentError("FailedOperation.RestrictedConcurrency", "concurrent task limit reached") from exc
        except Conflict as exc:
            raise TencentError("FailedOperation", exc.message) from exc
        except CloudrecError as exc:
            raise TencentError("InternalError.CRInternalError", "recording service internal error") from exc

    # --- shared readers ---------------------------------------------------------------------
    def app(self, p: Obj) -> AppInfo:
        app_id = p.req_int("SdkAppId", missing="MissingParameter.SdkAppId", invalid="InvalidParameter.SdkAppId",
                           out_of_range="InvalidParameter.SdkAppId", lo=1)
        app = self.apps.get(app_id)
        if app is None:
            raise TencentError("InvalidParameter.SdkAppId", "unknown SdkAppId")
        return app

    def room(self, p: Obj, app: AppInfo, id_type: int | None = None) -> RoomKey:
        """The request's room; `id_type` fixed by the action (…ByStrRoomId) overrides RoomIdType."""
        if id_type is None:
            id_type = p.integer("RoomIdType", default=1, choices=(0, 1)) or 0
        room_id = p.req_str("RoomId", missing="MissingParameter.RoomId", invalid="InvalidParameter.RoomId")
        try:
            return room_key(app, room_id, RoomIdType(id_type))
        except AdmissionError as exc:
            raise TencentError("InvalidParameter.RoomId", exc.reason) from exc

    def check_user(self, p: Obj, app: AppInfo, room: RoomKey) -> str:
        user_id = p.req_str("UserId", missing="MissingParameter.UserId", invalid="InvalidParameter.UserId")
        sig = p.req_str("UserSig", missing="MissingParameter.UserSig", invalid="InvalidParameter.UserSig")
        try:
            check_user(app, room, user_id, sig, p.string("PrivateMapKey"), self.clock())
        except AdmissionError as exc:
            raise TencentError(f"InvalidParameter.{exc.field}", exc.reason) from exc
        return user_id

    async def _task_id(self, p: Obj) -> tuple[AppInfo, str]:
        app = self.app(p)
        return app, p.req_str("TaskId", missing="MissingParameter.TaskId", invalid="InvalidParameter.TaskId", max_len=256)

    # --- recording --------------------------------------------------------------------------
    async def create_cloud_recording(self, p: Obj) -> dict[str, Any]:
        app = self.app(p)
        room = self.room(p, app)
        robot = self.check_user(p, app, room)
        rp = p.obj("RecordParams", required=True, missing="MissingParameter.RecordParams")
        assert rp is not None
        mode = RecordMode(rp.req_int("RecordMode", missing="MissingParameter.RecordMode", choices=(1, 2)))
        stream_type = StreamType(rp.integer("StreamType", default=0, choices=(0, 1, 2)) or 0)
        output_format = rp.integer("OutputFormat", default=0, choices=tuple(_OUTPUTS)) or 0
        storage, outputs = self.storage(p, output_format)
        transcode = p.obj("MixTranscodeParams")
        video = self.video_params(transcode)
        spec = RecordingSpec(
            room=room,
            robot_user_id=robot,
            mode=mode,
            stream_type=stream_type,
            subscription=self.subscription(rp.obj("SubscribeStreamUserIds")),
            max_idle_seconds=rp.integer("MaxIdleTime", default=30, lo=5, hi=86400) or 30,
            outputs=outputs,
            av_merge=bool(rp.integer("AvMerge", default=0, choices=(0, 1))),
            max_file_seconds=60 * (rp.integer("MaxMediaFileDuration", default=1440, lo=1, hi=1440) or 1440),
            media_select=MediaSelect(rp.integer("MediaId", default=0, choices=(0, 1, 2)) or 0),
            fill_type=FillType(rp.integer("FillType", default=0, choices=(0, 1)) or 0),
            video=video,
            audio=self.audio_params(transcode),
            layout=self.layout(p.obj("MixLayoutParams"), video),
            storage=storage,
        )
        rp.integer("SubscribeAbility", default=0, choices=(0, 1))
        hours = p.integer("ResourceExpiredHour", default=72, lo=6, hi=720) or 72
        task_id = await self.control.create_recording(spec, dialect=DIALECT, lifetime_hours=hours)
        return {"TaskId": task_id}

    async def describe_cloud_recording(self, p: Obj) -> dict[str, Any]:
        app, task_id = await self._task_id(p)
        task, spec = await self.control.recording(app.id, task_id)
        files = [] if spec.storage.vendor == "vod" else await self.control.files(task_id)
        playlists = [f for f in files if f.kind == "playlist"]
        listed = playlists or [f for f in files if f.kind == "file"]
        out: dict[str, Any] = {
            "TaskId": task.id,
            "Status": "Exited" if task.stop_requested is not None else _STATUS.get(task.state, "Exited"),
            "StorageFileList": [
                {"UserId": f.user_id, "FileName": f.name, "TrackType": f.track_type, "BeginTimeStamp": f.begin_ms}
                for f in listed
            ],
        }
        if p.has("RecorderKey"):
            out["RecorderKey"] = p.string("RecorderKey")
        return out

    async def modify_cloud_recording(self, p: Obj) -> dict[str, Any]:
        app, task_id = await self._task_id(p)
        task, spec = await self.control.recording(app.id, task_id)
        layout_obj = p.obj("MixLayoutParams")
        layout = self.layout(layout_obj, spec.video) if layout_obj is not None else None
        subs_obj = p.obj("SubscribeStreamUserIds")
        subscription = self.subscription(subs_obj) if subs_obj is not None else None
        await self.control.modify_recording(app.id, task_id, layout=layout, subscription=subscription)
        return {"TaskId": task_id}

    async def delete_cloud_recording(self, p: Obj) -> dict[str, Any]:
        app, task_id = await self._task_id(p)
        await self.control.stop(app.id, task_id, TaskKind.RECORDING)
        return {"TaskId": task_id}

    # --- recording parameter objects ----------------------------------------------------------
    def subscription(self, s: Obj | None) -> Subscription:
        if s is None:
            return Subscription()
        lists = {n: s.str_list(n, max_items=32) for n in (
            "SubscribeAudioUserIds", "UnSubscribeAudioUserIds", "SubscribeVideoUserIds", "UnSubscribeVideoUserIds")}
        for kind in ("Audio", "Video"):
            if lists[f"Subscribe{kind}UserIds"] and lists[f"UnSubscribe{kind}UserIds"]:
                raise TencentError("InvalidParameter", f"Subscribe{kind}UserIds and UnSubscribe{kind}UserIds cannot both be set")
        return Subscription(
            audio=UserFilter(allow=lists["SubscribeAudioUserIds"], block=lists["UnSubscribeAudioUserIds"]),
            video=UserFilter(allow=lists["SubscribeVideoUserIds"], block=lists["UnSubscribeVideoUserIds"]),
        )

    def storage(self, p: Obj, output_format: int) -> tuple[StorageTarget, frozenset[Container]]:
        sp = p.obj("StorageParams", required=True, missing="MissingParameter.StorageParams")
        assert sp is not None
        cloud, vod = sp.obj("CloudStorage"), sp.obj("CloudVod")
        if cloud is not None and vod is not None:
            raise TencentError("InvalidParameter", "StorageParams takes CloudStorage or CloudVod, not both")
        if vod is not None:
            tv = vod.obj("TencentVod") or Obj({}, "CloudVod.TencentVod")
            media_type = tv.integer("MediaType", default=0, choices=(0, 1, 2, 3, 4)) or 0
            tv.integer("ExpireTime", default=0, lo=0)
            tv.string("UserDefineRecordId", max_len=64)
            outputs = {0: {Container.MP4}, 1: {Container.HLS}, 2: {Container.AAC}, 3: {Container.HLS, Container.MP4},
                       4: {Container.HLS, Container.AAC}}[media_type]
            return StorageTarget(vendor="vod"), frozenset(outputs)
        if cloud is None:
            raise TencentError("MissingParameter.CloudStorage", "missing parameter StorageParams.CloudStorage")
        vendor = cloud.req_int("Vendor", missing="MissingParameter.Vendor", choices=(0, 1))
        region = cloud.req_str("Region", missing="MissingParameter.Region", max_len=64)
        bucket = cloud.req_str("Bucket", missing="MissingParameter.Bucket", max_len=128)
        if not _BUCKET.match(bucket):
            raise TencentError("InvalidParameter", "CloudStorage.Bucket is not a valid bucket name")
        access = cloud.req_str("AccessKey", missing="MissingParameter.AccessKey", max_len=256)
        secret = cloud.req_str("SecretKey", missing="MissingParameter.SecretKey", max_len=256)
        prefix = cloud.str_list("FileNamePrefix", max_items=10, max_len=64)
        for part in prefix:
            if not _PREFIX.match(part):
                raise TencentError("InvalidParameter", "FileNamePrefix entries must be [A-Za-z0-9_-]")
        endpoint = cloud.string("EndpointUrl", max_len=512)
        target = StorageTarget(
            vendor="cos" if vendor == 0 else "s3", region=region, bucket=bucket, prefix=prefix,
            endpoint_url=endpoint or None, access_key=access, secret_key=secret,
        )
        return target, _OUTPUTS[output_format]

    def video_params(self, mt: Obj | None) -> VideoEncoding:
        vp = mt.obj("VideoParams") if mt is not None else None
        if vp is None:
            return VideoEncoding()
        width = vp.req_int("Width", lo=16, hi=1920)
        height = vp.req_int("Height", lo=16, hi=1920)
        if width * height > 1920 * 1080:
            raise TencentError(OUT_OF_RANGE, "MixTranscodeParams.VideoParams Width×Height must not exceed 1920×1080")
        return VideoEncoding(
            width=width + width % 2,  # yuv420p needs even sizes
            height=height + height % 2,
            fps=vp.req_int("Fps", lo=1, hi=60),
            bitrate=vp.req_int("BitRate", lo=64_000, hi=8_192_000),
            gop_seconds=vp.req_int("Gop", lo=1, hi=60),
        )

    def audio_params(self, mt: Obj | None) -> AudioEncoding:
        ap = mt.obj("AudioParams") if mt is not None else None
        if ap is None:
            return AudioEncoding()
        return AudioEncoding(
            sample_rate=_SAMPLE_RATES[ap.req_int("SampleRate", choices=tuple(_SAMPLE_RATES))],
            channels=ap.req_int("Channel", choices=(1, 2)),
            bitrate=ap.req_int("BitRate", lo=32_000, hi=128_000),
        )

    def layout(self, lp: Obj | None, video: VideoEncoding) -> Layout:
        if lp is None:
            return Layout()
        mode = LayoutMode(lp.req_int("MixLayoutMode", choices=(1, 2, 3, 4)))
        color = lp.string("BackGroundColor") or "#000000"
        if not _COLOR.match(color):
            raise TencentError("InvalidParameter", "MixLayoutParams.BackGroundColor must look like #RRGGBB")
        render = RenderMode(lp.integer("RenderMode", default=1, choices=(0, 1, 2, 3)) or 0)
        panes = []
        for tile in lp.objs("MixLayoutList", max_items=25):
            top, left = tile.req_int("Top", lo=0, hi=1920), tile.req_int("Left", lo=0, hi=1920)
            width, height = tile.req_int("Width", lo=0, hi=1920), tile.req_int("Height", lo=0, hi=1920)
            if left + width > video.width or top + height > video.height:
                raise TencentError(OUT_OF_RANGE, f"{tile.path} does not fit in the {video.width}x{video.height} canvas")
            tile_render = RenderMode(tile.integer("RenderMode", default=1, choices=(0, 1, 2, 3)) or 0)
            sub = _image_url(tile, "SubBackgroundImage")
            panes.append(Pane(
                x=left, y=top, width=width, height=height, user_id=tile.string("UserId", max_len=256) or None,
                track=TrackKind.AUX if tile.integer("MediaId", default=0, choices=(0, 1)) else TrackKind.MAIN,
                z=tile.integer("ImageLayer", default=0, lo=0, hi=1000) or 0,
                alpha=tile.integer("Alpha", default=0, lo=0, hi=255) or 0,
                render=tile_render,
                placeholder=ImageRef(url=sub, render=tile_render) if sub else None,
            ))
        watermarks = tuple(_watermark(wm, video) for wm in lp.objs("WaterMarkList", max_items=25))
        background_url = _image_url(lp, "BackgroundImageUrl")
        default_sub = _image_url(lp, "DefaultSubBackgroundImage")
        placeholders = bool(lp.integer("PlaceHolderMode", default=0, choices=(0, 1)))
        background_render = RenderMode(lp.integer("BackgroundImageRenderMode", default=0, choices=(0, 1, 2, 3)) or 0)
        lp.integer("MaxResolutionUserAlign", default=0, choices=(0, 1))
        return Layout(
            mode=mode,
            panes=tuple(panes),
            background=_rgb(color),
            background_image=ImageRef(url=background_url, render=background_render) if background_url else None,
            render=render,
            main_user_id=lp.string("MaxResolutionUserId", max_len=256) or None,
            main_track=TrackKind.AUX if lp.integer("MediaId", default=0, choices=(0, 1)) else TrackKind.MAIN,
            pure_audio_disable=lp.boolean("PureAudioDisableLayout"),
            placeholders=placeholders,
            default_placeholder=ImageRef(url=default_sub, render=render) if default_sub else None,
            watermarks=watermarks,
        )

    # --- stream ingest ----------------------------------------------------------------------
    async def start_stream_ingest(self, p: Obj) -> dict[str, Any]:
        app = self.app(p)
        room = self.room(p, app)
        user_id = self.check_user(p, app, room)
        urls = [u for u in [p.string("StreamUrl", max_len=4096)] if u] or list(p.str_list("SourceUrl", max_items=1, max_len=4096))
        if not urls:
            raise TencentError("MissingParameter", "missing parameter StreamUrl")
        for url in urls:
            _check_stream_url(url)
        repeat = p.integer("RepeatNum", default=1, lo=-1, hi=1000)
        if repeat == 0:
            raise TencentError(OUT_OF_RANGE, "RepeatNum must be -1 or 1-1000")
        spec = IngestSpec(
            room=room, user_id=user_id, urls=tuple(urls), repeat=repeat or 1,
            max_duration_seconds=(p.integer("MaxDuration", default=360, lo=1, hi=10080) or 360) * 60,
            seek_seconds=float(p.integer("SeekSecond", default=0, lo=0) or 0),
            volume=p.integer("Volume", default=100, lo=0, hi=200) or 0,
        )
        task_id = await self.control.create_ingest(spec, dialect=DIALECT)
        return {"TaskId": task_id}

    async def describe_stream_ingest(self, p: Obj) -> dict[str, Any]:
        app, task_id = await self._task_id(p)
        try:
            task, _ = await self.control.ingest(app.id, task_id)
        except NotFound:
            return {"Status": "NotExist"}
        return {"Status": "NotExist" if task.stop_requested is not None else "InProgress"}

    async def update_stream_ingest(self, p: Obj) -> dict[str, Any]:
        app, task_id = await self._task_id(p)
        url = p.string("StreamUrl", max_len=4096)
        if url:
            _check_stream_url(url)  # before anything runs: never a local file for an existing task either
        task, spec = await self.control.ingest(app.id, task_id)
        volume = p.integer("Volume", lo=0, hi=200)
        new = replace(spec, urls=(url,) if url else spec.urls, volume=spec.volume if volume is None else volume)
        await self.control.replace_ingest(app.id, task_id, new)
        return {"Status": "InProgress"}

    async def stop_stream_ingest(self, p: Obj) -> dict[str, Any]:
        app, task_id = await self._task_id(p)
        await self.control.stop(app.id, task_id, TaskKind.INGEST)
        return {}

    # --- room management ---------------------------------------------------------------------
    async def dismiss_room(self, p: Obj, *, id_type: int) -> dict[str, Any]:
        await self.rooms.dismiss(self.room(p, self.app(p), id_type))
        return {}

    async def remove_user(self, p: Obj, *, id_type: int) -> dict[str, Any]:
        room = self.room(p, self.app(p), id_type)
        users = list(p.str_list("UserIds", max_items=10))
        if not users:
            raise TencentError("MissingParameter.UserIds", "missing parameter UserIds")
        await self.rooms.remove_users(room, users)
        return {}

    async def set_user_blocked(self, p: Obj, *, id_type: int) -> dict[str, Any]:
        room = self.room(p, self.app(p), id_type)
        user = p.req_str("UserId", missing="MissingParameter.UserId", invalid="InvalidParameter.UserId")
        mute = p.req_int("IsMute", choices=(0, 1))
        await self.rooms.set_blocked(room, user, bool(mute))
        return {}


# --- MixLayoutParams pieces ----------------------------------------------------------------------
def _rgb(color: str) -> RGB:
    value = int(color[-6:], 16)
    return (value >> 16) & 255, (value >> 8) & 255, value & 255


def _image_url(o: Obj, name: str, *, required: bool = False) -> str | None:
    """A picture URL (BackgroundImageUrl, SubBackgroundImage, WaterMarkUrl): http(s), A.6 characters."""
    url = o.string(name, max_len=2048, required=required, allow_empty=not required)
    if not url:
        return None
    if not _IMAGE_URL.match(url):
        raise TencentError("InvalidParameter", f"{o.path}.{name} must be an http(s) URL of a jpg/png picture")
    return url


def _color(o: Obj, name: str, default: RGB | None) -> RGB | None:
    raw = o.string(name, max_len=16)
    if not raw:
        return default
    if not _ANY_COLOR.match(raw):
        raise TencentError("InvalidParameter", f"{o.path}.{name} must look like 0xRRGGBB or #RRGGBB")
    return _rgb(raw)


def _box(o: Obj, video: VideoEncoding) -> tuple[int, int, int, int]:
    top, left = o.req_int("Top", lo=0, hi=_CANVAS_MAX), o.req_int("Left", lo=0, hi=_CANVAS_MAX)
    width, height = o.req_int("Width", lo=0, hi=_CANVAS_MAX), o.req_int("Height", lo=0, hi=_CANVAS_MAX)
    if left + width > video.width or top + height > video.height:
        raise TencentError(OUT_OF_RANGE, f"{o.path} does not fit in the {video.width}x{video.height} canvas")
    return left, top, width, height


# `Font` → the face name the compositor knows ("": the default face, `[media] font_path`).
_FONTS = {"Tencent": "", "SourceHanSans": CJK_FONT_FACE}


def _font(obj: Obj) -> str:
    name = obj.string("Font", default="Tencent", allow_empty=False) or "Tencent"
    if name not in _FONTS:
        raise TencentError("InvalidParameter", f"{obj.path}.Font must be Tencent or SourceHanSans")
    return _FONTS[name]


def _watermark(wm: Obj, video: VideoEncoding) -> Watermark:
    kind = wm.integer("WaterMarkType", default=0, choices=(0, 1, 2)) or 0
    if kind == 0:
        img = wm.obj("WaterMarkImage", required=True)
        assert img is not None
        x, y, w, h = _box(img, video)
        url = _image_url(img, "WaterMarkUrl", required=True)
        assert url is not None
        return Watermark(kind=WatermarkKind.IMAGE, x=x, y=y, width=w, height=h,
                         image=ImageRef(url=url, render=RenderMode.STRETCH))
    if kind == 1:
        ch = wm.obj("WaterMarkChar", required=True)
        assert ch is not None
        x, y, w, h = _box(ch, video)
        return Watermark(kind=WatermarkKind.TEXT, x=x, y=y, width=w, height=h,
                         text=ch.req_str("Chars", max_len=1024),
                         font_size=ch.integer("FontSize", default=14, lo=1, hi=_CANVAS_MAX) or 14,
                         font_color=_color(ch, "FontColor", (255, 255, 255)) or (255, 255, 255),
                         text_background=_color(ch, "BackGroundColor", None), font=_font(ch))
    ts = wm.obj("WaterMarkTimestamp", required=True)
    assert ts is not None
    return Watermark(kind=WatermarkKind.TIMESTAMP, position=Corner(ts.req_int("Pos", choices=tuple(range(7)))),
                     tz_hours=float(ts.integer("TimeZone", default=8, lo=-12, hi=14) or 0), font_size=0, font=_font(ts))
