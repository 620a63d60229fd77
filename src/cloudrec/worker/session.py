"""One task wired end to end: room subscriptions → media pipelines (threads) → sinks → store.

The session is the only place that knows about rooms, pipelines and the store at once. It runs on
the event loop and does no codec work: pipelines run in their own threads and report files
through a thread-safe queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cloudrec.core import events as ev
from cloudrec.core import naming
from cloudrec.core.events import Event, EventKind, UploadTracker
from cloudrec.core.ingest import IngestSpec
from cloudrec.core.media import FileEvent
from cloudrec.core.metrics import Metrics
from cloudrec.core.records import from_plain
from cloudrec.core.spec import Container, MediaSelect, RecordingSpec, RecordMode, TrackKind
from cloudrec.core.states import StopReason, TaskState
from cloudrec.core.tasks import FileRecord, TaskRecord
from cloudrec.media.fonts import FontFiles
from cloudrec.media.mixed import MixedPipeline
from cloudrec.media.picture import Picture
from cloudrec.media.single import SinglePipeline
from cloudrec.output.factory import SinkFactory, make_sinks
from cloudrec.output.target import SinkTarget
from cloudrec.rooms.ingest import IngestEnd, IngestPublisher
from cloudrec.rooms.registry import Room, RoomRegistry, RoomSnapshot, Track, TrackSubscriber
from cloudrec.storage.playlist import closed
from cloudrec.storage.uploader import Uploader
from cloudrec.store.base import TaskStore
from cloudrec.worker.images import ImageError, ImageFetcher, loggable_url

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionConfig:
    uploader: Uploader  # stores what the sinks write into the task's spool directory
    latency_seconds: float = 0.3
    segment_seconds: float = 4.0
    poll_seconds: float = 0.25
    finish_wait_seconds: float = 10.0  # at the end, wait this long for uploads to report them with the task's end
    metrics: Metrics | None = None
    images: ImageFetcher | None = None  # shared by all sessions (one cache); None: layouts draw no pictures
    fonts: FontFiles | None = None  # text watermarks' font files (None: Pillow's built-in face)


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Thread:
    """A pipeline or publisher thread with its stop flag; exceptions are logged, never lost."""

    def __init__(self, name: str, body: Callable[[threading.Event], Any], task_id: str) -> None:
        self.stop = threading.Event()
        self.result: Any = None
        self.failed = False
        self._task_id = task_id

        def main() -> None:
            try:
                self.result = body(self.stop)
            except Exception:
                self.failed = True
                logger.exception("pipeline thread failed", extra={"task_id": task_id, "thread": name})

        self.thread = threading.Thread(target=main, name=name, daemon=True)
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.to_thread(self.thread.join)


class Session:
    """What recording and ingest sessions share: polling the store for stop and change requests."""

    def __init__(self, task: TaskRecord, store: TaskStore, config: SessionConfig) -> None:
        self.task = task
        self.store = store
        self.config = config
        self.spec_version = task.spec_version
        self.local_stop: StopReason | None = None
        self.kick = asyncio.Event()  # set to re-check the store (and the room) at once
        self.loop = asyncio.get_running_loop()
        self.log = {"task_id": task.id}

    def lag_seconds(self) -> float:
        """How far this task's output is behind real time (mixing is the part that can fall behind)."""
        return 0.0

    def request_stop(self, reason: StopReason) -> None:
        self.local_stop = reason
        self.kick.set()

    def kick_threadsafe(self) -> None:
        """Wake the session from any thread (a room change)."""
        try:
            self.loop.call_soon_threadsafe(self.kick.set)
        except RuntimeError:  # the loop is closed: nothing left to wake
            pass

    async def _sleep(self) -> None:
        try:
            await asyncio.wait_for(self.kick.wait(), self.config.poll_seconds)
        except asyncio.TimeoutError:
            pass
        self.kick.clear()

    async def _poll_store(self) -> tuple[StopReason | None, TaskRecord | None]:
        """(stop reason if stopping, the task row if its spec changed)."""
        if self.local_stop is not None:
            return self.local_stop, None
        row = await self.store.get_task(self.task.id)
        if row is None:
            return StopReason.FAILED, None
        if row.stop_requested is not None:
            return row.stop_requested, None
        if row.spec_version != self.spec_version:
            self.spec_version = row.spec_version
            return None, row
        return None, None


