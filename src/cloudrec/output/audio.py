"""`AudioFileSink`: audio-only files — AAC as an ADTS stream (`.aac`), MP3 as `.mp3`.

Names and rotation follow `Mp4Sink` (`<base>[_<type>]_<index>.<ext>`, a new index past
`max_seconds` or `max_bytes`; time restarts at 0 in every file). Only the declared audio stream is
written; video streams in the declared set are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from cloudrec.core.media import FileEvent, StreamInfo
from cloudrec.output.mp4 import FLUSH_OPTIONS, MAX_FILE_BYTES, RotatingFileSink

logger = logging.getLogger(__name__)

# codec → (muxer, extension)
AUDIO_FORMATS: dict[str, tuple[str, str]] = {"aac": ("adts", "aac"), "mp3": ("mp3", "mp3")}


class AudioFileSink(RotatingFileSink):
    def __init__(
        self,
        directory: Path,
        base: str,
        track_type: str | None,
        *,
        codec: str,
        user_id: str,
        media: str,
        wall0_ms: int,
        max_seconds: float,
        max_bytes: int = MAX_FILE_BYTES,
        first_index: int = 1,
        on_event: Callable[[FileEvent], None] | None = None,
    ) -> None:
        if codec not in AUDIO_FORMATS:
            raise ValueError(f"no audio file format for codec {codec!r}")
        super().__init__(
            directory,
            base,
            track_type,
            user_id=user_id,
            media=media,
            wall0_ms=wall0_ms,
            max_seconds=max_seconds,
            max_bytes=max_bytes,
            first_index=first_index,
            on_event=on_event,
        )
        self.codec = codec
        self.format_name, self.extension = AUDIO_FORMATS[codec]
        self.container_options = dict(FLUSH_OPTIONS)  # raw streams: what was written plays after a kill

    def accepts(self, info: StreamInfo) -> bool:
        return not info.kind.is_video and info.codec == self.codec
