"""A running job engine for tests: real store on disk, real web server, the fake ModelsLab."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from pydantic import SecretStr

from bot.jobs.downloads import DownloadPolicy, OutputDownloader
from bot.jobs.engine import EnginePolicy, JobEngine
from bot.jobs.models import Job, NewJob, Output, Requester
from bot.jobs.store import JobStore
from bot.modelslab.catalogue import ENDPOINTS
from bot.modelslab.client import ModelsLabClient
from bot.modelslab.payload import GenerationOptions, SourceImage, build_payload
from bot.net import OutputHosts
from bot.web import WebServer, create_app
from bot.web.health import RateLimit

FAST = EnginePolicy(max_concurrency=5, webhook_grace=0.5, first_poll=0.05, poll_backoff=1.5,
                    max_poll_interval=0.3, unknown_outcome_wait=1.0, not_sent_retry=0.1,
                    delivery_retry=0.05, sweep_interval=0.5, tick=0.05)
UNLIMITED = RateLimit(per_client=1e9, per_client_burst=1e9, overall=1e9, overall_burst=1e9)
# The fake ModelsLab's CDN lives on loopback: outputs are accepted from there (any port), or,
# better, from exactly the fake's CDN (so another loopback server stands for "elsewhere").
LOOPBACK_OUTPUTS = OutputHosts(("127.0.0.1",))


def cdn_host(fake) -> str:
    """The fake's CDN as an output-host entry (``127.0.0.1:PORT``), for MODELSLAB_OUTPUT_HOSTS."""
    return urlsplit(fake.cdn_url).netloc


def cdn_outputs(fake) -> OutputHosts:
    return OutputHosts.parse(cdn_host(fake))

FAST_DOWNLOADS = DownloadPolicy(not_found_window=1.5, first_retry_delay=0.05,
                                max_retry_delay=0.2, timeout=5)


@dataclass
class Delivered:
    job: Job
    outputs: list[Output]
    at: float


@dataclass
class RecordingDelivery:
    """Stands in for the Discord layer: remembers what it was handed, in order."""

    delivered: list[Delivered] = field(default_factory=list)
    progress_seen: list[tuple[str, str, int | None]] = field(default_factory=list)
    pauses_seen: list[tuple[str, float]] = field(default_factory=list)
    fail_times: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def deliver(self, job: Job, outputs: Sequence[Output]) -> int | None:
        if self.fail_times > 0:
            self.fail_times -= 1
            raise RuntimeError("Discord is down")
        self.delivered.append(Delivered(job, list(outputs), time.time()))
        self.changed.set()
        return 1000 + len(self.delivered)

    async def find_delivered(self, job: Job) -> int | None:
        for n, item in enumerate(self.delivered, start=1):
            if item.job.track_id == job.track_id:
                return 1000 + n
        return None

    async def progress(self, job: Job, position: int | None, *,
                       paused_until: float | None = None) -> None:
        self.progress_seen.append((job.track_id, job.status, position))
        if paused_until is not None:
            self.pauses_seen.append((job.track_id, paused_until))

    def for_job(self, track_id: str) -> list[Delivered]:
        return [d for d in self.delivered if d.job.track_id == track_id]

    async def wait_for(self, count: int, within: float = 10.0) -> None:
        async def enough() -> None:
            while len(self.delivered) < count:
                self.changed.clear()
                await self.changed.wait()
        async with asyncio.timeout(within):
            await enough()


@dataclass
class FileDelivery:
    """The recording delivery for a separate process: one JSON line per delivery, on disk."""

    path: Path
    written: int = 0

    async def deliver(self, job: Job, outputs: Sequence[Output]) -> int | None:
        line = {"track_id": job.track_id, "status": str(job.status), "error": job.error,
                "outputs": [len(o.data) for o in outputs], "at": time.time()}
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        self.written += 1
        return self.written

    async def find_delivered(self, job: Job) -> int | None:
        for n, line in enumerate(self.lines(), start=1):
            if line["track_id"] == job.track_id:
                return n
        return None

    async def progress(self, job: Job, position: int | None, *,
                       paused_until: float | None = None) -> None:
        return None

    def lines(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]


def make_client(session: aiohttp.ClientSession, base_url: str, api_key: str,
                enterprise_key: str) -> ModelsLabClient:
    return ModelsLabClient(session, base_url=base_url, api_key=SecretStr(api_key),
                           enterprise_key=SecretStr(enterprise_key),
                           submit_timeout=aiohttp.ClientTimeout(total=3, sock_connect=2),
                           fetch_timeout=aiohttp.ClientTimeout(total=3, sock_connect=2))


class RunningEngine:
    """Store + engine + web server, started and stopped together, as the bot runs them."""

    def __init__(self, *, db_path: Path, client: ModelsLabClient, delivery,
                 session: aiohttp.ClientSession, port: int, webhooks: bool = True,
                 policy: EnginePolicy = FAST, downloads: DownloadPolicy = FAST_DOWNLOADS,
                 metrics=None, output_hosts: OutputHosts = LOOPBACK_OUTPUTS):
        self.db_path, self.client, self.delivery, self.session = db_path, client, delivery, session
        self.metrics = metrics
        self.output_hosts = output_hosts
        self.port, self.webhooks, self.policy, self.downloads = port, webhooks, policy, downloads
        self.base_url = f"http://127.0.0.1:{port}"

    async def __aenter__(self) -> RunningEngine:
        self.store = await JobStore.open(self.db_path)
        self.engine = JobEngine(self.store, self.client, self.delivery,
                                OutputDownloader(self.session, self.downloads,
                                                 output_hosts=self.output_hosts),
                                policy=self.policy,
                                public_base_url=self.base_url if self.webhooks else None,
                                metrics=self.metrics)
        # In-process tests send requests faster than any client should: no rate limit here.
        self.web = WebServer(create_app(self.engine, UNLIMITED), "127.0.0.1", self.port)
        await self.web.start()
        await self.engine.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.engine.stop(grace=2)
        await self.web.stop()
        await self.store.close()


def new_job(fake_cdn: str, *, user: int = 1, endpoint: str = "v6", samples: int = 1,
            prompt: str = "a lighthouse at dusk") -> NewJob:
    body = build_payload(ENDPOINTS[endpoint], GenerationOptions(prompt=prompt, samples=samples),
                         image=SourceImage(fake_cdn + "/files/in.png", 1024, 1024),
                         mask=(SourceImage(fake_cdn + "/files/m.png", 1024, 1024)
                               if endpoint == "inpaint" else None),
                         default_model="pony_realism")
    return NewJob(endpoint=endpoint, payload=body,
                  requester=Requester(user_id=user, guild_id=1, channel_id=2),
                  images=samples, options={"prompt": prompt, "samples": samples})