# ----------------------------------------------------------------------------------------------
# recording


@dataclass(slots=True)
class _SingleGroup:
    """One single-stream file set: a user's video track and/or audio track."""

    user_id: str
    media: str  # main | aux
    track_type: str  # audio | video | audio_video
    tracks: dict[TrackKind, Track]
    subs: dict[TrackKind, TrackSubscriber]
    thread: _Thread
    pipeline: SinglePipeline


@dataclass(slots=True)
class _MixState:
    pipeline: MixedPipeline
    thread: _Thread
    subs: dict[tuple[str, TrackKind], TrackSubscriber] = field(default_factory=dict)
    room_version: int = -1
    layout_sent: Any = None


class RecordingSession(Session):
    def __init__(self, task: TaskRecord, store: TaskStore, config: SessionConfig, registry: RoomRegistry) -> None:
        super().__init__(task, store, config)
        self.spec: RecordingSpec = from_plain(RecordingSpec, json.loads(task.spec))
        self.room: Room = registry.room(self.spec.room)
        self.uploader = config.uploader
        self.node = config.uploader.config.node
        self.directory = self.uploader.destination(self.spec.storage, task.id).spool
        self.name_prefix = ""  # "ha<N>_" after the N-th takeover (A.8 failover names), so nothing is overwritten
        self.taken_names = naming.TakenNames()  # pattern names never repeat in a task (also across takeovers)
        self.events: asyncio.Queue[FileEvent] = asyncio.Queue()
        self.single: dict[tuple[str, str, str], _SingleGroup] = {}
        self.single_factories: dict[tuple[str, str, str], SinkFactory] = {}
        self.retired: list[_Thread] = []  # pipelines told to stop, still finalizing
        self.mix: _MixState | None = None
        self.state = task.state
        self.begin_ms = task.begin_ms
        # Storage events (a CloudStorage destination: upload start/playlists/segments/finish; VOD: commits).
        self.uploads = UploadTracker(vod=self.spec.storage.vendor == "vod", task_id=task.id)
        self.pipelines: list[SinglePipeline | MixedPipeline] = []
        self.first_frame_noted = False
        self.dropped_reported = 0
        self.pictures: dict[str, Picture] = {}  # fetched layout pictures, by URL
        self.picture_fetches: dict[str, asyncio.Task[None]] = {}
        self.stream_seen: dict[tuple[str, TrackKind], float] = {}  # idle_per_stream: last seen (monotonic)
        self.streams_done: set[tuple[str, TrackKind]] = set()

    def lag_seconds(self) -> float:
        return self.mix.pipeline.lag_seconds() if self.mix is not None else 0.0

    # --- main loop --------------------------------------------------------------------------
    async def run(self) -> None:
        if not await self._start_events():
            return
        logger.info("recording started", extra={**self.log, "room": str(self.spec.room), "mode": self.spec.mode.name})
        idle_since = time.monotonic()
        reason: StopReason | None = None
        self._fetch_pictures()
        unwatch = self.room.watch(self.kick_threadsafe)  # joins, leaves and first media at once, not a poll later
        try:
            while reason is None:
                reason, changed = await self._poll_store()
                if reason is not None:
                    break
                if changed is not None:
                    self.spec = from_plain(RecordingSpec, json.loads(changed.spec))
                    logger.info("recording spec applied", extra={**self.log, "spec_version": self.spec_version})
                    self._fetch_pictures()
                reason = self._window_ended()
                if reason is not None:
                    break
                snapshot = self.room.snapshot()
                now = time.monotonic()
                wanted = self._idle_streams(self._wanted(snapshot), now) if self._window_open() else {}
                if wanted:
                    idle_since = now
                elif self.spec.idle_stop and now - idle_since >= self.spec.max_idle_seconds:
                    reason = StopReason.IDLE
                    break
                if self.spec.mode is RecordMode.MIXED:
                    self._reconcile_mix(snapshot, wanted)
                else:
                    self._reconcile_single(wanted)
                await self._drain_events()
                await self._update_state(bool(wanted))
                self._count_dropped()
                self._note_first_frame()
                await self._sleep()
        except Exception:
            logger.exception("recording session failed", extra=self.log)
            reason = StopReason.FAILED
        finally:
            unwatch()
        await self._finish(reason)

    # --- scheduled window (not_before / not_after) ------------------------------------------------
    def _window_open(self) -> bool:
        """Nothing is recorded before `not_before` (a scheduled task may be claimed a little early)."""
        return _now_ms() >= self.spec.not_before_ms

    def _window_ended(self) -> StopReason | None:
        """At `not_after` the task ends (CSS EndTime), whatever is being recorded."""
        if self.spec.not_after_ms and _now_ms() >= self.spec.not_after_ms:
            return StopReason.TIMEOUT
        return None

    async def _update_state(self, publishing: bool) -> None:
        recording = publishing and (
            (self.mix is not None and self.mix.pipeline.stats.frames_out + self.mix.pipeline.stats.samples_out > 0)
            or any(g.pipeline.begin_ms is not None and g.thread.alive for g in self.single.values())
        )
        state = TaskState.IN_PROGRESS if recording else TaskState.IDLE
        if state is not self.state:
            self.state = state
            await self.store.set_state(self.task.id, state)
            logger.info("recording state", extra={**self.log, "state": state.value})

    async def _finish(self, reason: StopReason) -> None:
        self.state = TaskState.EXITING
        await self.store.set_state(self.task.id, TaskState.EXITING, stop_reason=reason)
        logger.info("recording stopping", extra={**self.log, "reason": reason.name})
        for fetch in self.picture_fetches.values():
            fetch.cancel()
        threads = [g.thread for g in self.single.values()] + self.retired + ([self.mix.thread] if self.mix else [])
        await asyncio.gather(*(t.finish() for t in threads))
        for g in self.single.values():
            for s in g.subs.values():
                s.close()
        if self.mix is not None:
            for s in self.mix.subs.values():
                s.close()
        await self._drain_events()
        self._count_dropped()
        # The recorder exited and every file is queued. If the uploads finish soon (always, for the
        # local backend) their last events go out with the task's end; otherwise the uploader sends
        # them after the last file is stored (the finish marker waits behind the task's files).
        stored = await self.uploader.finish_task(self.task.id, wait_seconds=self.config.finish_wait_seconds)
        events = [ev.recorder_stopped(_now_ms(), reason), *(stored or [])]
        await self.store.set_state(self.task.id, TaskState.ENDED, stop_reason=reason, events=events,
                                   finish_uploads_on=self.node if stored is None else None)
        self.uploader.wake(self.task.id)
        logger.info("recording ended", extra={**self.log, "reason": reason.name, "uploads_pending": stored is None})

    # --- events -----------------------------------------------------------------------------
    async def _start_events(self) -> bool:
        """Report the start (or a takeover of a task whose worker died); False if it cannot start."""
        now = _now_ms()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            logger.error("recording cannot start", extra={**self.log, "error": str(exc)})
            await self.store.set_state(
                self.task.id, TaskState.ENDED, stop_reason=StopReason.FAILED, error="storage directory unavailable",
                events=[ev.recorder_started(now, ok=False, error="storage unavailable"),
                        ev.recorder_stopped(now, StopReason.FAILED)])
            return False
        kinds = await self.store.event_kinds(self.task.id)
        first: list[Event] = [ev.recorder_started(now)]
        if EventKind.RECORDER_STARTED in kinds:
            self.uploads.seen(kinds, [])
            first = [ev.task_migrated(now)]
            await self._recover()
            logger.info("recording taken over", extra={**self.log, "prefix": self.name_prefix})
        await self.store.add_events(self.task.id, first + self.uploads.start(now))
        return True

    async def _recover(self) -> None:
        """The previous run of this task died (kill -9, power, a lost node). Its open files end where
        it stopped: fragmented MP4 plays up to its last whole fragment, a playlist lists only closed
        segments whose records reached the store (it gets its end tag now); they are queued for upload
        like any finished file. The segment that was being written, or closed without a record, is
        listed nowhere and removed. New files get the
        `ha<N>_` prefix so that nothing of the earlier runs is overwritten."""
        files = await self.store.list_files(self.task.id)
        known = {f.name for f in files}
        self.taken_names = naming.TakenNames(known)
        for f in files:
            if f.final:
                continue
            path = self.directory / f.name
            end_ms = f.begin_ms
            name = f.name
            try:
                if f.kind == "playlist":
                    tmp = path.with_name(f".{path.name}.tmp")
                    directory = f.name.rpartition("/")[0]
                    text = closed(path.read_text(encoding="utf-8"), known, directory + "/" if directory else "")
                    tmp.write_text(text, encoding="utf-8")
                    os.replace(tmp, path)
                end_ms = max(f.begin_ms, int(path.stat().st_mtime * 1000))  # the last write ≈ the last media
                if f.pending:  # provisionally named: it gets the name its end gives it, as at a normal close
                    name = self.taken_names.claim(naming.finish_pending(f.pending, f.end_ms or end_ms))
                    (self.directory / name).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(path, self.directory / name)
            except OSError:
                logger.warning("interrupted file not in the spool", extra={**self.log, "file": f.name})
            await self.store.put_file(self.task.id, replace(f, name=name, end_ms=f.end_ms or end_ms, final=True, pending=""),
                                      upload_on=self.node, replaces=f.name)
            logger.info("interrupted file closed", extra={**self.log, "file": name})
        if self.directory.is_dir():
            for path in self.directory.rglob("*.ts"):
                if path.relative_to(self.directory).as_posix() not in known:
                    path.unlink(missing_ok=True)
        runs = [int(m.group(1)) for f in files if (m := re.match(r"ha(\d+)_", f.name))]
        self.name_prefix = f"ha{max(runs, default=0) + 1}_"
        self.uploader.wake(self.task.id)

    def _count_dropped(self) -> None:
        metrics = self.config.metrics
        if metrics is None:
            return
        dropped = sum(p.dropped if isinstance(p, SinglePipeline) else p.stats.dropped for p in self.pipelines)
        if dropped > self.dropped_reported:
            metrics.inc("cloudrec_dropped_units_total", dropped - self.dropped_reported)
            self.dropped_reported = dropped

    def _note_first_frame(self) -> None:
        """Once each: how long after CreateCloudRecording the mix composed its first picture of a
        publisher (the start latency users see: media from then on is in the recording;
        `cloudrec_start_seconds`), and how long until the encoder wrote it (x264's lookahead holds
        ~10 frames back; `cloudrec_start_written_seconds`)."""
        if self.mix is None or self.first_frame_noted:
            return
        stats = self.mix.pipeline.stats
        if stats.first_output_at is None or stats.first_written_at is None:
            return
        self.first_frame_noted = True
        since = {name: time.time() - (time.monotonic() - at) - self.task.created_at
                 for name, at in (("start", stats.first_output_at), ("start_written", stats.first_written_at))}
        logger.info("mix first frame", extra={**self.log, "since_create_ms": round(since["start"] * 1000),
                                              "written_since_create_ms": round(since["start_written"] * 1000)})
        if self.config.metrics is not None:
            for name, seconds in since.items():
                self.config.metrics.inc(f"cloudrec_{name}_seconds_sum", seconds)
                self.config.metrics.inc(f"cloudrec_{name}_seconds_count")

    # --- what to record -----------------------------------------------------------------------
    def _wanted(self, snapshot: RoomSnapshot) -> dict[tuple[str, TrackKind], Track]:
        """Tracks this task subscribes to right now (stream type, allow/block lists, MediaId)."""
        spec = self.spec
        present = snapshot.user_ids
        out: dict[tuple[str, TrackKind], Track] = {}
        for p in snapshot.participants:
            if p.user_id == spec.robot_user_id or p.user_id in self.room.blocked:
                continue
            for kind, track in list(p.tracks.items()):
                if track.closed:
                    continue
                if kind is TrackKind.AUDIO and not spec.stream_type.audio:
                    continue
                if kind.is_video and not spec.stream_type.video:
                    continue
                if spec.mode is RecordMode.SINGLE and kind.is_video:
                    if (kind is TrackKind.MAIN and spec.media_select is MediaSelect.AUX) or (
                        kind is TrackKind.AUX and spec.media_select is MediaSelect.MAIN
                    ):
                        continue
                if spec.subscription.wants(p.user_id, kind, present):
                    out[(p.user_id, kind)] = track
        return out

    def _idle_streams(self, wanted: dict[tuple[str, TrackKind], Track], now: float) -> dict[tuple[str, TrackKind], Track]:
        """`idle_per_stream` (ARTC single mode): a stream gone for `max_idle_seconds` has ended for this
        task and is not recorded again if it returns; the task idles out once every stream did."""
        if not self.spec.idle_per_stream or self.spec.mode is not RecordMode.SINGLE:
            return wanted
        for key in wanted:
            self.stream_seen[key] = now
        for key, seen in self.stream_seen.items():
            if key not in wanted and now - seen >= self.spec.max_idle_seconds and key not in self.streams_done:
                self.streams_done.add(key)
                logger.info("stream idle timeout", extra={**self.log, "user_id": key[0], "track": key[1].value})
        return {k: t for k, t in wanted.items() if k not in self.streams_done}

    def _on_file(self, event: FileEvent) -> None:
        """Called from pipeline threads."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    async def _drain_events(self) -> None:
        drained = False
        while not self.events.empty():
            fe = self.events.get_nowait()
            drained = True
            # Segments and files are queued for upload when they close; a playlist when it starts (the
            # uploader publishes it as its segments reach storage, and finishes it once it is final).
            await self.store.put_file(
                self.task.id,
                FileRecord(name=fe.name, kind=fe.kind, track_type=fe.track_type, user_id=fe.user_id, media=fe.media,
                           begin_ms=fe.begin_ms, end_ms=fe.end_ms, final=fe.final, pending=fe.pending),
                upload_on=self.node if fe.final or fe.kind == "playlist" else None, replaces=fe.replaces,
            )
            if self.begin_ms is None:
                self.begin_ms = fe.begin_ms
                await self.store.set_state(self.task.id, self.state, begin_ms=fe.begin_ms)
            if fe.final and fe.kind != "playlist" and self.config.metrics is not None:
                self.config.metrics.inc("cloudrec_files_written_total", kind=fe.kind)
                try:
                    self.config.metrics.inc("cloudrec_bytes_written_total", float((self.directory / fe.name).stat().st_size))
                except OSError:
                    pass
            logger.info("file", extra={**self.log, "file": fe.name, "final": fe.final})
        if drained:
            self.uploader.wake(self.task.id)

    def _target(self, track_type: str | None, user_id: str, media: str, wall0_ms: int = 0) -> SinkTarget:
        spec = self.spec
        if media == "mix":
            base = naming.mixed_base(spec.room)
        else:
            base = naming.user_base(spec.room, user_id, TrackKind.AUX if media == "aux" else TrackKind.MAIN)
        names: naming.FileNamer = naming.A8Names(self.name_prefix + base, track_type)
        if spec.names:
            fields = {"app": str(spec.room.app_id), "room": spec.room.room_id, "user": user_id, "media": media,
                      "task": self.task.id, "random": secrets.token_hex(4)}
            names = naming.PatternNames(spec.names, fields, names, self.taken_names)
        return SinkTarget(directory=self.directory, names=names, track_type=track_type, user_id=user_id, media=media,
                          wall0_ms=wall0_ms, on_event=self._on_file)

    def _segment_seconds(self) -> float:
        return self.spec.segment_seconds or self.config.segment_seconds

    # --- mixed: layout pictures ---------------------------------------------------------------
    def _fetch_pictures(self) -> None:
        """Start fetching the layout's pictures; the mix starts without them and draws each on arrival."""
        if self.config.images is None or self.spec.mode is not RecordMode.MIXED:
            return
        for url in self.spec.layout.image_urls():
            running = self.picture_fetches.get(url)
            if url not in self.pictures and (running is None or running.done()):  # failed ones retry on a change
                self.picture_fetches[url] = asyncio.create_task(self._fetch_picture(self.config.images, url))

    async def _fetch_picture(self, fetcher: ImageFetcher, url: str) -> None:
        try:
            picture = await fetcher.picture(url)
        except ImageError as exc:
            logger.warning("layout picture not used; its area shows the background",
                           extra={**self.log, "url": loggable_url(url), "reason": str(exc)})
            await self.store.add_events(self.task.id, [ev.image_failed(_now_ms(), url)])  # callback 309
            return
        self.pictures[url] = picture
        if self.mix is not None:
            self.mix.pipeline.set_image(url, picture)

    # --- mixed ------------------------------------------------------------------------------
    def _reconcile_mix(self, snapshot: RoomSnapshot, wanted: dict[tuple[str, TrackKind], Track]) -> None:
        if self.mix is None:
            if not any(t.units for t in wanted.values()):
                return  # the recording starts with the first media (BeginTimeStamp)
            self._start_mix(wanted)
        mix = self.mix
        assert mix is not None
        changed = snapshot.version != mix.room_version or self.spec.layout != mix.layout_sent
        for key, sub in list(mix.subs.items()):
            if key not in wanted or sub.track is not wanted[key]:
                sub.close()
                del mix.subs[key]
                changed = True
        for key, track in wanted.items():
            if key not in mix.subs:
                mix.subs[key] = track.subscribe()
                changed = True
        if not changed:
            return
        video_ok = {k for k in mix.subs if k[1].is_video}
        participants = [p for p in snapshot.layout_participants(video_ok)
                        if any(u == p.user_id for u, _ in mix.subs)]
        mix.pipeline.update(
            participants=participants,
            video={k: s for k, s in mix.subs.items() if k[1].is_video},
            audio={u: s for (u, k), s in mix.subs.items() if k is TrackKind.AUDIO},
            layout=self.spec.layout,
        )
        mix.room_version = snapshot.version
        mix.layout_sent = self.spec.layout

    def _start_mix(self, wanted: dict[tuple[str, TrackKind], Track]) -> None:
        spec = self.spec
        t0 = self._mix_zero(wanted)
        wall0_ms = int((time.time() - (time.monotonic() - t0)) * 1000)
        # Audio-file outputs only (AAC/MP3): no picture is composed or encoded at all.
        video = spec.stream_type.video and not spec.outputs <= {Container.AAC, Container.MP3}
        sinks = make_sinks(
            spec.outputs, self._target(None, "", "mix", wall0_ms),
            max_file_seconds=float(spec.max_file_seconds), has_video=video, has_audio=spec.stream_type.audio,
            segment_seconds=self._segment_seconds(), extract_audio=True,  # "HLS+AAC": the AAC file takes the audio
            audio_codec=spec.audio.codec,  # the mix's encoder (MP3 for an ARTC task with MP3 files)
        )
        pipeline = MixedPipeline(
            video=spec.video if video else None,
            audio=spec.audio if spec.stream_type.audio else None,
            layout=spec.layout, fill_type=spec.fill_type, sinks=sinks, t0=t0, latency=self.config.latency_seconds,
            wall0=wall0_ms / 1000, fonts=self.config.fonts,
        )
        for url, picture in self.pictures.items():
            pipeline.set_image(url, picture)
        self.mix = _MixState(pipeline=pipeline, thread=_Thread(f"mix-{self.task.id[:8]}", pipeline.run, self.task.id))
        self.pipelines.append(pipeline)
        logger.info("mix started", extra=self.log)

    def _mix_zero(self, wanted: dict[tuple[str, TrackKind], Track]) -> float:
        """Task zero of the mix (monotonic = room clock): the first media if it came after the task
        was created, so that the moment it took to notice it is not cut off its start (nor a black
        frame put before media published ahead of time), else now. Never further back than the
        latency window: output for earlier times would be late already."""
        now = time.monotonic()
        firsts = [t.first_seconds for t in wanted.values() if t.first_seconds is not None]
        created = now - max(0.0, time.time() - self.task.created_at)
        first = min(firsts, default=now)
        return max(first if first >= created else now, now - self.config.latency_seconds)

    # --- single-stream ----------------------------------------------------------------------
    def _groups(self, wanted: dict[tuple[str, TrackKind], Track]) -> dict[tuple[str, str, str], dict[TrackKind, Track]]:
        groups: dict[tuple[str, str, str], dict[TrackKind, Track]] = {}
        for (user, kind), track in wanted.items():
            if kind is TrackKind.AUDIO:
                merge = self.spec.av_merge and (user, TrackKind.MAIN) in wanted
                key = (user, "main", "audio_video" if merge else "audio")
            elif kind is TrackKind.MAIN:
                merge = self.spec.av_merge and (user, TrackKind.AUDIO) in wanted
                key = (user, "main", "audio_video" if merge else "video")
            else:
                key = (user, "aux", "video")
            groups.setdefault(key, {})[kind] = track
        return groups

    def _reconcile_single(self, wanted: dict[tuple[str, TrackKind], Track]) -> None:
        groups = self._groups(wanted)
        for key, group in list(self.single.items()):
            current = groups.get(key)
            replaced = current is not None and any(current.get(k) is not t for k, t in group.tracks.items())
            if group.thread.alive and current is not None and not (replaced and group.pipeline.begin_ms is None):
                continue  # recording, or its tracks ended and the pipeline is finishing by itself
            # Unsubscribed, blocked, removed, or replaced before it started: finalize this file set.
            group.thread.stop.set()
            for sub in group.subs.values():
                sub.close()
            self.retired.append(group.thread)
            del self.single[key]
        for key, tracks in groups.items():
            if key not in self.single:
                self._start_single(key, tracks)

    def _reusable_factory(self, key: tuple[str, str, str]) -> SinkFactory | None:
        """The user stream's factory, so that its files continue; none when every publish starts new
        files (`new_files_per_publish`, CSS: one file set per push session)."""
        if self.spec.new_files_per_publish:
            return None
        return self.single_factories.get(key)

    def _start_single(self, key: tuple[str, str, str], tracks: dict[TrackKind, Track]) -> None:
        user, media, track_type = key
        factory = self._reusable_factory(key)
        if factory is None:
            # One factory per user stream for the whole task: when the user publishes again (or the
            # stream parameters change) files continue (`_2.mp4`, an HLS discontinuity), never overwrite.
            factory = self.single_factories[key] = SinkFactory(
                self.spec.outputs, self._target(track_type, user, media),
                max_file_seconds=float(self.spec.max_file_seconds), segment_seconds=self._segment_seconds(),
                extract_audio=True,  # "HLS+AAC": the AAC file takes the audio
            )
        subs = {k: t.subscribe() for k, t in tracks.items()}
        video_sub = next((s for k, s in subs.items() if k.is_video), None)
        audio_sub = subs.get(TrackKind.AUDIO)
        pipeline = SinglePipeline(video=video_sub, audio=audio_sub, sinks_factory=factory,
                                  video_encoding=self.spec.video, audio_encoding=self.spec.audio)
        thread = _Thread(f"single-{user}-{media}-{track_type}", pipeline.run, self.task.id)
        self.pipelines.append(pipeline)
        self.single[key] = _SingleGroup(user_id=user, media=media, track_type=track_type, tracks=dict(tracks),
                                        subs=subs, thread=thread, pipeline=pipeline)
        logger.info("single-stream recording started", extra={**self.log, "user_id": user, "media": media, "track": track_type})


