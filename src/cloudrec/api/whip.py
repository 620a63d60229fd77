"""WHIP (RFC 9725) and WHEP endpoints over a `WebRtcGateway`, with CORS so a browser page can use them.

    POST   /whip/{sdkappid}/{roomid}?userid=..[&streamtype=main|aux][&roomidtype=0|1]   → 201 + answer
    DELETE /whip/session/{id}                                                           → 200 | 404
    POST   /whep/{sdkappid}/{roomid}/{userid}[?streamtype=main|aux]                      → 201 + answer
    DELETE /whep/session/{id}                                                           → 200 | 404
    POST   /whip/css/{AppName}/{StreamName}?txSecret=..&txTime=..[&domain=..]             → 201 + answer

POSTs carry `Authorization: Bearer <token>` and `Content-Type: application/sdp`; a Tencent CSS push
(`/whip/css/…`) signs its URL instead and needs no bearer: its request has `app_id` "css",
`room_id` "<AppName>/<StreamName>" and `host` = the HTTP host the client used (its push domain).

Who may do what is decided by the `authorize` coroutine the composition root passes in: it returns a `WebRtcGrant`
(the room and the user id to act as), None to refuse (403), or raises `InvalidToken` (401). A
missing bearer is 401 without asking it. The session URL returned in `Location` is the capability
to end the session (its id is unguessable), as in WHIP.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cloudrec.api.body import read_body
from cloudrec.core.rooms import RoomKey
from cloudrec.core.spec import TrackKind
from cloudrec.errors import CloudrecError, InvalidRequest, NotFound
from cloudrec.rooms.whip import MAX_OFFER_BYTES, WebRtcGateway

logger = logging.getLogger(__name__)

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Expose-Headers": "Location",
    "Access-Control-Max-Age": "600",
}
STREAM_TYPES = {"main": TrackKind.MAIN, "aux": TrackKind.AUX}
CSS_PUSH = "css"  # the `app_id` of CSS pushes (/whip/css/<AppName>/<StreamName>)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebRtcRequest:
    """What a WHIP/WHEP request asks for, before anyone checked it."""

    kind: Literal["whip", "whep"]
    app_id: str  # the {sdkappid} path segment, unparsed
    room_id: str
    token: str  # the bearer token (never logged)
    stream_type: TrackKind  # MAIN or AUX
    query: Mapping[str, str] = field(default_factory=dict)  # userid, roomidtype, … as sent
    target_user_id: str | None = None  # WHEP: whose tracks to play
    host: str = ""  # the host the client addressed (the HTTP Host header's)

    def __repr__(self) -> str:
        return (f"WebRtcRequest(kind={self.kind!r}, app_id={self.app_id!r}, room_id={self.room_id!r}, token='***', "
                f"stream_type={self.stream_type}, target_user_id={self.target_user_id!r})")


@dataclass(frozen=True, slots=True, kw_only=True)
class WebRtcGrant:
    """What the request may do: act as `user_id` in `room`."""

    room: RoomKey
    user_id: str


class InvalidToken(Exception):
    """Raised by `authorize` when the bearer token is malformed, expired or badly signed (→ 401)."""


Authorize = Callable[[WebRtcRequest], Awaitable[WebRtcGrant | None]]


def _plain(status: int, text: str, extra: Mapping[str, str] | None = None) -> Response:
    headers = dict(CORS_HEADERS)
    if extra:
        headers.update(extra)
    return Response(text + "\n" if text else b"", status_code=status, media_type="text/plain", headers=headers)


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


async def _read_sdp(request: Request) -> str | Response:
    """The offer's text; whether it is SDP at all is the gateway's to say (400 the same way)."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/sdp":
        return _plain(400, "Content-Type must be application/sdp")
    body = await read_body(request, MAX_OFFER_BYTES)
    if body is None:
        return _plain(400, "SDP offer too large")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return _plain(400, "SDP offer is not UTF-8")


def webrtc_routes(gateway: WebRtcGateway, authorize: Authorize) -> list[Route]:
    """Starlette routes for WHIP publishing and WHEP playback (mount them into the app)."""

    async def preflight(_: Request) -> Response:
        return Response(status_code=204, headers=CORS_HEADERS)

    async def offer(request: Request, kind: Literal["whip", "whep"], *, css: bool = False) -> Response:
        if request.method == "OPTIONS":
            return await preflight(request)
        token = _bearer(request)
        if token is None and not css:  # a CSS push is signed in its URL (txSecret)
            return _plain(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
        stream = request.query_params.get("streamtype", "main").lower()
        stream_type = STREAM_TYPES.get(stream)
        if stream_type is None:
            return _plain(400, "streamtype must be main or aux")
        sdp = await _read_sdp(request)
        if isinstance(sdp, Response):
            return sdp
        req = WebRtcRequest(
            kind=kind,
            app_id=CSS_PUSH if css else request.path_params["sdkappid"],
            room_id=f"{request.path_params['app_name']}/{request.path_params['stream_name']}" if css
            else request.path_params["roomid"],
            token=token or "",
            stream_type=stream_type,
            query=dict(request.query_params),
            target_user_id=request.path_params.get("userid") if kind == "whep" else None,
            host=request.url.hostname or "",
        )
        try:
            grant = await authorize(req)
        except InvalidToken:
            return _plain(401, "invalid bearer token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if grant is None:
            return _plain(403, "forbidden")
        try:
            if kind == "whip":
                session_id, answer = await gateway.publish(room=grant.room, user_id=grant.user_id, track=stream_type, offer_sdp=sdp)
            else:
                assert req.target_user_id is not None
                session_id, answer = await gateway.play(room=grant.room, user_id=req.target_user_id, track=stream_type, offer_sdp=sdp)
        except InvalidRequest as exc:
            return _plain(400, exc.message)
        except NotFound as exc:
            return _plain(404, exc.message)
        except CloudrecError as exc:
            logger.warning("webrtc offer failed", extra={"kind": kind, "error": exc.message})
            return _plain(500, "internal error")
        location = f"/{kind}/session/{session_id}"
        headers = dict(CORS_HEADERS)
        headers["Location"] = location
        return Response(answer, status_code=201, media_type="application/sdp", headers=headers)

    async def whip(request: Request) -> Response:
        return await offer(request, "whip")

    async def whip_css(request: Request) -> Response:
        return await offer(request, "whip", css=True)

    async def whep(request: Request) -> Response:
        return await offer(request, "whep")

    async def session(request: Request) -> Response:
        if request.method == "OPTIONS":
            return await preflight(request)
        if await gateway.close(request.path_params["session_id"]):
            return _plain(200, "")
        return _plain(404, "no such session")

    return [
        Route("/whip/session/{session_id}", session, methods=["DELETE", "OPTIONS"]),
        Route("/whep/session/{session_id}", session, methods=["DELETE", "OPTIONS"]),
        Route(f"/whip/{CSS_PUSH}/{{app_name}}/{{stream_name}}", whip_css, methods=["POST", "OPTIONS"]),
        Route("/whip/{sdkappid}/{roomid}", whip, methods=["POST", "OPTIONS"]),
        Route("/whep/{sdkappid}/{roomid}/{userid}", whep, methods=["POST", "OPTIONS"]),
    ]
