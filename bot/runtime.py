"""The services the bot runs besides Discord: store, ModelsLab client, job engine, web server.

Assembled here from the settings, so the bot and any other host (the tests' separate-process
harness) start and stop them the same way.
"""

from __future__ import annotations

import logging

import aiohttp

from bot.jobs.delivery import Delivery
from bot.jobs.downloads import OutputDownloader
from bot.jobs.engine import EnginePolicy, JobEngine
from bot.jobs.leases import Leases
from bot.jobs.store import JobStore
from bot.metrics import Metrics
from bot.modelslab.client import ModelsLabClient
from bot.modelslab.models import ModelList
from bot.net import outbound_session
from bot.settings import Settings
from bot.web import WebServer, create_app, create_metrics_app

log = logging.getLogger(__name__)


class Services:
    def __init__(self, settings: Settings, delivery: Delivery) -> None:
        self.settings = settings
        self.delivery = delivery
        self.metrics = Metrics()  # one registry for these services, served at /metrics
        if hasattr(delivery, "metrics"):  # the Discord delivery counts where results went
            delivery.metrics = self.metrics
        self.session: aiohttp.ClientSession | None = None
        self.store: JobStore | None = None
        self.client: ModelsLabClient | None = None
        self.engine: JobEngine | None = None
        self.web: WebServer | None = None
        self.metrics_web: WebServer | None = None
        self.models: ModelList | None = None

    async def start(self) -> None:
        s = self.settings
        # Every outbound request goes through this session: public addresses only (loopback
        # too when ALLOW_LOOPBACK_OUTBOUND, for test suites), redirects re-checked per hop.
        self.session = outbound_session(
            allow_loopback=s.allow_loopback_outbound,
            timeout=aiohttp.ClientTimeout(total=120, sock_connect=10),
            headers={"User-Agent": "Remixer (self-hosted Discord bot)"},
        )
        self.store = await JobStore.open(s.database)
        self.client = ModelsLabClient(
            self.session, base_url=s.modelslab_base_url, api_key=s.modelslab_api_key,
            enterprise_key=s.modelslab_enterprise_api_key, metrics=self.metrics)
        self.engine = JobEngine(
            self.store, self.client, self.delivery,
            OutputDownloader(self.session, output_hosts=s.output_hosts),
            policy=EnginePolicy(max_concurrency=s.modelslab_max_concurrency,
                                max_pause=s.modelslab_max_pause,
                                retention_days=s.job_retention_days),
            public_base_url=s.public_base_url, metrics=self.metrics,
            leases=Leases(self.store, period=s.job_lease_seconds))
        shards = s.shards if s.shards is not None else list(range(s.shard_count or 1))
        self.engine.process_info = {"process": self.engine.leases.owner, "shards": shards,
                                    "shard_count": s.shard_count or 1,
                                    "database_backend": self.store.backend}
        self.metrics.process.labels(self.engine.leases.owner, ",".join(map(str, shards)),
                                    self.store.backend).set(1)
        self.models = ModelList(self.client, refresh=s.model_list_refresh)
        self.web = WebServer(create_app(self.engine), s.web_host, s.web_port)
        await self.web.start()
        await self._start_metrics()
        await self.engine.start()
        self.models.start()  # read in the background, never on a keystroke
        log.info("jobs: %s", "webhooks at " + s.public_base_url if s.public_base_url
                 else "no PUBLIC_BASE_URL, polling every job")

    async def _start_metrics(self) -> None:
        """/metrics on its own listener. The bot runs without it if the port is taken."""
        s = self.settings
        assert self.engine is not None
        server = WebServer(create_metrics_app(self.engine), s.metrics_host, s.metrics_port,
                           name="metrics server")
        try:
            await server.start()
        except OSError as exc:
            log.error("metrics server cannot listen on %s:%s (%s); /metrics is not served",
                      s.metrics_host, s.metrics_port, exc.strerror or exc)
            return
        self.metrics_web = server

    async def stop(self) -> None:
        """Webhooks first (handlers in progress finish), then the engine, then the rest.
        Every job is left in a state the next start resumes."""
        web, engine, store, session = self.web, self.engine, self.store, self.session
        if self.models is not None:
            await self.models.stop()
        self.web = self.engine = self.store = self.session = None  # stop once
        metrics_web, self.metrics_web = self.metrics_web, None
        if engine is not None:
            engine.stop_accepting()  # new commands are refused from here on
            log.info("stopping: no new jobs; finishing webhooks and job steps in progress")
        if web is not None:
            await web.stop()
        if metrics_web is not None:
            await metrics_web.stop()
        if engine is not None:
            await engine.stop()
        if store is not None:
            await store.close()
        if session is not None:
            await session.close()
        if engine is not None:
            log.info("stopped; unfinished jobs resume at the next start")
