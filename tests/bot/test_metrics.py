"""GET /metrics against a running engine and the fake ModelsLab; logs that name their job."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.errors import UserFacingError
from bot.generation import GenerationRequest, GenerationService, Upload
from bot.jobs.models import JobStatus, Requester
from bot.logs import FORMAT, JobContextFilter, job_context
from bot.metrics import CONTENT_TYPE, Metrics
from bot.modelslab.catalogue import Operation
from bot.modelslab.payload import GenerationOptions
from bot.servers import Servers
from bot.settings import Settings
from bot.web import WebServer, create_metrics_app
from tests.fakes import png_bytes
from tests.support.jobs import (
    FAST,
    RecordingDelivery,
    RunningEngine,
    cdn_outputs,
    make_client,
    new_job,
)


@pytest.fixture
def running(tmp_path, fake, http, unused_tcp_port):
    def make(delivery, **kw) -> RunningEngine:
        metrics = Metrics()
        client = make_client(http, fake.base_url, fake.api_key, fake.enterprise_key)
        client.metrics = metrics
        return RunningEngine(db_path=tmp_path / "bot.sqlite3", client=client, delivery=delivery,
                             session=http, port=unused_tcp_port, metrics=metrics,
                             output_hosts=cdn_outputs(fake), **kw)
    return make


async def until(predicate, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def scrape(http, r: RunningEngine) -> dict[tuple[str, tuple], float]:
    """/metrics from its own listener, as the bot serves it."""
    server = WebServer(create_metrics_app(r.engine), "127.0.0.1", 0, name="metrics server")
    await server.start()
    try:
        async with http.get(f"http://127.0.0.1:{server.port}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == CONTENT_TYPE
            text = await resp.text()
    finally:
        await server.stop()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_metrics_count_jobs_requests_and_webhooks(fake, http, running):
    delivery = RecordingDelivery()
    one_at_a_time = dataclasses.replace(FAST, max_concurrency=1)
    async with running(delivery, policy=one_at_a_time) as r:
        empty = await scrape(http, r)
        assert value(empty, "remixer_queue_depth") == 0
        assert value(empty, "remixer_webhooks_total", result="accepted") == 0

        # 1: refused by ModelsLab at submit
        fake.script("submit", 200, {"status": "error", "message": "Invalid model_id"})
        rejected = await r.engine.enqueue(new_job(fake.cdn_url))
        await delivery.wait_for(1)

        # 2: succeeds through its webhook, which then comes again (a duplicate)
        good = await r.engine.enqueue(new_job(fake.cdn_url, user=2))
        await until(lambda: fake.processing_jobs)
        await fake.complete(fake.submits[0].response.body["id"])
        await delivery.wait_for(2)
        webhook = fake.submits[0].body["webhook"]
        async with http.post(webhook, json=fake.webhook_deliveries[0].body) as resp:
            assert resp.status == 200

        # webhooks that are refused: a wrong secret, and a malformed body on the right path
        async with http.post(webhook.rsplit("/", 1)[0] + "/not-the-secret", json={}) as resp:
            assert resp.status == 404
        async with http.post(webhook, data=b"{not json") as resp:
            assert resp.status == 400

        # 3: left processing at ModelsLab (polled), 4 and 5: waiting behind it
        fake.eta = 0.0
        await r.engine.enqueue(new_job(fake.cdn_url, user=3))
        await until(lambda: fake.fetches)
        for user in (4, 5):
            await r.engine.enqueue(new_job(fake.cdn_url, user=user))
        samples = await scrape(http, r)

        assert (await r.store.get(rejected.track_id)).status is JobStatus.DELIVERED
        assert (await r.store.get(good.track_id)).status is JobStatus.DELIVERED

    assert value(samples, "remixer_jobs", state="delivered") == 2
    assert value(samples, "remixer_jobs", state="processing") == 1
    assert value(samples, "remixer_jobs", state="queued") == 2
    assert value(samples, "remixer_jobs", state="failed") == 0
    assert value(samples, "remixer_queue_depth") == 2
    assert value(samples, "remixer_jobs_in_flight") == 1

    seconds = "remixer_modelslab_request_seconds_count"
    assert value(samples, seconds, kind="submit", outcome="rejected") == 1
    assert value(samples, seconds, kind="submit", outcome="ok") == 2
    assert value(samples, seconds, kind="submit", outcome="rate_limited") == 0
    assert value(samples, seconds, kind="fetch", outcome="ok") >= 1
    assert value(samples, "remixer_modelslab_request_seconds_sum",
                 kind="submit", outcome="ok") > 0

    assert value(samples, "remixer_webhooks_total", result="accepted") == 1
    assert value(samples, "remixer_webhooks_total", result="duplicate") == 1
    assert value(samples, "remixer_webhooks_total", result="refused") == 2
    assert fake.webhook_results == [200]


async def test_quota_refusals_and_failed_deliveries_are_counted(fake, http, running):
    settings = Settings(_env_file=None, discord_token="t", modelslab_api_key="k",
                        daily_image_quota=3)
    image = fake.cdn_put("in.png", png_bytes(512, 512))
    delivery = RecordingDelivery(fail_times=1)
    fake.mode = "success"  # the first job is done at once; its first delivery fails

    def ask(samples: int) -> GenerationRequest:
        return GenerationRequest(operation=Operation.IMG2IMG,
                                 options=GenerationOptions(prompt="a fox", samples=samples),
                                 image=Upload(image, "in.png"),
                                 requester=Requester(user_id=7, guild_id=1, channel_id=2))

    async def no_hosting(files):
        raise AssertionError("nothing needs hosting")

    async with running(delivery) as r:
        servers = Servers(r.store, settings)
        service = GenerationService(settings, r.engine, http, servers)
        await servers.update(1, 99, max_active_jobs=1)
        with pytest.raises(UserFacingError, match=r"used all|would make"):
            await service.start(ask(4), no_hosting)  # over the daily limit: refused up front
        await service.start(ask(1), no_hosting)
        await until(lambda: len(fake.submits) == 1)
        fake.mode = "processing"
        await delivery.wait_for(1)
        await service.start(ask(1), no_hosting)  # stays processing: an active job
        with pytest.raises(UserFacingError, match="waiting or running"):
            await service.start(ask(1), no_hosting)
        samples = await scrape(http, r)
    assert value(samples, "remixer_quota_refusals_total", reason="daily_limit") == 1
    assert value(samples, "remixer_quota_refusals_total", reason="active_jobs") == 1
    assert value(samples, "remixer_deliveries_total", outcome="failed") == 1


async def test_log_records_during_a_job_carry_its_track_id(fake, running, caplog):
    caplog.handler.addFilter(JobContextFilter())
    caplog.set_level(logging.INFO)
    delivery = RecordingDelivery(fail_times=1)  # the delivery step logs a warning
    async with running(delivery) as r:
        job = await r.engine.enqueue(new_job(fake.cdn_url))
        await until(lambda: fake.processing_jobs)
        await fake.complete(fake.submits[0].response.body["id"])
        await delivery.wait_for(1)
    secret = fake.submits[0].body["webhook"].rsplit("/", 1)[1]

    received = [r for r in caplog.records if "webhook success received" in r.getMessage()]
    failed = [r for r in caplog.records if "delivery attempt 1 failed" in r.getMessage()]
    assert len(received) == 1 and len(failed) == 1
    assert received[0].track_id == failed[0].track_id == job.track_id  # web route, engine
    assert failed[0].job == f"[job {job.track_id[:8]}] "
    started = [r for r in caplog.records if "web server listening" in r.getMessage()]
    assert started and started[0].track_id == "" and started[0].job == ""  # not a job's
    assert secret not in caplog.text

    line = logging.Formatter(FORMAT).format(failed[0])
    assert f"[job {job.track_id[:8]}] job {job.track_id}: delivery attempt 1 failed" in line


def test_a_webhook_url_in_a_message_is_logged_without_its_secret(caplog):
    caplog.handler.addFilter(JobContextFilter())
    log = logging.getLogger("bot.test")
    with caplog.at_level(logging.INFO), job_context("trk-123"):
        log.info("posting to https://bot.example.org/webhooks/modelslab/trk-123/s3cr3t-Value_x")
        log.info("args %s", "http://h/webhooks/modelslab/abc/0ther-secret?x=1")
    assert "s3cr3t" not in caplog.text and "0ther-secret" not in caplog.text
    assert "/webhooks/modelslab/trk-123/***" in caplog.text
    assert all(r.track_id == "trk-123" for r in caplog.records)


async def test_the_public_port_serves_no_metrics(fake, http, running):
    async with running(RecordingDelivery()) as r:
        async with http.get(r.base_url + "/metrics") as resp:
            assert resp.status == 404
        samples = await scrape(http, r)
    assert value(samples, "remixer_jobs_awaiting_webhook") == 0
    assert value(samples, "remixer_web_rate_limited_total", listener="public") == 0
