"""The TOML config file → frozen settings. Relative paths are relative to the config file."""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudrec.errors import InvalidRequest


@dataclass(frozen=True, slots=True, kw_only=True)
class AppSettings:
    id: int  # SdkAppId
    key: str = field(repr=False)  # UserSig secret
    callback_url: str | None = None
    callback_key: str = field(default="", repr=False)
    max_concurrent_tasks: int = 100
    require_private_map_key: bool = False
    rate_per_second: float | None = None  # API calls per action; None = [limits] rate_per_second


@dataclass(frozen=True, slots=True, kw_only=True)
class Credential:
    id: str  # SecretId (Tencent) / AccessKeyId (Alibaba)
    secret: str = field(repr=False)  # SecretKey / AccessKeySecret
    apps: tuple[int, ...] = ()  # ARTC: the apps this key may use (its tasks only); empty = every app


@dataclass(frozen=True, slots=True, kw_only=True)
class CallbackSettings:
    """[callbacks]: delivery of the event outbox to each app's callback_url."""

    retry_seconds: float = 24 * 3600.0  # retry an event until it is this old, then mark it dead
    timeout_seconds: float = 5.0
    max_in_flight: int = 4  # per receiver URL
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    poll_seconds: float = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageEndpoint:
    """[[storage.endpoints]]: destinations this S3-compatible endpoint serves (first match wins)."""

    vendor: str  # "0" COS, "1" AWS S3 (CloudStorage.Vendor), "oss" (Alibaba OSSParams)
    region: str = "*"  # "*" = any region
    bucket: str = "*"  # "*" = any bucket
    endpoint_url: str
    access_key: str = field(default="", repr=False)  # used when the request carries no credentials (OSS never does)
    secret_key: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageSettings:
    """[storage]: the upload pipeline."""

    endpoints: tuple[StorageEndpoint, ...] = ()
    allow_request_endpoints: bool = False  # honour CloudStorage.EndpointUrl from requests
    keep_spool: bool = False  # keep local copies after a confirmed remote upload
    concurrency: int = 4  # uploads at a time per process
    retry_seconds: float = 3600.0  # retry a file this long, then report it (308) and leave it in the spool
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    poll_seconds: float = 0.5
    finish_wait_seconds: float = 10.0  # a stopping task waits this long for its uploads before it ends
    stranded_retry_seconds: float = 600.0  # files given up (stranded in the spool) are tried again this often …
    stranded_keep_seconds: float = 7 * 86400.0  # … for this long after they were queued
    multipart_threshold_mb: int = 64
    part_size_mb: int = 16
    node_id: str = ""  # whose spool rows this process uploads; "" = the host name


@dataclass(frozen=True, slots=True, kw_only=True)
class VodSettings:
    """[vod]: the VOD library CloudVod tasks go to (local by default, served at /vod/)."""

    playback_base_url: str = ""  # "" = this server's /vod/ for a local library
    bucket: str = "vod"
    prefix: tuple[str, ...] = ()
    endpoint_url: str = ""  # "" = the local backend
    region: str = ""
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CssDomain:
    """[[css.domains]]: a Tencent CSS push domain (the `DomainName` of the API, `app` of callbacks)."""

    name: str
    push_key: str = field(default="", repr=False)  # txSecret key; "" = push authentication off
    backup_push_key: str = field(default="", repr=False)  # a second key that also validates
    callback_url: str = ""  # record callbacks (event_type 100); "" = none
    callback_key: str = field(default="", repr=False)  # `sign` = MD5(callback_key + t)
    default: bool = False  # the domain of pushes whose tcUrl host matches no domain


