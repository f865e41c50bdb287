"""Leases on job steps, on a real PostgreSQL: one holder at a time, taken over only when
they run out, and the claim under the global limit with its lease in one step."""

from __future__ import annotations

import asyncio

import pytest

from bot.jobs.leases import Leases
from bot.jobs.models import JobStatus
from bot.jobs.store import JobStore
from tests.bot.jobs.test_store import new_job


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def shared(postgres_server):
    url = postgres_server.fresh_database()
    first, second = await JobStore.open(url), await JobStore.open(url)
    yield first, second
    await first.close()
    await second.close()


async def test_one_holder_at_a_time_until_the_lease_runs_out(shared):
    clock = Clock()
    a, b = (Leases(store, period=10, clock=clock, owner=name)
            for store, name in zip(shared, ("a", "b"), strict=True))
    await a.start(renew=False)  # the test's clock decides who is alive
    await b.start(renew=False)
    try:
        job = await shared[0].create(new_job())
        assert await a.acquire(job.track_id, "deliver")
        assert not await b.acquire(job.track_id, "deliver")
        assert await a.acquire(job.track_id, "deliver")  # its holder may take it again
        assert await b.held_elsewhere() == {job.track_id}
        await shared[0].claim_next(now=1.0)
        await shared[0].mark_failed(job.track_id, error="x", now=2.0)
        assert await b.orphans() == []  # a is alive: nothing to take over
        clock.now += 11  # a stopped renewing (it died)
        assert [j.track_id for j in await b.orphans()] == [job.track_id]
        assert await b.acquire(job.track_id, "deliver")
        assert not await a.acquire(job.track_id, "deliver")
        await b.release(job.track_id)
        assert await a.acquire(job.track_id, "deliver")  # given back: free at once
    finally:
        await a.stop()
        await b.stop()


async def test_claims_from_two_stores_keep_the_limit_and_take_their_lease(shared):
    leases = [Leases(store, period=10, owner=f"p{n}") for n, store in enumerate(shared)]
    for lease in leases:
        await lease.start()
    try:
        for user in range(10):
            await shared[0].create(new_job(user=user))
        claimed = await asyncio.gather(*(leases[n % 2].claim(now=5.0, limit=3)
                                         for n in range(10)))
        won = [c for c in claimed if c is not None]
        assert len(won) == 3 and await shared[1].in_flight() == 3
        assert await shared[1].count(JobStatus.QUEUED) == 7
        owners = await shared[0].read("SELECT track_id, owner, step FROM job_leases")
        assert {(r["track_id"], r["step"]) for r in owners} == {
            (job.track_id, "submit") for job, _ in won}
    finally:
        for lease in leases:
            await lease.stop()
