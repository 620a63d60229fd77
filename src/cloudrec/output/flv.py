"""`FlvSink`: FLV files (H.264 + AAC stream copy) with rotation, as Tencent CSS records them.

Names and rotation follow `Mp4Sink` (a new file past `max_seconds` or `max_bytes`, cut at a video
keyframe; time restarts at 0 in every file). FLV is a sequence of self-contained tags after a small
header, so with every muxed packet handed to the OS at once (`flush_packets`) a recorder killed
mid-way leaves a file that plays up to its last tag; only the duration in the `onMetaData` header,
which FFmpeg rewrites on close, is then missing (players and PyAV measure from the tags).

The FLV muxer turns Annex-B SPS/PPS extradata into the AVC sequence header itself, and the AAC
AudioSpecificConfig is the audio sequence header (ADTS headers are stripped, as for MP4).
"""

from __future__ import annotations

from cloudrec.output.mp4 import FLUSH_OPTIONS, RotatingFileSink


class FlvSink(RotatingFileSink):
    """FLV: `<name>.flv` per file; rotation as in `RotatingFileSink`."""

    format_name = "flv"
    extension = "flv"
    # add_keyframe_index: a seek index in onMetaData (written on close), so players seek a closed file.
    container_options = {**FLUSH_OPTIONS, "flvflags": "add_keyframe_index"}
