"""`SinkTarget`: where one file set of a recording goes and how its files are reported.

Every sink of a set (HLS, MP4, AAC/MP3) shares it: the directory, the file names, the task's
wall-clock zero and the callback that records each file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cloudrec.core.media import FileEvent, StreamInfo
from cloudrec.core.naming import FileNamer


def track_type_of(streams: Sequence[StreamInfo], track_type: str | None) -> str:
    if track_type:
        return track_type
    video = any(s.kind.is_video for s in streams)
    audio = any(not s.kind.is_video for s in streams)
    return "audio_video" if video and audio else ("video" if video else "audio")


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkTarget:
    directory: Path
    names: FileNamer  # the names of this set's files
    track_type: str | None  # name suffix; None: derived from the streams
    user_id: str  # "" for the mix
    media: str  # "main" | "aux" | "mix"
    wall0_ms: int  # unix ms of task time 0 (file time stamps are task time)
    on_event: Callable[[FileEvent], None] | None = None

    def unix_ms(self, task_seconds: float) -> int:
        return self.wall0_ms + round(task_seconds * 1000)

    def report(self, streams: Sequence[StreamInfo], name: str, kind: str, begin_ms: int, end_ms: int | None,
               *, final: bool, pending: str = "", replaces: str = "") -> None:
        if self.on_event is not None:
            self.on_event(FileEvent(name=name, kind=kind, track_type=track_type_of(streams, self.track_type),
                                    user_id=self.user_id, media=self.media, begin_ms=begin_ms, end_ms=end_ms,
                                    final=final, pending=pending, replaces=replaces))