@dataclass(frozen=True, slots=True, kw_only=True)
class CssSettings:
    """[css]: the Tencent CSS (live) dialect."""

    appid: int = 0  # the account APPID reported as `appid` in callbacks
    domains: tuple[CssDomain, ...] = ()

    def domain(self, name: str) -> CssDomain | None:
        """The domain called `name` (DNS names: without case)."""
        name = name.lower()
        return next((d for d in self.domains if d.name == name), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    rtmp_host: str = "127.0.0.1"
    rtmp_port: int = 1935
    data_dir: Path = Path("data")
    database_url: str | None = None  # default: SQLite file under data_dir
    rate_limit_per_second: float = 20.0  # per app, per action
    max_body_bytes: int = 1 << 20
    signature_window_seconds: int = 300
    latency_seconds: float = 0.3  # mixing jitter allowance (MEDIA.md §1)
    hls_segment_seconds: float = 4.0
    allow_private_image_urls: bool = False  # layout pictures from loopback/private hosts (tests, closed networks)
    trusted_image_networks: tuple[str, ...] = ()  # CIDRs allowed for layout pictures even when the above is false
    font_path: Path | None = None  # TTF/OTF of text watermarks' default face; None = Pillow's built-in face (Latin)
    fonts: tuple[tuple[str, Path], ...] = ()  # [media.fonts]: named faces (e.g. SourceHanSans), name → file
    worker_poll_seconds: float = 0.2
    log_level: str = "INFO"
    ice_host_addresses: tuple[str, ...] = ("127.0.0.1",)  # WebRTC host candidates we offer
    ice_servers: tuple[str, ...] = ()  # STUN/TURN URLs; none by default (never a public server)
    dev_usersig: bool = False  # GET /dev/usersig hands out UserSigs to loopback clients (for /publish)
    apps: tuple[AppSettings, ...] = ()
    credentials: tuple[Credential, ...] = ()
    callbacks: CallbackSettings = CallbackSettings()
    vod_playback_base_url: str = ""  # [vod] playback_base_url: VOD callbacks' URLs are <this>/<TaskId>/<file>
    storage: StorageSettings = StorageSettings()
    vod: VodSettings = VodSettings()
    css: CssSettings = CssSettings()

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'cloudrec.db'}"

    def app(self, app_id: int) -> AppSettings | None:
        return next((a for a in self.apps if a.id == app_id), None)

    def secret_for(self, secret_id: str) -> str | None:
        return next((c.secret for c in self.credentials if c.id == secret_id), None)

    def apps_for(self, key_id: str) -> frozenset[int] | None:
        """ARTC: the apps a key may use; None = every app."""
        apps = next((c.apps for c in self.credentials if c.id == key_id), ())
        return frozenset(apps) if apps else None


def _listen(value: Any, name: str) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise InvalidRequest(f"[server] {name} must look like 127.0.0.1:8080", field=name)
    host, _, port = value.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError as exc:
        raise InvalidRequest(f"[server] {name} has a bad port", field=name) from exc


def _callbacks(raw: dict[str, Any]) -> CallbackSettings:
    try:
        c = CallbackSettings(
            retry_seconds=float(raw.get("retry_seconds", 24 * 3600)),
            timeout_seconds=float(raw.get("timeout_seconds", 5)),
            max_in_flight=int(raw.get("max_in_flight", 4)),
            backoff_initial_seconds=float(raw.get("backoff_initial_seconds", 1)),
            backoff_max_seconds=float(raw.get("backoff_max_seconds", 300)),
            poll_seconds=float(raw.get("poll_seconds", 0.5)),
        )
    except (TypeError, ValueError) as exc:
        raise InvalidRequest("[callbacks] values must be numbers", field="callbacks") from exc
    if min(c.retry_seconds, c.timeout_seconds, c.backoff_initial_seconds, c.backoff_max_seconds, c.poll_seconds) <= 0 \
            or c.max_in_flight < 1:
        raise InvalidRequest("[callbacks] values must be positive", field="callbacks")
    return c


def _path(value: str, base_dir: Path) -> Path:
    """A configured path; relative ones are relative to the config file's directory."""
    path = Path(value)
    return path if path.is_absolute() else (base_dir / path).resolve()


def _networks(value: Any) -> tuple[str, ...]:
    try:
        return tuple(str(ipaddress.ip_network(str(n), strict=False)) for n in value)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest("[media] trusted_image_networks must be a list of CIDRs", field="trusted_image_networks") from exc


