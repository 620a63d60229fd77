"""What travels through a room: encoded media units on one shared clock, with their stream parameters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

from cloudrec.core.spec import TrackKind


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamInfo:
    """Codec parameters of a published track. A new object means the parameters changed."""

    kind: TrackKind
    codec: str  # FFmpeg codec name: h264, hevc, vp8, aac, opus, mp3, …
    time_base: Fraction
    extradata: bytes | None = None
    width: int = 0
    height: int = 0
    pix_fmt: str | None = None
    sample_rate: int = 0
    channels: int = 0
    layout: str | None = None
    bit_rate: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaUnit:
    """One encoded packet. `pts`/`dts` are in `info.time_base` and on the room clock:
    `pts * time_base` is a `time.monotonic()` reading (the publisher applied its offset once for
    all its tracks, so a publisher's audio and video stay as aligned as it sent them)."""

    data: bytes
    pts: int
    dts: int
    duration: int
    key: bool
    info: StreamInfo

    @property
    def seconds(self) -> float:
        return float(self.pts * self.info.time_base)


class UnitSource(Protocol):
    """A subscription to one published track (the room's `TrackSubscriber` is one)."""

    ended: bool  # the track is gone; nothing more will come
    dropped: int  # units lost to overflow

    def drain(self) -> list[MediaUnit]:
        """Every unit waiting now, in arrival order; never blocks."""
        ...


class PacketSink(Protocol):
    """An output container fed with encoded packets whose pts are task time (0 = task start)."""

    def open(self, streams: Sequence[StreamInfo]) -> None:
        """Declare every stream before the first write (PyAV writes the header at the first mux)."""
        ...

    def write(self, stream_index: int, unit: MediaUnit) -> None: ...

    def close(self) -> None:
        """Flush and finalize; idempotent."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class FileEvent:
    """A file a sink started or finished (the worker records these; dialects report them)."""

    name: str  # object name relative to the task directory
    kind: str  # "playlist" | "segment" | "file"
    track_type: str  # "audio" | "video" | "audio_video"
    user_id: str  # "" for the mix
    media: str  # "main" | "aux" | "mix"
    begin_ms: int  # unix ms of the first media in it
    end_ms: int | None = None  # set when finished
    final: bool = False  # the file is complete and will not change
    pending: str = ""  # a provisional name: how it is named when it ends (`naming.finish_pending`)
    replaces: str = ""  # the provisional name this finished file had
