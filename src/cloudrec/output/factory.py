"""Which sinks a recording writes: one per output kind, checked against a compatibility table.

`make_sinks` builds one set; `SinkFactory` is the stateful callable a pipeline uses as its
`sinks_factory`: a later set (after a stream change) continues the file indexes and the HLS
playlist of the previous one instead of overwriting them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial

from cloudrec.core.media import PacketSink, StreamInfo
from cloudrec.core.spec import Container
from cloudrec.errors import InvalidRequest
from cloudrec.output.audio import AudioFileSink
from cloudrec.output.flv import FlvSink
from cloudrec.output.hls import HlsSink
from cloudrec.output.mp4 import MAX_FILE_BYTES, Mp4Sink, RotatingFileSink
from cloudrec.output.target import SinkTarget

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Compatibility:
    """What one container can hold."""

    video_codecs: frozenset[str]  # empty: no video at all
    audio_codecs: frozenset[str]
    needs_audio: bool = False  # an audio-only format: no audio, no file


COMPATIBILITY: dict[Container, Compatibility] = {
    Container.HLS: Compatibility(video_codecs=frozenset({"h264", "hevc"}), audio_codecs=frozenset({"aac", "mp3"})),
    Container.MP4: Compatibility(video_codecs=frozenset({"h264", "hevc"}), audio_codecs=frozenset({"aac", "mp3"})),
    Container.AAC: Compatibility(video_codecs=frozenset(), audio_codecs=frozenset({"aac"}), needs_audio=True),
    Container.MP3: Compatibility(video_codecs=frozenset(), audio_codecs=frozenset({"mp3"}), needs_audio=True),
    Container.FLV: Compatibility(video_codecs=frozenset({"h264"}), audio_codecs=frozenset({"aac"})),  # classic FLV tags
}


def check_outputs(
    outputs: frozenset[Container],
    *,
    has_video: bool,
    has_audio: bool,
    video_codec: str = "h264",
    audio_codec: str = "aac",
    extract_audio: bool = False,
) -> None:
    """Raise `InvalidRequest` unless every output can hold the streams (see `COMPATIBILITY`)."""
    if not outputs:
        raise InvalidRequest("no output format", field="outputs", reason="missing")
    if not has_video and not has_audio:
        raise InvalidRequest("nothing to record", field="stream_type", reason="empty")
    for output in outputs:
        rule = COMPATIBILITY.get(output)
        if rule is None:
            raise InvalidRequest("unknown output format", field="outputs", reason="unknown")
        if has_video and not rule.video_codecs and not extract_audio:
            raise InvalidRequest("output format cannot hold video", field="outputs", reason="incompatible")
        if has_video and rule.video_codecs and video_codec not in rule.video_codecs:
            raise InvalidRequest("video codec does not fit the output format", field="outputs", reason="incompatible")
        if rule.needs_audio and not has_audio:
            raise InvalidRequest("audio-only output format without audio", field="outputs", reason="incompatible")
        if has_audio and audio_codec not in rule.audio_codecs:
            raise InvalidRequest("audio codec does not fit the output format", field="outputs", reason="incompatible")


def make_sinks(
    outputs: frozenset[Container],
    target: SinkTarget,
    *,
    max_file_seconds: float,
    has_video: bool,
    has_audio: bool,
    video_codec: str = "h264",
    audio_codec: str = "aac",
    extract_audio: bool = False,
    segment_seconds: float = 4.0,
    max_file_bytes: int = MAX_FILE_BYTES,
    first_index: int = 1,
    continue_hls: HlsSink | None = None,
) -> list[PacketSink]:
    """One sink per output kind, in a stable order (HLS, MP4, AAC, MP3, FLV).

    AAC/MP3 files take the audio stream only; with video present that needs `extract_audio`.
    `first_index`/`continue_hls` continue an earlier set (see `SinkFactory`).
    """
    check_outputs(
        outputs,
        has_video=has_video,
        has_audio=has_audio,
        video_codec=video_codec,
        audio_codec=audio_codec,
        extract_audio=extract_audio,
    )
    sinks: list[PacketSink] = []
    for output in sorted(outputs, key=list(Container).index):
        if output is Container.HLS:
            sinks.append(HlsSink(target, segment_seconds=segment_seconds, continue_from=continue_hls))
        elif output is Container.MP4:
            sinks.append(Mp4Sink(target, max_seconds=max_file_seconds, max_bytes=max_file_bytes, first_index=first_index))
        elif output is Container.FLV:
            sinks.append(FlvSink(target, max_seconds=max_file_seconds, max_bytes=max_file_bytes, first_index=first_index))
        else:
            sinks.append(AudioFileSink(target, codec=audio_codec, max_seconds=max_file_seconds, max_bytes=max_file_bytes,
                                       first_index=first_index))
    return sinks


class SinkFactory:
    """A pipeline's `sinks_factory(streams, begin_unix_ms)`: builds each set with `make_sinks`.

    A second call (the stream parameters changed) continues the previous set: file indexes go on
    after the last one written and the HLS playlist keeps its segments, with a discontinuity.
    """

    def __init__(
        self,
        outputs: frozenset[Container],
        target: SinkTarget,
        *,
        max_file_seconds: float,
        extract_audio: bool = False,
        segment_seconds: float = 4.0,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        """`target.wall0_ms` is replaced by each set's begin time."""
        self._target = target
        self._make = partial(make_sinks, outputs, max_file_seconds=max_file_seconds, extract_audio=extract_audio,
                             segment_seconds=segment_seconds, max_file_bytes=max_file_bytes)
        self.sets: list[list[PacketSink]] = []

    def __call__(self, streams: Sequence[StreamInfo], begin_unix_ms: int) -> list[PacketSink]:
        video = [s for s in streams if s.kind.is_video]
        audio = [s for s in streams if not s.kind.is_video]
        previous = self.sets[-1] if self.sets else []
        next_index = 1 + max((s.index for s in previous if isinstance(s, RotatingFileSink)), default=0)
        hls = next((s for s in previous if isinstance(s, HlsSink)), None)
        sinks = self._make(
            replace(self._target, wall0_ms=begin_unix_ms),
            has_video=bool(video),
            has_audio=bool(audio),
            video_codec=video[0].codec if video else "h264",
            audio_codec=audio[0].codec if audio else "aac",
            first_index=next_index,
            continue_hls=hls,
        )
        self.sets.append(sinks)
        return sinks
