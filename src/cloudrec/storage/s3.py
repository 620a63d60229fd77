"""`S3Store`: any S3-compatible service through boto3 (AWS S3, COS, OSS, R2, SeaweedFS, MinIO…).

Path-style addressing (`<endpoint>/<bucket>/<key>`) so custom endpoints need no wildcard DNS;
files above `multipart_threshold` go up in parts (S3 refuses single PUTs above 5 GB and a part
that fails is retried alone by the next attempt's fresh upload). boto3's own retries are off: the
uploader retries with its own backoff and must see each failure to count and report it.
Credentials come from the task's request; they live in the client only, never in a message.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from cloudrec.storage.base import StorageFailure, content_type

# Error codes that another attempt cannot fix (credentials, permissions, the bucket itself).
PERMANENT_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "NoSuchBucket", "InvalidBucketName",
    "AuthorizationHeaderMalformed", "InvalidToken", "ExpiredToken", "AccountProblem", "AllAccessDisabled",
    "InvalidSecurity", "NotSignedUp", "InvalidRequest", "PermanentRedirect",
})
MIN_PART_BYTES = 5 * 1024 * 1024  # S3's smallest part (all but the last)


def endpoint_url(value: str) -> str:
    """`EndpointUrl` may come without a scheme (`acct.r2.cloudflarestorage.com`): TLS by default."""
    return value if "://" in value else f"https://{value}"


class S3Store:
    def __init__(self, *, bucket: str, region: str, access_key: str, secret_key: str, endpoint: str | None = None,
                 multipart_threshold: int = 64 * 1024 * 1024, part_size: int = 16 * 1024 * 1024,
                 connect_timeout: float = 5.0, read_timeout: float = 60.0) -> None:
        self.bucket = bucket
        self.endpoint = endpoint_url(endpoint) if endpoint else None
        self.region = region or "us-east-1"
        self.multipart_threshold = max(multipart_threshold, MIN_PART_BYTES)
        self.part_size = max(part_size, MIN_PART_BYTES)
        self._secret = secret_key
        self._access_key = access_key
        self._config = Config(
            s3={"addressing_style": "path"}, signature_version="s3v4", retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=connect_timeout, read_timeout=read_timeout,
            # Many S3-compatible services reject the newer default CRC checksums on every PUT.
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        )
        self._lock = threading.Lock()
        self._boto: Any = None

    @property
    def _client(self) -> Any:
        """Built on first use — in an uploader thread: making a client costs 60–130 ms of CPU, which the
        event loop (where stores are looked up) must not pay."""
        with self._lock:
            if self._boto is None:
                # A session per store: boto3's default session is not safe to create clients from in threads.
                try:
                    self._boto = boto3.session.Session().client(
                        "s3", endpoint_url=self.endpoint, region_name=self.region, aws_access_key_id=self._access_key,
                        aws_secret_access_key=self._secret, config=self._config)
                except ValueError as exc:  # e.g. an endpoint boto3 cannot parse: no retry will help
                    raise StorageFailure("InvalidEndpoint", str(exc), permanent=True) from None
            return self._boto

    @property
    def description(self) -> str:
        return f"s3:{self.endpoint or 'aws'}/{self.bucket}"

    def put_file(self, key: str, path: Path) -> int:
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise StorageFailure("SpoolFileMissing", f"{path.name} is not in the spool", permanent=True) from exc
        try:
            if size <= self.multipart_threshold:
                with open(path, "rb") as fh:
                    self._client.put_object(Bucket=self.bucket, Key=key, Body=fh, ContentType=content_type(key))
            else:
                self._multipart(key, path)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._failure(exc) from None  # the chained boto error could echo request details
        except OSError as exc:
            raise StorageFailure("SpoolReadError", exc.strerror or "read failed", permanent=False) from None
        return size

    def _multipart(self, key: str, path: Path) -> None:
        upload = self._client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type(key))
        upload_id = upload["UploadId"]
        parts = []
        try:
            with open(path, "rb") as fh:
                number = 1
                while chunk := fh.read(self.part_size):
                    res = self._client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                                   Body=chunk)
                    parts.append({"ETag": res["ETag"], "PartNumber": number})
                    number += 1
            self._client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                   MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                pass  # the bucket's lifecycle rules clean up what we cannot
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type(key))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._failure(exc) from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return bytes(self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._failure(exc) from None

    def _failure(self, exc: Exception) -> StorageFailure:
        if isinstance(exc, botocore.exceptions.ClientError):
            err = exc.response.get("Error", {})
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            code = str(err.get("Code") or status or "ClientError")
            message = str(err.get("Message") or "")
            permanent = code in PERMANENT_CODES or (400 <= status < 500 and status not in (408, 409, 429))
        elif isinstance(exc, botocore.exceptions.NoCredentialsError):
            code, message, permanent = "NoCredentials", "no storage credentials", True
        else:  # connection refused or reset, timeouts: the service may come back
            code, message, permanent = "ConnectionError", type(exc).__name__, False
        if self._secret:
            message = message.replace(self._secret, "***")
        return StorageFailure(code, message[:500], permanent=permanent)
