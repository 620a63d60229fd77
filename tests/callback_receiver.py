"""A real HTTP callback receiver on loopback for the callback tests: records every request it gets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support import free_port


@dataclass
class Got:
    headers: dict[str, str]
    body: bytes
    at: float
    answered: int  # HTTP status we replied with; 0 = never answered (hang)

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event_type(self) -> int:
        return int(self.json["EventType"])

    @property
    def task_id(self) -> str:
        return str(self.json["EventInfo"]["TaskId"])

    @property
    def key(self) -> str:
        return self.headers.get("x-cloudrec-event-id", "")

    def signed_with(self, key: str) -> bool:
        """The spec's receiver check: Base64(HMAC-SHA256(key, raw body bytes)), no re-serialising."""
        want = base64.b64encode(hmac.new(key.encode(), self.body, hashlib.sha256).digest()).decode()
        return self.headers.get("sign") == want


class Receiver:
    """`mode`: "ok" answers 200; "fail" reads the body, then answers 500; "hang" reads it and never answers."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.got: list[Got] = []
        self.mode = "ok"
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/trtc/callback"

    def up(self) -> Receiver:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                mode = outer.mode
                status = {"ok": 200, "fail": 500}.get(mode, 0)
                with outer._lock:
                    outer.got.append(Got({k.lower(): v for k, v in self.headers.items()}, body, time.time(), status))
                if mode == "hang":
                    outer.release.wait(60)
                    return
                reply = b'{"code":0}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        self.release.set()
        self.down()

    def delivered(self, task_id: str | None = None) -> list[Got]:
        """Requests answered 200, first per idempotency key, in arrival order."""
        seen: set[str] = set()
        out = []
        with self._lock:
            got = list(self.got)
        for g in got:
            if g.answered == 200 and (task_id is None or g.task_id == task_id) and g.key not in seen:
                seen.add(g.key)
                out.append(g)
        return out

    def types(self, task_id: str) -> list[int]:
        return [g.event_type for g in self.delivered(task_id)]
