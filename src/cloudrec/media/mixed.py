"""`MixedPipeline`: a room's subscribed tracks → one composited picture and one audio mix.

The pipeline is a thread body (`run`). Each loop it drains every subscribed track, decodes, and
produces output for task time T by monotonic time `t0 + T + latency` (MEDIA.md §1; plus up to one
`DRAIN_INTERVAL`, the loop's cadence), and sooner once every live source has delivered media
`READY_MARGIN` past T (nothing later can belong there then, short of reordering; the window is a
deadline for late sources, not a delay for all, so a recording shows its first picture a frame or
two after it starts): video ticks
T_n = n / fps show, per tile, the decoded frame whose task time is nearest to T_n; audio is pulled
from the mixer in encoder-sized chunks so that its sample count is always elapsed × rate. Each
rendition is encoded once and the same units are written to every sink.

`update()` may be called from any thread (the event loop, when the room or the subscription
changes); the new participants, sources and layout take effect at the next tick, in the same files
and on the same timeline. `set_image()` hands over a fetched picture the same way: the recording
starts without its pictures and draws each from the tick after it arrives.

Tiles without video: with `Layout.placeholders` off, a stalled source shows its last frame, then
after `gap_seconds` the FillType (last frame or black) for as long as it stays subscribed. With
placeholders on, the same happens until `placeholder_seconds` without a new frame; from then on —
and at once for a tile with no user, an audio-only user or a user who stopped publishing — the
tile shows its placeholder picture (or the background where it has none).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import av

from cloudrec.core.layout import Participant, Placement, place
from cloudrec.core.media import MediaUnit, PacketSink, StreamInfo, UnitSource
from cloudrec.core.spec import AudioEncoding, FillType, Layout, TrackKind, VideoEncoding
from cloudrec.media.audiomix import AudioMixer
from cloudrec.media.compositor import Compositor, Fill
from cloudrec.media.decode import Decoder
from cloudrec.media.encoder import AudioEncoder, VideoEncoder
from cloudrec.media.fonts import FontFiles, Fonts
from cloudrec.media.picture import Picture
from cloudrec.media.timing import from_pts, samples_until, ticks_until, unit_task_time

logger = logging.getLogger(__name__)

# Once the first picture is written the loop drains its sources every DRAIN_INTERVAL (counted from
# the start of one drain to the next; at once when output is behind its deadline) and decodes,
# composes and encodes everything due in one go: several frames of a codec in a row keep its working
# set in cache, and there are fewer wake-ups. Against a drain every 20 ms that is ~10 % less CPU for
# the same output (bench/mix_cpu's 4-user mix: 6.6–7.4 → 5.9–6.4 CPU s); output goes out up to
# this much later. Before it, the loop drains every START_DRAIN_INTERVAL for start latency.
DRAIN_INTERVAL = 0.1
START_DRAIN_INTERVAL = 0.02
MAX_BEHIND_SECONDS = 0.5  # video further behind than this skips ticks
MAX_SOURCE_FPS = 60  # the decoded-frame queue of each source is sized for this rate
LATE_TOLERANCE = 0.001  # seconds
READY_MARGIN = 0.05  # seconds every source must be past a time before it is output early (reordering)
CATCHUP_UNITS = 8  # video units in a subscription's first drain that make it worth decoding beside the others
AUDIO_PRIME_SECONDS = 0.1  # audio before task zero decoded only this far back (decoder state, not output)

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _catchup_pool() -> ThreadPoolExecutor:
    """Threads shared by every mix of the process for decoding subscription backlogs side by side."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="mix-catchup")
        return _pool


