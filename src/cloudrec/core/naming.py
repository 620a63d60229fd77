"""Object names of recorded files (TRTC A.8 conventions; they are the product's own names too)."""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Protocol

from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.spec import Container, NameScheme, TrackKind


def encode_id(value: str) -> str:
    """Base64 with `/`→`-` and `=`→`.`: safe in object keys, reversible."""
    return base64.b64encode(value.encode()).decode().replace("/", "-").replace("=", ".")


def decode_id(value: str) -> str:
    return base64.b64decode(value.replace("-", "/").replace(".", "=")).decode()


def utc_stamp(unix_ms: int) -> str:
    """`YYYYMMDDhhmmssSSS` in UTC."""
    dt = datetime.fromtimestamp(unix_ms / 1000, tz=timezone.utc)
    return dt.strftime("%Y%m%d%H%M%S") + f"{unix_ms % 1000:03d}"


def room_part(room: RoomKey) -> str:
    return room.room_id if room.id_type is RoomIdType.INTEGER else encode_id(room.room_id)


def mixed_base(room: RoomKey) -> str:
    return f"{room.app_id}_{room_part(room)}"


def user_base(room: RoomKey, user_id: str, video_track: TrackKind) -> str:
    media = "aux" if video_track is TrackKind.AUX else "main"
    return f"{mixed_base(room)}__UserId_s_{encode_id(user_id)}__UserId_e_{media}"


def playlist_name(base: str, track_type: str | None) -> str:
    return f"{base}_{track_type}.m3u8" if track_type else f"{base}.m3u8"


def segment_name(base: str, track_type: str | None, start_unix_ms: int, ext: str = "ts") -> str:
    middle = f"_{track_type}" if track_type else ""
    return f"{base}{middle}_{utc_stamp(start_unix_ms)}.{ext}"


def file_name(base: str, track_type: str | None, index: int, ext: str) -> str:
    middle = f"_{track_type}" if track_type else ""
    return f"{base}{middle}_{index}.{ext}"


# --- names from templates (NameScheme) ---------------------------------------------------------

NAME_FIELDS = ("app", "room", "user", "media", "track", "label", "task", "random", "seq", "index", "start", "end",
               "start_ms", "end_ms")
_FIELD = re.compile(r"\{(\w+)(?::([^{}]*))?\}")
KEEP = "keep"  # an end time left as its placeholder (`FileNamer.pending`)


class FileNamer(Protocol):
    """Names of one file set's files (relative paths under the task's spool / destination root)."""

    def playlist(self, track: str, start_ms: int) -> str: ...

    def segment(self, track: str, start_ms: int, seq: int, playlist: str) -> str:
        """A segment of `playlist` (always in the playlist's directory)."""
        ...

    def file(self, track: str, index: int, start_ms: int, ext: str, end_ms: int | None = None) -> str:
        """With `end_ms` None, a name that uses the end time is provisional (see `renames`)."""
        ...

    def renames(self, ext: str) -> bool:
        """Whether a closed file of this kind gets a new name (its name has the end time)."""
        ...

    def pending(self, track: str, index: int, start_ms: int, ext: str) -> str:
        """For a file that `renames`: what `finish_pending` needs to name it once its end is known
        (kept with its record, so that a file cut short by a crash gets its name too); else ""."""
        ...


def finish_pending(pending: str, end_ms: int) -> str:
    """The name a file recorded with `pending` (see `FileNamer.pending`) gets when it ends at `end_ms`
    (not yet made unique in its task)."""
    data = json.loads(pending)
    tz = timezone(timedelta(hours=float(data["tz_hours"])))

    def one(m: re.Match[str]) -> str:
        key, fmt = m.group(1), m.group(2)
        if key == "end":
            return datetime.fromtimestamp(end_ms / 1000, tz=tz).strftime(fmt or "%Y%m%d%H%M%S")
        if key == "end_ms":
            return f"{end_ms % 1000:03d}"
        return m.group(0)

    return safe_name(_FIELD.sub(one, str(data["name"])))


@dataclass(frozen=True, slots=True)
class A8Names:
    """The product's own names (TRTC A.8): `<base>[_<type>]…`."""

    base: str
    track_type: str | None  # the name suffix; None: none (the mix)

    def playlist(self, track: str, start_ms: int) -> str:
        return playlist_name(self.base, self.track_type)

    def segment(self, track: str, start_ms: int, seq: int, playlist: str) -> str:
        return segment_name(self.base, self.track_type, start_ms)

    def file(self, track: str, index: int, start_ms: int, ext: str, end_ms: int | None = None) -> str:
        return file_name(self.base, self.track_type, index, ext)

    def renames(self, ext: str) -> bool:
        return False

    def pending(self, track: str, index: int, start_ms: int, ext: str) -> str:
        return ""


