"""The embedded service: store, rooms, worker and HTTP API in one process, wired from settings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time

import uvicorn

from cloudrec.api.app import create_app
from cloudrec.api.whip import CSS_PUSH, STREAM_TYPES, InvalidToken, WebRtcGrant, WebRtcRequest, webrtc_routes
from cloudrec.callbacks.notifier import Notifier, NotifierConfig
from cloudrec.control.apps import AppInfo
from cloudrec.control.limits import RateLimiter
from cloudrec.control.metrics import MetricsReport
from cloudrec.core.events import CallbackTarget, OutboxEvent
from cloudrec.core.metrics import Metrics
from cloudrec.core.records import from_plain
from cloudrec.core.rooms import RoomKey
from cloudrec.core.spec import RecordingSpec, TrackKind
from cloudrec.control.rooms import RoomControl
from cloudrec.control.schedules import ScheduleControl
from cloudrec.control.tasks import TaskControl
from cloudrec.dialects.aliyun import tokens as artc_tokens
from cloudrec.dialects.aliyun.artc import DIALECT as ARTC_DIALECT
from cloudrec.dialects.aliyun.artc import ArtcActions
from cloudrec.dialects.aliyun.callbacks import ArtcCallbacks
from cloudrec.dialects.aliyun.gateway import AliyunGateway
from cloudrec.dialects.tencent.callbacks import TrtcCallbacks
from cloudrec.dialects.tencent.css_callbacks import DIALECT as CSS_DIALECT
from cloudrec.dialects.tencent.css_callbacks import REPORTED_FORMATS as CSS_REPORTED_FORMATS
from cloudrec.dialects.tencent.css_callbacks import CssCallbacks
from cloudrec.dialects.tencent.css_push import CssPushAuth, PushDomain, PushRefused
from cloudrec.dialects.tencent.css_rooms import CSS_APP_ID, stream_of
from cloudrec.dialects.tencent import css
from cloudrec.dialects.tencent.css_rules import RULE_SCOPE_PREFIX, RuleRecorder
from cloudrec.dialects.tencent.gateway import TencentGateway
from cloudrec.dialects.tencent.publish import PublishDenied, PublisherAuth
from cloudrec.dialects.tencent.trtc import DIALECT as TRTC_DIALECT
from cloudrec.dialects.tencent.trtc import TrtcActions
from cloudrec.dialects.tencent.usersig import make_usersig
from cloudrec.media.fonts import font_files
from cloudrec.rooms.registry import RoomRegistry
from cloudrec.rooms.rtmp import PublishGrant, PublishRequest, RtmpServer
from cloudrec.rooms.whip import WebRtcGateway
from cloudrec.settings import Settings
from cloudrec.storage.routing import EndpointRule, StorageConfig, StorageRouter, VodLibrary
from cloudrec.storage.uploader import Uploader, UploaderConfig
from cloudrec.store.sql import SqlTaskStore
from cloudrec.worker.images import ImageFetcher, ImageLimits
from cloudrec.worker.scheduler import Worker
from cloudrec.worker.session import SessionConfig
from cloudrec.core.ids import is_decimal

logger = logging.getLogger(__name__)
PUSH_JOIN_SECONDS = 30.0  # a CSS push admitted this long ago whose stream is not live is over


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = SqlTaskStore(settings.db_url)
        self.registry = RoomRegistry()
        self.metrics = Metrics()
        self.metrics.declare("cloudrec_bytes_written_total", "counter", "bytes of finished segments and files")
        self.metrics.declare("cloudrec_files_written_total", "counter", "finished segments and files",
                             {"kind": "segment"}, {"kind": "file"})
        self.metrics.declare("cloudrec_dropped_units_total", "counter", "media units recording pipelines dropped")
        self.metrics.declare("cloudrec_pipeline_lag_seconds", "gauge",
                             "the furthest a mix of this process is behind real time, beyond its latency window")
        self.images = ImageFetcher(settings.data_dir / "image-cache",
                                   ImageLimits(allow_private=settings.allow_private_image_urls,
                                               trusted_networks=settings.trusted_image_networks))
        self.router, self.uploader = self._storage(settings)
        self.worker = Worker(
            self.store, self.registry,
            SessionConfig(uploader=self.uploader, latency_seconds=settings.latency_seconds,
                          segment_seconds=settings.hls_segment_seconds,
                          finish_wait_seconds=settings.storage.finish_wait_seconds, metrics=self.metrics,
                          images=self.images, fonts=font_files(settings.font_path, dict(settings.fonts))),
        )
        cb = settings.callbacks
        self.notifier = Notifier(
            self.store, {TRTC_DIALECT: TrtcCallbacks(), ARTC_DIALECT: ArtcCallbacks(),
                         CSS_DIALECT: CssCallbacks(appid=settings.css.appid)}, self._receiver,
            NotifierConfig(retry_seconds=cb.retry_seconds, timeout_seconds=cb.timeout_seconds,
                           max_in_flight=cb.max_in_flight, backoff_initial_seconds=cb.backoff_initial_seconds,
                           backoff_max_seconds=cb.backoff_max_seconds, poll_seconds=cb.poll_seconds),
            metrics=self.metrics,
        )
        apps = {a.id: AppInfo(id=a.id, key=a.key, max_concurrent_tasks=a.max_concurrent_tasks,
                              require_private_map_key=a.require_private_map_key, rate_per_second=a.rate_per_second) for a in settings.apps}
        self.control = TaskControl(
            self.store,
            max_concurrent=lambda app_id: apps[app_id].max_concurrent_tasks if app_id in apps else 0,
            wake_workers=self.worker.wake,
        )
        self.css_control = ScheduleControl(self.store, service=css.SERVICE, dialect=CSS_DIALECT,
                                           wake_workers=self.worker.wake)
        self.css_rules = RuleRecorder(self.css_control, self._live_css_streams)
        gateway = TencentGateway(
            trtc_actions=TrtcActions(self.control, RoomControl(self.registry, self.control), apps),
            css_actions=css.CssActions(self.css_control),
            apps=apps,
            lookup_secret=settings.secret_for,
            rate_limiter=RateLimiter(settings.rate_limit_per_second),
            window_seconds=settings.signature_window_seconds,
            max_body_bytes=settings.max_body_bytes,
        )
        self.apps = apps
        self.aliyun = self._aliyun_gateway(settings, apps)
        self.ready = False
        self._task_receivers: dict[str, CallbackTarget | None] = {}  # ARTC and CSS tasks' receivers, by task id
        # A CSS stream's latest admitted push: its query string and when (monotonic) it was admitted.
        self._css_push_queries: dict[RoomKey, tuple[str, float]] = {}
        self.publishers = PublisherAuth(apps)
        self.css_push = CssPushAuth([PushDomain(name=d.name, key=d.push_key, backup_key=d.backup_push_key, default=d.default)
                                     for d in settings.css.domains])
        self.webrtc = WebRtcGateway(self.registry, host_addresses=settings.ice_host_addresses,
                                    ice_servers=settings.ice_servers)
        self.rtmp = RtmpServer(self.registry, self._authorize_rtmp, host=settings.rtmp_host, port=settings.rtmp_port)
        self.app = create_app(
            tencent=gateway, aliyun=self.aliyun, ready=lambda: self.ready,
            extra_routes=webrtc_routes(self.webrtc, self._authorize_webrtc),
            dev_usersig=self._dev_usersig if settings.dev_usersig else None,
            metrics=MetricsReport(self.store, self.metrics).text,
            vod_root=self.router.vod_root,
        )
        self._server: uvicorn.Server | None = None

    # --- ARTC (Alibaba) -----------------------------------------------------------------------
    def _aliyun_gateway(self, settings: Settings, apps: dict[int, AppInfo]) -> AliyunGateway:
        def has_users(room: RoomKey) -> bool:
            found = self.registry.find(room)
            return found is not None and not found.dismissed and bool(found.snapshot().participants)

        return AliyunGateway(
            artc=ArtcActions(self.control, apps, has_users=has_users),
            lookup_secret=settings.secret_for, key_apps=settings.apps_for, use_nonce=self.store.use_nonce,
            rate_limiter=RateLimiter(settings.rate_limit_per_second),
            apps=apps,
            max_body_bytes=settings.max_body_bytes,
        )

    def _admit_artc(self, query: dict[str, str], *, token: str, app_id: str, channel_id: str,
                    track: TrackKind) -> artc_tokens.Join:
        """An ARTC publisher: `appid`/`channel`/`userid`/`nonce`/`timestamp` beside a classic token, or a
        single-parameter token / AppToken that carries them."""
        return artc_tokens.admit(self.apps, token=token, app_id=app_id, channel_id=channel_id,
                                 user_id=query.get("userid", ""), nonce=query.get("nonce", ""),
                                 timestamp=query.get("timestamp", ""), now=time.time(), track=track)

    def _storage(self, settings: Settings) -> tuple[StorageRouter, Uploader]:
        st, vod = settings.storage, settings.vod
        router = StorageRouter(StorageConfig(
            storage_dir=settings.storage_dir, spool_dir=settings.data_dir / "spool",
            endpoints=tuple(EndpointRule(vendor=e.vendor, region=e.region, bucket=e.bucket, endpoint_url=e.endpoint_url,
                                         access_key=e.access_key, secret_key=e.secret_key)
                            for e in st.endpoints),
            allow_request_endpoints=st.allow_request_endpoints,
            vod=VodLibrary(bucket=vod.bucket, prefix=vod.prefix, endpoint_url=vod.endpoint_url, region=vod.region,
                           access_key=vod.access_key, secret_key=vod.secret_key),
            multipart_threshold=st.multipart_threshold_mb * 1024 * 1024, part_size=st.part_size_mb * 1024 * 1024,
        ))
        # A local VOD library is served by this process at /vod/<TaskId>/<file>.
        playback = settings.vod_playback_base_url or (
            f"http://{settings.http_host}:{settings.http_port}/vod" if not vod.endpoint_url else "")
        uploader = Uploader(self.store, router, UploaderConfig(
            node=st.node_id or socket.gethostname(), concurrency=st.concurrency, retry_seconds=st.retry_seconds,
            backoff_initial_seconds=st.backoff_initial_seconds, backoff_max_seconds=st.backoff_max_seconds,
            poll_seconds=st.poll_seconds, keep_spool=st.keep_spool, vod_playback_base_url=playback,
            stranded_retry_seconds=st.stranded_retry_seconds, stranded_keep_seconds=st.stranded_keep_seconds,
        ), metrics=self.metrics)
        return router, uploader

    async def _authorize_rtmp(self, request: PublishRequest) -> PublishGrant | None:
        """`rtmp://host/push/<RoomId>?sdkappid=…&userid=…&usersig=…[&streamtype=main|aux]`; refused at `publish`.
        With `token` (and no `usersig`), an ARTC publisher. Without `sdkappid` or `token`, and with [[css.domains]]
        configured, a Tencent CSS push (`_authorize_css_rtmp`)."""
        if "sdkappid" not in request.query and "token" not in request.query and self.css_push.enabled:
            return self._authorize_css_rtmp(request)
        track = STREAM_TYPES.get(request.query.get("streamtype", "main").lower())
        if track is None:
            logger.info("rtmp publish refused", extra={"remote": request.remote, "reason": "streamtype must be main or aux"})
            return None
        if "token" in request.query and "usersig" not in request.query:  # ARTC: ?appid=…&userid=…&token=…
            try:
                join = self._admit_artc(dict(request.query), token=request.query["token"],
                                        app_id=request.query.get("appid", ""), channel_id=request.stream, track=track)
            except artc_tokens.TokenRejected as exc:
                logger.info("rtmp publish refused", extra={"remote": request.remote, "reason": exc.reason})
                return None
            return PublishGrant(room=join.room, user_id=join.user_id, track=track)
        try:
            admission = self.publishers.admit_rtmp(request.app, request.stream, request.query)
        except PublishDenied as exc:
            logger.info("rtmp publish refused", extra={"remote": request.remote, "reason": exc.reason})
            return None
        return PublishGrant(room=admission.room, user_id=admission.user_id, track=track)

    def _authorize_css_rtmp(self, request: PublishRequest) -> PublishGrant | None:
        """`rtmp://<push-domain>/<AppName>/<StreamName>?txSecret=…&txTime=…`: the stream's CSS room."""
        try:
            push = self.css_push.admit(host=request.host, app_name=request.app, stream_name=request.stream,
                                       query=request.query)
        except PushRefused as exc:
            logger.info("rtmp publish refused", extra={"remote": request.remote, "host": request.host, "reason": exc.reason})
            return None
        self._css_push_queries[push.room] = (push.stream_param, time.monotonic())
        return PublishGrant(room=push.room, user_id=push.user_id)

    async def _authorize_webrtc(self, request: WebRtcRequest) -> WebRtcGrant | None:
        """WHIP publishers and WHEP viewers prove `?userid=` with their UserSig as the bearer token (or an ARTC
        token). CSS pushes (`/whip/css/…`) are `_authorize_css_whip`'s."""
        if request.app_id == CSS_PUSH and request.kind == "whip":
            return self._authorize_css_whip(request)
        token = request.token or request.query.get("token", "")
        if artc_tokens.is_artc_token(token):
            try:
                join = self._admit_artc(dict(request.query), token=token, app_id=request.app_id,
                                        channel_id=request.room_id, track=request.stream_type)
            except artc_tokens.TokenRejected as exc:
                logger.info("webrtc refused", extra={"kind": request.kind, "reason": exc.reason})
                if exc.status == 401:
                    raise InvalidToken(exc.reason) from exc
                return None
            return WebRtcGrant(room=join.room, user_id=join.user_id)
        try:
            admission = self.publishers.admit(
                app_id=request.app_id, room_id=request.room_id, user_id=request.query.get("userid", ""),
                usersig=request.token, room_id_type=request.query.get("roomidtype"),
                private_map_key=request.query.get("privatemapkey"),
            )
        except PublishDenied as exc:
            logger.info("webrtc refused", extra={"kind": request.kind, "reason": exc.reason})
            if exc.status == 401:
                raise InvalidToken(exc.reason) from exc
            return None
        return WebRtcGrant(room=admission.room, user_id=admission.user_id)

    def _authorize_css_whip(self, request: WebRtcRequest) -> WebRtcGrant | None:
        """`/whip/css/<AppName>/<StreamName>?txSecret=…&txTime=…[&domain=…]`: the domain is `domain=`, else the
        host the client addressed (as the RTMP tcUrl host)."""
        if not self.css_push.enabled or request.stream_type is not TrackKind.MAIN:
            return None
        app_name, _, stream_name = request.room_id.partition("/")
        query = {k: v for k, v in request.query.items() if k != "domain"}
        try:
            push = self.css_push.admit(host=request.query.get("domain") or request.host, app_name=app_name,
                                       stream_name=stream_name, query=query)
        except PushRefused as exc:
            logger.info("webrtc refused", extra={"kind": request.kind, "host": request.host, "reason": exc.reason})
            return None
        self._css_push_queries[push.room] = (push.stream_param, time.monotonic())
        return WebRtcGrant(room=push.room, user_id=push.user_id)

    def _live_css_streams(self) -> dict[RoomKey, str]:
        """CSS streams being pushed now (their publisher, the stream name, is in the room), with the
        query string of their latest push (admitted pushes of streams no longer live are forgotten)."""
        live = {}
        for room in self.registry.rooms():
            if room.key.app_id == CSS_APP_ID and any(not t.closed for p in room.snapshot().participants for t in p.tracks.values()):
                live[room.key] = self._css_push_queries.get(room.key, ("", 0.0))[0]
        # A push is admitted just before its publisher joins: forget it only once it had time to.
        stale = time.monotonic() - PUSH_JOIN_SECONDS
        for key in [k for k, (_, at) in self._css_push_queries.items() if k not in live and at < stale]:
            del self._css_push_queries[key]
        return live

    async def _receiver(self, event: OutboxEvent) -> CallbackTarget | None:
        """Where an event goes: TRTC's app and CSS's push domain name the receiver in config; other
        dialects (ARTC) name it in the task's request."""
        if event.dialect == TRTC_DIALECT:
            app = self.settings.app(event.room.app_id)
            return CallbackTarget(url=app.callback_url, key=app.callback_key) if app and app.callback_url else None
        if event.task_id not in self._task_receivers:  # a task's receiver never changes: look it up once
            if len(self._task_receivers) >= 10_000:
                self._task_receivers.pop(next(iter(self._task_receivers)))
            self._task_receivers[event.task_id] = await (
                self._css_receiver(event) if event.dialect == CSS_DIALECT else self._spec_receiver(event))
        return self._task_receivers[event.task_id]

    async def _spec_receiver(self, event: OutboxEvent) -> CallbackTarget | None:
        """The receiver the task's request named (ARTC `NotifyUrl`)."""
        task = await self.store.get_task(event.task_id)
        return from_plain(RecordingSpec, json.loads(task.spec)).callback if task is not None else None

    async def _css_receiver(self, event: OutboxEvent) -> CallbackTarget | None:
        """CSS tasks report to their push domain's callback_url ([[css.domains]]). A rule's task also
        names its template (`record_temp_id`) and the push it records (`stream_param`)."""
        try:
            domain = self.settings.css.domain(stream_of(event.room)[0])
        except ValueError:  # not a CSS stream's room
            return None
        if domain is None or not domain.callback_url:
            return None
        schedule = await self.store.get_schedule(event.task_id)
        fields = (("record_temp_id", str(schedule.template_id)), ("stream_param", schedule.source_query)) \
            if schedule is not None and schedule.scope.startswith(RULE_SCOPE_PREFIX) else ()
        return CallbackTarget(url=domain.callback_url, key=domain.callback_key, file_formats=CSS_REPORTED_FORMATS,
                              fields=fields)

    def _dev_usersig(self, app_id: str, user_id: str) -> str | None:
        app = self.settings.app(int(app_id)) if is_decimal(app_id) else None
        if app is None or not user_id or len(user_id) > 64:
            return None
        return make_usersig(app.id, app.key, user_id, expire=24 * 3600)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then finalize every running task and return."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.store.start()
        await self.uploader.start()  # first: spooled files of an earlier run go up while tasks resume
        await self.worker.start()
        await self.notifier.start()
        await self.rtmp.start()
        rules_stop = asyncio.Event()
        rules = asyncio.create_task(self.css_rules.run(rules_stop), name="css-rules")
        config = uvicorn.Config(self.app, host=self.settings.http_host, port=self.settings.http_port,
                                log_config=None, access_log=False, lifespan="off",
                                # SDKs keep connections alive and do not retry a POST: closing idle ones after
                                # uvicorn's 5 s races with their next request (connection reset mid-call)
                                timeout_keep_alive=75)
        self._server = uvicorn.Server(config)
        # The CLI owns SIGINT/SIGTERM: recordings are finalized before the HTTP server goes away.
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        serving = asyncio.create_task(self._server.serve())
        while not self._server.started and not serving.done():
            await asyncio.sleep(0.02)
        if serving.done():
            await serving  # surfaces "address in use" and the like
        self.ready = True
        logger.info("cloudrec ready", extra={"http": f"{self.settings.http_host}:{self.settings.http_port}",
                                             "rtmp": f"{self.settings.rtmp_host}:{self.rtmp.port}"})
        await stop.wait()
        logger.info("cloudrec stopping")
        self.ready = False
        rules_stop.set()
        await rules
        await self.rtmp.stop()  # publishers leave first, so recordings see them go
        await self.webrtc.stop()
        await self.worker.stop()
        await self.uploader.stop()  # what is not stored yet stays queued and spooled for the next start
        await self.notifier.stop()  # a short drain: the tasks' last events (stop, files) go out now if they can
        await self.images.aclose()
        self._server.should_exit = True
        await serving
        await self.store.stop()
        logger.info("cloudrec stopped")
