"""Where a task's files go: its `StorageTarget` → a `Destination` (object store, key prefix, spool).

Config maps a vendor/region/bucket to an S3-compatible endpoint (first matching rule wins); a
target that matches none is written by the local backend, as before any endpoint was configured.
`CloudVod` targets map to the configured VOD library. An endpoint named in the request itself is
used only when config allows it (otherwise anyone able to create a task could make the server
connect to any address it can reach).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cloudrec.core.spec import StorageTarget
from cloudrec.storage.base import ObjectStore
from cloudrec.storage.local import LocalStore, task_directory
from cloudrec.storage.s3 import S3Store

logger = logging.getLogger(__name__)

VENDORS = {"cos": "0", "s3": "1", "oss": "oss"}  # StorageTarget.vendor → the config's `vendor` value


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointRule:
    """One `[[storage.endpoints]]` entry."""

    vendor: str  # "0" COS, "1" AWS S3, "oss"
    region: str = "*"
    bucket: str = "*"
    endpoint_url: str

    def matches(self, target: StorageTarget) -> bool:
        return (VENDORS.get(target.vendor) == self.vendor and self.region in ("*", target.region)
                and self.bucket in ("*", target.bucket))


@dataclass(frozen=True, slots=True, kw_only=True)
class VodLibrary:
    """`[vod]`: where `CloudVod` tasks' files go and the URL their players get."""

    bucket: str = "vod"
    prefix: tuple[str, ...] = ()
    endpoint_url: str = ""  # "" = the local backend (served by cloudrec at /vod/)
    region: str = ""
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    playback_base_url: str = ""

    def target(self) -> StorageTarget:
        return StorageTarget(vendor="s3" if self.endpoint_url else "local", region=self.region, bucket=self.bucket,
                             prefix=self.prefix, endpoint_url=self.endpoint_url or None, access_key=self.access_key,
                             secret_key=self.secret_key)


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageConfig:
    storage_dir: Path  # the local backend's root
    spool_dir: Path  # remote destinations' files wait here, per task
    endpoints: tuple[EndpointRule, ...] = ()
    allow_request_endpoints: bool = False
    vod: VodLibrary = VodLibrary()
    multipart_threshold: int = 64 * 1024 * 1024
    part_size: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Destination:
    store: ObjectStore
    key_prefix: str  # "<prefix…>/<TaskId>/"
    spool: Path  # the directory the sinks write into
    in_place: bool  # the spool is the destination (local backend): nothing to copy, nothing to delete

    def key(self, name: str) -> str:
        return self.key_prefix + name


class StorageRouter:
    def __init__(self, config: StorageConfig) -> None:
        self.config = config
        self._stores: dict[tuple[str, str, str, str, str], S3Store] = {}
        self._lock = threading.Lock()

    def destination(self, target: StorageTarget, task_id: str) -> Destination:
        if target.vendor == "vod":
            target = self.config.vod.target()
            endpoint = self.config.vod.endpoint_url or None
        else:
            endpoint = self._endpoint(target)
        spool = self.config.spool_dir / task_id
        if self.config.spool_dir.resolve() not in spool.resolve().parents:
            raise ValueError("spool path escapes the spool directory")
        if endpoint is None:
            root = self.config.storage_dir
            if not target.task_dir:
                # Names are keys under the bucket and prefix, shared with other tasks: the task writes
                # into its own spool and its files are copied in (never written in place there).
                prefix = task_directory(root, target, "").relative_to(root).as_posix()
                return Destination(store=LocalStore(root), key_prefix=prefix + "/", spool=spool, in_place=False)
            task_dir = task_directory(root, target, task_id)
            return Destination(store=LocalStore(root), key_prefix=task_dir.relative_to(root).as_posix() + "/",
                               spool=task_dir, in_place=True)
        key_prefix = "".join(f"{p}/" for p in target.prefix) + (f"{task_id}/" if target.task_dir else "")
        return Destination(store=self._s3(target, endpoint), key_prefix=key_prefix, spool=spool, in_place=False)

    def _endpoint(self, target: StorageTarget) -> str | None:
        if target.vendor == "local":
            return None
        if target.endpoint_url:
            if self.config.allow_request_endpoints:
                return target.endpoint_url
            logger.info("request endpoint ignored", extra={"reason": "storage.allow_request_endpoints is off"})
        rule = next((r for r in self.config.endpoints if r.matches(target)), None)
        return rule.endpoint_url if rule is not None else None

    def _s3(self, target: StorageTarget, endpoint: str) -> S3Store:
        # One client per endpoint and credentials (clients are thread-safe and hold connection pools).
        secret_digest = hashlib.sha256(target.secret_key.encode()).hexdigest()
        key = (endpoint, target.region, target.bucket, target.access_key, secret_digest)
        with self._lock:
            store = self._stores.get(key)
            if store is None:
                store = self._stores[key] = S3Store(
                    bucket=target.bucket, region=target.region, access_key=target.access_key,
                    secret_key=target.secret_key, endpoint=endpoint,
                    multipart_threshold=self.config.multipart_threshold, part_size=self.config.part_size)
            return store

    @property
    def vod_root(self) -> Path | None:
        """The local VOD library's directory (served read-only at /vod/), if the library is local."""
        vod = self.config.vod
        return None if vod.endpoint_url else self.config.storage_dir.joinpath(vod.bucket, *vod.prefix)