@dataclass(frozen=True, slots=True, kw_only=True)
class MixStats:
    """A consistent snapshot, replaced (not mutated) by the pipeline thread."""

    frames_out: int = 0  # video frames encoded
    samples_out: int = 0  # audio samples encoded
    late_units: int = 0  # units before task zero or behind the latency window
    first_frame_at: float | None = None  # clock() when the first publisher media was decoded
    first_output_at: float | None = None  # clock() when the first picture showing a publisher went to the encoder
    first_written_at: float | None = None  # … and when the encoder's packet of it reached the sinks (after x264's lookahead)
    dropped: int = 0  # units lost in subscriber queues + decoded frames over the per-source cap
    skipped_frames: int = 0  # video ticks skipped because the pipeline fell behind
    decode_errors: int = 0


@dataclass(slots=True)
class _VideoTrack:
    source: UnitSource
    decoder: Decoder | None = None
    queue: deque[tuple[float, av.VideoFrame]] = field(default_factory=deque)
    held: tuple[float, av.VideoFrame] | None = None
    flushed: bool = False
    drained: bool = False  # has delivered units (its first drain is the backlog of the keyframe cache)


@dataclass(slots=True)
class _AudioTrack:
    source: UnitSource
    decoder: Decoder | None = None
    flushed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class _Update:
    participants: list[Participant]
    video: Mapping[tuple[str, TrackKind], UnitSource]
    audio: Mapping[str, UnitSource]
    layout: Layout | None


