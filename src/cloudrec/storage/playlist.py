"""HLS playlist text as the uploader publishes it: never listing a segment that is not stored.

The sink rewrites its playlist in the spool whenever a segment closes; the uploader publishes the
longest prefix of it whose segments are all stored (segments upload in parallel and may finish out
of order), so a player reading the bucket never meets a missing object.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

ENDLIST = "#EXT-X-ENDLIST"
# Tags that belong to the media segment after them (RFC 8216 4.3.2), not to the playlist header.
_SEGMENT_TAGS = ("#EXTINF", "#EXT-X-DISCONTINUITY", "#EXT-X-PROGRAM-DATE-TIME", "#EXT-X-BYTERANGE", "#EXT-X-KEY",
                 "#EXT-X-MAP", "#EXT-X-GAP", "#EXT-X-BITRATE", "#EXT-X-DATERANGE")


@dataclass(frozen=True, slots=True, kw_only=True)
class Published:
    text: str
    listed: int  # segments in `text`
    total: int  # segments in the spool's playlist
    ended: bool  # the spool's playlist is final (#EXT-X-ENDLIST)

    @property
    def complete(self) -> bool:
        """Nothing more will ever be added: this text is the playlist's last version."""
        return self.ended and self.listed == self.total


def _is_uri(line: str) -> bool:
    return bool(line.strip()) and not line.startswith("#")


def _name(uri: str) -> str:
    uri = uri.strip()
    return uri[2:] if uri.startswith("./") else uri


def segment_names(text: str) -> list[str]:
    return [_name(line) for line in text.splitlines() if _is_uri(line)]


def publishable(text: str, stored: Container[str], directory: str = "") -> Published:
    """`text` cut after the last segment of the leading run of `stored` segments. The playlist lists
    its segments relative to its own `directory` ("" or "a/b/"); `stored` holds full names."""
    lines = text.splitlines()
    header_end = next((i for i, line in enumerate(lines) if line.startswith(_SEGMENT_TAGS) or _is_uri(line)), len(lines))
    out = lines[:header_end]
    pending: list[str] = []
    listed = total = 0
    cut = False
    for line in lines[header_end:]:
        if not _is_uri(line):
            if not cut and line.strip() != ENDLIST:
                pending.append(line)
            continue
        total += 1
        if cut:
            continue
        if directory + _name(line) in stored:
            out.extend(pending)
            out.append(line)
            pending = []
            listed += 1
        else:
            cut = True
    ended = any(line.strip() == ENDLIST for line in lines)
    if ended and not cut:
        out.append(ENDLIST)
    return Published(text="\n".join(out) + "\n", listed=listed, total=total, ended=ended)


def closed(text: str, recorded: Container[str], directory: str = "") -> str:
    """The playlist of a recording that will not continue (its recorder died), with the end tag and
    only its leading run of `recorded` segments: a segment the sink listed just before the kill,
    whose record never reached the store, is deleted by the recovery and must not be listed (the
    playlist could never be stored complete)."""
    kept = publishable(text, recorded, directory).text
    if any(line.strip() == ENDLIST for line in kept.splitlines()):
        return kept
    return kept.rstrip("\n") + "\n" + ENDLIST + "\n"
