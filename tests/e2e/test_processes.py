"""Beyond one process: the real bot on PostgreSQL (``DATABASE_URL``), first as one process
running the same flows as on SQLite, then as three processes sharing one database and the
gateway's shards, against the fake Discord and the fake ModelsLab."""

from __future__ import annotations

import asyncio
import itertools
from urllib.parse import urlsplit

import aiohttp
import pytest
import pytest_asyncio

from tests.e2e.cluster import Cluster, start_cluster, until
from tests.e2e.cluster import guild_of_shard as cluster_guild
from tests.e2e.conftest import ALICE, BOB, start_world

# The flows members use, run again here on a bot whose store is PostgreSQL.
from tests.e2e.test_generate import (  # noqa: F401
    ready_for,
    submits_with,
    test_a_failed_generation_reaches_the_member_in_words,
    test_api_error_at_submit_reaches_the_member_in_words,
    test_img2img_on_each_endpoint_is_delivered,
    test_inpaint_converts_a_transparent_mask_and_is_delivered,
    test_quota_shows_todays_figures,
)
from tests.e2e.test_quotas import (  # noqa: F401
    test_a_failed_job_is_refunded,
    test_a_member_at_the_limit_is_refused_with_no_api_call,
    test_history_lists_recent_jobs_with_pages,
    test_member_override_and_server_limit_apply_to_the_next_command,
    test_one_member_cannot_fill_the_queue,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory, postgres_server):
    """One bot process whose store is PostgreSQL (no SQLite file is made)."""
    tmp = tmp_path_factory.mktemp("pgbot")
    world, stop = await start_world(tmp, DATABASE_URL=postgres_server.fresh_database())
    yield world
    await stop()
    assert not (tmp / "bot.sqlite3").exists()


# --- three processes, one database, three shards -------------------------------------------

SHARDS = 3
LEASE = 2.0  # JOB_LEASE_SECONDS: a dead process's job steps are taken over within 2 of these
LIMIT = 2  # MODELSLAB_MAX_CONCURRENCY, for all three processes together
MEMBERS = (ALICE, BOB, 1004, 1005)
_prompts = itertools.count(1)


def guild_of_shard(shard: int) -> int:
    return cluster_guild(shard, SHARDS)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster(tmp_path_factory, postgres_server):
    world = await start_cluster(
        tmp_path_factory.mktemp("cluster"), postgres_server.fresh_database(), SHARDS,
        members=MEMBERS, MODELSLAB_MAX_CONCURRENCY=str(LIMIT), JOB_LEASE_SECONDS=str(LEASE))
    yield world
    await world.stop()


def results(cluster: Cluster, channel: int, user: int, prompt: str) -> list[dict]:
    return [m for m in cluster.discord.messages(channel, include_ephemeral=False)
            if ready_for(user, prompt)(m)]


async def command(cluster: Cluster, shard: int, user: int = ALICE, samples: int = 1):
    """/img2img on a server of ``shard``; returns (channel, prompt)."""
    channel = cluster.channel(shard)
    prompt = f"cluster prompt {next(_prompts)}"
    ix = await cluster.discord.slash(user, channel, "img2img", {
        "image": cluster.image(), "prompt": prompt, "samples": samples})
    assert (await ix.response())["type"] == 5
    return channel, prompt


async def delivered_once(cluster: Cluster, jobs, within: float = 60.0) -> None:
    """Every (channel, user, prompt) posted, then (after room for a duplicate) once only,
    and sent to ModelsLab once only."""
    for channel, user, prompt in jobs:
        await until(lambda c=channel, u=user, p=prompt: results(cluster, c, u, p),
                    within=within)
    await asyncio.sleep(2 * LEASE)
    for channel, user, prompt in jobs:
        assert len(results(cluster, channel, user, prompt)) == 1, prompt
        assert len(submits_with(cluster, prompt)) == 1, prompt


def track_id_of(cluster: Cluster, prompt: str) -> str:
    (submit,) = submits_with(cluster, prompt)
    return submit.body["track_id"]


async def test_commands_on_every_shard_with_webhooks_to_another_process(cluster):
    for shard in range(SHARDS):  # each server's events go to its shard's process only
        session = cluster.discord.session_for_guild(guild_of_shard(shard))
        assert session.identify["shard"] == [shard, SHARDS]
        assert not any(cluster.discord.serves(s, guild_of_shard(shard))
                       for s in cluster.discord.sessions
                       if s is not session and s.ready and not s.closed)
    jobs = []
    for shard in range(SHARDS):
        channel, prompt = await command(cluster, shard)
        jobs.append((channel, ALICE, prompt))
    await delivered_once(cluster, jobs)
    for _, _, prompt in jobs:
        (submit,) = submits_with(cluster, prompt)
        receiver = urlsplit(submit.body["webhook"]).port
        submitter = cluster.ports[(cluster.ports.index(receiver) - 1) % SHARDS]
        assert receiver != submitter  # delivered although the webhook went elsewhere
    assert all(status == 200 for status in cluster.modelslab.webhook_results)


