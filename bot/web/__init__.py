"""The bot's web servers, one module per surface; this module assembles the apps and runs them
inside the bot's event loop.

Two listeners: the public one (``WEB_HOST``/``WEB_PORT``, behind the webhook proxy) serves
ModelsLab's webhooks and ``/healthz``; ``/metrics`` has a listener of its own
(``METRICS_HOST``/``METRICS_PORT``, loopback by default) and is never on the public port.
"""

from __future__ import annotations

import logging

from aiohttp import web

from bot.jobs.engine import WEBHOOK_ROUTE, JobEngine
from bot.web.health import HEALTH_CACHE, HealthCache, RateLimit, healthz, metrics, rate_limited
from bot.web.keys import ENGINE
from bot.web.paint import add_routes as add_paint_routes
from bot.web.webhooks import (
    MAX_WEBHOOK_BYTES,
    OUTPUT_HOST_SUFFIXES,
    modelslab_webhook,
    outputs_allowed,
)

__all__ = ["ENGINE", "MAX_WEBHOOK_BYTES", "OUTPUT_HOST_SUFFIXES", "WebServer", "create_app",
           "create_metrics_app", "outputs_allowed"]

log = logging.getLogger(__name__)


def _is_webhook(request: web.Request) -> bool:
    route = request.match_info.route
    return route.resource is not None and route.resource.canonical == WEBHOOK_ROUTE


def create_app(engine: JobEngine, limit: RateLimit | None = None) -> web.Application:
    """The public app: webhooks (authenticated per job, not rate limited) and /healthz
    (rate limited, like any path that is not a webhook)."""
    app = web.Application(client_max_size=MAX_WEBHOOK_BYTES, middlewares=[
        rate_limited(limit or RateLimit(), _is_webhook,
                     lambda: engine.metrics.web_refused("public"))])
    app[ENGINE] = engine
    app[HEALTH_CACHE] = HealthCache()
    app.router.add_get("/healthz", healthz)
    app.router.add_post(WEBHOOK_ROUTE, modelslab_webhook)
    add_paint_routes(app)  # the mask painter (answers only once the bot sets its painter)
    return app


def create_metrics_app(engine: JobEngine, limit: RateLimit | None = None) -> web.Application:
    """The metrics app, for its own (private) listener."""
    app = web.Application(middlewares=[
        rate_limited(limit or RateLimit(per_client=20.0, per_client_burst=40.0),
                     lambda request: False, lambda: engine.metrics.web_refused("metrics"))])
    app[ENGINE] = engine
    app.router.add_get("/metrics", metrics)
    return app


class WebServer:
    """An app on an ``AppRunner``/``TCPSite``, inside the bot's own event loop."""

    def __init__(self, app: web.Application, host: str, port: int, name: str = "web server"
                 ) -> None:
        self.app = app
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=5)
        self._host, self._port = host, port
        self.name = name
        self.port: int | None = None

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        server = site._server  # the bound port, when 0 asked for any free one
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("%s listening on %s:%s", self.name, self._host, self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()
