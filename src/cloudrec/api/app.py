"""The ASGI app: vendor APIs at `/`, health and readiness."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from cloudrec.api.body import read_body
from cloudrec.dialects.aliyun.gateway import AliyunGateway, is_aliyun_request
from cloudrec.dialects.tencent.gateway import TencentGateway

logger = logging.getLogger(__name__)

VOD_TYPES = {"m3u8": "application/vnd.apple.mpegurl", "ts": "video/mp2t", "mp4": "video/mp4", "aac": "audio/aac",
             "mp3": "audio/mpeg", "m4s": "video/iso.segment", "flv": "video/x-flv"}


def vod_file(root: Path, path: str) -> Path | None:
    """The file a `/vod/<TaskId>/<file>` URL names inside `root`, or None: only plain names of
    recorded media (no `..`, no hidden or temporary files, nothing outside the library)."""
    parts = path.split("/")
    if not 1 <= len(parts) <= 16 or any(not p or p.startswith(".") or "\\" in p or "\0" in p for p in parts):
        return None
    if Path(parts[-1]).suffix[1:] not in VOD_TYPES:  # "m3u8" alone is a name without a type
        return None
    target = root.joinpath(*parts)
    try:
        if root.resolve() not in target.resolve().parents or not target.is_file():
            return None
    except OSError:
        return None
    return target


PUBLISH_PAGE = resources.files("cloudrec.api").joinpath("static/publish.html").read_text(encoding="utf-8")


def create_app(
    *,
    tencent: TencentGateway,
    aliyun: AliyunGateway | None = None,
    ready: Callable[[], bool],
    extra_routes: Sequence[BaseRoute] = (),
    dev_usersig: Callable[[str, str], str | None] | None = None,
    metrics: Callable[[], Awaitable[str]] | None = None,
    vod_root: Path | None = None,
) -> Starlette:
    async def vendor_api(request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        if aliyun is not None and is_aliyun_request(headers, request.url.query):
            body = await read_body(request, aliyun.max_body)
            ali = await aliyun.handle(method=request.method, host=headers.get("host", ""), path=request.url.path,
                                      headers=headers, query_string=request.url.query, body=body or b"",
                                      too_large=body is None)
            return Response(ali.body, status_code=ali.status, headers={**ali.headers, "content-type": ali.content_type})
        body = await read_body(request, tencent.max_body)
        reply = await tencent.handle(
            method=request.method,
            host=headers.get("host", ""),
            headers=headers,
            query_string=request.url.query,
            body=body or b"",
            too_large=body is None,
        )
        # Exactly "application/json": Starlette's media_type would add "; charset=utf-8".
        return Response(reply.body, status_code=reply.status, headers={"content-type": reply.content_type})

    async def healthz(_: Request) -> Response:
        if ready():
            return JSONResponse({"status": "ok"})
        return PlainTextResponse("starting", status_code=503)

    async def publish_page(_: Request) -> Response:
        return HTMLResponse(PUBLISH_PAGE)

    async def usersig(request: Request) -> Response:
        """Dev mode only: a UserSig for a page that has no backend of its own to sign for it."""
        client = request.client.host if request.client else ""
        if dev_usersig is None or client not in ("127.0.0.1", "::1"):
            return PlainTextResponse("dev UserSigs are disabled", status_code=403)
        sig = dev_usersig(request.query_params.get("sdkappid", ""), request.query_params.get("userid", ""))
        if sig is None:
            return PlainTextResponse("unknown app or bad user", status_code=400)
        return JSONResponse({"UserSig": sig})

    async def metrics_page(_: Request) -> Response:
        if metrics is None:
            return PlainTextResponse("metrics are not enabled", status_code=404)
        # Prometheus text exposition format 0.0.4
        return Response(await metrics(), headers={"content-type": "text/plain; version=0.0.4; charset=utf-8"})

    async def vod(request: Request) -> Response:
        """Playback URLs of the local VOD library (read-only)."""
        found = vod_file(vod_root, str(request.path_params["path"])) if vod_root is not None else None
        if found is None:
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(found, media_type=VOD_TYPES[found.suffix[1:]])

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    routes: list[BaseRoute] = [
        Route("/", vendor_api, methods=methods),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_page, methods=["GET"]),
        Route("/publish", publish_page, methods=["GET"]),
        Route("/dev/usersig", usersig, methods=["GET"]),
        Route("/vod/{path:path}", vod, methods=["GET", "HEAD"]),
        *extra_routes,
    ]
    return Starlette(routes=routes)
