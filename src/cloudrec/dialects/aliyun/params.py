"""Reading ARTC request parameters (spec §2.3).

Every business parameter arrives in the URL query (or a form body): nested objects as compact JSON
text inside one parameter (current SDKs; the legacy Python SDK adds spaces), or as dotted keys with
1-based list indices (`StorageParams.FileInfo.1.Format`, the old C++ SDK); plain lists as `Name.1`,
`Name.2`. `Obj` then reads typed fields, raising the vendor error code of the object they belong to.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from cloudrec.core.ids import is_decimal
from cloudrec.dialects.aliyun.errors import AliyunError, business, missing

MAX_DEPTH = 16  # the deepest model (MixLayoutParams.UserPanes.N.SubBackground.Url) has 4 levels


def decode_form(text: str) -> list[tuple[str, str]]:
    """`application/x-www-form-urlencoded`: `+` is a space, UTF-8, empty values kept (`SignatureType=`)."""
    try:
        return parse_qsl(text, keep_blank_values=True, strict_parsing=False, encoding="utf-8", errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise AliyunError("InvalidParameter", "malformed query or form parameters", 400) from exc


def to_dict(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in pairs:
        if k in out and out[k] != v:
            raise AliyunError("InvalidParameter", f"parameter {k} is given twice", 400)
        out[k] = v
    return out


def nested(params: Mapping[str, str], name: str, code: str) -> dict[str, Any] | None:
    """The object `name`: JSON text in `params[name]`, else rebuilt from `name.*` keys; None if absent or empty."""
    raw = params.get(name)
    value: Any
    if raw is not None and raw.strip():
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise business(code, f"{name} is not valid JSON") from exc
    else:
        dotted = [(k[len(name) + 1:], v) for k, v in params.items() if k.startswith(name + ".")]
        if not dotted:
            return None
        value = _unflatten(dotted, name, code)
    if not isinstance(value, dict):
        raise business(code, f"{name} must be a JSON object")
    return value or None


def indexed_list(params: Mapping[str, str], name: str, code: str) -> list[str]:
    """`name.1`, `name.2`, … in index order (also a JSON array, or one value, in plain `name`)."""
    items = [(k[len(name) + 1:], v) for k, v in params.items() if k.startswith(name + ".")]
    if any(not is_decimal(i) for i, _ in items):
        raise business(code, f"{name} must be indexed {name}.1, {name}.2, …")
    out = [v for _, v in sorted(items, key=lambda kv: int(kv[0]))]
    plain = params.get(name, "").strip()
    if plain:
        try:
            value = json.loads(plain) if plain.startswith("[") else [plain]
        except ValueError as exc:
            raise business(code, f"{name} is not a valid list") from exc
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise business(code, f"{name} must be a list of strings")
        out += value
    return [v for v in out if v]


def _unflatten(pairs: list[tuple[str, str]], name: str, code: str) -> Any:
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = key.split(".")
        if len(parts) > MAX_DEPTH or any(not p for p in parts):
            raise business(code, f"malformed parameter name {name}.{key}")
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise business(code, f"parameter {name}.{key} conflicts with another")
            node = child
        if parts[-1] in node:
            raise business(code, f"parameter {name}.{key} is given twice")
        node[parts[-1]] = value
    return _lists(root)


def _lists(node: Any) -> Any:
    """Dicts whose keys are all numbers become lists (1-based indices only order the items)."""
    if not isinstance(node, dict):
        return node
    built = {k: _lists(v) for k, v in node.items()}
    if built and all(is_decimal(k) for k in built):
        return [built[k] for k in sorted(built, key=int)]
    return built


class Obj:
    """One request object; errors use `code` (e.g. `InvalidParameter.RecordParams`) and name `path`."""

    def __init__(self, data: Mapping[str, Any], path: str, code: str) -> None:
        self.data = data
        self.path = path
        self.code = code

    def _name(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def bad(self, detail: str) -> AliyunError:
        return business(self.code, detail)

    def present(self, name: str) -> bool:
        raw = self.data.get(name)
        return raw is not None and raw != "" and raw != [] and raw != {}

    def integer(self, name: str, *, default: int | None = None, lo: int | None = None, hi: int | None = None,
                choices: tuple[int, ...] | None = None, required: bool = False, zero_is_unset: bool = False) -> int | None:
        raw = self.data.get(name)
        if isinstance(raw, str):
            raw = raw.strip()
        if raw is None or raw == "" or (zero_is_unset and raw in (0, "0")):
            if required:
                raise missing(self._name(name))
            return default
        if isinstance(raw, bool):
            raise self.bad(f"{self._name(name)} must be an integer")
        if isinstance(raw, int):
            value = raw
        elif isinstance(raw, float) and raw.is_integer():
            value = int(raw)
        elif isinstance(raw, str) and is_decimal(raw.removeprefix("-")):
            value = int(raw)
        else:
            raise self.bad(f"{self._name(name)} must be an integer")
        if (lo is not None and value < lo) or (hi is not None and value > hi) or (choices is not None and value not in choices):
            raise self.bad(f"{self._name(name)} is out of range")
        return value

    def req_int(self, name: str, **kw: Any) -> int:
        value = self.integer(name, required=True, **kw)
        assert value is not None
        return value

    def fraction(self, name: str) -> float:
        """Pane geometry: a decimal string (every SDK model) or a JSON number, in [0, 1]; default 0."""
        raw = self.data.get(name)
        if raw is None or raw == "":
            return 0.0
        if isinstance(raw, bool):
            raise self.bad(f"{self._name(name)} must be a number")
        try:
            value = float(raw)
        except (TypeError, ValueError) as exc:
            raise self.bad(f"{self._name(name)} must be a number") from exc
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise self.bad(f"{self._name(name)} must be between 0 and 1")
        return value

    def string(self, name: str, *, max_len: int = 2048, required: bool = False) -> str:
        raw = self.data.get(name)
        if raw is None or raw == "":
            if required:
                raise missing(self._name(name))
            return ""
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            raise self.bad(f"{self._name(name)} must be a string")
        value = str(raw)
        if len(value) > max_len:
            raise self.bad(f"{self._name(name)} is too long")
        return value

    def obj(self, name: str, code: str | None = None) -> Obj | None:
        raw = self.data.get(name)
        if raw is None or raw == "" or raw == {}:
            return None
        if not isinstance(raw, dict):
            raise self.bad(f"{self._name(name)} must be an object")
        return Obj(raw, self._name(name), code or self.code)

    def array(self, name: str, *, max_items: int) -> list[Any]:
        raw = self.data.get(name)
        if raw is None or raw == "":
            return []
        if not isinstance(raw, list):
            raise self.bad(f"{self._name(name)} must be an array")
        if len(raw) > max_items:
            raise self.bad(f"{self._name(name)} has more than {max_items} entries")
        return raw

    def objs(self, name: str, *, max_items: int, code: str | None = None) -> list[Obj]:
        out = []
        for i, item in enumerate(self.array(name, max_items=max_items), start=1):
            if not isinstance(item, dict):
                raise self.bad(f"{self._name(name)}.{i} must be an object")
            out.append(Obj(item, f"{self._name(name)}.{i}", code or self.code))
        return out

    def str_list(self, name: str, *, max_items: int) -> list[str]:
        items = self.array(name, max_items=max_items)
        if not all(isinstance(v, str) for v in items):
            raise self.bad(f"{self._name(name)} must be a list of strings")
        return [str(v) for v in items]
