"""The job services killed with SIGKILL mid-job and started again, as separate processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from bot.jobs.models import JobStatus
from bot.jobs.store import JobStore
from tests.support.jobs import FileDelivery, new_job

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.asyncio


class EngineProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.engine_process"], cwd=ROOT, env=self.env,
            stdout=self.log.open("a"), stderr=subprocess.STDOUT)

    async def ready(self, url: str) -> None:
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as http:
            while True:
                assert self.proc.poll() is None, self.log.read_text()
                try:
                    async with http.get(url + "/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, self.log.read_text()
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def eventually(predicate, within: float = 20.0) -> None:
    """Wait until ``predicate()`` (a bool or an awaitable of one) holds."""
    deadline = time.monotonic() + within
    while not await _value(predicate()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.fixture
def setup(tmp_path, fake, unused_tcp_port):
    url = f"http://127.0.0.1:{unused_tcp_port}"
    env = {**os.environ,
           "DISCORD_TOKEN": "not-used-here", "MODELSLAB_API_KEY": fake.api_key,
           "MODELSLAB_ENTERPRISE_API_KEY": fake.enterprise_key,
           "MODELSLAB_BASE_URL": fake.base_url, "PUBLIC_BASE_URL": url,
           "WEB_HOST": "127.0.0.1", "WEB_PORT": str(unused_tcp_port),
           "DATABASE_PATH": str(tmp_path / "bot.sqlite3"),
           "DELIVERIES_FILE": str(tmp_path / "deliveries.jsonl"),
           "PYTHONPATH": str(ROOT)}
    process = EngineProcess(env, tmp_path / "engine.log")
    yield process, url, tmp_path
    process.terminate()


async def test_sigkill_while_processing_then_restart_delivers_exactly_once(fake, setup):
    process, url, tmp = setup
    deliveries = FileDelivery(tmp / "deliveries.jsonl")
    fake.send_webhooks = True
    process.start()
    await process.ready(url)

    store = await JobStore.open(tmp / "bot.sqlite3")  # a member's job, as a command writes it
    try:
        job = await store.create(new_job(fake.cdn_url, samples=2))
        await eventually(lambda: len(fake.processing_jobs) == 1)
        await eventually(lambda: _status_is(store, job.track_id, JobStatus.PROCESSING))

        process.kill()
        await fake.complete(fake.submits[0].response.body["id"])  # its webhook finds nobody
        assert fake.webhook_results == [None]

        process.start()
        await process.ready(url)
        await eventually(lambda: _status_is(store, job.track_id, JobStatus.DELIVERED))
        await asyncio.sleep(1.0)  # room for a duplicate to show, if there were one
    finally:
        await store.close()
    lines = deliveries.lines()
    assert [line["track_id"] for line in lines] == [job.track_id]
    assert lines[0]["status"] == "succeeded" and len(lines[0]["outputs"]) == 2
    assert len(fake.submits) == 1  # never submitted twice


async def _value(result) -> bool:
    return bool(await result) if asyncio.iscoroutine(result) else bool(result)


async def _status_is(store: JobStore, track_id: str, status: JobStatus) -> bool:
    job = await store.get(track_id)
    return job is not None and job.status is status
