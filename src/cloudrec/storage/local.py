"""The local storage backend: files land under `<storage_dir>/<Bucket>/<prefix…>/<TaskId>/`."""

from __future__ import annotations

from pathlib import Path

from cloudrec.core.spec import StorageTarget


def task_directory(storage_dir: Path, target: StorageTarget, task_id: str) -> Path:
    bucket = target.bucket or target.vendor  # VOD tasks have no bucket: they go under "vod/"
    path = storage_dir.joinpath(bucket, *target.prefix, task_id)
    # Bucket, prefix and task id were validated as safe components; refuse anything that escapes anyway.
    if storage_dir.resolve() not in path.resolve().parents:
        raise ValueError("storage path escapes the storage directory")
    return path
