"""What control and dialects know about an application (an SdkAppId and its secrets)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class AppInfo:
    id: int
    key: str = field(repr=False)  # UserSig / token secret
    max_concurrent_tasks: int = 100
    require_private_map_key: bool = False
    rate_per_second: float | None = None