class MixedPipeline:
    def __init__(
        self,
        *,
        video: VideoEncoding | None,
        audio: AudioEncoding | None,
        layout: Layout,
        fill_type: FillType,
        sinks: Sequence[PacketSink],
        t0: float,
        latency: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
        gap_seconds: float = 1.0,
        placeholder_seconds: float = 3.0,
        wall0: float | None = None,
        fonts: FontFiles | None = None,
    ) -> None:
        """`wall0`: the Unix time of task time 0 (timestamp watermarks); `fonts`: the font files of
        text watermarks (default: Pillow's built-in face, Latin only)."""
        if video is None and audio is None:
            raise ValueError("a mixed pipeline needs video, audio or both")
        self._video_enc = video
        self._audio_enc = audio
        self._layout = layout
        self._fill_type = fill_type
        self._sinks = list(sinks)
        self._t0 = t0
        self._latency = latency
        # Decoded frames kept per video source ahead of the output: while a silent source holds the
        # mix at its deadline the others queue up to (latency + a drain + skipping's limit) of frames.
        self._max_queued = math.ceil((latency + DRAIN_INTERVAL + MAX_BEHIND_SECONDS) * MAX_SOURCE_FPS)
        self._clock = clock
        self._gap = gap_seconds
        self._placeholder_after = max(gap_seconds, placeholder_seconds)
        self._wall0 = wall0
        self._fonts = fonts
        self._lock = threading.Lock()
        self._pending: _Update | None = None
        self._images: dict[str, Picture] = {}  # guarded by _lock; copied to the compositor
        self._images_changed = False
        self.stats = MixStats()
        # Owned by the pipeline thread from here on.
        self._participants: list[Participant] = []
        self._placements: list[Placement] = []
        self._video: dict[tuple[str, TrackKind], _VideoTrack] = {}
        self._audio: dict[str, _AudioTrack] = {}
        self._frames_out = 0
        self._samples_out = 0
        self._late = 0
        self._dropped_frames = 0
        self._skipped = 0
        self._first_at: float | None = None
        self._first_output_at: float | None = None
        self._first_output_tick: int | None = None
        self._first_written_at: float | None = None
        self._video_done = -math.inf  # task time of the last video tick produced
        self._audio_done = 0.0  # task time up to which audio was pulled from the mixer
        # Interleaving: audio units wait until video up to their time has been written, so every
        # sink sees the first video keyframe first and packets arrive in time order.
        self._has_video = video is not None
        self._held_audio: deque[MediaUnit] = deque()
        self._video_written_until = -math.inf  # task time (dts) of the last video unit written

    # -- control (any thread) -------------------------------------------------------------

    def lag_seconds(self) -> float:
        """How far the output is behind real time beyond the latency window (0 while it keeps up)."""
        done = self._video_done if self._has_video else self._audio_done
        if done == -math.inf or self._first_output_at is None and self._samples_out == 0:
            return 0.0
        if self._video_written_until == math.inf:
            return 0.0  # the mix has ended (flushing, or its task waits for uploads): nothing is late
        return max(0.0, self._clock() - self._t0 - self._latency - done)

    def update(
        self,
        *,
        participants: list[Participant],
        video: Mapping[tuple[str, TrackKind], UnitSource],
        audio: Mapping[str, UnitSource],
        layout: Layout | None = None,
    ) -> None:
        """Replace who is shown/heard (and optionally the layout) from the next tick on."""
        upd = _Update(participants=list(participants), video=dict(video), audio=dict(audio), layout=layout)
        with self._lock:
            if self._pending is not None and layout is None:
                upd = _Update(participants=upd.participants, video=upd.video, audio=upd.audio, layout=self._pending.layout)
            self._pending = upd

    def set_image(self, url: str, picture: Picture) -> None:
        """A fetched picture for `url` (background, placeholder, watermark), from the next tick on."""
        with self._lock:
            self._images[url] = picture
            self._images_changed = True

    # -- thread body ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        venc = VideoEncoder(self._video_enc) if self._video_enc is not None else None
        aenc = AudioEncoder(self._audio_enc) if self._audio_enc is not None else None
        comp = None
        if self._video_enc is not None:
            comp = Compositor(self._video_enc.width, self._video_enc.height, self._layout.background,
                              fonts=Fonts(self._fonts))
            comp.set_scene(self._layout)
        mixer = AudioMixer(self._audio_enc.sample_rate, self._audio_enc.channels) if self._audio_enc is not None else None
        streams: list[StreamInfo] = []
        if venc is not None:
            streams.append(venc.stream_info())
        if aenc is not None:
            streams.append(aenc.stream_info())
        v_index, a_index = 0, (1 if venc is not None else 0)
        opened: list[PacketSink] = []
        logger.info("mixed pipeline started", extra={"video": venc is not None, "audio": aenc is not None})
        try:
            for sink in self._sinks:
                sink.open(streams)
                opened.append(sink)
            fps = self._video_enc.fps if self._video_enc is not None else 0
            rate = self._audio_enc.sample_rate if self._audio_enc is not None else 0
            tick = 0
            while not stop.is_set():
                self._apply_update(comp)
                now = self._clock()
                self._ingest(mixer)
                out_until = now - self._t0 - self._latency  # task time output is due up to
                if venc is not None and comp is not None:
                    due = ticks_until(out_until, fps)
                    behind = due - tick  # behind the deadline, not the sources: early output is optional
                    if behind > max(2, math.ceil(MAX_BEHIND_SECONDS * fps)):
                        self._skipped += behind - 1
                        logger.warning("video behind; ticks skipped", extra={"skipped": behind - 1})
                        tick = due - 1
                    due = max(due, ticks_until(self._video_ready() - READY_MARGIN, fps))
                    while tick < due:
                        self._emit_video(tick, fps, venc, comp, v_index)
                        tick += 1
                if aenc is not None and mixer is not None:
                    audio_until = max(out_until, self._audio_ready(mixer) - READY_MARGIN)
                    self._emit_audio(samples_until(audio_until, rate), aenc, mixer, a_index, partial=False)
                self._publish_stats()
                # The rest of the drain interval; none when output fell behind its deadline meanwhile.
                behind = venc is not None and ticks_until(self._clock() - self._t0 - self._latency, fps) > tick
                if not behind:
                    stop.wait(max(0.0, now + self._drain_interval() - self._clock()))
            # Stop: finish the timeline up to the stop time, so the files cover the whole task.
            end = self._clock() - self._t0
            self._apply_update(comp)
            self._ingest(mixer, flush=True)
            if venc is not None and comp is not None:
                n_end = ticks_until(end - 1e-9, fps) if end > 0 else 0
                while tick < n_end:
                    self._emit_video(tick, fps, venc, comp, v_index)
                    tick += 1
                end = tick / fps
                self._write_video(v_index, venc.flush())
            if aenc is not None and mixer is not None:
                self._emit_audio(samples_until(end, rate), aenc, mixer, a_index, partial=True)
                self._write_audio(a_index, aenc.flush())
            self._video_written_until = math.inf
            self._release_audio(a_index)
            self._publish_stats()
        finally:
            for sink in opened:
                try:
                    sink.close()
                except Exception:
                    logger.exception("sink close failed")
            logger.info("mixed pipeline stopped", extra={"frames_out": self._frames_out, "samples_out": self._samples_out,
                                                          "late_units": self._late, "skipped_frames": self._skipped})

    # -- pieces ---------------------------------------------------------------------------

    def _apply_update(self, comp: Compositor | None) -> None:
        with self._lock:
            upd, self._pending = self._pending, None
            images = dict(self._images) if self._images_changed else None
            self._images_changed = False
        if images is not None and comp is not None:
            comp.set_images(images)
        if upd is None:
            return
        if upd.layout is not None:
            self._layout = upd.layout
            if comp is not None:
                comp.set_scene(upd.layout)
        self._participants = upd.participants
        video: dict[tuple[str, TrackKind], _VideoTrack] = {}
        for key, source in upd.video.items():
            old = self._video.get(key)
            if old is not None and old.source is source:
                video[key] = old
            else:  # new subscription: keep what the old one showed until new frames come
                track = _VideoTrack(source=source)
                if old is not None:
                    track.held = old.held
                video[key] = track
        self._video = video
        audio: dict[str, _AudioTrack] = {}
        for user_id, source in upd.audio.items():
            prev = self._audio.get(user_id)
            audio[user_id] = prev if prev is not None and prev.source is source else _AudioTrack(source=source)
        self._audio = audio
        if self._video_enc is not None:
            self._placements = place(self._layout, self._video_enc.width, self._video_enc.height, self._participants)
        logger.info("mixed pipeline updated", extra={"participants": len(self._participants), "tiles": len(self._placements)})

    def _decoder(self, current: Decoder | None, unit: MediaUnit) -> Decoder | None:
        if current is not None:
            return current
        try:
            # One thread per decoder: a mix decodes several streams, and FFmpeg's frame threads
            # cost ~40 % more CPU for the same frames here (measured in bench/mix_cpu); recordings
            # run in parallel with each other instead.
            return Decoder(unit.info, threads=1, thread_type="SLICE")
        except (av.FFmpegError, ValueError):
            logger.warning("no decoder for track", extra={"codec": unit.info.codec})
            return None

    def _is_late(self, unit: MediaUnit, done_until: float) -> bool:
        """Before task zero, or for a time the output has already been produced for (the
        latency window has passed and the tick / audio chunk was written without it)."""
        tt = unit_task_time(unit, self._t0) + LATE_TOLERANCE  # pts rounding is not lateness
        return tt < 0 or tt < done_until

    def _decode_video(self, vt: _VideoTrack, units: list[MediaUnit]) -> list[av.VideoFrame]:
        """Decode one track's units (touches only `vt`: may run on a catch-up thread)."""
        frames: list[av.VideoFrame] = []
        for unit in units:
            vt.decoder = self._decoder(vt.decoder, unit)
            if vt.decoder is not None:
                frames.extend(f for f in vt.decoder.decode(unit) if isinstance(f, av.VideoFrame))
        return frames

    def _ingest(self, mixer: AudioMixer | None, *, flush: bool = False) -> None:
        drained = [(vt, vt.source.drain()) for vt in self._video.values()]
        for _, units in drained:
            # late ones are still decoded: later frames may reference them
            self._late += sum(1 for unit in units if self._is_late(unit, self._video_done))
        # A new subscription brings the GOP since the last keyframe (up to seconds of frames per user):
        # several such backlogs are decoded side by side, so the first picture waits for the longest
        # one rather than for their sum. Decoders release the GIL; each track is on one thread.
        backlogs = [(vt, units) for vt, units in drained if not vt.drained and len(units) >= CATCHUP_UNITS]
        caught_up: dict[int, list[av.VideoFrame]] = {}
        if len(backlogs) > 1:
            results = _catchup_pool().map(lambda backlog: self._decode_video(*backlog), backlogs)
            caught_up = {id(vt): frames for (vt, _), frames in zip(backlogs, results)}
        for vt, units in drained:
            vt.drained = vt.drained or bool(units)
            frames = caught_up.get(id(vt))
            if frames is None:
                frames = self._decode_video(vt, units)
            if vt.decoder is not None and (flush or (vt.source.ended and not vt.flushed)):
                vt.flushed = vt.source.ended
                frames.extend(f for f in vt.decoder.flush() if isinstance(f, av.VideoFrame))
            for frame in frames:
                self._queue_video(vt, frame)
        for user_id, at in self._audio.items():
            units = at.source.drain()
            for unit in units:
                if self._is_late(unit, self._audio_done):
                    self._late += 1  # the mixer drops what was already pulled
                    if unit_task_time(unit, self._t0) < -AUDIO_PRIME_SECONDS:
                        continue  # the room's cached seconds before task zero: only the last moments prime the decoder
                at.decoder = self._decoder(at.decoder, unit)
                if at.decoder is None:
                    continue
                for decoded in at.decoder.decode(unit):
                    if isinstance(decoded, av.AudioFrame) and mixer is not None:
                        self._queue_audio(mixer, user_id, decoded)
            if at.decoder is not None and (flush or (at.source.ended and not at.flushed)):
                at.flushed = at.source.ended
                for decoded in at.decoder.flush():
                    if isinstance(decoded, av.AudioFrame) and mixer is not None:
                        self._queue_audio(mixer, user_id, decoded)
        for user_id in [u for u in (mixer.sources() if mixer is not None else []) if u not in self._audio]:
            if mixer is not None:
                mixer.remove(user_id)

    def _drain_interval(self) -> float:
        started = self._first_written_at is not None if self._has_video else self._samples_out > 0
        return DRAIN_INTERVAL if started else START_DRAIN_INTERVAL

    def _video_ready(self) -> float:
        """Task time every live video source has delivered frames up to (-inf while one has none yet,
        or there is none: output then waits for the latency window). Ended sources hold nothing back."""
        return min((vt.queue[-1][0] if vt.queue else vt.held[0] if vt.held is not None else -math.inf
                    for vt in self._video.values() if not vt.source.ended), default=-math.inf)

    def _audio_ready(self, mixer: AudioMixer) -> float:
        """Task time every live audio source has delivered samples up to (as `_video_ready`)."""
        ends = (mixer.buffered_until(user_id) for user_id, at in self._audio.items() if not at.source.ended)
        return min((end / mixer.sample_rate if end is not None else -math.inf for end in ends), default=-math.inf)

    def _frame_task_time(self, frame: av.VideoFrame | av.AudioFrame) -> float | None:
        if frame.pts is None or frame.time_base is None:
            return None
        return from_pts(frame.pts, frame.time_base) - self._t0

    def _queue_video(self, vt: _VideoTrack, frame: av.VideoFrame) -> None:
        tt = self._frame_task_time(frame)
        if tt is None:
            return
        if self._first_at is None:
            self._first_at = self._clock()
        if vt.queue and tt <= vt.queue[-1][0]:
            return  # out of order or duplicate
        vt.queue.append((tt, frame))
        while len(vt.queue) > self._max_queued:
            vt.queue.popleft()
            self._dropped_frames += 1

    def _queue_audio(self, mixer: AudioMixer, user_id: str, frame: av.AudioFrame) -> None:
        tt = self._frame_task_time(frame)
        if tt is None:
            return
        if self._first_at is None:
            self._first_at = self._clock()
        mixer.push(user_id, frame, tt)

    def _pick(self, vt: _VideoTrack, t: float) -> av.VideoFrame | Fill | None:
        """The frame nearest to task time `t` (never older than the one shown before), with
        FillType applied after `gap_seconds` without a newer frame."""
        q = vt.queue
        while q and q[0][0] <= t:
            vt.held = q.popleft()
        if q and (vt.held is None or q[0][0] - t < t - vt.held[0]):
            vt.held = q.popleft()
        if vt.held is None:
            return None
        tt, frame = vt.held
        if t - tt >= self._gap and self._fill_type is FillType.BLACK:
            return Fill.BLACK
        return frame

    def _emit_video(self, tick: int, fps: int, venc: VideoEncoder, comp: Compositor, index: int) -> None:
        t = tick / fps
        frames: dict[tuple[str, TrackKind], av.VideoFrame | Fill | None] = {}
        for p in self._placements:
            if p.user_id is None:
                continue
            key = (p.user_id, p.track)
            if key in frames:
                continue
            vt = self._video.get(key)
            frame = self._pick(vt, t) if vt is not None else None
            stalled = vt is not None and vt.held is not None and t - vt.held[0] >= self._placeholder_after
            if stalled and self._layout.placeholders:
                frame = None  # stopped for good: the placeholder takes over from FillType
            frames[key] = frame
        # Sources not on screen still advance, so they do not pile up frames.
        for key, vt in self._video.items():
            if key not in frames:
                self._pick(vt, t)
        wall = self._wall0 + t if self._wall0 is not None else None
        picture = comp.render(self._placements, frames, wall)
        picture.pts = tick
        self._video_done = t
        self._write_video(index, venc.encode(picture))
        self._frames_out += 1
        if self._first_output_at is None and any(isinstance(f, av.VideoFrame) for f in frames.values()):
            self._first_output_at = self._clock()
            self._first_output_tick = tick

    def _emit_audio(self, target: int, aenc: AudioEncoder, mixer: AudioMixer, index: int, *, partial: bool) -> None:
        size = aenc.frame_size
        while self._samples_out + size <= target:
            self._write_audio(index, aenc.encode(mixer.pull(size)))
            self._samples_out += size
            self._audio_done = self._samples_out / mixer.sample_rate
        if partial and target > self._samples_out:
            n = target - self._samples_out
            self._write_audio(index, aenc.encode(mixer.pull(n)))
            self._samples_out += n
            self._audio_done = self._samples_out / mixer.sample_rate

    def _write_video(self, index: int, units: list[MediaUnit]) -> None:
        for unit in units:
            self._write(index, unit)
            self._video_written_until = from_pts(unit.dts, unit.info.time_base)
            if self._first_written_at is None and self._first_output_tick is not None and unit.pts >= self._first_output_tick:
                self._first_written_at = self._clock()
        if units:
            self._release_audio(1)

    def _write_audio(self, index: int, units: list[MediaUnit]) -> None:
        self._held_audio.extend(units)
        self._release_audio(index)

    def _release_audio(self, index: int) -> None:
        held = self._held_audio
        while held and (not self._has_video or from_pts(held[0].dts, held[0].info.time_base) <= self._video_written_until):
            self._write(index, held.popleft())

    def _write(self, index: int, unit: MediaUnit) -> None:
        for sink in self._sinks:
            sink.write(index, unit)

    def _publish_stats(self) -> None:
        dropped = self._dropped_frames + sum(v.source.dropped for v in self._video.values())
        dropped += sum(a.source.dropped for a in self._audio.values())
        errors = sum(v.decoder.errors for v in self._video.values() if v.decoder is not None)
        errors += sum(a.decoder.errors for a in self._audio.values() if a.decoder is not None)
        self.stats = MixStats(
            frames_out=self._frames_out,
            samples_out=self._samples_out,
            late_units=self._late,
            first_frame_at=self._first_at,
            first_output_at=self._first_output_at,
            first_written_at=self._first_written_at,
            dropped=dropped,
            skipped_frames=self._skipped,
            decode_errors=errors,
        )
