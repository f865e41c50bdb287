"""The job services killed with SIGKILL mid-job and started again, as separate processes."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.jobs.models import JobStatus
from bot.jobs.store import JobStore
from tests.support.jobs import FileDelivery, new_job
from tests.support.processes import EngineProcess, engine_settings

pytestmark = pytest.mark.asyncio


async def eventually(predicate, within: float = 20.0) -> None:
    """Wait until ``predicate()`` (a bool or an awaitable of one) holds."""
    deadline = time.monotonic() + within
    while not await _value(predicate()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.fixture
def setup(tmp_path, fake, unused_tcp_port):
    url = f"http://127.0.0.1:{unused_tcp_port}"
    env = engine_settings(fake, tmp_path, unused_tcp_port)
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
