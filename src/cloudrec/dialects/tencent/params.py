"""Flattened request parameters (spec B.7): `A.B`, `A.0`, `A.0.B` ⇄ nested dicts and lists.

GET and v1 requests carry the action's input as flat string pairs; `unflatten` rebuilds the JSON
shape a POST would have sent, leaving every value a string for the schema layer to convert.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cloudrec.dialects.tencent.errors import TencentError
from cloudrec.core.ids import is_decimal

# Common parameters of v1 / query requests (B.3); unflatten keeps them, callers drop them.
COMMON_PARAMS: frozenset[str] = frozenset(
    {
        "Action",
        "Version",
        "Region",
        "Timestamp",
        "Nonce",
        "SecretId",
        "Signature",
        "SignatureMethod",
        "Token",
        "Language",
        "RequestClient",
    }
)

# Recording models nest about five levels; the cap keeps hostile names from costing recursion.
MAX_DEPTH = 32


class _Node:
    """A parent name while parsing; becomes a dict, or a list when all its children are indices."""

    __slots__ = ("children",)

    def __init__(self) -> None:
        self.children: dict[str, _Node | str] = {}


def unflatten(params: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Nest flattened names. Pairs may be given to catch a name sent twice."""
    pairs = params.items() if isinstance(params, Mapping) else params
    root = _Node()
    for name, value in pairs:
        segments = name.split(".")
        if len(segments) > MAX_DEPTH or any(not s for s in segments):
            raise TencentError("InvalidParameter", f"malformed parameter name `{name}`")
        node = root
        for depth, segment in enumerate(segments[:-1]):
            child = node.children.setdefault(segment, _Node())
            if not isinstance(child, _Node):
                raise _conflict(".".join(segments[: depth + 1]))
            node = child
        last = segments[-1]
        if last in node.children:
            raise _conflict(name)
        node.children[last] = value
    return {k: _build(v, k) for k, v in root.children.items()}


def _build(item: _Node | str, path: str) -> Any:
    if isinstance(item, str):
        return item
    keys = item.children.keys()
    numeric = [k for k in keys if is_decimal(k)]
    if not numeric:
        return {k: _build(v, f"{path}.{k}") for k, v in item.children.items()}
    if len(numeric) != len(keys):
        raise TencentError("InvalidParameter", f"`{path}` mixes list indices and member names")
    ordered = sorted(numeric, key=int)
    if len({int(k) for k in ordered}) != len(ordered):  # "0" and "00"
        raise _conflict(path)
    # Gaps are tolerated: indices only order the elements.
    return [_build(item.children[k], f"{path}.{k}") for k in ordered]


def _conflict(name: str) -> TencentError:
    return TencentError(
        "InvalidParameter", f"parameter `{name}` is given twice, or as both a value and a parent"
    )


def flatten(obj: Mapping[str, Any]) -> dict[str, str]:
    """The inverse, as the SDKs build GET / v1 input: None is omitted, booleans are `true`/`false`."""
    out: dict[str, str] = {}
    _flatten_into(out, "", obj)
    return out


def _flatten_into(out: dict[str, str], prefix: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten_into(out, f"{prefix}.{k}" if prefix else str(k), v)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten_into(out, f"{prefix}.{i}" if prefix else str(i), v)
    elif isinstance(value, bool):
        out[prefix] = "true" if value else "false"
    else:
        out[prefix] = str(value)
