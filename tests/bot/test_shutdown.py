"""Graceful shutdown: SIGTERM while webhooks are being handled and jobs are at every stage.

The job services run in their own process (as in tests/bot/jobs/test_crash.py). SIGTERM must
end it promptly with status 0, after the steps in progress finished, with every other job
left where a restart picks it up; after the restart every job is delivered exactly once.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from bot.errors import UserFacingError
from bot.generation import GenerationRequest, GenerationService, Upload
from bot.jobs.models import JobStatus, Requester
from bot.jobs.store import JobStore
from bot.modelslab.catalogue import Operation
from bot.modelslab.payload import GenerationOptions
from bot.servers import Servers
from bot.settings import Settings
from tests.bot.jobs.test_crash import eventually
from tests.support.jobs import (
    FileDelivery,
    RecordingDelivery,
    RunningEngine,
    cdn_outputs,
    make_client,
    new_job,
)
from tests.support.processes import EngineProcess, engine_settings

JOBS = 8


@pytest.fixture
def setup(tmp_path, fake, unused_tcp_port):
    url = f"http://127.0.0.1:{unused_tcp_port}"
    env = engine_settings(fake, tmp_path, unused_tcp_port, MODELSLAB_MAX_CONCURRENCY="2",
                          LOG_LEVEL="INFO")
    process = EngineProcess(env, tmp_path / "engine.log")
    yield process, url, tmp_path
    process.terminate()


async def test_sigterm_mid_work_exits_0_and_every_job_is_delivered_once(fake, setup):
    process, url, tmp = setup
    deliveries = FileDelivery(tmp / "deliveries.jsonl")
    fake.send_webhooks = True
    fake.eta = 0.2
    fake.auto_complete_after = 0.3
    fake.hang_next("cdn", 1.5)  # the first result's download is under way at SIGTERM
    process.start()
    await process.ready(url)

    store = await JobStore.open(tmp / "bot.sqlite3")  # members' jobs, as commands write them
    try:
        jobs = [await store.create(new_job(fake.cdn_url, user=1 + n % 3)) for n in range(JOBS)]
        await eventually(lambda: fake.webhook_results)  # a webhook was just handled
        first = fake.webhook_deliveries[0].url.split("/")[-2]

        sent = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)
        await eventually(lambda: process.proc.poll() is not None, within=15)
        took = time.monotonic() - sent
        log = process.log.read_text()
        assert process.proc.returncode == 0, log
        assert took < 6, f"took {took:.1f} s to stop"
        assert "Traceback" not in log and "job steps unfinished" not in log, log

        # The webhook in hand was finished (downloaded, delivered) before the exit...
        assert [line["track_id"] for line in deliveries.lines()].count(first) == 1
        # ...and everything else waits in a state the next start resumes.
        left = [await store.get(j.track_id) for j in jobs]
        assert not [j for j in left if j.status is JobStatus.SUBMITTED], left
        assert not [j for j in left if j.delivering_since is not None and
                    j.status is not JobStatus.DELIVERED]
        assert any(j.status is JobStatus.QUEUED for j in left)
        assert all(result in (200, None) for result in fake.webhook_results)

        process.start()
        await process.ready(url)
        for job in jobs:
            await eventually(lambda job=job: _status_is(store, job.track_id, JobStatus.DELIVERED))
        await asyncio.sleep(0.5)  # room for a duplicate to show, if there were one
    finally:
        await store.close()
    lines = deliveries.lines()
    assert sorted(line["track_id"] for line in lines) == sorted(j.track_id for j in jobs)
    assert all(line["status"] == "succeeded" and len(line["outputs"]) == 1 for line in lines)
    assert len(fake.submits) == JOBS  # never submitted twice


async def test_new_commands_are_refused_while_stopping(fake, http, tmp_path, unused_tcp_port):
    settings = Settings(_env_file=None, discord_token="t", modelslab_api_key="k")
    client = make_client(http, fake.base_url, fake.api_key, fake.enterprise_key)
    image = fake.cdn_put("in.png", b"not read: refused before any download")
    request = GenerationRequest(operation=Operation.IMG2IMG,
                                options=GenerationOptions(prompt="a fox"),
                                image=Upload(image, "in.png"),
                                requester=Requester(user_id=7, guild_id=1, channel_id=2))
    async with RunningEngine(db_path=tmp_path / "bot.sqlite3", client=client,
                             delivery=RecordingDelivery(), session=http,
                             port=unused_tcp_port, output_hosts=cdn_outputs(fake)) as r:
        service = GenerationService(settings, r.engine, http, Servers(r.store, settings))
        r.engine.stop_accepting()  # what the services do first on SIGTERM
        with pytest.raises(UserFacingError, match="Remixer is restarting; try again in a"):
            await service.start(request, host=_no_hosting)
        assert await r.store.counts() == {s: 0 for s in JobStatus}
    assert fake.cdn_requests == [] and fake.submits == []


async def _no_hosting(files):
    raise AssertionError("nothing is hosted")


async def _status_is(store: JobStore, track_id: str, status: JobStatus) -> bool:
    job = await store.get(track_id)
    return job is not None and job.status is status
