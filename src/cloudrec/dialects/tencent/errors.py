"""Tencent Cloud API 3.0 errors: a vendor error code and a message, answered in the error envelope."""

from __future__ import annotations


class TencentError(Exception):
    """An error that becomes `{"Response": {"Error": {"Code", "Message"}, "RequestId"}}`."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message or code
