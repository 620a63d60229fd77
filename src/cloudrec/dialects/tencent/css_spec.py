"""A CSS task + its template → the core RecordingSpec (spec §2.1, §3.6).

The stream is a room with one publisher (user id = stream name); the task records it single-stream,
audio and video in one file set, every push in new files, between StartTime and EndTime.
File names: VodFileName / CosBucketPath placeholders become the neutral NameScheme ones; the
stream's own names are written in literally (a task records one stream). Times are Beijing time.
"""

from __future__ import annotations

import re
from typing import Any

from cloudrec.core.rooms import RoomKey
from cloudrec.core.spec import (
    Container, MediaSelect, NameScheme, RecordingSpec, RecordMode, StorageTarget, StreamType, Subscription, UserFilter,
)
from cloudrec.dialects.tencent.css_callbacks import REPORTED_FORMATS
from cloudrec.dialects.tencent.css_templates import FORMATS

BEIJING_HOURS = 8.0
CONTAINERS = {"FlvParam": Container.FLV, "HlsParam": Container.HLS, "Mp4Param": Container.MP4,
              "AacParam": Container.AAC, "Mp3Param": Container.MP3}
DEFAULT_VOD_NAME = ("{StreamID}_{StartYear}-{StartMonth}-{StartDay}-{StartHour}-{StartMinute}-{StartSecond}"
                    "_{EndYear}-{EndMonth}-{EndDay}-{EndHour}-{EndMinute}-{EndSecond}")
# A playlist is published while it grows, so its name cannot wait for the end time: our HLS default
# leaves the End* part out (a user's VodFileName with End* placeholders gets "open" there).
DEFAULT_HLS_NAME = "{StreamID}_{StartYear}-{StartMonth}-{StartDay}-{StartHour}-{StartMinute}-{StartSecond}"
_TIME = {"Year": "%Y", "Month": "%m", "Day": "%d", "Hour": "%H", "Minute": "%M", "Second": "%S"}
_PLACEHOLDER = re.compile(r"\{([A-Za-z]+)\}")


def outputs(template: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The enabled formats of a template (field name → RecordParam); none or no template → HLS."""
    if template is not None:
        enabled = {f: template[f] for f in FORMATS if template[f]["Enable"]}
        if enabled:
            return enabled
    return {"HlsParam": {"RecordInterval": 1800, "VodFileName": "", "CosBucketPath": ""}}


def pattern(text: str, *, domain: str, app_name: str, stream: str) -> str:
    """A VodFileName / CosBucketPath with its placeholders in NameScheme terms (validated before)."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        fixed = {"StreamID": stream, "Domain": domain, "AppName": app_name, "RecordSource": "origin",
                 "RecordId": "{task}", "RandomID": "{random}", "StartMillisecond": "{start_ms}",
                 "EndMillisecond": "{end_ms}"}
        if name in fixed:
            return fixed[name]
        for edge in ("Start", "End"):
            if name.startswith(edge) and name[len(edge):] in _TIME:
                return "{%s:%s}" % (edge.lower(), _TIME[name[len(edge):]])
        raise ValueError(f"unknown placeholder {name}")

    return _PLACEHOLDER.sub(one, text)


def recording_spec(room: RoomKey, *, domain: str, app_name: str, stream: str, template: dict[str, Any] | None,
                   start_s: int, end_s: int) -> RecordingSpec:
    params = outputs(template)
    cos = template is not None and template["CosStore"] == 1
    names = []
    for field, p in params.items():
        default = DEFAULT_HLS_NAME if field == "HlsParam" else DEFAULT_VOD_NAME
        raw = (p["CosBucketPath"].lstrip("/") if cos else p["VodFileName"]) or default
        names.append(NameScheme(formats=frozenset({CONTAINERS[field]}), tz_hours=BEIJING_HOURS,
                                file=pattern(raw, domain=domain, app_name=app_name, stream=stream)))
    if cos:
        first = next(iter(params.values()))  # one bucket per task: that of the first enabled format
        storage = StorageTarget(vendor="cos", bucket=first["CosBucketName"], region=first["CosBucketRegion"],
                                task_dir=False)
    else:
        storage = StorageTarget(vendor="vod")
    # RecordInterval splits FLV/MP4/AAC/MP3; HLS is one file per push. One split length per task:
    # the shortest of the formats that split.
    intervals = [p["RecordInterval"] for f, p in params.items() if f != "HlsParam"]
    only = UserFilter(allow=(stream,))
    return RecordingSpec(
        room=room,
        robot_user_id="",
        mode=RecordMode.SINGLE,
        stream_type=StreamType.AUDIO_VIDEO,
        subscription=Subscription(audio=only, video=only),
        media_select=MediaSelect.MAIN,
        av_merge=True,
        outputs=frozenset(CONTAINERS[f] for f in params),
        max_file_seconds=min(intervals, default=86400),
        names=tuple(names),
        storage=storage,
        not_before_ms=start_s * 1000,
        not_after_ms=end_s * 1000,
        idle_stop=False,
        new_files_per_publish=True,
        file_events=REPORTED_FORMATS,  # event_type 100 for each whole file and each final playlist
    )
