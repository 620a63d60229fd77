"""`ImageFetcher`: layout pictures (background, placeholders, watermarks) fetched with limits, cached.

The URLs come from API callers, so fetching is treated as untrusted: http(s) only; the host of the
URL and of every redirect hop is resolved once and refused when any address is not public
(loopback, private, link-local, …) unless `allow_private` is set; the connection then goes to that
same checked address (Host header and TLS SNI keep the name), so a second DNS answer cannot
redirect it. The body is streamed and abandoned past `max_bytes`; it must start like a PNG or a
JPEG and decode within the resolution limit. One overall timeout covers all hops.

Pictures are cached by URL in memory (decoded) and on disk (bytes, under the data dir), so repeated
tasks and layout changes do not fetch again; failures are remembered briefly too.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import httpx

from cloudrec.media.picture import MAX_PIXELS, MAX_SIDE, Picture, PictureError
from cloudrec.core.ids import is_decimal

logger = logging.getLogger(__name__)

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_REDIRECTS = (301, 302, 303, 307, 308)
DISK_CACHE_SECONDS = 24 * 3600
FAILURE_CACHE_SECONDS = 30.0
MAX_FAILURES = 1024  # failed URLs remembered at once (expired ones are dropped when full)
MEMORY_PIXELS = 64 * 1024 * 1024  # decoded RGBA pixels kept in memory (≈ 256 MB at most)


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageLimits:
    max_bytes: int = 5 * 1024 * 1024
    max_side: int = MAX_SIDE
    max_pixels: int = MAX_PIXELS
    timeout_seconds: float = 10.0
    max_redirects: int = 3
    allow_private: bool = False  # loopback/private/link-local hosts (tests, closed networks)
    trusted_networks: tuple[str, ...] = ()  # CIDRs allowed even when allow_private is off (an intranet image host)


class ImageError(Exception):
    """A picture that cannot be used; the message says why (safe to log: no URL query in it)."""


def loggable_url(url: str) -> str:
    """The URL without query and fragment (signed URLs carry credentials there)."""
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid url>"
    return str(u.copy_with(query=None, fragment=None, userinfo=b""))


def sniff(data: bytes) -> str | None:
    if data.startswith(_PNG):
        return "png"
    if data.startswith(_JPEG):
        return "jpeg"
    return None


class ImageFetcher:
    def __init__(self, cache_dir: Path | None, limits: ImageLimits = ImageLimits()) -> None:
        self.cache_dir = cache_dir
        self.limits = limits
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                         timeout=httpx.Timeout(limits.timeout_seconds))
        self._memory: OrderedDict[str, Picture] = OrderedDict()
        self._failed: dict[str, tuple[float, str]] = {}  # url → (until monotonic, reason)
        self._inflight: dict[str, asyncio.Future[Picture]] = {}
        self._trusted = [ipaddress.ip_network(n, strict=False) for n in limits.trusted_networks]
        self.downloads = 0  # network fetches made (cache misses), for tests and metrics

    async def aclose(self) -> None:
        await self._client.aclose()

    async def picture(self, url: str) -> Picture:
        """The decoded picture at `url`, from the caches when possible. Raises `ImageError`."""
        cached = self._memory.get(url)
        if cached is not None:
            self._memory.move_to_end(url)
            return cached
        failed = self._failed.get(url)
        if failed is not None:
            if failed[0] > time.monotonic():
                raise ImageError(failed[1])
            del self._failed[url]
        running = self._inflight.get(url)
        if running is not None:  # the same URL for several tasks at once: one fetch
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                return await self.picture(url)  # the task that was fetching stopped: fetch for ourselves
        future: asyncio.Future[Picture] = asyncio.get_running_loop().create_future()
        self._inflight[url] = future
        try:
            picture = await self._load(url)
        except ImageError as exc:
            now = time.monotonic()
            if len(self._failed) >= MAX_FAILURES:  # URLs come from API callers: never let this grow unbounded
                self._failed = {u: f for u, f in self._failed.items() if f[0] > now}
                while len(self._failed) >= MAX_FAILURES:
                    del self._failed[next(iter(self._failed))]  # the oldest
            self._failed[url] = (now + FAILURE_CACHE_SECONDS, str(exc))
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            raise
        except BaseException as exc:
            future.cancel()
            raise exc
        finally:
            del self._inflight[url]
        future.set_result(picture)
        self._remember(url, picture)
        return picture

    def _remember(self, url: str, picture: Picture) -> None:
        self._memory[url] = picture
        while len(self._memory) > 1 and sum(p.width * p.height for p in self._memory.values()) > MEMORY_PIXELS:
            self._memory.popitem(last=False)

    async def _load(self, url: str) -> Picture:
        data = await asyncio.to_thread(self._read_disk, url)
        fetched = data is None
        if data is None:
            data = await self.fetch(url)
        try:
            picture = await asyncio.to_thread(Picture.decode, data, max_side=self.limits.max_side,
                                              max_pixels=self.limits.max_pixels)
        except PictureError as exc:
            raise ImageError(str(exc)) from exc
        if fetched:  # only pictures that decoded are kept
            await asyncio.to_thread(self._write_disk, url, data)
        return picture

    # -- network -------------------------------------------------------------------------------

    async def fetch(self, url: str) -> bytes:
        """The bytes at `url` within the limits (type checked by magic bytes). Raises `ImageError`."""
        try:
            async with asyncio.timeout(self.limits.timeout_seconds):
                data = await self._follow(url)
        except TimeoutError as exc:
            raise ImageError(f"no answer within {self.limits.timeout_seconds:g} s") from exc
        except httpx.HTTPError as exc:
            raise ImageError(f"fetch failed: {type(exc).__name__}") from exc
        if sniff(data) is None:
            raise ImageError("not a PNG or JPEG (content does not start like one)")
        self.downloads += 1
        return data

    async def _follow(self, url: str) -> bytes:
        try:
            target = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ImageError("invalid URL") from exc
        for _ in range(self.limits.max_redirects + 1):
            if target.scheme not in ("http", "https") or not target.host:
                raise ImageError("only http and https URLs are fetched")
            port = target.port or (443 if target.scheme == "https" else 80)
            address = await self._checked_address(target.host, port)
            pinned = target.copy_with(host=address)
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            headers = {"Host": target.netloc.decode("ascii"), "Accept-Encoding": "identity",
                       "Accept": "image/png, image/jpeg"}
            async with self._client.stream("GET", pinned, headers=headers, extensions=extensions) as resp:
                if resp.status_code in _REDIRECTS:
                    location = resp.headers.get("location")
                    if not location:
                        raise ImageError(f"HTTP {resp.status_code} without a Location")
                    target = target.join(location)
                    continue
                if resp.status_code != 200:
                    raise ImageError(f"HTTP {resp.status_code}")
                return await self._body(resp)
        raise ImageError(f"more than {self.limits.max_redirects} redirects")

    async def _body(self, resp: httpx.Response) -> bytes:
        limit = self.limits.max_bytes
        length = resp.headers.get("content-length", "")
        if is_decimal(length) and int(length) > limit:
            raise ImageError(f"larger than {limit} bytes (Content-Length {length})")
        buf = bytearray()
        async for chunk in resp.aiter_raw():
            buf += chunk
            if len(buf) > limit:
                raise ImageError(f"larger than {limit} bytes")
        return bytes(buf)

    async def _checked_address(self, host: str, port: int) -> str:
        """One address of `host` to connect to; every address must be public unless allowed."""
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise ImageError("host name does not resolve") from exc
            addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        if not addresses:
            raise ImageError("host name does not resolve")
        if not self.limits.allow_private:
            for ip in addresses:
                plain = (ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None) or ip
                if (not plain.is_global or plain.is_multicast) and not any(plain in net for net in self._trusted):
                    raise ImageError("address is not public (loopback, private, link-local or reserved)")
        return str(addresses[0])

    # -- disk cache ------------------------------------------------------------------------------

    def _disk_path(self, url: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / (hashlib.sha256(url.encode()).hexdigest() + ".img")

    def _read_disk(self, url: str) -> bytes | None:
        path = self._disk_path(url)
        try:
            if path is None or time.time() - path.stat().st_mtime > DISK_CACHE_SECONDS:
                return None
            data = path.read_bytes()
        except OSError:
            return None
        return data if sniff(data) is not None and len(data) <= self.limits.max_bytes else None

    def _write_disk(self, url: str, data: bytes) -> None:
        path = self._disk_path(url)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            logger.warning("image cache not written", extra={"error": str(exc)})
