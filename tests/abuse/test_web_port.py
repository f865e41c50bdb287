"""The public web port, hammered and probed, against the real bot and the local fakes: it
shows nothing that is not meant for the internet, and a flood of health checks delays no
member's command and no ModelsLab webhook."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import pytest

from tests.e2e.conftest import ALICE, start_world
from tests.e2e.test_generate import eventually, ready_for, submits_with

pytestmark = pytest.mark.asyncio(loop_scope="function")

CLIENTS = 64
MAX_REQUESTS_PER_CLIENT = 400  # each client stops after this many, or when the test is done


def show_log(world) -> str:
    return "---- bot log (tail) ----\n" + world.bot.log()[-6000:]


async def test_metrics_are_only_on_their_own_loopback_listener(tmp_path):
    # METRICS_HOST left unset: the default must keep /metrics off every public interface.
    world, stop = await start_world(tmp_path, METRICS_HOST="")
    try:
        public = f"http://127.0.0.1:{world.bot.port}"
        private = f"http://127.0.0.1:{world.bot.env['METRICS_PORT']}"
        async with aiohttp.ClientSession() as http:
            async with http.get(public + "/metrics") as resp:
                assert resp.status == 404, show_log(world)
                assert "remixer_" not in await resp.text()
            async with http.get(public + "/healthz") as resp:
                assert resp.status == 200
            async with http.get(private + "/metrics") as resp:
                assert resp.status == 200, show_log(world)
                text = await resp.text()
            assert "remixer_jobs_in_flight" in text and "remixer_queue_depth" in text
            async with http.get(private + "/healthz") as resp:
                assert resp.status == 404  # the private listener serves metrics only
        listening = f"metrics server listening on 127.0.0.1:{world.bot.env['METRICS_PORT']}"
        assert listening in world.bot.log(), show_log(world)
    finally:
        await stop()


async def test_a_healthz_flood_delays_no_command_and_no_webhook(tmp_path):
    world, stop = await start_world(tmp_path)
    done = asyncio.Event()
    statuses: Counter[int] = Counter()
    url = f"http://127.0.0.1:{world.bot.port}/healthz"

    async def hammer(http: aiohttp.ClientSession) -> None:
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if done.is_set():
                return
            try:
                async with http.get(url) as resp:
                    await resp.read()
                    statuses[resp.status] += 1
            except aiohttp.ClientError:
                statuses[0] += 1

    try:
        channel = world.channel()
        prompt = "a lighthouse in a storm of requests"
        connector = aiohttp.TCPConnector(limit=CLIENTS)
        async with aiohttp.ClientSession(connector=connector) as http:
            clients = [asyncio.create_task(hammer(http)) for _ in range(CLIENTS)]
            try:
                await eventually(lambda: sum(statuses.values()) >= CLIENTS, within=60)
                ix = await world.discord.slash(ALICE, channel, "img2img",
                                               {"image": world.image(), "prompt": prompt})
                answer = await ix.response(timeout=30)
                message = await world.discord.wait_for_message(
                    channel, ready_for(ALICE, prompt), timeout=90)
            finally:
                done.set()
                await asyncio.gather(*clients)

        print(f"healthz flood, {CLIENTS} clients: answers by status {dict(statuses)}")
        assert answer["type"] == 5, show_log(world)  # acknowledged
        assert len(message["files"]) == 1
        (submit,) = submits_with(world, prompt)
        job = world.modelslab.job(submit.response.body["id"])
        # The result came in by its webhook (answered 200), not by a poll.
        hooks = [d.status for d in world.modelslab.webhook_deliveries
                 if d.body.get("track_id") == submit.body["track_id"]]
        assert hooks == [200], hooks
        assert not [f for f in world.modelslab.fetches if f.job_id == job.id]
        # The flood was refused in part (429), and never broke the server.
        assert statuses[429] > 0, statuses
        assert statuses[200] > 0, statuses
        assert set(statuses) <= {200, 429}, statuses
    finally:
        await stop()


async def test_unknown_paths_are_rate_limited_but_webhooks_are_not(tmp_path):
    """Scanners probing paths get 429s too; ModelsLab's authenticated webhooks never do."""
    world, stop = await start_world(tmp_path)
    try:
        base = f"http://127.0.0.1:{world.bot.port}"
        async with aiohttp.ClientSession() as http:
            seen: Counter[int] = Counter()
            for n in range(300):
                async with http.get(f"{base}/wp-admin/{n}.php") as resp:
                    seen[resp.status] += 1
            assert seen[429] > 0 and set(seen) <= {404, 429}, seen

            channel = world.channel()
            prompt = "a quiet harbour"
            await world.discord.slash(ALICE, channel, "img2img",
                                      {"image": world.image(), "prompt": prompt})
            await world.discord.wait_for_message(channel, ready_for(ALICE, prompt), timeout=60)
            (submit,) = submits_with(world, prompt)
            hook = submit.body["webhook"]
            body = world.modelslab.webhook_body(world.modelslab.job(submit.response.body["id"]))
            repeats = Counter()
            for _ in range(60):  # far beyond any per-client budget: all still answered
                async with http.post(hook, json=body) as resp:
                    repeats[resp.status] += 1
            assert repeats == Counter({200: 60}), repeats
    finally:
        await stop()
