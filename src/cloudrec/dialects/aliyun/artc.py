"""ARTC cloud recording actions (product `live`, 2016-11-01; spec §5–§9): vendor request ⇄ core spec.

An ARTC AppId names the `[[apps]]` entry with that (numeric) id; a channel is that app's string room.
Stop/Update/Describe carry only a TaskId: a task is found by id and must be an ARTC task of an app the
caller's AccessKey may use, else it is `NotFound.Task` (apps and dialects stay isolated).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from cloudrec.control.apps import AppInfo, app_named
from cloudrec.control.tasks import TaskControl
from cloudrec.core.events import CallbackTarget, EventKind, file_id
from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.spec import (
    Area, AudioEncoding, Container, ImageRef, Layout, LayoutMode, MediaSelect, NameScheme, Pane, RecordingSpec,
    RecordMode, RenderMode, StorageTarget, StreamType, Subscription, TrackKind, UserFilter, VideoEncoding,
)
from cloudrec.core.states import TaskKind, TaskState
from cloudrec.core.tasks import TaskRecord
from cloudrec.dialects.aliyun.callbacks import NOTIFY_FORMATS
from cloudrec.dialects.aliyun.errors import AliyunError, business, missing
from cloudrec.dialects.aliyun.params import Obj, indexed_list, nested
from cloudrec.errors import CloudrecError, Conflict, InvalidRequest, LimitReached, NotFound

DIALECT = "artc"
LIFETIME_HOURS = 72  # running or recovering at most this long (§9)
DESCRIBE_SECONDS = 3 * 86400  # tasks created within 3 days can be described (§7)
MAX_SUBSCRIPTIONS = 17

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # AppId / ChannelId / UserId characters (§12.1)
_PATTERN = re.compile(r"^\{([A-Za-z]+)\}(_\{([A-Za-z]+)\})*$")
_VARIABLES = frozenset({"AppId", "ChannelId", "UserId", "RecordMode", "SourceType", "StreamType", "StartTime", "Sequence"})
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+$")
_OSS_ENDPOINT = re.compile(r"^oss-([a-z0-9-]+?)(-internal)?\.aliyuncs\.com$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_URL = re.compile(r"^https?://[^\s]+$", re.I)
_AUTH_KEY = re.compile(r"^[A-Za-z0-9]{16,64}$")
_FORMATS = {"HLS": Container.HLS, "MP4": Container.MP4, "MP3": Container.MP3}
_SAMPLE_RATES = (8000, 16000, 32000, 44100, 48000)
_START_TIME = "{start:%Y-%m-%d-%H:%M:%S}"  # "2025-03-25-11:27:28", UTC+8
_NOBODY = UserFilter(allow=("",))  # no user id is empty: admits nobody

Params = dict[str, str]
Handler = Callable[[Params, frozenset[int] | None], Awaitable[dict[str, Any]]]

E_SUBS = "InvalidParameter.SubscribeParams.SubscribeUserIdList"
E_RECORD = "InvalidParameter.RecordParams"
E_FILEINFO = "InvalidParameter.StorageParams.FileInfo"
E_OSS = "InvalidParameter.StorageParams.OSSParams"
E_VOD = "InvalidParameter.StorageParams.VodParams"
E_PANES = "InvalidParameter.MixLayoutParams.UserPanes"
E_TRANSCODE = "InvalidParameter.MixTranscodeParams"


@dataclass(frozen=True, slots=True)
class Entry:
    """One `SubscribeUserIdList` element."""

    user_id: str
    stream_type: int  # 0 audio+video, 1 audio, 2 video
    source: int  # 0 camera, 1 screen

    @property
    def track(self) -> TrackKind:
        return TrackKind.AUX if self.source == 1 else TrackKind.MAIN


class ArtcActions:
    def __init__(self, control: TaskControl, apps: Mapping[int, AppInfo], *, has_users: Callable[[RoomKey], bool],
                 clock: Callable[[], float] = time.time) -> None:
        self.control = control
        self.apps = apps
        self.has_users = has_users
        self.clock = clock
        self.actions: dict[str, Handler] = {
            "StartRtcCloudRecording": self._guard(self.start),
            "StopRtcCloudRecording": self._guard(self.stop),
            "UpdateRtcCloudRecording": self._guard(self.update),
            "DescribeRtcCloudRecordingFiles": self._guard(self.describe),
        }

    @staticmethod
    def _guard(fn: Handler) -> Handler:
        """Core errors → ARTC codes."""
        async def call(p: Params, allowed: frozenset[int] | None) -> dict[str, Any]:
            try:
                return await fn(p, allowed)
            except NotFound as exc:
                raise business("NotFound.Task", exc.message) from exc
            except Conflict as exc:
                raise business("InvalidParameter.TaskId", exc.message) from exc
            except LimitReached as exc:
                raise AliyunError("QuotaExceeded.Task", "too many concurrent recording tasks for this app", 400) from exc
            except InvalidRequest as exc:
                raise AliyunError("InvalidParameter", exc.message, 400) from exc
            except CloudrecError as exc:
                raise AliyunError("InternalError", "recording service internal error", 500) from exc
        return call

    # --- the four actions -------------------------------------------------------------------
    async def start(self, p: Params, allowed: frozenset[int] | None) -> dict[str, Any]:
        app = self._app(p, allowed)
        channel = p.get("ChannelId", "")
        if not channel:
            raise missing("ChannelId")
        if not _NAME.match(channel):
            raise business("InvalidParameter.ChannelId", "ChannelId must be 1-64 letters, digits, - or _")
        room = RoomKey(app.id, channel, RoomIdType.STRING)
        entries = _subscriptions(p)
        rp = _required(p, "RecordParams", E_RECORD)
        mode = RecordMode.MIXED if rp.req_int("RecordMode", choices=(0, 1)) == 1 else RecordMode.SINGLE
        out = StreamType(rp.integer("StreamType", default=0, choices=(0, 1, 2)) or 0)
        max_file = rp.integer("MaxFileDuration", default=7200, lo=180, hi=7200, zero_is_unset=True) or 7200
        _check_streams(mode, out, entries)
        storage = _Storage.read(p, mode, out, entries)
        transcode = nested(p, "MixTranscodeParams", E_TRANSCODE)
        layout_raw = nested(p, "MixLayoutParams", E_PANES)
        video, audio, layout = VideoEncoding(), AudioEncoding(), Layout()
        if mode is RecordMode.SINGLE:
            if transcode is not None:
                raise business(E_TRANSCODE, "MixTranscodeParams must not be set in individual mode")
            if layout_raw is not None:
                raise business(E_PANES, "MixLayoutParams must not be set in individual mode")
        else:
            if transcode is None:
                raise missing("MixTranscodeParams")
            video, audio = _transcode(Obj(transcode, "MixTranscodeParams", E_TRANSCODE), out)
            if out.video:
                if layout_raw is None:
                    raise missing("MixLayoutParams")
                layout = _layout(Obj(layout_raw, "MixLayoutParams", E_PANES), entries)
        if Container.MP3 in storage.outputs:
            audio = replace(audio, codec="mp3")  # MP3 files need MP3 audio: the task's one audio encoding is MP3
        callback = _callback(p, storage)
        idle = _int_param(p, "MaxIdleTime", "InvalidParameter.MaxIdleTime", default=300, lo=10, hi=14400)
        if not self.has_users(room):
            raise business("InvalidParameter.ChannelId", "the channel has no users")
        now_ms = int(self.clock() * 1000)
        spec = RecordingSpec(
            room=room,
            robot_user_id=f"artc-recorder-{secrets.token_hex(6)}",  # several tasks may record one channel
            mode=mode,
            stream_type=out,
            subscription=_subscription(entries),
            media_select=_media_select(entries),
            av_merge=True,  # an "original" stream (OC/OS) is one file with its audio
            max_idle_seconds=idle,
            idle_per_stream=mode is RecordMode.SINGLE,
            outputs=storage.outputs,
            names=storage.names,
            segment_seconds=storage.segment_seconds,
            max_file_seconds=max_file,
            video=video,
            audio=audio,
            layout=layout,
            storage=storage.target,
            callback=callback,
            file_events=callback.file_formats if callback is not None else frozenset(),
            not_after_ms=now_ms + LIFETIME_HOURS * 3600 * 1000,
        )
        task_id = await self.control.create_recording(spec, dialect=DIALECT, lifetime_hours=LIFETIME_HOURS)
        return {"TaskId": task_id}

    async def stop(self, p: Params, allowed: frozenset[int] | None) -> dict[str, Any]:
        task, _ = await self._task(p, allowed)
        _require_running(task)
        await self.control.stop(task.room.app_id, task.id, TaskKind.RECORDING)
        return {"TaskId": task.id}

    async def update(self, p: Params, allowed: frozenset[int] | None) -> dict[str, Any]:
        task, spec = await self._task(p, allowed)
        _require_running(task)
        entries = _subscriptions(p)
        _check_streams(spec.mode, spec.stream_type, entries)
        layout_raw = nested(p, "MixLayoutParams", E_PANES)
        layout = None  # omitted: the current layout stays
        if spec.mode is RecordMode.SINGLE:
            if layout_raw is not None:
                raise business(E_PANES, "MixLayoutParams must not be set in individual mode")
            if _duplicated(entries) and not all("{label}" in n.file for n in spec.names):
                raise business(E_SUBS, "the file names of this task have no {SourceType}: a user may be subscribed once")
        elif layout_raw is not None:
            layout = _layout(Obj(layout_raw, "MixLayoutParams", E_PANES), entries)
        await self.control.modify_recording(task.room.app_id, task.id, layout=layout, subscription=_subscription(entries),
                                            media_select=_media_select(entries))
        return {"TaskId": task.id}

    async def describe(self, p: Params, allowed: frozenset[int] | None) -> dict[str, Any]:
        task, spec = await self._task(p, allowed)
        kinds = await self.control.event_kinds(task.id)
        files = await self.control.files(task.id)
        lists: dict[str, list[Any]] = {"HlsFileList": [], "Mp4FileList": [], "Mp3FileList": [], "VodMediaList": []}
        if spec.storage.vendor == "vod":
            media: dict[str, list[str]] = {}
            for f in files:
                if f.kind == "file":
                    media.setdefault(_vod_stream(spec, f.user_id, f.media, f.track_type), []).append(file_id(task.id, f.name))
            lists["VodMediaList"] = [{"Stream": s, "MediaIds": ids, "MergedIds": []} for s, ids in media.items()]
        else:
            for f in files:
                key = {"m3u8": "HlsFileList", "mp4": "Mp4FileList", "mp3": "Mp3FileList"}.get(f.name.rsplit(".", 1)[-1])
                if key is not None and f.kind in ("playlist", "file"):
                    lists[key].append(f.name)
        return {"TaskInfo": {"TaskId": task.id, "Status": _status(task, kinds), "RecordFileList": lists}}

    # --- shared readers ---------------------------------------------------------------------
    def _app(self, p: Params, allowed: frozenset[int] | None) -> AppInfo:
        raw = p.get("AppId", "")
        if not raw:
            raise missing("AppId")
        app = app_named(self.apps, raw)
        if app is None or (allowed is not None and app.id not in allowed):
            raise business("InvalidParameter.AppId", "unknown AppId")
        return app

    async def _task(self, p: Params, allowed: frozenset[int] | None) -> tuple[TaskRecord, RecordingSpec]:
        task_id = p.get("TaskId", "")
        if not task_id:
            raise missing("TaskId")
        # NotFound (another app's or dialect's task, too old, no such task) is NotFound.Task (`_guard`).
        return await self.control.recording_by_id(task_id, dialect=DIALECT, apps=allowed, max_age_seconds=DESCRIBE_SECONDS)


def _status(task: TaskRecord, kinds: set[EventKind]) -> str:
    if task.state is TaskState.ENDED:
        return "STOPPED"
    if task.state is TaskState.EXITING or task.stop_requested is not None:
        return "STOPPING"
    if EventKind.TASK_MIGRATED in kinds and task.state is TaskState.IDLE:
        return "RECOVERING"  # taken over after its worker died, not recording again yet
    return "RUNNING"


def _require_running(task: TaskRecord) -> None:
    if task.state is TaskState.EXITING or task.state is TaskState.ENDED or task.stop_requested is not None:
        raise business("InvalidParameter.TaskId", "the task is not RUNNING or RECOVERING")


def _required(p: Params, name: str, code: str) -> Obj:
    raw = nested(p, name, code)
    if raw is None:
        raise missing(name)
    return Obj(raw, name, code)


def _int_param(p: Params, name: str, code: str, *, default: int, lo: int, hi: int) -> int:
    value = Obj(p, "", code).integer(name, default=default, lo=lo, hi=hi)
    return default if value is None else value


# --- subscriptions ---------------------------------------------------------------------------------


def _subscriptions(p: Params) -> list[Entry]:
    sp = _required(p, "SubscribeParams", E_SUBS)
    entries: list[Entry] = []
    for o in sp.objs("SubscribeUserIdList", max_items=MAX_SUBSCRIPTIONS):
        user = o.string("UserId", max_len=64, required=True)
        if not _NAME.match(user):
            raise business(E_SUBS, f"{o.path}.UserId must be 1-64 letters, digits, - or _")
        entry = Entry(user, o.integer("StreamType", default=0, choices=(0, 1, 2)) or 0,
                      o.integer("SourceType", default=0, choices=(0, 1)) or 0)
        if entry.stream_type == 1:
            entry = Entry(user, 1, 0)  # SourceType means nothing without video
        if entry not in entries:
            entries.append(entry)
    if not entries:
        raise business(E_SUBS, "SubscribeUserIdList must not be empty")
    return entries


def _check_streams(mode: RecordMode, out: StreamType, entries: list[Entry]) -> None:
    """R2–R4: what the output stream type allows the subscriptions to be."""
    kinds = {e.stream_type for e in entries}
    if mode is RecordMode.SINGLE:
        if 2 in kinds:
            raise business(E_SUBS, "video-only subscriptions (StreamType 2) need mixed mode")
        if out is StreamType.VIDEO and 1 in kinds:
            raise business(E_SUBS, "a video-only recording cannot take audio-only subscriptions")
    elif (out is StreamType.AUDIO and kinds == {2}) or (out is StreamType.VIDEO and kinds == {1}):
        raise business(E_SUBS, "no subscription has the media the output StreamType records")


def _duplicated(entries: list[Entry]) -> bool:
    users = [e.user_id for e in entries]
    return len(set(users)) != len(users)


def _subscription(entries: list[Entry]) -> Subscription:
    audio = tuple(dict.fromkeys(e.user_id for e in entries if e.stream_type in (0, 1)))
    video = tuple(dict.fromkeys(e.user_id for e in entries if e.stream_type in (0, 2)))
    return Subscription(audio=UserFilter(allow=audio) if audio else _NOBODY,
                        video=UserFilter(allow=video) if video else _NOBODY)


def _media_select(entries: list[Entry]) -> MediaSelect:
    """Which video sources single mode records (one choice per task: see the README's ARTC notes)."""
    sources = {e.source for e in entries if e.stream_type != 1}
    return {frozenset({0}): MediaSelect.MAIN, frozenset({1}): MediaSelect.AUX}.get(frozenset(sources), MediaSelect.MAIN_AND_AUX)


# --- storage and names -------------------------------------------------------------------------------


def _labels(out: StreamType) -> tuple[tuple[str, str], ...]:
    """{SourceType} of single-mode file sets: original streams OC/OS, video-only C/S, audio-only A."""
    if out is StreamType.VIDEO:
        return (("main/video", "C"), ("aux/video", "S"))
    return (("main/audio_video", "OC"), ("main/video", "OC"), ("aux/video", "OS"), ("aux/audio_video", "OS"),
            ("main/audio", "A"))


def _template(pattern: str, mode: RecordMode, out: StreamType) -> str:
    single = mode is RecordMode.SINGLE
    words = {
        "AppId": "{app}", "ChannelId": "{room}", "UserId": "{user}" if single else "{UserId}",
        "RecordMode": "Single" if single else "Mix", "SourceType": "{label}" if single else "{SourceType}",
        "StreamType": {StreamType.AUDIO_VIDEO: "AV", StreamType.AUDIO: "A", StreamType.VIDEO: "V"}[out],
        "StartTime": _START_TIME, "Sequence": "{seq}",
    }
    return "_".join(words[v] for v in re.findall(r"\{([A-Za-z]+)\}", pattern))


def _check_pattern(o: Obj, name: str, pattern: str, mode: RecordMode, *, need: tuple[str, ...]) -> None:
    if not _PATTERN.match(pattern):
        raise business(E_FILEINFO, f"{o.path}.{name} must be {{Variable}}s joined by _")
    variables = re.findall(r"\{([A-Za-z]+)\}", pattern)
    if len(set(variables)) != len(variables) or not set(variables) <= _VARIABLES:
        raise business(E_FILEINFO, f"{o.path}.{name} uses an unknown variable or one twice")
    if "Sequence" in variables and name != "SliceNamePattern":
        raise business(E_FILEINFO, f"{o.path}.{name} cannot use {{Sequence}}")
    required = need + (("UserId",) if mode is RecordMode.SINGLE else ())
    absent = [v for v in required if v not in variables]
    if absent:
        raise business(E_FILEINFO, f"{o.path}.{name} must contain {{{absent[0]}}}")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Storage:
    target: StorageTarget
    outputs: frozenset[Container]
    names: tuple[NameScheme, ...]
    segment_seconds: float | None
    notify_allowed: frozenset[str]  # NotifyFileUploadedFormat values this storage can report

    @staticmethod
    def read(p: Params, mode: RecordMode, out: StreamType, entries: list[Entry]) -> _Storage:
        sp = _required(p, "StorageParams", "InvalidParameter.StorageParams.StorageType")
        storage_type = sp.req_int("StorageType", choices=(0, 1))
        file_infos = sp.objs("FileInfo", max_items=3, code=E_FILEINFO)
        by_source = _duplicated(entries) and mode is RecordMode.SINGLE  # R1: names must tell camera/screen apart
        default_file = {RecordMode.SINGLE: "{AppId}_{ChannelId}_{UserId}_{StartTime}",
                        RecordMode.MIXED: "{AppId}_{ChannelId}_{StartTime}"}[mode]
        if by_source:
            default_file = "{AppId}_{ChannelId}_{UserId}_{SourceType}_{StartTime}"
        labels = _labels(out) if mode is RecordMode.SINGLE else ()
        if storage_type == 0:  # VOD
            if file_infos:
                raise business(E_FILEINFO, "FileInfo applies to OSS storage only")
            vod = sp.obj("VodParams", code=E_VOD)
            if vod is not None:
                vod.string("StorageLocation", max_len=256)
                vod.string("VodTranscodeGroupId", max_len=128)
                if vod.integer("AutoCompose", default=0, choices=(0, 1)) and not vod.string("ComposeVodTranscodeGroupId"):
                    raise business(E_VOD, "AutoCompose needs ComposeVodTranscodeGroupId")
            vod_names = (NameScheme(formats=frozenset({Container.MP4}), file=_template(default_file, mode, out),
                                    tz_hours=8.0, labels=labels),)
            return _Storage(target=StorageTarget(vendor="vod"), outputs=frozenset({Container.MP4}), names=vod_names,
                            segment_seconds=None, notify_allowed=frozenset())
        oss = sp.obj("OSSParams", code=E_OSS)
        if oss is None:
            raise missing("StorageParams.OSSParams")
        bucket = oss.string("OSSBucket", max_len=63, required=True)
        endpoint = oss.string("OSSEndpoint", max_len=256, required=True)
        m = _OSS_ENDPOINT.match(endpoint)
        if not _BUCKET.match(bucket) or m is None:
            raise business(E_OSS, "OSSBucket or OSSEndpoint (oss-<region>.aliyuncs.com) is not valid")
        names: list[NameScheme] = []
        outputs: set[Container] = set()
        segment_seconds: float | None = None
        for fi in file_infos or []:
            fmt = fi.string("Format", required=True).upper()
            if fmt not in _FORMATS or _FORMATS[fmt] in outputs:
                raise business(E_FILEINFO, f"{fi.path}.Format must be HLS, MP4 or MP3, each at most once")
            container = _FORMATS[fmt]
            if container is Container.MP3 and out is StreamType.VIDEO:
                raise business(E_FILEINFO, "MP3 needs audio; the output StreamType is video only")
            outputs.add(container)
            pattern = fi.string("FileNamePattern", max_len=256)
            if pattern:
                _check_pattern(fi, "FileNamePattern", pattern, mode, need=("StartTime",))
                if by_source and "{SourceType}" not in pattern:
                    raise business(E_FILEINFO, "a user subscribed twice needs {SourceType} in FileNamePattern")
            slice_pattern = fi.string("SliceNamePattern", max_len=256)
            if slice_pattern and container is not Container.HLS:
                raise business(E_FILEINFO, f"{fi.path}.SliceNamePattern applies to HLS only")
            if slice_pattern:
                _check_pattern(fi, "SliceNamePattern", slice_pattern, mode, need=("StartTime", "Sequence"))
                if by_source and "{SourceType}" not in slice_pattern:
                    raise business(E_FILEINFO, "a user subscribed twice needs {SourceType} in SliceNamePattern")
            if container is Container.HLS:
                segment_seconds = float(fi.integer("SliceDuration", default=30, lo=10, hi=30, zero_is_unset=True) or 30)
            prefix = fi.str_list("FilePathPrefix", max_items=5)
            if any(not _PREFIX.match(d) for d in prefix) or sum(len(d) + 1 for d in prefix) > 128:
                raise business(E_FILEINFO, f"{fi.path}.FilePathPrefix: at most 5 [A-Za-z0-9_-] names, 128 characters")
            names.append(_scheme(container, prefix, pattern or default_file, slice_pattern, mode, out, labels))
        if Container.HLS not in outputs:  # an HLS set is always written (§5.4)
            outputs.add(Container.HLS)
            segment_seconds = 30.0
            names.append(_scheme(Container.HLS, [], default_file, "", mode, out, labels))
        target = StorageTarget(vendor="oss", region=m.group(1), bucket=bucket, task_dir=False)
        allowed = frozenset({"SLICE"} | {f for f, c in _FORMATS.items() if c in outputs})
        return _Storage(target=target, outputs=frozenset(outputs), names=tuple(names), segment_seconds=segment_seconds,
                        notify_allowed=allowed)


def _scheme(container: Container, prefix: list[str], file_pattern: str, slice_pattern: str, mode: RecordMode,
            out: StreamType, labels: tuple[tuple[str, str], ...]) -> NameScheme:
    """Object keys `<d1>/…/<TaskId>/<name>.<ext>` (§5.4): the task id is part of the name, not a task directory."""
    file = "/".join([*prefix, "{task}", _template(file_pattern, mode, out)])
    segment = _template(slice_pattern or file_pattern + "_{Sequence}", mode, out) if container is Container.HLS else ""
    return NameScheme(formats=frozenset({container}), file=file, segment=segment, tz_hours=8.0, labels=labels)


def _vod_stream(spec: RecordingSpec, user_id: str, media: str, track_type: str) -> str:
    """`VodMediaList[].Stream`: `Mix`, or `Single::<UserId>::<AV::C|AV::S|A|V::C|V::S>`."""
    if spec.mode is RecordMode.MIXED:
        return "Mix"
    source = "S" if media == "aux" else "C"
    suffix = {"audio": "A", "video": f"V::{source}" if spec.stream_type is StreamType.VIDEO else f"AV::{source}"}.get(
        track_type, f"AV::{source}")
    return f"Single::{user_id}::{suffix}"


# --- callbacks -------------------------------------------------------------------------------------


def _callback(p: Params, storage: _Storage) -> CallbackTarget | None:
    url = p.get("NotifyUrl", "")
    formats = [f.upper() for f in indexed_list(p, "NotifyFileUploadedFormat", "InvalidParameter.NotifyFileUploadedFormat")]
    if not url:
        return None
    if len(url) > 2048 or not _URL.match(url):
        raise business("InvalidParameter.NotifyUrl", "NotifyUrl must be an http(s) URL of at most 2048 characters")
    key = p.get("NotifyAuthKey", "")
    if key and not _AUTH_KEY.match(key):
        raise business("InvalidParameter.NotifyAuthKey", "NotifyAuthKey must be 16-64 letters or digits")
    for f in formats:
        if f not in NOTIFY_FORMATS or f not in storage.notify_allowed:
            raise business("InvalidParameter.NotifyFileUploadedFormat", f"{f} is not a format this task records to OSS")
    return CallbackTarget(url=url, key=key, file_formats=frozenset(NOTIFY_FORMATS[f] for f in formats))


# --- mixed mode ------------------------------------------------------------------------------------


def _transcode(mt: Obj, out: StreamType) -> tuple[VideoEncoding, AudioEncoding]:
    audio = AudioEncoding(
        bitrate=mt.req_int("AudioBitrate", lo=8, hi=500) * 1000,
        channels=mt.req_int("AudioChannels", choices=(1, 2)),
        sample_rate=mt.req_int("AudioSampleRate", choices=_SAMPLE_RATES),
    )
    if not out.video:
        return VideoEncoding(), audio
    codec = mt.string("VideoCodec", max_len=16).upper() or "H.264"
    if codec not in ("H.264", "H.265"):
        raise mt.bad("VideoCodec must be H.264 or H.265")
    fps = mt.req_int("VideoFramerate", lo=1, hi=60)
    width = mt.integer("VideoWidth", default=0, lo=0, hi=1920) or 640  # 0: our default canvas
    height = mt.integer("VideoHeight", default=0, lo=0, hi=1920) or 360
    if width < 16 or height < 16:
        raise mt.bad("VideoWidth and VideoHeight must be at least 16")
    mt.integer("FrameFillType", default=0, choices=(0,))
    video = VideoEncoding(
        width=width + width % 2, height=height + height % 2, fps=fps,
        bitrate=mt.req_int("VideoBitrate", lo=1, hi=10000) * 1000,
        gop_seconds=max(1, -(-mt.req_int("VideoGop", lo=1, hi=60) // fps)),  # frames → whole seconds, rounded up
        codec="h265" if codec == "H.265" else "h264",
    )
    return video, audio


def _image(o: Obj | None) -> ImageRef | None:
    if o is None:
        return None
    url = o.string("Url", max_len=2048)
    render = o.integer("RenderMode", default=0, choices=(0, 1)) or 0
    if not url:
        return None
    if not _URL.match(url):
        raise o.bad(f"{o.path}.Url must be an http(s) URL")
    return ImageRef(url=url, render=RenderMode.LETTERBOX if render == 1 else RenderMode.CROP)


def _layout(lp: Obj, entries: list[Entry]) -> Layout:
    videos = {(e.user_id, e.track) for e in entries if e.stream_type != 1}
    panes = []
    for o in lp.objs("UserPanes", max_items=MAX_SUBSCRIPTIONS):
        user = o.string("UserId", max_len=64) or None
        track = TrackKind.AUX if o.integer("SourceType", default=0, choices=(0, 1)) else TrackKind.MAIN
        if user is not None and (user, track) not in videos:
            raise o.bad(f"{o.path}: UserId and SourceType must be a video subscription of SubscribeUserIdList")
        area = Area(x=o.fraction("X"), y=o.fraction("Y"), width=o.fraction("Width"), height=o.fraction("Height"))
        panes.append(Pane(area=area, user_id=user, track=track if user else TrackKind.MAIN,
                          z=o.integer("ZOrder", default=0, lo=0, hi=1000) or 0, render=RenderMode.CROP,
                          background=(0, 0, 0),  # no SubBackground: a missing picture is black (§5.6)
                          placeholder=_image(o.obj("SubBackground"))))
    if not panes:
        raise lp.bad("UserPanes must not be empty for a mixed recording with video")
    return Layout(mode=LayoutMode.CUSTOM, panes=tuple(panes), background_image=_image(lp.obj("MixBackground")),
                  placeholders=True)
