"""Identifiers: task ids are opaque, URL- and path-safe (they become object-key components)."""

from __future__ import annotations

import secrets
import uuid


def new_task_id() -> str:
    # Tencent's ids look like Base64 with "." padding; ours keep that look and stay path-safe.
    return secrets.token_urlsafe(30) + ".."


def new_request_id() -> str:
    return str(uuid.uuid4())


def is_decimal(text: str) -> bool:
    """ASCII digits only: `str.isdigit()` also takes "²" and other digits `int()` refuses."""
    return text.isascii() and text.isdigit()
