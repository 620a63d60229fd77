"""Task events: what a recording reports to its customer, vendor-neutral.

The worker writes them into the store's outbox in the same transaction as the change they report;
the notifier delivers them later and a dialect turns each into its vendor's callback body. Payload
keys are ours (snake_case, JSON-able); no vendor field name appears here.

`UploadTracker` decides which storage events a destination emits as files are produced and
stored. The local backend "uploads" a file the moment it is written; an S3 uploader reports the
same calls with real outcomes (`stored`, `failed`), so both emit one event sequence.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from cloudrec.core.rooms import RoomKey
from cloudrec.core.states import StopReason


class EventKind(Enum):
    RECORDER_STARTED = "recorder_started"  # the task's recorder is running (ok) or could not start
    RECORDER_STOPPED = "recorder_stopped"  # the recorder exited; `reason` is a StopReason
    TASK_MIGRATED = "task_migrated"  # another worker took the task over after its worker died
    UPLOAD_STARTED = "upload_started"  # the storage uploader of a bucket destination started
    PLAYLIST_STORED = "playlist_stored"  # a playlist reached storage for the first time
    FIRST_SEGMENT = "first_segment"  # a playlist got its first segment
    UPLOAD_FINISHED = "upload_finished"  # every playlist and segment of the task reached storage
    UPLOAD_FAILED = "upload_failed"  # storage refused an object (code and message from the backend)
    IMAGE_FAILED = "image_failed"  # a layout or watermark image could not be fetched
    FILES_FINISHED = "files_finished"  # whole files (MP4/AAC/MP3) of the task are stored
    VOD_COMMITTED = "vod_committed"  # one file committed to the VOD library
    VOD_FINISHED = "vod_finished"  # the VOD part of the task finished
    FILE_STORED = "file_stored"  # one segment, whole file or final playlist reached storage


class UploadStatus(Enum):
    OK = 0  # everything stored
    STRANDED = 1  # finished, but some file is still only on the server (spool)
    RECOVERED = 2  # stranded files have since been stored


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    kind: EventKind
    at_ms: int  # unix ms when it happened
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredFile:
    """A file as the events report it."""

    name: str  # object name relative to the task's directory / key prefix
    kind: str  # playlist | segment | file
    user_id: str  # "" for the mix
    track_type: str  # audio | video | audio_video
    media: str  # main | aux | mix
    begin_ms: int
    end_ms: int | None = None
    size: int | None = None  # bytes

    def plain(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "user_id": self.user_id, "track_type": self.track_type,
                "media": self.media, "begin_ms": self.begin_ms, "end_ms": self.end_ms, "size": self.size}


# Extension → the `format` of a FILE_STORED event.
FILE_FORMATS = {"m3u8": "hls", "ts": "segment", "m4s": "segment", "mp4": "mp4", "aac": "aac", "mp3": "mp3",
                "flv": "flv"}


@dataclass(frozen=True, slots=True, kw_only=True)
class CallbackTarget:
    """Where a task's callbacks go and how they are signed."""

    url: str
    key: str = field(default="", repr=False)
    file_formats: frozenset[str] = frozenset()  # FILE_FORMATS values reported one by one (dialects that can)
    fields: tuple[tuple[str, str], ...] = ()  # the dialect's own fields for every callback of the task


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxEvent:
    """An outbox row with what a dialect needs to format it (the task's room and robot)."""

    id: int
    task_id: str
    room: RoomKey
    robot_user_id: str
    dialect: str
    event: Event
    attempts: int = 0

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and unique across databases (task ids are random)."""
        return f"{self.task_id}-{self.id}"


# --- constructors: one per kind, so payload keys are written in one place ------------------------


def recorder_started(at_ms: int, *, ok: bool = True, error: str = "") -> Event:
    return Event(kind=EventKind.RECORDER_STARTED, at_ms=at_ms, payload={"ok": ok, "error": error})


def recorder_stopped(at_ms: int, reason: StopReason) -> Event:
    return Event(kind=EventKind.RECORDER_STOPPED, at_ms=at_ms, payload={"reason": int(reason)})


def task_migrated(at_ms: int) -> Event:
    return Event(kind=EventKind.TASK_MIGRATED, at_ms=at_ms, payload={"ok": True})


def image_failed(at_ms: int, url: str) -> Event:
    return Event(kind=EventKind.IMAGE_FAILED, at_ms=at_ms, payload={"url": url})


def file_id(task_id: str, name: str) -> str:
    """A stable numeric id for a committed file (digits, like the VOD ids receivers expect)."""
    return str(int.from_bytes(hashlib.sha256(f"{task_id}/{name}".encode()).digest()[:7], "big"))


class UploadTracker:
    """Storage events of one task. Feed it what happens to its files; it returns the events to write.

    `vod` destinations report per committed file (`vod_committed`) and a final `vod_finished`;
    bucket destinations report `upload_started`, each playlist's first store and first segment,
    failures, and at the end `upload_finished` plus one `files_finished` batch of whole files.
    Replaying from the store (`seen`) makes a resumed task continue without repeating events.
    """

    def __init__(self, *, vod: bool, task_id: str, playback_base_url: str = "",
                 file_events: frozenset[str] = frozenset()) -> None:
        self.vod = vod
        self.file_events = file_events  # the formats the task's dialect reports file by file
        self.task_id = task_id
        self.playback_base_url = playback_base_url.rstrip("/")
        self.started = False
        self.failed = 0
        self._playlists: dict[tuple[str, str, str], StoredFile] = {}  # (user, media, track type) → playlist
        self._with_segment: set[str] = set()

    def seen(self, kinds: Iterable[EventKind], files: Iterable[StoredFile]) -> None:
        """What an earlier run of this task already reported (after a restart or takeover)."""
        kinds = set(kinds)
        self.started = EventKind.UPLOAD_STARTED in kinds
        for f in files:
            if f.kind == "playlist":
                self._playlists[(f.user_id, f.media, f.track_type)] = f
            elif f.kind == "segment":
                pl = self._playlists.get((f.user_id, f.media, f.track_type))
                if pl is not None:
                    self._with_segment.add(pl.name)

    def start(self, at_ms: int, *, ok: bool = True) -> list[Event]:
        if self.vod or self.started:
            return []
        self.started = True
        return [Event(kind=EventKind.UPLOAD_STARTED, at_ms=at_ms, payload={"ok": ok})]

    def stored(self, f: StoredFile, at_ms: int) -> list[Event]:
        """`f` reached storage (the local backend: it was written)."""
        if self.vod:
            return []
        out: list[Event] = []
        if f.kind == "playlist":
            key = (f.user_id, f.media, f.track_type)
            if key not in self._playlists:
                self._playlists[key] = f
                out.append(Event(kind=EventKind.PLAYLIST_STORED, at_ms=at_ms, payload={"file": f.name}))
        elif f.kind == "segment":
            pl = self._playlists.get((f.user_id, f.media, f.track_type))
            if pl is not None and pl.name not in self._with_segment:
                self._with_segment.add(pl.name)
                out.append(Event(kind=EventKind.FIRST_SEGMENT, at_ms=at_ms, payload={
                    "playlist": pl.name, "user_id": pl.user_id, "track_type": pl.track_type, "media": pl.media,
                    "begin_ms": pl.begin_ms}))
        return out

    def file_stored(self, f: StoredFile, at_ms: int, *, key: str) -> list[Event]:
        """A segment, a closed whole file or a finished playlist is in storage under `key`."""
        ext = f.name.rsplit(".", 1)[-1]
        fmt = FILE_FORMATS.get(ext, ext)
        if fmt not in self.file_events:
            return []  # nobody reports it: no outbox row per segment for nothing
        return [Event(kind=EventKind.FILE_STORED, at_ms=at_ms, payload={
            **f.plain(), "format": fmt, "key": key, "url": self._url(f.name) if self.vod else ""})]

    def failed_upload(self, at_ms: int, *, name: str, code: str, message: str) -> list[Event]:
        """Storage refused `name`; `code`/`message` as the backend returned them (never credentials)."""
        self.failed += 1
        return [Event(kind=EventKind.UPLOAD_FAILED, at_ms=at_ms, payload={"file": name, "code": code, "message": message})]

    def finish(self, at_ms: int, files: Iterable[StoredFile], *, stranded: bool = False,
               failed: Mapping[str, str] | None = None) -> list[Event]:
        """The task's files are final (and, for a remote backend, uploaded or spooled).
        `failed`: files that could not be stored (name → error); they stay in the spool."""
        final = list(files)
        failed = failed or {}
        stranded = stranded or bool(failed)
        status = (UploadStatus.STRANDED if stranded else UploadStatus.OK).value
        if self.vod:
            out = [
                Event(kind=EventKind.VOD_COMMITTED, at_ms=at_ms, payload={
                    "ok": f.name not in failed, "error": failed.get(f.name, ""), "file": f.plain(),
                    "file_id": file_id(self.task_id, f.name), "url": self._url(f.name)})
                for f in final if f.kind in ("playlist", "file")
            ]
            return out + [Event(kind=EventKind.VOD_FINISHED, at_ms=at_ms, payload={"ok": not stranded})]
        out = []
        if self.started:
            out.append(Event(kind=EventKind.UPLOAD_FINISHED, at_ms=at_ms, payload={"status": status}))
        whole = [f for f in final if f.kind == "file"]
        if whole:
            out.append(Event(kind=EventKind.FILES_FINISHED, at_ms=at_ms, payload={
                "status": status, "files": [f.plain() for f in whole]}))
        return out

    def recovered(self, at_ms: int) -> list[Event]:
        """Every file the task's end reported as stranded has been stored since (bucket destinations)."""
        if self.vod:
            return []  # VOD reports per committed file; a late commit has no TRTC event of its own
        return [Event(kind=EventKind.UPLOAD_FINISHED, at_ms=at_ms, payload={"status": UploadStatus.RECOVERED.value})]

    def _url(self, name: str) -> str:
        return f"{self.playback_base_url}/{self.task_id}/{name}" if self.playback_base_url else ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CallbackRequest:
    """A formatted, signed callback: the exact body bytes and the vendor headers to send with them."""

    body: bytes
    headers: Mapping[str, str]
