"""The local storage backend: files land under `<storage_dir>/<Bucket>/<prefix…>/<TaskId>/`.

It is the default: a destination that matches no configured endpoint is written here, and the
sinks write straight into it (the spool *is* the destination, so nothing is copied).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cloudrec.core.spec import StorageTarget
from cloudrec.storage.base import StorageFailure


def task_directory(storage_dir: Path, target: StorageTarget, task_id: str) -> Path:
    bucket = target.bucket or target.vendor  # VOD tasks have no bucket: they go under "vod/"
    path = storage_dir.joinpath(bucket, *target.prefix, task_id)  # task_id "": the prefix directory
    # Bucket, prefix and task id were validated as safe components; refuse anything that escapes anyway.
    if storage_dir.resolve() not in path.resolve().parents:
        raise ValueError("storage path escapes the storage directory")
    return path


def safe_path(root: Path, key: str) -> Path:
    """`root/key`, refusing keys that leave `root` (`..`, absolute paths, empty parts)."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        raise StorageFailure("InvalidKey", "object key is not a plain relative path", permanent=True)
    path = root.joinpath(*parts)
    if root.resolve() not in path.resolve().parents:
        raise StorageFailure("InvalidKey", "object key escapes the storage directory", permanent=True)
    return path


class LocalStore:
    """An `ObjectStore` on a directory. Writes are atomic (temporary file, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def description(self) -> str:
        return f"local:{self.root}"

    def put_file(self, key: str, path: Path) -> int:
        dest = safe_path(self.root, key)
        try:
            if dest.exists() and dest.samefile(path):
                return dest.stat().st_size  # written in place by the sink
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.part")
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
            return dest.stat().st_size
        except FileNotFoundError as exc:
            raise StorageFailure("SpoolFileMissing", f"{path.name} is not in the spool", permanent=True) from exc
        except OSError as exc:
            raise StorageFailure("LocalWriteError", exc.strerror or "write failed", permanent=False) from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = safe_path(self.root, key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.part")
            tmp.write_bytes(data)
            os.replace(tmp, dest)
        except OSError as exc:
            raise StorageFailure("LocalWriteError", exc.strerror or "write failed", permanent=False) from exc

    def get_bytes(self, key: str) -> bytes:
        try:
            return safe_path(self.root, key).read_bytes()
        except OSError as exc:
            raise StorageFailure("NoSuchKey", "no such object", permanent=True) from exc