# ----------------------------------------------------------------------------------------------
# ingest


class IngestSession(Session):
    def __init__(self, task: TaskRecord, store: TaskStore, config: SessionConfig, registry: RoomRegistry) -> None:
        super().__init__(task, store, config)
        self.spec: IngestSpec = from_plain(IngestSpec, json.loads(task.spec))
        self.room = registry.room(self.spec.room)

    def _start(self) -> _Thread:
        return _Thread(f"ingest-{self.task.id[:8]}", IngestPublisher(self.room, self.spec).run, self.task.id)

    async def run(self) -> None:
        reason: StopReason | None = None
        thread = self._start()
        try:
            await self.store.set_state(self.task.id, TaskState.IN_PROGRESS)
            logger.info("ingest started", extra={**self.log, "room": str(self.spec.room), "user_id": self.spec.user_id})
            while reason is None:
                reason, changed = await self._poll_store()
                if changed is not None:  # UpdateStreamIngest: play the new URL from now on
                    self.spec = from_plain(IngestSpec, json.loads(changed.spec))
                    await thread.finish()
                    thread = self._start()
                elif reason is None and not thread.alive:
                    end = thread.result
                    reason = StopReason.FAILED if thread.failed or end is IngestEnd.FAILED else StopReason.API
                    logger.info("ingest finished", extra={**self.log, "end": getattr(end, "value", "failed")})
                    break
                await self._sleep()
        finally:
            await thread.finish()  # whatever happened here, the publisher leaves the room
        await self.store.set_state(self.task.id, TaskState.ENDED, stop_reason=reason)
        logger.info("ingest ended", extra={**self.log, "reason": reason.name if reason else ""})
