"""The ASGI app: vendor APIs at `/`, health and readiness."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from cloudrec.dialects.tencent.gateway import TencentGateway

logger = logging.getLogger(__name__)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it exceeds `limit` (read no further than that)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(*, tencent: TencentGateway, ready: Callable[[], bool]) -> Starlette:
    async def vendor_api(request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = await _read_body(request, tencent.max_body)
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

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/", vendor_api, methods=methods), Route("/healthz", healthz, methods=["GET"])])
