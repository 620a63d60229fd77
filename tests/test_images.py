"""The layout-picture fetcher against a real loopback HTTP server: limits, address checks, caches."""

from __future__ import annotations

import http.server
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cloudrec.media.picture import Picture, PictureError
from cloudrec.worker.images import ImageError, ImageFetcher, ImageLimits, loggable_url

OPEN = ImageLimits(allow_private=True)


def png(size: tuple[int, int] = (64, 32), color: tuple[int, ...] = (200, 30, 30, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", size, color).save(buf, "PNG")
    return buf.getvalue()


def jpeg(size: tuple[int, int] = (64, 32), color: tuple[int, int, int] = (30, 30, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


class ImageServer:
    """Files by path; `/redirect/<n>/<target path>` hops n times; `/stream/<name>` has no
    Content-Length; `/slow/<name>` waits before answering; `/to/<url>` redirects anywhere."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        self.url = ""

    @contextmanager
    def running(self, host: str = "127.0.0.1") -> Iterator[ImageServer]:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path
                owner.hits[path] = owner.hits.get(path, 0) + 1
                if path.startswith("/redirect/"):
                    _, _, n, rest = path.split("/", 3)
                    nxt = f"/redirect/{int(n) - 1}/{rest}" if int(n) > 1 else f"/{rest}"
                    self._redirect(nxt)
                elif path.startswith("/to/"):
                    self._redirect(path[len("/to/"):])
                elif path.startswith("/slow/"):
                    time.sleep(2)
                    self._send(owner.files.get(path[len("/slow"):]), length=True)
                elif path.startswith("/stream/"):
                    self._send(owner.files.get(path[len("/stream"):]), length=False)
                else:
                    self._send(owner.files.get(path), length=True)

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _send(self, body: bytes | None, *, length: bool) -> None:
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                if length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for i in range(0, len(body), 65536):
                        self.wfile.write(body[i:i + 65536])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the fetcher hung up: that is the point of the size limit
                self.close_connection = True

        httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        httpd.daemon_threads = True
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        self.url = f"http://{host}:{httpd.server_address[1]}"
        try:
            yield self
        finally:
            httpd.shutdown()
            httpd.server_close()


@pytest.fixture(scope="module")
def image_server() -> Iterator[ImageServer]:
    srv = ImageServer()
    big = np.random.default_rng(1).integers(0, 255, (1500, 1400, 3), dtype=np.uint8)  # noise: ~6 MB as PNG
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "PNG", compress_level=0)
    gif = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(gif, "GIF")
    srv.files = {"/logo.png": png(), "/photo.jpg": jpeg(), "/big.png": buf.getvalue(), "/fake.png": gif.getvalue(),
                 "/text.png": b"hello, not a picture at all", "/named-wrong.gif": png(),
                 "/huge.png": png((3000, 100))}
    assert len(srv.files["/big.png"]) > 5 * 1024 * 1024
    with srv.running():
        yield srv


@pytest.fixture
def server(image_server: ImageServer) -> ImageServer:
    image_server.hits.clear()
    return image_server


async def test_png_and_jpeg_decode_by_content_not_name(server: ImageServer, tmp_path: Path) -> None:
    fetcher = ImageFetcher(tmp_path, OPEN)
    try:
        logo = await fetcher.picture(f"{server.url}/logo.png")
        assert (logo.width, logo.height, logo.opaque) == (64, 32, True)
        photo = await fetcher.picture(f"{server.url}/photo.jpg")
        assert (photo.width, photo.height) == (64, 32)
        assert (await fetcher.picture(f"{server.url}/named-wrong.gif")).width == 64  # a PNG, whatever its name
    finally:
        await fetcher.aclose()


@pytest.mark.parametrize("path, reason", [
    ("/fake.png", "not a PNG or JPEG"),  # a GIF named .png
    ("/text.png", "not a PNG or JPEG"),
    ("/big.png", "larger than 5242880 bytes (Content-Length"),  # refused from the header
    ("/stream/big.png", "larger than 5242880 bytes"),  # no Content-Length: cut off while streaming
    ("/huge.png", "3000x100, larger than allowed"),  # over 2K
    ("/missing.png", "HTTP 404"),
    ("/redirect/4/logo.png", "more than 3 redirects"),
])
async def test_refusals(server: ImageServer, tmp_path: Path, path: str, reason: str) -> None:
    fetcher = ImageFetcher(tmp_path, OPEN)
    try:
        with pytest.raises(ImageError) as info:
            await fetcher.picture(f"{server.url}{path}")
        assert reason in str(info.value)
        assert not list(tmp_path.glob("*.img"))  # nothing refused is cached on disk
    finally:
        await fetcher.aclose()


async def test_redirects_are_followed_within_the_limit(server: ImageServer, tmp_path: Path) -> None:
    fetcher = ImageFetcher(tmp_path, OPEN)
    try:
        picture = await fetcher.picture(f"{server.url}/redirect/3/logo.png")
        assert picture.width == 64
        assert server.hits["/redirect/1/logo.png"] == 1 and server.hits["/logo.png"] == 1
    finally:
        await fetcher.aclose()


async def test_private_addresses_refused_by_default(server: ImageServer, tmp_path: Path) -> None:
    fetcher = ImageFetcher(tmp_path)  # default limits: public addresses only
    try:
        for url in (f"{server.url}/logo.png", f"http://localhost:{server.url.rsplit(':', 1)[1]}/logo.png",
                    "http://[::ffff:127.0.0.1]:1/logo.png", "http://169.254.169.254/latest/meta-data.png",
                    "http://10.0.0.1/a.png"):
            with pytest.raises(ImageError, match="not public"):
                await fetcher.picture(url)
        assert server.hits == {}  # refused before any connection
        with pytest.raises(ImageError, match="only http and https"):
            await fetcher.picture("file:///etc/passwd")
    finally:
        await fetcher.aclose()


async def test_redirect_to_a_private_address_refused(server: ImageServer, tmp_path: Path) -> None:
    # The first host is trusted (an intranet image host); its redirect to another private address is not.
    fetcher = ImageFetcher(tmp_path, ImageLimits(trusted_networks=("127.0.0.1/32",)))
    try:
        port = server.url.rsplit(":", 1)[1]
        assert (await fetcher.picture(f"{server.url}/logo.png")).width == 64
        with pytest.raises(ImageError, match="not public"):
            await fetcher.picture(f"{server.url}/to/http://127.0.0.2:{port}/photo.jpg")
        assert "/photo.jpg" not in server.hits
        with pytest.raises(ImageError, match="not public"):
            await fetcher.picture(f"{server.url}/to/http://[::1]:{port}/photo.jpg")
    finally:
        await fetcher.aclose()


async def test_timeout(server: ImageServer, tmp_path: Path) -> None:
    fetcher = ImageFetcher(tmp_path, ImageLimits(allow_private=True, timeout_seconds=0.5))
    try:
        started = time.monotonic()
        with pytest.raises(ImageError, match="within 0.5 s|fetch failed: ReadTimeout"):
            await fetcher.picture(f"{server.url}/slow/logo.png")
        assert time.monotonic() - started < 1.5
    finally:
        await fetcher.aclose()


async def test_cache_in_memory_and_on_disk(server: ImageServer, tmp_path: Path) -> None:
    url = f"{server.url}/logo.png"
    first = ImageFetcher(tmp_path, OPEN)
    try:
        a = await first.picture(url)
        b = await first.picture(url)
        assert a is b and first.downloads == 1 and server.hits["/logo.png"] == 1  # memory hit
    finally:
        await first.aclose()
    again = ImageFetcher(tmp_path, OPEN)  # a new process: the disk cache under data_dir answers
    try:
        c = await again.picture(url)
        assert c.width == 64 and again.downloads == 0 and server.hits["/logo.png"] == 1
    finally:
        await again.aclose()
    # A failure is remembered for a while: no second request for the same broken URL.
    broken = ImageFetcher(tmp_path, OPEN)
    try:
        for _ in range(2):
            with pytest.raises(ImageError):
                await broken.picture(f"{server.url}/fake.png")
        assert server.hits["/fake.png"] == 1
    finally:
        await broken.aclose()


async def test_concurrent_requests_share_one_fetch(server: ImageServer, tmp_path: Path) -> None:
    import asyncio

    fetcher = ImageFetcher(None, OPEN)
    try:
        pictures = await asyncio.gather(*(fetcher.picture(f"{server.url}/slow/photo.jpg") for _ in range(4)))
        assert all(p is pictures[0] for p in pictures) and server.hits["/slow/photo.jpg"] == 1
    finally:
        await fetcher.aclose()


def test_loggable_url_drops_credentials() -> None:
    assert loggable_url("https://user:pw@cdn.example/a/b.png?sign=SECRET#x") == "https://cdn.example/a/b.png"


def test_picture_decode_limits() -> None:
    with pytest.raises(PictureError):
        Picture.decode(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(PictureError, match="larger than allowed"):
        Picture.decode(png((100, 100)), max_side=64)
    assert not Picture.decode(png(color=(0, 0, 0, 10))).opaque
