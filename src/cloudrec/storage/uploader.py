"""The uploader: moves finished files from a node's spool to their destination, in order, with retry.

The queue is in the task store (`uploads` table): a session adds a row in the same transaction
as the file it records, so a crash loses nothing and a restart resumes where it stopped. Segments
and whole files upload as soon as they close, `concurrency` at a time, in threads (boto3 blocks;
recording never waits for storage). A playlist is published as the longest prefix of the spool's
playlist whose segments are all stored (`playlist.publishable`), and is done when it is final and
complete. A failure is retried with exponential backoff until `retry_seconds` have passed since the
file was queued; a failure retrying cannot fix (credentials, bucket) fails the file at once. A
failed file stays in the spool and is reported (308, once per task and error code); the task's last
storage events then say some file is stranded.

Storage events come from one `UploadTracker` per task, fed with what really happened, so the
local backend (where the spool is the destination and an "upload" is a no-op) and S3 report the
same sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloudrec.core.events import Event, EventKind, StoredFile, UploadTracker
from cloudrec.core.metrics import Metrics
from cloudrec.core.records import from_plain
from cloudrec.core.spec import RecordingSpec, StorageTarget
from cloudrec.core.states import TaskState
from cloudrec.core.tasks import FileRecord, TaskRecord, UploadRecord
from cloudrec.storage.base import StorageFailure
from cloudrec.storage.playlist import publishable, segment_names
from cloudrec.storage.routing import Destination, StorageRouter

logger = logging.getLogger(__name__)


class UploadQueue(Protocol):
    """What the uploader needs from the task store (`SqlTaskStore` is one)."""

    async def get_task(self, task_id: str) -> TaskRecord | None: ...
    async def list_files(self, task_id: str) -> list[FileRecord]: ...
    async def event_kinds(self, task_id: str) -> set[EventKind]: ...
    async def event_payloads(self, task_id: str, kind: EventKind) -> list[dict[str, Any]]: ...
    async def add_events(self, task_id: str, events: Sequence[Event]) -> None: ...
    async def pending_uploads(self, node: str, *, limit: int = 1000) -> list[UploadRecord]: ...
    async def task_uploads(self, task_id: str) -> list[UploadRecord]: ...
    async def upload_published(self, upload_id: int, *, now_ms: int, events: Sequence[Event] = ()) -> None: ...
    async def upload_done(self, upload_id: int, *, now_ms: int, size: int | None = None,
                          events: Sequence[Event] = ()) -> None: ...
    async def upload_failed(self, upload_id: int, *, error: str, events: Sequence[Event] = ()) -> None: ...
    async def upload_retry(self, upload_id: int, *, error: str, next_ms: int) -> None: ...
    async def revive_failed_uploads(self, node: str, *, since_ms: int) -> list[tuple[int, str, str]]: ...
    async def get_file(self, task_id: str, name: str) -> FileRecord | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class UploaderConfig:
    node: str  # this process's spool: rows queued by other nodes are theirs to upload
    concurrency: int = 4
    retry_seconds: float = 3600.0  # keep retrying a file this long after it was queued, then fail it
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    poll_seconds: float = 0.5
    keep_spool: bool = False  # keep spooled files after a confirmed remote upload
    vod_playback_base_url: str = ""
    stranded_retry_seconds: float = 600.0  # given-up files are tried again this often …
    stranded_keep_seconds: float = 7 * 86400.0  # … while younger than this


def _now_ms() -> int:
    return int(time.time() * 1000)


def _stored(f: FileRecord, size: int | None = None) -> StoredFile:
    return StoredFile(name=f.name, kind=f.kind, user_id=f.user_id, track_type=f.track_type, media=f.media,
                      begin_ms=f.begin_ms, end_ms=f.end_ms, size=size)


@dataclass(slots=True)
class _Task:
    """What the uploader knows about one task with rows in the queue."""

    id: str
    dest: Destination
    tracker: UploadTracker
    stored: set[str] = field(default_factory=set)  # names stored at the destination
    failed: dict[str, str] = field(default_factory=dict)  # name → error
    published: dict[str, str] = field(default_factory=dict)  # playlist → text last published
    announced: set[str] = field(default_factory=set)  # error codes reported (308) in this run
    files: dict[str, FileRecord] = field(default_factory=dict)


class Uploader:
    def __init__(self, queue: UploadQueue, router: StorageRouter, config: UploaderConfig,
                 metrics: Metrics | None = None) -> None:
        self.queue = queue
        self.router = router
        self.config = config
        self.metrics = metrics
        self._tasks: dict[str, _Task] = {}
        self._inflight: dict[int, str] = {}  # upload id → task id
        self._settled: set[int] = set()  # rows this run finished (a pass may still hold them as pending)
        self._dirty: set[str] = set()  # tasks whose playlists may be publishable now
        self._slots = asyncio.Semaphore(config.concurrency)
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._revived: set[int] = set()  # stranded rows put back in the queue by this process
        self._recovered: set[str] = set()  # tasks whose recovery was reported
        self._next_revival = time.monotonic() + config.stranded_retry_seconds
        if metrics is not None:
            metrics.declare("cloudrec_uploaded_bytes_total", "counter", "bytes stored at remote destinations")
            metrics.declare("cloudrec_upload_retries_total", "counter", "uploads that failed and will be retried")
            metrics.declare("cloudrec_upload_failures_total", "counter", "uploads given up (files left in the spool)")
            metrics.declare("cloudrec_upload_backlog", "gauge", "files in this node's spool waiting for upload")

    def destination(self, target: StorageTarget, task_id: str) -> Destination:
        return self.router.destination(target, task_id)

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="uploader")

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Stop taking new work; let uploads under way finish for a moment. What is left stays
        queued in the store and is resumed at the next start."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._jobs:
            await asyncio.wait(set(self._jobs), timeout=drain_seconds)

    def wake(self, task_id: str | None = None) -> None:
        """Look at the queue now (a file was queued or a playlist changed)."""
        if task_id is not None:
            self._dirty.add(task_id)
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._revive()
                await self._pass()
            except Exception:
                logger.exception("upload pass failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.poll_seconds)
            self._wake.clear()

    async def _revive(self) -> None:
        """Now and then, give stranded files another chance (storage may be back, credentials fixed)."""
        if time.monotonic() < self._next_revival or self.config.stranded_keep_seconds <= 0:
            return
        self._next_revival = time.monotonic() + self.config.stranded_retry_seconds
        revived = await self.queue.revive_failed_uploads(
            self.config.node, since_ms=_now_ms() - int(self.config.stranded_keep_seconds * 1000))
        for upload_id, task_id, name in revived:
            self._revived.add(upload_id)
            self._settled.discard(upload_id)  # settled as failed earlier in this run
            cached = self._tasks.get(task_id)
            if cached is not None:  # in place: uploads under way still report into this object
                cached.failed.pop(name, None)
            self._dirty.add(task_id)
        if revived:
            logger.info("stranded uploads retried", extra={"files": len(revived)})

    async def _recovery(self, task: _Task, upload_id: int) -> None:
        """A revived file is stored: if it was the ended task's last missing one, say so (305 Status 2)."""
        if upload_id not in self._revived:
            return
        self._revived.discard(upload_id)
        record = await self.queue.get_task(task.id)
        if record is None or record.state is not TaskState.ENDED or task.id in self._recovered:
            return
        if any(u.state in ("pending", "failed") for u in await self.queue.task_uploads(task.id)):
            return
        if EventKind.UPLOAD_FINISHED not in await self.queue.event_kinds(task.id):
            return  # the task's end was not reported yet: it will say everything was stored
        self._recovered.add(task.id)
        await self.queue.add_events(task.id, task.tracker.recovered(_now_ms()))
        logger.info("stranded uploads recovered", extra={"task_id": task.id})

    async def _pass(self) -> None:
        rows = await self.queue.pending_uploads(self.config.node)
        self._settled &= {r.id for r in rows}  # only what a stale read could still return
        now = _now_ms()
        if self.metrics is not None:
            self.metrics.set("cloudrec_upload_backlog", float(sum(1 for r in rows if r.kind != "finish")))
        by_task: dict[str, list[UploadRecord]] = {}
        for row in rows:
            by_task.setdefault(row.task_id, []).append(row)
        for task_id, task_rows in by_task.items():
            if self._stopping:
                return
            task = await self._task(task_id)
            if task is None:
                continue
            busy = any(v == task_id for v in self._inflight.values())
            playlists = []
            for row in task_rows:
                if row.id in self._inflight or row.id in self._settled:
                    continue
                if row.kind in ("segment", "file") and row.next_attempt_ms <= now:
                    self._spawn(row, self._upload(task, row))
                elif row.kind == "playlist" and (task_id in self._dirty or 0 < row.next_attempt_ms <= now):
                    playlists.append(row)
            if playlists and not busy:
                self._dirty.discard(task_id)
                await self._publish(task, playlists)
            if len(task_rows) == 1 and task_rows[0].kind == "finish" and not busy and task_rows[0].id not in self._settled:
                self._settled.add(task_rows[0].id)
                await self._finish_marker(task, task_rows[0])

    def _spawn(self, row: UploadRecord, work: object) -> None:
        assert asyncio.iscoroutine(work)
        self._inflight[row.id] = row.task_id
        job = asyncio.create_task(work)
        self._jobs.add(job)

        def done(j: asyncio.Task[None]) -> None:
            self._jobs.discard(j)
            self._inflight.pop(row.id, None)
            self._dirty.add(row.task_id)
            self._wake.set()

        job.add_done_callback(done)

    # --- per-task state -----------------------------------------------------------------------
    async def _task(self, task_id: str) -> _Task | None:
        task = self._tasks.get(task_id)
        if task is not None:
            return task
        record = await self.queue.get_task(task_id)
        if record is None:
            return None
        spec = from_plain(RecordingSpec, json.loads(record.spec))
        dest = self.router.destination(spec.storage, task_id)
        tracker = UploadTracker(vod=spec.storage.vendor == "vod", task_id=task_id,
                                playback_base_url=self.config.vod_playback_base_url, file_events=spec.file_events)
        uploads = await self.queue.task_uploads(task_id)
        files = {f.name: f for f in await self.queue.list_files(task_id)}
        task = _Task(id=task_id, dest=dest, tracker=tracker, files=files,
                     stored={u.name for u in uploads if u.state == "done"},
                     failed={u.name: u.last_error or "" for u in uploads if u.state == "failed"})
        # Resume the event sequence: playlists announced before (304) and their first segments (307).
        published = {u.name for u in uploads if u.kind == "playlist" and (u.published_ms or u.state == "done")}
        seen = [_stored(f) for f in files.values() if f.name in published or (f.kind == "segment" and f.name in task.stored)]
        tracker.seen(await self.queue.event_kinds(task_id), seen)
        # One 308 per task and cause, also across this cache's rebuilds and restarts.
        task.announced = {str(p.get("code", "")) for p in await self.queue.event_payloads(task_id, EventKind.UPLOAD_FAILED)}
        self._tasks[task_id] = task
        self._dirty.add(task_id)
        return task

    async def _file(self, task: _Task, name: str, *, fresh: bool = False) -> FileRecord | None:
        """The file's record; `fresh`: re-read (a playlist's record gains its end when it is final)."""
        if fresh or name not in task.files:
            record = await self.queue.get_file(task.id, name)
            if record is None:
                return None
            task.files[name] = record
        return task.files[name]

    # --- uploading ----------------------------------------------------------------------------
    async def _upload(self, task: _Task, row: UploadRecord) -> None:
        async with self._slots:
            if self._stopping:
                return
            path = task.dest.spool / row.name
            try:
                if task.dest.in_place:
                    size: int | None = path.stat().st_size if path.exists() else None
                else:
                    size = await asyncio.to_thread(task.dest.store.put_file, task.dest.key(row.name), path)
            except StorageFailure as exc:
                await self._failed(task, row, exc)
                return
            except Exception as exc:  # a bug of ours: keep the file, try again later
                logger.exception("upload error", extra={"task_id": task.id, "file": row.name})
                await self._failed(task, row, StorageFailure("InternalError", type(exc).__name__, permanent=False))
                return
        self._settled.add(row.id)
        record = await self._file(task, row.name)
        now = _now_ms()
        events = task.tracker.file_stored(_stored(record, size), now, key=task.dest.key(row.name)) if record else []
        await self.queue.upload_done(row.id, now_ms=now, size=size, events=events)
        task.stored.add(row.name)
        await self._recovery(task, row.id)
        if not task.dest.in_place:
            if self.metrics is not None:
                self.metrics.inc("cloudrec_uploaded_bytes_total", float(size or 0))
            logger.debug("uploaded", extra={"task_id": task.id, "file": row.name, "bytes": size})
            self._discard(task, row.name)

    async def _failed(self, task: _Task, row: UploadRecord, exc: StorageFailure) -> None:
        now = _now_ms()
        expired = now - row.created_ms > self.config.retry_seconds * 1000
        if not (exc.permanent or expired):
            delay = min(self.config.backoff_max_seconds, self.config.backoff_initial_seconds * 2 ** min(row.attempts, 30))
            await self.queue.upload_retry(row.id, error=exc.message, next_ms=now + int(delay * 1000))
            if self.metrics is not None:
                self.metrics.inc("cloudrec_upload_retries_total")
            if row.attempts == 0:
                logger.warning("upload failed, retrying", extra={"task_id": task.id, "file": row.name, "code": exc.code})
            return
        events: list[Event] = []
        if exc.code not in task.announced:  # one 308 per cause and task, not one per segment
            task.announced.add(exc.code)
            events = task.tracker.failed_upload(now, name=row.name, code=exc.code, message=exc.message.split(": ", 1)[-1])
        self._settled.add(row.id)
        self._revived.discard(row.id)
        await self.queue.upload_failed(row.id, error=exc.message, events=events)
        task.failed[row.name] = exc.message
        if self.metrics is not None:
            self.metrics.inc("cloudrec_upload_failures_total")
        logger.error("upload failed, file kept in the spool", extra={
            "task_id": task.id, "file": row.name, "code": exc.code, "destination": task.dest.store.description})

    def _discard(self, task: _Task, name: str) -> None:
        if not self.config.keep_spool:
            with contextlib.suppress(OSError):
                (task.dest.spool / name).unlink()

    # --- playlists ----------------------------------------------------------------------------
    async def _publish(self, task: _Task, rows: list[UploadRecord]) -> None:
        for row in rows:
            try:
                await self._publish_one(task, row)
            except StorageFailure as exc:
                await self._failed(task, row, exc)

    async def _publish_one(self, task: _Task, row: UploadRecord) -> None:
        path = task.dest.spool / row.name
        try:
            text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        except FileNotFoundError as exc:
            raise StorageFailure("SpoolFileMissing", f"{row.name} is not in the spool", permanent=True) from exc
        # In place (local backend), the sink only ever lists segments it has closed next to it.
        directory = row.name.rpartition("/")[0]
        pub = publishable(text, _Everything() if task.dest.in_place else task.stored, directory + "/" if directory else "")
        now = _now_ms()
        events: list[Event] = []
        if pub.text != task.published.get(row.name):
            if not task.dest.in_place:
                data = pub.text.encode()
                await asyncio.to_thread(task.dest.store.put_bytes, task.dest.key(row.name), data)
                if self.metrics is not None:
                    self.metrics.inc("cloudrec_uploaded_bytes_total", float(len(data)))
            task.published[row.name] = pub.text
            playlist = await self._file(task, row.name)
            if playlist is not None:
                events += task.tracker.stored(_stored(playlist), now)
                if pub.listed:
                    events += task.tracker.stored(StoredFile(
                        name="", kind="segment", user_id=playlist.user_id, track_type=playlist.track_type,
                        media=playlist.media, begin_ms=playlist.begin_ms), now)
        if pub.complete:
            playlist = await self._file(task, row.name, fresh=True)
            if playlist is not None:  # the file set ended and its playlist lists everything
                events += task.tracker.file_stored(_stored(playlist, len(pub.text.encode())), now,
                                                   key=task.dest.key(row.name))
            self._settled.add(row.id)
            await self.queue.upload_done(row.id, now_ms=now, size=len(pub.text.encode()), events=events)
            task.stored.add(row.name)
            await self._recovery(task, row.id)
            if not task.dest.in_place:
                self._discard(task, row.name)
            return
        listed = (directory + "/" * bool(directory) + name for name in segment_names(text))
        blocked = next((n for n in listed if n in task.failed), None)
        if blocked is not None:  # a listed segment will never be stored: so neither will this playlist
            self._settled.add(row.id)
            await self.queue.upload_published(row.id, now_ms=now, events=events)
            await self.queue.upload_failed(row.id, error=f"segment {blocked} was not stored")
            task.failed[row.name] = f"segment {blocked} was not stored"
            return
        if events or row.published_ms is None:
            await self.queue.upload_published(row.id, now_ms=now, events=events)

    # --- the end of a task --------------------------------------------------------------------
    async def finish_task(self, task_id: str, *, wait_seconds: float) -> list[Event] | None:
        """The task's recorder exited and every file is queued. Wait up to `wait_seconds` for the
        queue to drain; then return the task's last storage events (to be written with its end),
        or None when files are still waiting: the caller then queues the finish marker and these
        events follow once the last file is stored or given up."""
        deadline = time.monotonic() + wait_seconds
        self.wake(task_id)
        while True:
            pending = [u for u in await self.queue.task_uploads(task_id) if u.state == "pending"]
            if not pending and task_id not in self._inflight.values():
                break
            if time.monotonic() >= deadline or self._stopping:
                return None
            self.wake(task_id)
            await asyncio.sleep(0.05)
        task = await self._task(task_id)
        if task is None:
            return []
        return await self._finish_events(task)

    async def _finish_marker(self, task: _Task, row: UploadRecord) -> None:
        await self.queue.upload_done(row.id, now_ms=_now_ms(), events=await self._finish_events(task))

    async def _finish_events(self, task: _Task) -> list[Event]:
        uploads = {u.name: u for u in await self.queue.task_uploads(task.id)}
        failed = {u.name: u.last_error or "" for u in uploads.values() if u.state == "failed"}
        final = []
        for f in await self.queue.list_files(task.id):
            if f.final:
                u = uploads.get(f.name)
                final.append(_stored(f, u.size if u is not None else None))
        events = task.tracker.finish(_now_ms(), final, failed=failed)
        if not task.dest.in_place and not failed and not self.config.keep_spool:
            await asyncio.to_thread(shutil.rmtree, task.dest.spool, True)  # leftovers: a segment cut by a crash
        self._tasks.pop(task.id, None)
        self._dirty.discard(task.id)
        logger.info("uploads finished", extra={"task_id": task.id, "files": len(final), "failed": len(failed),
                                               "destination": task.dest.store.description})
        return events


class _Everything:
    """A container holding every name (the local backend stores everything in place)."""

    def __contains__(self, _: object) -> bool:
        return True