def _storage(raw: dict[str, Any]) -> StorageSettings:
    endpoints = []
    for e in raw.get("endpoints", []):
        vendor = e.get("vendor") if isinstance(e, dict) else None
        url = e.get("endpoint_url") if isinstance(e, dict) else None
        if vendor not in (0, 1, "oss") or isinstance(vendor, bool):
            raise InvalidRequest('[[storage.endpoints]] vendor must be 0 (COS), 1 (AWS S3) or "oss"', field="storage")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidRequest("[[storage.endpoints]] endpoint_url must be an http(s) URL", field="storage")
        endpoints.append(StorageEndpoint(vendor=str(vendor), region=str(e.get("region", "*")),
                                         bucket=str(e.get("bucket", "*")), endpoint_url=url,
                                         access_key=str(e.get("access_key", "")), secret_key=str(e.get("secret_key", ""))))
    try:
        st = StorageSettings(
            endpoints=tuple(endpoints),
            allow_request_endpoints=bool(raw.get("allow_request_endpoints", False)),
            keep_spool=bool(raw.get("keep_spool", False)),
            concurrency=int(raw.get("concurrency", 4)),
            retry_seconds=float(raw.get("retry_seconds", 3600)),
            backoff_initial_seconds=float(raw.get("backoff_initial_seconds", 1)),
            backoff_max_seconds=float(raw.get("backoff_max_seconds", 60)),
            poll_seconds=float(raw.get("poll_seconds", 0.5)),
            finish_wait_seconds=float(raw.get("finish_wait_seconds", 10)),
            stranded_retry_seconds=float(raw.get("stranded_retry_seconds", 600)),
            stranded_keep_seconds=float(raw.get("stranded_keep_seconds", 7 * 86400)),
            multipart_threshold_mb=int(raw.get("multipart_threshold_mb", 64)),
            part_size_mb=int(raw.get("part_size_mb", 16)),
            node_id=str(raw.get("node_id", "")),
        )
    except (TypeError, ValueError) as exc:
        raise InvalidRequest("[storage] values must be numbers or booleans", field="storage") from exc
    if min(st.concurrency, st.retry_seconds, st.backoff_initial_seconds, st.backoff_max_seconds, st.poll_seconds,
           st.part_size_mb, st.multipart_threshold_mb, st.stranded_retry_seconds) <= 0 or st.stranded_keep_seconds < 0 or st.finish_wait_seconds < 0:
        raise InvalidRequest("[storage] values must be positive", field="storage")
    return st


def _vod(raw: dict[str, Any]) -> VodSettings:
    prefix = tuple(str(p) for p in raw.get("prefix", []))
    return VodSettings(playback_base_url=str(raw.get("playback_base_url", "")), bucket=str(raw.get("bucket", "vod")),
                       prefix=prefix, endpoint_url=str(raw.get("endpoint_url", "")), region=str(raw.get("region", "")),
                       access_key=str(raw.get("access_key", "")), secret_key=str(raw.get("secret_key", "")))


def _css(raw: Any) -> CssSettings:
    if not isinstance(raw, dict):
        raise InvalidRequest("[css] must be a table", field="css")
    appid = raw.get("appid", 0)
    if not isinstance(appid, int) or isinstance(appid, bool) or appid < 0:
        raise InvalidRequest("[css] appid must be a non-negative integer", field="css")
    domains: list[CssDomain] = []
    for d in raw.get("domains", []):
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not d["name"].strip():
            raise InvalidRequest("each [[css.domains]] needs a name", field="css.domains")
        texts = {k: d.get(k, "") for k in ("push_key", "backup_push_key", "callback_url", "callback_key")}
        if not all(isinstance(v, str) for v in texts.values()) or not isinstance(d.get("default", False), bool):
            raise InvalidRequest("[[css.domains]] keys and URLs must be strings, default a boolean", field="css.domains")
        url = texts["callback_url"]
        if url and not url.startswith(("http://", "https://")):
            raise InvalidRequest("[[css.domains]] callback_url must be an http(s) URL", field="css.domains")
        domains.append(CssDomain(name=d["name"].strip().lower(), push_key=texts["push_key"],
                                 backup_push_key=texts["backup_push_key"], callback_url=url,
                                 callback_key=texts["callback_key"], default=bool(d.get("default", False))))
    if len({d.name for d in domains}) != len(domains):
        raise InvalidRequest("[[css.domains]] names must be unique", field="css.domains")
    if sum(d.default for d in domains) > 1:
        raise InvalidRequest("at most one [[css.domains]] may be the default", field="css.domains")
    return CssSettings(appid=appid, domains=tuple(domains))


