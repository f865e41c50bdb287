"""The bot's web server: ModelsLab's webhooks, ``/healthz`` and ``/metrics``, one module per
surface; this module assembles the app and runs it inside the bot's event loop."""

from __future__ import annotations

import logging

from aiohttp import web

from bot.jobs.engine import WEBHOOK_ROUTE, JobEngine
from bot.web.health import healthz, metrics
from bot.web.keys import ENGINE
from bot.web.paint import add_routes as add_paint_routes
from bot.web.webhooks import (
    MAX_WEBHOOK_BYTES,
    OUTPUT_HOST_SUFFIXES,
    modelslab_webhook,
    outputs_allowed,
)

__all__ = ["ENGINE", "MAX_WEBHOOK_BYTES", "OUTPUT_HOST_SUFFIXES", "WebServer", "create_app",
           "outputs_allowed"]

log = logging.getLogger(__name__)


def create_app(engine: JobEngine) -> web.Application:
    app = web.Application(client_max_size=MAX_WEBHOOK_BYTES)
    app[ENGINE] = engine
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post(WEBHOOK_ROUTE, modelslab_webhook)
    add_paint_routes(app)  # the mask painter (answers only once the bot sets its painter)
    return app


class WebServer:
    """The app on an ``AppRunner``/``TCPSite``, inside the bot's own event loop."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=5)
        self._host, self._port = host, port
        self.port: int | None = None

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server  # the bound port, when 0 asked for any free one
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("web server listening on %s:%s", self._host, self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()
