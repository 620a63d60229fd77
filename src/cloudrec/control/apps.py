"""What control and dialects know about an application (an SdkAppId and its secrets)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cloudrec.core.ids import is_decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class AppInfo:
    id: int
    key: str = field(repr=False)  # UserSig / token secret
    max_concurrent_tasks: int = 100
    require_private_map_key: bool = False
    rate_per_second: float | None = None


def app_named(apps: Mapping[int, AppInfo], text: str) -> AppInfo | None:
    """The configured app a request names by its decimal id (TRTC SdkAppId, ARTC AppId), if any."""
    return apps.get(int(text)) if is_decimal(text) and len(text) < 19 else None
