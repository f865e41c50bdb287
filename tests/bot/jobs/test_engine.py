"""Jobs end to end inside one process: real store, real web server, fake ModelsLab."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import time

import pytest
from aiohttp import web
from PIL import Image
from yarl import URL

from bot.jobs.engine import EnginePolicy
from bot.jobs.models import JobStatus
from bot.jobs.store import utc_day
from tests.support.jobs import (
    FAST,
    RunningEngine,
    make_client,
    new_job,
)

pytestmark = pytest.mark.asyncio


async def until(predicate, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def delivered_in_store(store, track_id: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while (await store.get(track_id)).status is not JobStatus.DELIVERED:
        assert time.monotonic() < deadline, "never marked delivered"
        await asyncio.sleep(0.02)


def webhook_of(fake, n: int = -1) -> str:
    return fake.submits[n].body["webhook"]


async def test_one_webhook_delivers_the_downloaded_images(fake, running, delivery):
    fake.send_webhooks = True
    async with running() as r:
        job = await r.engine.enqueue(new_job(fake.cdn_url, samples=2))
        await until(lambda: len(fake.submits) == 1)
        await until(lambda: fake.processing_jobs)
        await fake.complete(fake.submits[0].response.body["id"])
        await delivery.wait_for(1)
        await delivered_in_store(r.store, job.track_id)
        stored = await r.store.get(job.track_id)
    (item,) = delivery.delivered
    assert item.job.status is JobStatus.SUCCEEDED and item.job.track_id == job.track_id
    assert [o.filename for o in item.outputs] == [
        f"remix_{job.track_id[:8]}_1.png", f"remix_{job.track_id[:8]}_2.png"]
    for out in item.outputs:
        assert Image.open(io.BytesIO(out.data)).size == (64, 64)
    assert stored.status is JobStatus.DELIVERED
    assert fake.fetches == []  # the webhook came: no polling was needed
    assert fake.cdn_key_leaks() == []
    assert webhook_of(fake).startswith(r.base_url + f"/webhooks/modelslab/{job.track_id}/")


async def test_three_identical_webhooks_deliver_once(fake, running, delivery):
    fake.webhook_repeats = 3
    async with running() as r:
        await r.engine.enqueue(new_job(fake.cdn_url))
        await until(lambda: fake.processing_jobs)
        await fake.complete(fake.submits[0].response.body["id"])
        await delivery.wait_for(1)
        await asyncio.sleep(0.5)  # time for any second delivery to show
    assert fake.webhook_results == [200, 200, 200]
    assert len(delivery.delivered) == 1


async def test_without_a_webhook_the_poll_delivers(fake, running, delivery):
    fake.send_webhooks = False
    fake.eta = 0.1
    async with running() as r:
        job = await r.engine.enqueue(new_job(fake.cdn_url))
        await until(lambda: fake.processing_jobs)
        await fake.complete(fake.submits[0].response.body["id"])
        await delivery.wait_for(1)
        await delivered_in_store(r.store, job.track_id)
    assert len(fake.fetches) >= 1 and len(delivery.delivered) == 1


async def test_polling_mode_without_public_url(fake, running, delivery):
    fake.eta = 0.05
    fake.auto_complete_after = 0.2
    async with running(webhooks=False) as r:
        await r.engine.enqueue(new_job(fake.cdn_url, endpoint="enterprise"))
        await r.engine.enqueue(new_job(fake.cdn_url, endpoint="realtime", user=2))
        await r.engine.enqueue(new_job(fake.cdn_url, endpoint="inpaint", user=3))
        await delivery.wait_for(3)
    assert all("webhook" not in s.body for s in fake.submits)
    assert sorted(d.job.endpoint for d in delivery.delivered) == ["enterprise", "inpaint",
                                                                  "realtime"]
    assert all(len(d.outputs) == 1 for d in delivery.delivered)


async def test_webhook_and_poll_racing_deliver_once(fake, running, delivery):
    fake.eta = 0.0
    async with running() as r:
        await r.engine.enqueue(new_job(fake.cdn_url))
        await until(lambda: fake.processing_jobs)
        await asyncio.sleep(0.6)  # past eta + grace: polls are running
        await fake.complete(fake.submits[0].response.body["id"])
        await delivery.wait_for(1)
        await asyncio.sleep(0.5)
    assert len(delivery.delivered) == 1


async def test_api_error_at_submit_reaches_the_member_in_words(fake, running, delivery):
    fake.script("submit", 200, {"status": "error",
                                "message": "Unable to fetch image from provided URL"})
    async with running() as r:
        job = await r.engine.enqueue(new_job(fake.cdn_url))
        await delivery.wait_for(1)
        await delivered_in_store(r.store, job.track_id)
    (item,) = delivery.delivered
    assert item.job.status is JobStatus.FAILED and item.outputs == []
    assert "Unable to fetch image from provided URL" in item.job.error
    assert "not charged" in item.job.error


async def test_failed_generation_from_webhook_is_delivered_as_failure(fake, running, delivery):
    async with running() as r:
        await r.engine.enqueue(new_job(fake.cdn_url))
        await until(lambda: fake.processing_jobs)
        await fake.complete(fake.submits[0].response.body["id"], fail="GPU out of memory")
        await delivery.wait_for(1)
    assert delivery.delivered[0].job.status is JobStatus.FAILED
    assert "GPU out of memory" in delivery.delivered[0].job.error


async def test_outputs_that_404_first_are_retried_until_they_appear(fake, running, delivery):
    fake.output_404s = 3
    async with running() as r:
        await r.engine.enqueue(new_job(fake.cdn_url))
        await until(lambda: fake.processing_jobs)
        await fake.complete(fake.submits[0].response.body["id"])
        await delivery.wait_for(1)
    assert delivery.delivered[0].job.status is JobStatus.SUCCEEDED
    assert [r.response.status for r in fake.cdn_requests] == [404, 404, 404, 200]


async def test_outputs_that_never_appear_end_as_a_failure_in_words(fake, running, delivery):
    fake.output_404s = 10_000
    async with running() as r:
        await r.engine.enqueue(new_job(fake.cdn_url))
        await until(lambda: fake.processing_jobs)
        await fake.complete(fake.submits[0].response.body["id"])
        await delivery.wait_for(1, within=15)
    job = delivery.delivered[0].job
    assert job.status is JobStatus.FAILED and "could not be downloaded" in job.error


async def test_delivery_failures_are_retried(fake, running, delivery):
    delivery.fail_times = 2
    fake.mode = "success"
    async with running() as r:
        await r.engine.enqueue(new_job(fake.cdn_url))
        await delivery.wait_for(1)
    assert len(delivery.delivered) == 1


async def test_a_429_is_retried_after_retry_after_with_one_more_submit(fake, running, delivery):
    fake.script("submit", 429, {"status": "error", "retry_after": 1,
                                "message": "Rate limit exceeded. Maximum 5 queued requests "
                                           "allowed."})
    fake.mode = "success"
    async with running() as r:
        await r.engine.enqueue(new_job(fake.cdn_url))
        await delivery.wait_for(1)
    submits = [q for q in fake.requests if q.kind == "submit"]
    assert len(submits) == 2
    assert submits[0].response.status == 429 and submits[1].response.status == 200
    assert submits[1].time - submits[0].time >= 1.0
    assert delivery.delivered[0].job.status is JobStatus.SUCCEEDED


async def test_fair_and_within_the_limit(fake, running, delivery):
    """Limit 2 in flight; the fake answers 429 beyond 2 queued. Twenty jobs from three
    members all finish with no 429, and the member with one job is not served last."""
    fake.queue_limit = 2
    fake.eta = 0.05
    fake.auto_complete_after = 0.1
    async with running(policy=dataclasses.replace(FAST, max_concurrency=2)) as r:
        owners = [1] * 12 + [2] * 7 + [3]
        for owner in owners:
            await r.engine.enqueue(new_job(fake.cdn_url, user=owner, prompt=f"job of {owner}"))
        await delivery.wait_for(20, within=30)
    assert [q for q in fake.requests if q.response and q.response.status == 429] == []
    order = [s.body["prompt"] for s in fake.submits]
    assert len(order) == 20
    # Member 1's first jobs start before the others arrive; from then on turns alternate.
    assert order.index("job of 3") <= 4  # not after member 1's backlog of twelve
    assert order.index("job of 2") <= 4
    assert all(d.job.status is JobStatus.SUCCEEDED for d in delivery.delivered)


async def test_api_slots_stay_busy_while_work_waits(fake, running, delivery):
    fake.eta = 0.05
    fake.auto_complete_after = 0.1
    async with running() as r:
        for n in range(12):
            await r.engine.enqueue(new_job(fake.cdn_url, user=n % 4))
        await until(lambda: len(fake.submits) >= 5)
        in_flight_at_start = await r.store.in_flight()
        await delivery.wait_for(12, within=30)
    assert in_flight_at_start == 5


async def test_healthz_reports_database_and_queue(fake, running, http):
    fake.queue_limit = 0  # nothing gets in: jobs stay queued or waiting
    async with running(webhooks=False) as r:
        await r.engine.enqueue(new_job(fake.cdn_url))
        async with http.get(r.base_url + "/healthz") as resp:
            body = await resp.json()
            assert resp.status == 200
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["queue_depth"] + body["in_flight"] == 1


# --- forged webhooks --------------------------------------------------------------------

@pytest.fixture
async def evil_cdn(unused_tcp_port_factory):
    hits: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=b"not yours", content_type="image/png")

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    port = unused_tcp_port_factory()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", hits
    await runner.cleanup()


async def test_forged_webhooks_change_nothing_and_fetch_nothing(fake, running, delivery, http,
                                                                evil_cdn):
    evil_url, evil_hits = evil_cdn
    fake.send_webhooks = False
    async with running() as r:
        job = await r.engine.enqueue(new_job(fake.cdn_url))
        await until(lambda: fake.processing_jobs)
        real = webhook_of(fake)
        secret = real.rsplit("/", 1)[1]
        base = f"{r.base_url}/webhooks/modelslab"
        good = {"status": "success", "id": fake.submits[0].response.body["id"],
                "track_id": job.track_id, "output": [f"{evil_url}/steal.png"]}
        attempts = [
            (f"{base}/{job.track_id}/wrong-secret", good, 404),
            (f"{base}/{job.track_id}/", good, 404),
            (f"{base}/{job.track_id}", good, 404),
            (f"{base}/unknown-job/{secret}", good, 404),
            (f"{base}/{job.track_id}/{secret.upper()}", good, 404),
            (f"{base}/{job.track_id}/{secret}/../{secret}", good, 404),
            (f"{base}/{job.track_id}/%2e%2e/{secret}", good, 404),
            (f"{base}/{job.track_id}/{secret}%00", good, 404),
            (real, b"x" * (70 * 1024), 413),
            (real, b"{not json", 400),
            (real, b"[1, 2, 3]", 400),
            (real, {"status": "mystery"}, 400),
            (real, {**good, "track_id": "someone-else"}, 400),
            (real, {**good, "id": 999999}, 400),
            (real, good, 422),  # outputs on a host the job never heard of
            (real, {**good, "output": []}, 422),
        ]
        for url, body, expected in attempts:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            async with http.post(URL(url, encoded=True), data=data,
                                 headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == expected, (url, body if len(data) < 200 else len(data))
        await asyncio.sleep(0.3)
        after = await r.store.get(job.track_id)
    assert after.status is JobStatus.PROCESSING and after.outputs == ()
    assert delivery.delivered == []
    assert evil_hits == []
    assert fake.cdn_requests == []


async def test_a_genuine_webhook_still_works_after_forgeries(fake, running, delivery, http):
    fake.send_webhooks = False
    async with running() as r:
        job = await r.engine.enqueue(new_job(fake.cdn_url))
        await until(lambda: fake.processing_jobs)
        forged = webhook_of(fake).rsplit("/", 1)[0] + "/nope"
        async with http.post(forged, json={"status": "failed", "message": "x"}) as resp:
            assert resp.status == 404
        fake.send_webhooks = True
        await fake.complete(fake.submits[0].response.body["id"])
        await delivery.wait_for(1)
    assert delivery.delivered[0].job.track_id == job.track_id
    assert delivery.delivered[0].job.status is JobStatus.SUCCEEDED


async def test_restart_mid_processing_delivers_once(fake, running, delivery):
    """Stopped (not killed) with a job at ModelsLab; the webhook comes while it is down."""
    async with running() as r:
        job = await r.engine.enqueue(new_job(fake.cdn_url))
        await until(lambda: fake.processing_jobs)
    await fake.complete(fake.submits[0].response.body["id"])  # webhook to a closed port
    assert fake.webhook_results == [None]
    async with running() as r:
        await delivery.wait_for(1)
        await delivered_in_store(r.store, job.track_id)
    assert len(delivery.delivered) == 1 and len(fake.submits) == 1


async def test_unknown_submit_outcome_waits_for_the_webhook_and_never_resubmits(
        fake, running, delivery):
    fake.hang_next("submit", 5)  # the client gives up after 3 s: did ModelsLab get it?
    async with running() as r:
        await r.engine.enqueue(new_job(fake.cdn_url))
        await delivery.wait_for(1, within=15)
    submits = [q for q in fake.requests if q.kind == "submit"]
    assert len(submits) == 1
    job = delivery.delivered[0].job
    assert job.status is JobStatus.FAILED and "never confirmed" in job.error


async def test_an_unreachable_api_is_tried_again_then_reported(
        tmp_path, http, delivery, unused_tcp_port, unused_tcp_port_factory):
    """Connection refused: provably never sent, so submitting again is safe."""
    nobody = f"http://127.0.0.1:{unused_tcp_port_factory()}"
    client = make_client(http, nobody, "k", "e")
    async with RunningEngine(db_path=tmp_path / "db.sqlite3", client=client, delivery=delivery,
                             session=http, port=unused_tcp_port, webhooks=False) as r:
        job = await r.engine.enqueue(new_job("http://127.0.0.1:1"))
        await delivery.wait_for(1, within=15)
        stored = await r.store.get(job.track_id)
    assert stored.submit_attempts == FAST.max_submit_attempts
    assert "could not be reached" in delivery.delivered[0].job.error


async def test_waiting_members_hear_their_place_in_line(fake, running, delivery):
    fake.queue_limit = 0  # nothing gets in: every job keeps waiting
    fake.retry_after = 60
    policy = dataclasses.replace(FAST, status_interval=0.1)
    async with running(policy=policy, webhooks=False) as r:
        jobs = [await r.engine.enqueue(new_job(fake.cdn_url, user=n)) for n in range(3)]
        # The first job went to ModelsLab, was refused with a 429 and waits again: it keeps
        # its place, first in line.
        await until(lambda: {(t, p) for t, s, p in delivery.progress_seen if s == "queued"}
                    >= {(jobs[0].track_id, 1), (jobs[1].track_id, 2), (jobs[2].track_id, 3)})


async def test_a_result_that_can_never_be_posted_is_refunded_and_closed(fake, running,
                                                                        delivery):
    delivery.fail_times = 10_000  # Discord refuses everything, for good
    fake.mode = "success"
    policy = dataclasses.replace(FAST, max_delivery_attempts=3, give_up_after_attempts=6,
                                 sweep_interval=0.1)
    async with running(policy=policy) as r:
        job = await r.engine.enqueue(new_job(fake.cdn_url, samples=2))
        await delivered_in_store(r.store, job.track_id, within=10)
        final = await r.store.get(job.track_id)
        used = await r.store.images_used(1, 1, utc_day(job.created_at))
    assert delivery.delivered == []
    assert final.error and "could not be posted" in final.error
    assert final.delivery_attempts == 6
    assert used == 0  # refunded


async def test_a_day_long_retry_after_pauses_at_most_the_cap_and_queued_members_hear_it(
        fake, running, delivery):
    assert EnginePolicy().max_pause == 300.0  # the default: five minutes
    fake.script("submit", 429, {"status": "error", "retry_after": 86400,
                                "message": "Rate limit exceeded."})
    fake.mode = "success"
    policy = dataclasses.replace(FAST, max_pause=1.5, status_interval=0.1)
    async with running(policy=policy) as r:
        asked = time.time()
        job = await r.engine.enqueue(new_job(fake.cdn_url))
        await until(lambda: delivery.pauses_seen)
        await delivery.wait_for(1, within=15)
    (track_id, resumes) = delivery.pauses_seen[0]
    assert track_id == job.track_id and asked < resumes <= asked + 1.5 + 1.0
    submits = [q for q in fake.requests if q.kind == "submit"]
    assert [q.response.status for q in submits] == [429, 200]


async def test_submits_of_unknown_outcome_leave_the_slots_free(fake, running, delivery):
    """One slot; the first submit's answer is lost. The second job is sent anyway, and the
    first is still delivered by its webhook, never submitted again."""
    fake.lose_answer_next("submit")
    policy = dataclasses.replace(FAST, max_concurrency=1, unknown_outcome_wait=30.0)
    async with running(policy=policy) as r:
        first = await r.engine.enqueue(new_job(fake.cdn_url, user=1, prompt="first"))
        second = await r.engine.enqueue(new_job(fake.cdn_url, user=2, prompt="second"))
        await until(lambda: len(fake.submits) == 2)
        assert await r.store.awaiting_webhook() == 1 and await r.store.in_flight() == 1
        for job in list(fake.jobs.values()):
            await fake.complete(job.id)
        await delivery.wait_for(2, within=15)
    assert {d.job.track_id for d in delivery.delivered} == {first.track_id, second.track_id}
    assert all(d.job.status is JobStatus.SUCCEEDED for d in delivery.delivered)
    assert len(fake.submits) == 2
