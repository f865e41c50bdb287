"""``GET /healthz`` and ``GET /metrics``, and the request rate limit on every route that
anyone may call without a secret.

Neither route scans the job history: the counts come from the store's small index of active
jobs (see ``JobStore.counts``). ``/healthz`` answers from a one-second cache (one database
visit a second at most, however many ask), and every unauthenticated route sits behind a
token bucket per client address and a global one, answering 429 with ``Retry-After``. The
webhook route is authenticated per job and is never limited here, so results keep arriving
while someone hammers the rest.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from bot.jobs.models import IN_FLIGHT, JobStatus
from bot.metrics import CONTENT_TYPE
from bot.web.keys import ENGINE
from bot.web.webhooks import json_response

HEALTH_CACHE_SECONDS = 1.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens a second
    burst: float  # at most this many saved up
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, now: float) -> float:
        """0 when a request may go now (a token is spent); else seconds until one may."""
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


@dataclass(slots=True)
class RateLimit:
    """A bucket per client address (the TCP peer: a forwarded-for header is not believed),
    and one for everyone together."""

    per_client: float = 10.0
    per_client_burst: float = 20.0
    overall: float = 100.0
    overall_burst: float = 200.0
    max_clients: int = 4096  # addresses remembered; idle (full) buckets are dropped first
    clock: Callable[[], float] = time.monotonic
    _clients: dict[str, TokenBucket] = field(default_factory=dict)
    _all: TokenBucket | None = None

    def check(self, client: str) -> float:
        """0 when ``client`` may be answered now; else the seconds it should wait."""
        now = self.clock()
        bucket = self._clients.get(client)
        if bucket is None:
            if len(self._clients) >= self.max_clients:
                self._forget(now)
            bucket = self._clients[client] = TokenBucket(self.per_client, self.per_client_burst)
        wait = bucket.take(now)
        if wait:
            return wait
        if self._all is None:
            self._all = TokenBucket(self.overall, self.overall_burst)
        return self._all.take(now)

    def _forget(self, now: float) -> None:
        idle = [key for key, bucket in self._clients.items() if bucket.full(now)]
        for key in idle or list(self._clients)[: self.max_clients // 2]:
            del self._clients[key]


def rate_limited(limit: RateLimit, exempt: Callable[[web.Request], bool],
                 on_refused: Callable[[], None] | None = None) -> Callable[..., Awaitable]:
    """Middleware: requests not ``exempt`` are counted against ``limit``."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not exempt(request):
            wait = limit.check(request.remote or "?")
            if wait:
                if on_refused is not None:
                    on_refused()
                return web.Response(status=429, text='{"error": "too many requests"}',
                                    content_type="application/json",
                                    headers={"Retry-After": str(max(1, math.ceil(wait)))})
        return await handler(request)

    return middleware


class HealthCache:
    """The last /healthz answer, kept a moment: one database visit however many ask."""

    def __init__(self, seconds: float = HEALTH_CACHE_SECONDS) -> None:
        self.seconds = seconds
        self._answer: tuple[float, int, dict[str, object]] | None = None
        self._lock = asyncio.Lock()

    async def get(self, compute: Callable[[], Awaitable[tuple[int, dict[str, object]]]]
                  ) -> tuple[int, dict[str, object]]:
        async with self._lock:
            now = time.monotonic()
            if self._answer is None or now - self._answer[0] >= self.seconds:
                status, body = await compute()
                self._answer = (now, status, body)
            return self._answer[1], self._answer[2]


HEALTH_CACHE = web.AppKey("health_cache", HealthCache)


async def healthz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]

    async def compute() -> tuple[int, dict[str, object]]:
        database_ok = await engine.store.ping()
        body: dict[str, object] = {"status": "ok" if database_ok else "degraded",
                                   "database": "ok" if database_ok else "unreachable"}
        body.update(getattr(engine, "process_info", {}))  # which process, shards, database
        if database_ok:
            counts = await engine.store.counts()
            body["queue_depth"] = counts[JobStatus.QUEUED]
            body["in_flight"] = sum(counts[s] for s in IN_FLIGHT)
        return (200 if database_ok else 503), body

    cache = request.app.get(HEALTH_CACHE)
    status, body = await (cache.get(compute) if cache is not None else compute())
    return json_response(status, body)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus' text format; the job gauges are read from the store now (one indexed
    query over the active jobs)."""
    engine = request.app[ENGINE]
    engine.metrics.observe_jobs(await engine.store.counts())
    engine.metrics.awaiting_webhook.set(await engine.store.awaiting_webhook())
    engine.metrics.paused.set(1 if engine.paused_until() is not None else 0)
    return web.Response(body=engine.metrics.render(), headers={"Content-Type": CONTENT_TYPE})
