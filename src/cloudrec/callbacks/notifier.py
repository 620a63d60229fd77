"""The notifier: delivers the store's event outbox to each app's callback URL.

- Events are sent only once committed (they are rows the worker wrote with the change they report).
- Per task in order: only the oldest pending event of a task is a candidate; the next one waits.
- At least once: a delivery is claimed with a lease (compare-and-set in the store); a process that
  dies mid-request leaves the claim to lapse and the event to be sent again, with the same
  `X-Cloudrec-Event-Id` so receivers can drop the duplicate.
- Retries back off exponentially with jitter until the event is `retry_seconds` old, then it is
  marked dead (kept in the table, logged, counted in /metrics).
- A slow or dead receiver holds at most `max_in_flight` requests, each cut at `timeout_seconds`;
  recording never waits for the notifier and other apps' receivers are served meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from cloudrec.core.events import CallbackRequest, CallbackTarget, OutboxEvent
from cloudrec.core.metrics import Metrics
from cloudrec.store.base import EventOutbox

logger = logging.getLogger(__name__)

EVENT_ID_HEADER = "X-Cloudrec-Event-Id"  # stable per event: the idempotency key
ATTEMPT_HEADER = "X-Cloudrec-Attempt"  # 1 for the first try


class CallbackFormat(Protocol):
    """A dialect's callback format (e.g. `dialects.tencent.callbacks.TrtcCallbacks`)."""

    def format(self, ev: OutboxEvent, target: CallbackTarget, *, sent_ms: int) -> CallbackRequest | None:
        """The signed request, or None when the dialect (or this target) has no callback for this event."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifierConfig:
    retry_seconds: float = 24 * 3600.0  # give up on an event this old (Tencent: 60 s; see README)
    timeout_seconds: float = 5.0  # per request, as Tencent
    max_in_flight: int = 4  # concurrent requests per receiver URL
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    poll_seconds: float = 0.5
    batch: int = 200


class Notifier:
    def __init__(
        self,
        outbox: EventOutbox,
        formats: Mapping[str, CallbackFormat],
        receiver: Callable[[OutboxEvent], Awaitable[CallbackTarget | None]],
        config: NotifierConfig = NotifierConfig(),
        *,
        metrics: Metrics | None = None,
        owner: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.outbox = outbox
        self.formats = formats
        self.receiver = receiver
        self.config = config
        self.metrics = metrics
        self.owner = owner or f"n-{uuid.uuid4().hex[:12]}"
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._busy: dict[str, int] = {}
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        if metrics is not None:
            metrics.declare("cloudrec_callback_attempts_total", "counter", "callback requests sent by this process",
                            {"outcome": "delivered"}, {"outcome": "failed"})
            metrics.declare("cloudrec_callback_dead_total", "counter", "events this process gave up on")

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._client = httpx.AsyncClient(transport=self._transport, follow_redirects=False, trust_env=False,
                                         timeout=self.config.timeout_seconds)
        self._loop_task = asyncio.create_task(self._run(), name="notifier")

    async def stop(self, drain_seconds: float | None = None) -> None:
        """Deliver what is due for up to `drain_seconds` (default: one request timeout), then stop.

        Anything left stays pending in the store and is delivered after the next start."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        deadline = time.monotonic() + (self.config.timeout_seconds if drain_seconds is None else drain_seconds)
        while time.monotonic() < deadline:
            try:
                started = await self._tick()
            except Exception:
                logger.exception("notifier drain error")
                break
            if not started and not self._inflight:
                break
            await asyncio.sleep(0.05)
        for task in list(self._inflight.values()):
            task.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        try:
            await self.outbox.release_claims(self.owner)  # resend them at the next start, not after the lease
        except Exception:
            logger.exception("notifier could not release its claims")
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._tick()
            except Exception:
                logger.exception("notifier loop error")
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.poll_seconds)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def _tick(self) -> int:
        """Claim and start every due head event whose receiver has room; returns how many started."""
        now = _ms()
        started = 0
        for ev in await self.outbox.due_events(now, limit=self.config.batch):
            if ev.id in self._inflight:
                continue
            receiver = await self.receiver(ev)
            if receiver is not None and not receiver.url:
                receiver = None
            if receiver is not None and self._busy.get(receiver.url, 0) >= self.config.max_in_flight:
                continue  # formatted once it is sent, not on every tick it waits
            fmt = self.formats.get(ev.dialect)
            req = fmt.format(ev, receiver, sent_ms=now) if fmt is not None and receiver is not None else None
            if receiver is None or req is None:
                why = ("no callback receiver for the task" if receiver is None else
                       f"no callback format for {ev.dialect!r}" if fmt is None else "the dialect has no callback for this event")
                await self.outbox.event_final(ev.id, "skipped", error=why)
                self._wake.set()  # the task's next event is a head now: look again at once
                continue
            lease = now + int((self.config.timeout_seconds + 30) * 1000)
            if not await self.outbox.claim_event(ev.id, self.owner, now_ms=now, until_ms=lease):
                continue  # another process took it
            self._busy[receiver.url] = self._busy.get(receiver.url, 0) + 1
            self._inflight[ev.id] = asyncio.create_task(self._deliver(ev, receiver, req), name=f"callback-{ev.id}")
            started += 1
        return started

    async def _deliver(self, ev: OutboxEvent, receiver: CallbackTarget, req: CallbackRequest) -> None:
        """Send `req` (formatted and signed when the event was claimed) and record the outcome."""
        log = {"task_id": ev.task_id, "event_id": ev.id, "event": ev.event.kind.value, "receiver": _host(receiver.url),
               "attempt": ev.attempts + 1}
        try:
            error = await self._post(receiver.url, req, ev)
            now = _ms()
            if self.metrics is not None:
                self.metrics.inc("cloudrec_callback_attempts_total", outcome="failed" if error else "delivered")
            if error is None:
                await self.outbox.event_delivered(ev.id, now_ms=now)
                logger.info("callback delivered", extra=log)
            elif now - ev.event.at_ms >= self.config.retry_seconds * 1000:
                await self.outbox.event_final(ev.id, "dead", error=error)
                if self.metrics is not None:
                    self.metrics.inc("cloudrec_callback_dead_total")
                logger.warning("callback dead: retry period over", extra={**log, "error": error})
            else:
                delay = self._backoff(ev.attempts + 1)
                await self.outbox.event_retry(ev.id, self.owner, error=error, next_ms=now + int(delay * 1000))
                logger.info("callback failed; will retry", extra={**log, "error": error, "retry_in": round(delay, 2)})
        except asyncio.CancelledError:
            raise  # stopping: the lease lapses and the event is sent again after a restart
        except Exception:
            logger.exception("callback delivery error", extra=log)
        finally:
            self._busy[receiver.url] -= 1
            self._inflight.pop(ev.id, None)
            self._wake.set()

    async def _post(self, url: str, req: CallbackRequest, ev: OutboxEvent) -> str | None:
        """None on success, else a short reason (status or error class; never the body or key)."""
        assert self._client is not None
        headers = {**req.headers, EVENT_ID_HEADER: ev.idempotency_key, ATTEMPT_HEADER: str(ev.attempts + 1)}
        try:
            # The total bound matters: httpx's timeout is per phase, a trickling receiver could hold longer.
            resp = await asyncio.wait_for(self._client.post(url, content=req.body, headers=headers),
                                          self.config.timeout_seconds)
        except asyncio.TimeoutError:
            return "timeout"
        except httpx.HTTPError as exc:
            return type(exc).__name__
        return None if 200 <= resp.status_code < 300 else f"HTTP {resp.status_code}"

    def _backoff(self, attempt: int) -> float:
        base = min(self.config.backoff_max_seconds, self.config.backoff_initial_seconds * 2.0 ** min(attempt - 1, 30))
        return base * random.uniform(0.5, 1.0)  # jitter: receivers coming back are not hit in lockstep


def _ms() -> int:
    return int(time.time() * 1000)


def _host(url: str) -> str:
    return urlsplit(url).netloc  # never the path or query: they may carry a token
