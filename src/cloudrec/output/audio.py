"""`AudioFileSink`: audio-only files — AAC as an ADTS stream (`.aac`), MP3 as `.mp3`.

Names and rotation follow `Mp4Sink` (`<base>[_<type>]_<index>.<ext>`, a new index past
`max_seconds` or `max_bytes`; time restarts at 0 in every file). Only the declared audio stream is
written; video streams in the declared set are ignored.
"""

from __future__ import annotations

import logging
from cloudrec.core.media import StreamInfo
from cloudrec.output.mp4 import FLUSH_OPTIONS, MAX_FILE_BYTES, RotatingFileSink
from cloudrec.output.target import SinkTarget

logger = logging.getLogger(__name__)

# codec → (muxer, extension)
AUDIO_FORMATS: dict[str, tuple[str, str]] = {"aac": ("adts", "aac"), "mp3": ("mp3", "mp3")}


class AudioFileSink(RotatingFileSink):
    def __init__(self, target: SinkTarget, *, codec: str, max_seconds: float, max_bytes: int = MAX_FILE_BYTES,
                 first_index: int = 1) -> None:
        if codec not in AUDIO_FORMATS:
            raise ValueError(f"no audio file format for codec {codec!r}")
        super().__init__(target, max_seconds=max_seconds, max_bytes=max_bytes, first_index=first_index)
        self.codec = codec
        self.format_name, self.extension = AUDIO_FORMATS[codec]
        self.container_options = dict(FLUSH_OPTIONS)  # raw streams: what was written plays after a kill

    def accepts(self, info: StreamInfo) -> bool:
        return not info.kind.is_video and info.codec == self.codec
