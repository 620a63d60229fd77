"""The `ObjectStore` protocol: where finished files go (a local directory, an S3-compatible bucket).

Backends are blocking (boto3 is); the uploader calls them from worker threads. Every failure is a
`StorageFailure` carrying the backend's own code and message (never credentials) and whether trying
again can help: a wrong secret or a missing bucket will not fix itself, a refused connection may.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from cloudrec.errors import DestinationError

CONTENT_TYPES = {
    "m3u8": "application/vnd.apple.mpegurl",
    "ts": "video/mp2t",
    "mp4": "video/mp4",
    "m4s": "video/iso.segment",
    "aac": "audio/aac",
    "mp3": "audio/mpeg",
}


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(name.rsplit(".", 1)[-1].lower(), "application/octet-stream")


class StorageFailure(DestinationError):
    """An object was not stored. `code`/`message` are the backend's (reported in callback 308)."""

    def __init__(self, code: str, message: str, *, permanent: bool) -> None:
        super().__init__(f"{code}: {message}", reason=code)
        self.code = code
        self.permanent = permanent  # retrying cannot help (credentials, bucket, missing spool file)


class ObjectStore(Protocol):
    """A bucket (or directory) that objects are written to by key (`a/b/<TaskId>/<file>`)."""

    @property
    def description(self) -> str:
        """Where objects go, for logs: never contains credentials."""
        ...

    def put_file(self, key: str, path: Path) -> int:
        """Store the file at `path` as `key` (replacing it); returns the bytes stored."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes:
        """The object's content (tests and the VOD route read through this)."""
        ...