def safe_name(name: str) -> str:
    """`name` if it is a relative path without `..` or empty parts; ValueError otherwise."""
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") or p.startswith(".") or "\\" in p or "\0" in p for p in parts):
        raise ValueError(f"unsafe file name {name!r}")
    return name


class TakenNames:
    """The names a task has used; pipelines of one task claim names from several threads."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._names = set(names)
        self._lock = threading.Lock()

    def claim(self, name: str) -> str:
        """`name`, or `<stem>_2.<ext>`, `_3`, … when it was used before (a pattern without a time or
        index names a split file or the next push alike): a name is never handed out twice in a task."""
        stem, dot, ext = name.rpartition(".")
        with self._lock:
            n = 1
            while name in self._names:
                n += 1
                name = f"{stem}_{n}{dot}{ext}"
            self._names.add(name)
        return name


@dataclass(frozen=True, slots=True)
class PatternNames:
    """Names expanded from `NameScheme` templates; formats without a scheme fall back to `fallback`."""

    schemes: tuple[NameScheme, ...]
    fields: Mapping[str, str]  # app, room, user, media, task, random
    fallback: FileNamer
    taken: TakenNames = field(default_factory=lambda: TakenNames())  # the task's names (shared by its namers)

    def _unique(self, name: str) -> str:
        return self.taken.claim(name)

    def _scheme(self, container: Container) -> NameScheme | None:
        return next((s for s in self.schemes if container in s.formats), None)

    def _expand(self, scheme: NameScheme, template: str, track: str, values: Mapping[str, str | int | None]) -> str:
        tz = timezone(timedelta(hours=scheme.tz_hours))
        labels = dict(scheme.labels)

        def one(m: re.Match[str]) -> str:
            key, fmt = m.group(1), m.group(2)
            if key not in NAME_FIELDS:
                return m.group(0)  # a vendor's placeholder that stays literal (ARTC mixed mode: "{UserId}")
            if key in ("start", "end"):
                ms = values.get(f"{key}_ms_raw")
                if ms is None:
                    return "open"  # provisional: the end of a file still being written
                if ms == KEEP:
                    return m.group(0)
                return datetime.fromtimestamp(int(ms) / 1000, tz=tz).strftime(fmt or "%Y%m%d%H%M%S")
            if key in ("start_ms", "end_ms"):
                ms = values.get(f"{key}_raw")
                if ms == KEEP:
                    return m.group(0)
                return "000" if ms is None else f"{int(ms) % 1000:03d}"
            if key == "track":
                return track
            if key == "label":
                return labels.get(f"{self.fields.get('media', '')}/{track}", "")
            value = values.get(key, self.fields.get(key, ""))
            return "" if value is None else str(value)

        return safe_name(_FIELD.sub(one, template))

    def playlist(self, track: str, start_ms: int) -> str:
        scheme = self._scheme(Container.HLS)
        if scheme is None:
            return self.fallback.playlist(track, start_ms)
        return self._unique(self._expand(scheme, scheme.file, track, {"start_ms_raw": start_ms, "seq": 0, "index": 1}) + ".m3u8")

    def segment(self, track: str, start_ms: int, seq: int, playlist: str) -> str:
        scheme = self._scheme(Container.HLS)
        if scheme is None:
            return self.fallback.segment(track, start_ms, seq, playlist)
        template = scheme.segment or scheme.file + "_{seq}"
        name = self._expand(scheme, template, track, {"start_ms_raw": start_ms, "seq": seq, "index": 1})
        directory = playlist.rpartition("/")[0]
        return self._unique((directory + "/" if directory else "") + name.rsplit("/", 1)[-1] + ".ts")

    def file(self, track: str, index: int, start_ms: int, ext: str, end_ms: int | None = None) -> str:
        scheme = self._scheme(Container(ext))
        if scheme is None:
            return self.fallback.file(track, index, start_ms, ext, end_ms)
        if end_ms is not None and self.renames(ext):
            return self._unique(finish_pending(self.pending(track, index, start_ms, ext), end_ms))
        values: dict[str, str | int | None] = {"start_ms_raw": start_ms, "end_ms_raw": None, "index": index, "seq": 0}
        name = self._expand(scheme, scheme.file, track, values) + "." + ext
        return name if self.renames(ext) else self._unique(name)  # provisional names come and go

    def renames(self, ext: str) -> bool:
        scheme = self._scheme(Container(ext))
        return scheme is not None and any(m.group(1) in ("end", "end_ms") for m in _FIELD.finditer(scheme.file))

    def pending(self, track: str, index: int, start_ms: int, ext: str) -> str:
        scheme = self._scheme(Container(ext))
        if scheme is None or not self.renames(ext):
            return ""
        values: dict[str, str | int | None] = {"start_ms_raw": start_ms, "end_ms_raw": KEEP, "index": index, "seq": 0}
        return json.dumps({"name": self._expand(scheme, scheme.file, track, values) + "." + ext, "tz_hours": scheme.tz_hours})
