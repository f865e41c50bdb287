"""The job engine under faults: a flaky ModelsLab and a database held by another process.
Every job ends delivered exactly once, or failed in words and refunded; none is submitted
twice unless the first submit provably never reached the API."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from bot.jobs.models import JobStatus
from bot.jobs.store import utc_day
from tests.bot.jobs.test_engine import delivered_in_store, until
from tests.support.jobs import new_job

pytestmark = pytest.mark.asyncio


def submits(fake) -> list:
    return [q for q in fake.requests if q.kind == "submit"]


HTML_PAGE = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


@pytest.mark.parametrize(("status", "body", "content_type"), [
    (500, HTML_PAGE, "text/html"),
    (502, HTML_PAGE, "text/html"),
    (503, {"status": "error", "message": "Server busy"}, "application/json"),
    (200, "{'status': 'success', 'output': [", "application/json"),
    (200, "", "application/json"),
])
async def test_polling_through_a_flaky_fetch_still_delivers_once(fake, running, delivery,
                                                                  status, body, content_type):
    fake.send_webhooks = False
    fake.eta = 0.05
    fake.script("fetch", status, body, content_type=content_type, times=2)
    async with running(webhooks=False) as r:
        job = await r.engine.enqueue(new_job(fake.cdn_url))
        await until(lambda: fake.processing_jobs)
        await fake.complete(fake.submits[0].response.body["id"])
        await delivery.wait_for(1, within=15)
        await delivered_in_store(r.store, job.track_id)
        await asyncio.sleep(0.3)
    assert len(delivery.delivered) == 1
    assert delivery.delivered[0].job.status is JobStatus.SUCCEEDED
    assert len(submits(fake)) == 1
    assert len(fake.fetches) >= 3  # the two bad answers, then the good one


async def test_a_fetch_that_times_out_is_tried_again(fake, running, delivery):
    fake.send_webhooks = False
    fake.eta = 0.05
    fake.hang_next("fetch", 5)  # longer than the client's 3 s fetch timeout
    async with running(webhooks=False) as r:
        await r.engine.enqueue(new_job(fake.cdn_url))
        await until(lambda: fake.processing_jobs)
        await fake.complete(fake.submits[0].response.body["id"])
        await delivery.wait_for(1, within=20)
    assert len(delivery.delivered) == 1 and len(submits(fake)) == 1


@pytest.mark.parametrize(("status", "body", "content_type"), [
    (500, HTML_PAGE, "text/html"),
    (200, "not json at all", "text/plain"),
    (504, "", "text/plain"),
])
async def test_an_unreadable_submit_answer_is_never_resent_and_is_refunded(
        fake, running, delivery, status, body, content_type):
    """ModelsLab may have queued the job: sending it again could charge twice. Without its
    webhook, the job ends as failed, in words, and its images are refunded."""
    fake.script("submit", status, body, content_type=content_type)
    async with running() as r:
        job = await r.engine.enqueue(new_job(fake.cdn_url, samples=2))
        await delivery.wait_for(1, within=15)
        await delivered_in_store(r.store, job.track_id)
        used = await r.store.images_used(1, 1, utc_day(job.created_at))
    assert len(submits(fake)) == 1
    failed = delivery.delivered[0].job
    assert failed.status is JobStatus.FAILED and "not charged" in failed.error
    assert used == 0


async def test_an_unreadable_submit_answer_then_its_webhook_delivers(fake, running, delivery):
    """The submit's answer was lost in transit, but ModelsLab had the job: its webhook, still
    carrying the job's secret, delivers it. Still exactly one submit."""
    fake.send_webhooks = True
    fake.transform_next("submit", lambda body: "<html>lost in transit</html>")
    async with running() as r:
        job = await r.engine.enqueue(new_job(fake.cdn_url))
        await until(lambda: fake.processing_jobs)
        await asyncio.sleep(0.2)
        assert (await r.store.get(job.track_id)).status is JobStatus.SUBMITTED
        await fake.complete(fake.processing_jobs[0].id)
        await delivery.wait_for(1, within=15)
    assert len(submits(fake)) == 1
    assert delivery.delivered[0].job.status is JobStatus.SUCCEEDED
    # the webhook's links vouched for nothing: the outputs came from the API's fetch answer
    assert fake.fetches and fake.fetches[0].time < fake.cdn_requests[0].time


async def test_the_database_held_by_another_process_makes_writes_wait(fake, running, delivery,
                                                                      tmp_path):
    fake.eta = 0.05
    fake.auto_complete_after = 0.2
    async with running() as r:
        first = await r.engine.enqueue(new_job(fake.cdn_url))
        await until(lambda: fake.processing_jobs)
        # Another process (a backup tool, an admin's sqlite3 shell) takes the write lock.
        other = sqlite3.connect(tmp_path / "bot.sqlite3", isolation_level=None, timeout=10)
        other.execute("BEGIN EXCLUSIVE")
        held_at = time.monotonic()
        second = asyncio.create_task(r.engine.enqueue(new_job(fake.cdn_url, user=2)))
        await asyncio.sleep(2.0)
        assert not second.done()  # waiting, not failing
        other.execute("COMMIT")
        other.close()
        await asyncio.wait_for(second, 15)
        await delivery.wait_for(2, within=20)
        await delivered_in_store(r.store, first.track_id)
    assert time.monotonic() - held_at >= 2.0
    assert sorted(d.job.requester.user_id for d in delivery.delivered) == [1, 2]
    assert len(submits(fake)) == 2
