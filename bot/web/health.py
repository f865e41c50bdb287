"""``GET /healthz`` and ``GET /metrics``."""

from __future__ import annotations

from aiohttp import web

from bot.jobs.models import IN_FLIGHT, JobStatus
from bot.metrics import CONTENT_TYPE
from bot.web.keys import ENGINE
from bot.web.webhooks import json_response


async def healthz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    database_ok = await engine.store.ping()
    body: dict[str, object] = {"status": "ok" if database_ok else "degraded",
                               "database": "ok" if database_ok else "unreachable"}
    if database_ok:
        counts = await engine.store.counts()
        body["queue_depth"] = counts[JobStatus.QUEUED]
        body["in_flight"] = sum(counts[s] for s in IN_FLIGHT)
    return json_response(200 if database_ok else 503, body)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus' text format; the job gauges are read from the store now (one query)."""
    engine = request.app[ENGINE]
    engine.metrics.observe_jobs(await engine.store.counts())
    return web.Response(body=engine.metrics.render(), headers={"Content-Type": CONTENT_TYPE})
