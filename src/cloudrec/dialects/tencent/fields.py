"""Typed reading of Tencent request parameters with the vendor's error codes.

JSON bodies carry real types; GET and v1 requests carry strings (and SDKs or API Explorer may send
numbers as strings), so every reader accepts both and converts.
"""

from __future__ import annotations

from typing import Any

from cloudrec.dialects.tencent.errors import TencentError
from cloudrec.core.ids import is_decimal

OUT_OF_RANGE = "InvalidParameter.OutOfRange"
_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


class Obj:
    """One JSON object of the request; `path` names it in error messages (e.g. `RecordParams`)."""

    def __init__(self, data: Any, path: str = "") -> None:
        if not isinstance(data, dict):
            raise TencentError("InvalidParameter", f"{path or 'request'} must be an object")
        self.data = data
        self.path = path

    def _name(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def _missing(self, name: str, code: str | None) -> TencentError:
        return TencentError(code or "MissingParameter", f"missing parameter {self._name(name)}")

    def integer(
        self, name: str, *, required: bool = False, default: int | None = None, lo: int | None = None,
        hi: int | None = None, missing: str | None = None, invalid: str = "InvalidParameter", out_of_range: str = OUT_OF_RANGE,
        choices: tuple[int, ...] | None = None,
    ) -> int | None:
        raw = self.data.get(name)
        if raw is None:
            if required:
                raise self._missing(name, missing)
            return default
        value: int
        if isinstance(raw, bool):
            raise TencentError(invalid, f"{self._name(name)} must be an integer")
        if isinstance(raw, int):
            value = raw
        elif isinstance(raw, float) and raw.is_integer():
            value = int(raw)
        elif isinstance(raw, str) and is_decimal(raw.strip().removeprefix("-")):
            value = int(raw.strip())
        else:
            raise TencentError(invalid, f"{self._name(name)} must be an integer")
        if (lo is not None and value < lo) or (hi is not None and value > hi) or (choices is not None and value not in choices):
            raise TencentError(out_of_range, f"{self._name(name)} is out of range")
        return value

    def req_int(self, name: str, **kw: Any) -> int:
        value = self.integer(name, required=True, **kw)
        assert value is not None
        return value

    def string(
        self, name: str, *, required: bool = False, default: str | None = None, max_len: int | None = None,
        missing: str | None = None, invalid: str = "InvalidParameter", allow_empty: bool = True,
    ) -> str | None:
        raw = self.data.get(name)
        if raw is None or (raw == "" and not allow_empty):
            if required:
                raise self._missing(name, missing)
            return default
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            raise TencentError(invalid, f"{self._name(name)} must be a string")
        value = str(raw)
        if max_len is not None and len(value.encode()) > max_len:
            raise TencentError(invalid, f"{self._name(name)} is too long")
        return value

    def req_str(self, name: str, **kw: Any) -> str:
        value = self.string(name, required=True, allow_empty=False, **kw)
        assert value is not None
        return value

    def boolean(self, name: str, *, default: bool = False) -> bool:
        raw = self.data.get(name)
        if raw is None:
            return default
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        if isinstance(raw, int) and raw in (0, 1):
            return bool(raw)
        raise TencentError("InvalidParameter", f"{self._name(name)} must be a boolean")

    def obj(self, name: str, *, required: bool = False, missing: str | None = None) -> Obj | None:
        raw = self.data.get(name)
        if raw is None:
            if required:
                raise self._missing(name, missing)
            return None
        return Obj(raw, self._name(name))

    def array(self, name: str, *, max_items: int | None = None) -> list[Any]:
        raw = self.data.get(name)
        if raw is None:
            return []
        if isinstance(raw, dict) and all(is_decimal(k) for k in raw):  # flattened Name.N that became a dict
            raw = [raw[k] for k in sorted(raw, key=int)]
        if not isinstance(raw, list):
            raise TencentError("InvalidParameter", f"{self._name(name)} must be an array")
        if max_items is not None and len(raw) > max_items:
            raise TencentError(OUT_OF_RANGE, f"{self._name(name)} has more than {max_items} entries")
        return raw

    def str_list(self, name: str, *, max_items: int | None = None, max_len: int = 256) -> tuple[str, ...]:
        out = []
        for i, item in enumerate(self.array(name, max_items=max_items)):
            if not isinstance(item, str) or not item or len(item.encode()) > max_len:
                raise TencentError("InvalidParameter", f"{self._name(name)}.{i} must be a non-empty string")
            out.append(item)
        return tuple(out)

    def objs(self, name: str, *, max_items: int | None = None) -> list[Obj]:
        return [Obj(item, f"{self._name(name)}.{i}") for i, item in enumerate(self.array(name, max_items=max_items))]