async def test_the_api_limit_holds_across_all_processes(cluster):
    cluster.modelslab.auto_complete_after = 1.0
    try:
        jobs = []
        for shard in range(SHARDS):
            for user in MEMBERS[:3]:
                channel, prompt = await command(cluster, shard, user)
                jobs.append((channel, user, prompt))
        await delivered_once(cluster, jobs, within=90)
    finally:
        cluster.modelslab.auto_complete_after = 0.3
    assert cluster.modelslab.peak_processing == LIMIT  # used to the full, never beyond


@pytest.mark.parametrize("stage", ["submit", "processing", "download", "delivery"])
async def test_a_process_killed_in_each_stage_is_taken_over(cluster, stage):
    """SIGKILL the process working on the job (for processing: the one its webhook goes to);
    the others finish it: posted once, sent to ModelsLab once, charged once."""
    fake, discord_fake = cluster.modelslab, cluster.discord
    killed = None
    try:
        if stage == "submit":
            fake.hang_next("submit", 3.0)
            channel, prompt = await command(cluster, 0)
            track_id = await until(lambda: next(
                (r.body.get("track_id") for r in fake.requests if r.kind == "submit"
                 and r.body and r.body.get("prompt") == prompt), None))
            killed = await cluster.lease_holder(track_id, "submit")
            killed.kill()
        else:
            fake.auto_complete_after = None
            channel, prompt = await command(cluster, 1)
            await until(lambda: submits_with(cluster, prompt))
            track_id = track_id_of(cluster, prompt)
            await until(_status_is(cluster, track_id, "processing"))
            (submit,) = submits_with(cluster, prompt)
            job_id = submit.job_id
            if stage == "processing":  # the webhook finds no one; the others poll
                killed = cluster.bot_serving(urlsplit(submit.body["webhook"]).port)
                killed.kill()
                await fake.complete(job_id)
                assert fake.webhook_results[-1] is None
            else:
                if stage == "download":
                    fake.hang_next("cdn", 3.0)
                else:
                    discord_fake.hold_next("POST", r"/webhooks/\d+/[^/]+$", 3.0)
                    discord_fake.hold_next("POST", r"/channels/\d+/messages$", 3.0)
                await fake.complete(job_id)
                killed = await cluster.lease_holder(track_id, "deliver")
                if stage == "delivery":
                    await until(_delivering(cluster, track_id))
                killed.kill()
        await delivered_once(cluster, [(channel, ALICE, prompt)], within=60)
        rows = await cluster.sql("SELECT kind, images FROM quota_ledger WHERE track_id = $1 "
                                 "ORDER BY id", track_id)
        assert [tuple(r) for r in rows] == [("reserve", 1)]  # charged once, not refunded
        assert await cluster.status(track_id) == "delivered"
    finally:
        fake.auto_complete_after = 0.3
        discord_fake.clear_failures()
        if killed is not None:
            await cluster.start(cluster.bots.index(killed))


def _status_is(cluster: Cluster, track_id: str, status: str):
    async def probe():
        return await cluster.status(track_id) == status
    return probe


def _delivering(cluster: Cluster, track_id: str):
    async def probe():
        rows = await cluster.sql("SELECT delivering_since FROM jobs WHERE track_id = $1",
                                 track_id)
        return bool(rows) and rows[0][0] is not None
    return probe


async def test_a_rolling_restart_loses_no_command_and_repeats_none(cluster):
    cluster.modelslab.auto_complete_after = 1.0
    jobs = []
    try:
        for index in range(SHARDS):
            for shard in range(SHARDS):  # work in flight on every shard, then a restart
                if shard != index:
                    channel, prompt = await command(cluster, shard)
                    jobs.append((channel, ALICE, prompt))
            await cluster.bots[index].terminate()
            await cluster.start(index)
            channel, prompt = await command(cluster, index)  # its shard answers again
            jobs.append((channel, ALICE, prompt))
        await delivered_once(cluster, jobs, within=90)
    finally:
        cluster.modelslab.auto_complete_after = 0.3


async def test_each_process_reports_its_shards_and_database(cluster):
    async with aiohttp.ClientSession() as http:
        for index, bot in enumerate(cluster.bots):
            async with http.get(f"http://127.0.0.1:{bot.port}/healthz") as response:
                health = await response.json()
            assert health["status"] == "ok" and health["database_backend"] == "postgresql"
            assert health["shards"] == [index] and health["shard_count"] == SHARDS
            assert health["process"].split(":")[1] == str(bot.proc.pid)
            metrics_port = bot.env["METRICS_PORT"]
            async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                text = await response.text()
            assert (f'remixer_process_info{{database="postgresql",process="{health["process"]}"'
                    f',shards="{index}"}} 1.0') in text


async def test_processes_starting_together_migrate_and_sync_commands_once(
        tmp_path, postgres_server):
    cluster = await start_cluster(tmp_path, postgres_server.fresh_database(), SHARDS,
                                  together=True)
    try:
        await asyncio.sleep(2 * LEASE)  # room for a late second sync
        assert [kind for kind, _, _ in cluster.discord.command_syncs] == ["global"]
        rows = await cluster.sql("SELECT version FROM schema_version")
        assert len(rows) == 1
        channel = cluster.channel(2)
        ix = await cluster.discord.slash(ALICE, channel, "img2img", {
            "image": cluster.image(), "prompt": "started together"})
        await ix.response()
        await until(lambda: results(cluster, channel, ALICE, "started together"))
    finally:
        await cluster.stop()