def parse_settings(raw: dict[str, Any], base_dir: Path) -> Settings:
    server = raw.get("server", {})
    limits = raw.get("limits", {})
    media = raw.get("media", {})
    http_host, http_port = _listen(server.get("http_listen", "127.0.0.1:8080"), "http_listen")
    rtmp_host, rtmp_port = _listen(server.get("rtmp_listen", "127.0.0.1:1935"), "rtmp_listen")
    data_dir = _path(str(server.get("data_dir", "data")), base_dir)
    font_path = _path(media["font_path"], base_dir) if media.get("font_path") else None
    fonts = media.get("fonts", {})
    if not isinstance(fonts, dict) or not all(isinstance(v, str) and v for v in fonts.values()):
        raise InvalidRequest("[media.fonts] maps face names to font file paths", field="fonts")
    apps = []
    for a in raw.get("apps", []):
        try:
            apps.append(
                AppSettings(
                    id=int(a["id"]),
                    key=str(a["key"]),
                    callback_url=a.get("callback_url"),
                    callback_key=str(a.get("callback_key", "")),
                    max_concurrent_tasks=int(a.get("max_concurrent_tasks", limits.get("max_concurrent_tasks", 100))),
                    require_private_map_key=bool(a.get("require_private_map_key", False)),
                    rate_per_second=float(a["rate_per_second"]) if "rate_per_second" in a else None,
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRequest("each [[apps]] needs an integer id and a key", field="apps") from exc
        if apps[-1].id <= 0:  # app 0 is the CSS streams' own (dialects/tencent/css_rooms.py)
            raise InvalidRequest("[[apps]] ids must be positive", field="apps")
    creds = []
    for c in raw.get("credentials", []):
        try:
            creds.append(Credential(id=str(c["id"]), secret=str(c["secret"]), apps=tuple(int(a) for a in c.get("apps", []))))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRequest("each [[credentials]] needs id and secret (and apps: a list of app ids)",
                                 field="credentials") from exc
    return Settings(
        http_host=http_host,
        http_port=http_port,
        rtmp_host=rtmp_host,
        rtmp_port=rtmp_port,
        data_dir=data_dir,
        database_url=raw.get("database", {}).get("url"),
        rate_limit_per_second=float(limits.get("rate_per_second", 20)),
        max_body_bytes=int(limits.get("max_body_bytes", 1 << 20)),
        signature_window_seconds=int(limits.get("signature_window_seconds", 300)),
        latency_seconds=float(media.get("latency_ms", 300)) / 1000.0,
        hls_segment_seconds=float(media.get("hls_segment_seconds", 4.0)),
        allow_private_image_urls=bool(media.get("allow_private_image_urls", False)),
        trusted_image_networks=_networks(media.get("trusted_image_networks", [])),
        font_path=font_path,
        fonts=tuple((name, _path(v, base_dir)) for name, v in sorted(fonts.items())),
        log_level=str(server.get("log_level", "INFO")),
        dev_usersig=bool(server.get("dev_usersig", False)),
        ice_host_addresses=tuple(str(a) for a in raw.get("webrtc", {}).get("host_addresses", ["127.0.0.1"])),
        ice_servers=tuple(str(a) for a in raw.get("webrtc", {}).get("ice_servers", [])),
        apps=tuple(apps),
        credentials=tuple(creds),
        callbacks=_callbacks(raw.get("callbacks", {})),
        vod_playback_base_url=str(raw.get("vod", {}).get("playback_base_url", "")),
        storage=_storage(raw.get("storage", {})),
        vod=_vod(raw.get("vod", {})),
        css=_css(raw.get("css", {})),
    )


def load_settings(path: Path) -> Settings:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidRequest(f"cannot read config {path}: {exc}") from exc
    return parse_settings(raw, path.parent.resolve())
