"""The job pipeline survives server changes: the NSFW policy is honoured at ModelsLab, and a
server that removes the bot gets nothing more (its members lose nothing they paid for).

The real bot against the local fake Discord and fake ModelsLab."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from tests.e2e.conftest import (
    ALICE,
    BOB,
    GUILD,
    start_world,
)
from tests.e2e.test_generate import eventually, submits_with

pytestmark = pytest.mark.asyncio(loop_scope="module")


def checker_on(submit) -> bool:
    return submit.body.get("safety_checker") in ("yes", True)


async def test_the_spoiler_policy_keeps_the_safety_checker_on(world):
    config = await world.discord.slash(ALICE, world.channel(), "config nsfw",
                                       {"policy": "spoiler"})
    await config.wait_original(lambda m: "spoiler" in m["content"], timeout=15)
    channel = world.channel(nsfw=True)
    await world.discord.slash(ALICE, channel, "img2img",
                              {"image": world.image(), "prompt": "spoiled in the dark"})
    (submit,) = await eventually(lambda: submits_with(world, "spoiled in the dark"))
    assert checker_on(submit)

    config = await world.discord.slash(ALICE, world.channel(), "config nsfw", {"policy": "allow"})
    await config.wait_original(lambda m: "allow" in m["content"], timeout=15)
    await world.discord.slash(ALICE, channel, "img2img",
                              {"image": world.image(), "prompt": "allowed in the dark"})
    (submit,) = await eventually(lambda: submits_with(world, "allowed in the dark"))
    assert not checker_on(submit)  # "allow" in an NSFW channel: as the admin chose


def jobs(db: sqlite3.Connection) -> dict[str, tuple]:
    rows = db.execute("SELECT options, status, error, result_message_id FROM jobs").fetchall()
    found = {}
    for options, status, error, message_id in rows:
        for prompt in ("at modelslab", "waiting in line"):
            if prompt in options:
                found[prompt] = (status, error, message_id)
    return found


def refunds(db: sqlite3.Connection) -> int:
    return db.execute("SELECT COUNT(*) FROM quota_ledger WHERE kind = 'refund'").fetchone()[0]


async def test_removed_from_a_server_its_jobs_stop(tmp_path):
    world, stop = await start_world(tmp_path, MODELSLAB_MAX_CONCURRENCY="1")
    try:
        world.modelslab.auto_complete_after = None
        channel = world.channel()
        db = sqlite3.connect(tmp_path / "bot.sqlite3")
        await world.discord.slash(ALICE, channel, "img2img",
                                  {"image": world.image(), "prompt": "at modelslab"})
        await eventually(lambda: len(world.modelslab.processing_jobs) == 1)
        await world.discord.slash(BOB, channel, "img2img",
                                  {"image": world.image(), "prompt": "waiting in line"})
        await eventually(lambda: jobs(db).get("waiting in line", ("",))[0] == "queued")

        world.discord.remove_guild(GUILD)
        # the queued job: cancelled and refunded at once, never sent
        await eventually(lambda: jobs(db)["waiting in line"][0] == "delivered", within=15)
        _, error, message_id = jobs(db)["waiting in line"]
        assert "removed" in error and message_id is None
        assert refunds(db) == 1
        # the job at ModelsLab finishes there; its result goes nowhere
        (job,) = world.modelslab.processing_jobs
        await world.modelslab.complete(job.id)
        await eventually(lambda: jobs(db)["at modelslab"][0] == "delivered", within=30)
        await asyncio.sleep(1.5)
        assert submits_with(world, "waiting in line") == []
        assert world.discord.messages(channel, include_ephemeral=False) == []
        assert world.discord.direct_messages == {}
        assert "no longer in server" in world.bot.log()
    finally:
        await stop()


async def test_removed_while_offline_its_jobs_stop_at_the_next_start(tmp_path):
    world, stop = await start_world(tmp_path, MODELSLAB_MAX_CONCURRENCY="1")
    try:
        world.modelslab.auto_complete_after = None
        channel = world.channel()
        db = sqlite3.connect(tmp_path / "bot.sqlite3")
        await world.discord.slash(ALICE, channel, "img2img",
                                  {"image": world.image(), "prompt": "at modelslab"})
        await eventually(lambda: len(world.modelslab.processing_jobs) == 1)
        await world.discord.slash(BOB, channel, "img2img",
                                  {"image": world.image(), "prompt": "waiting in line"})
        await eventually(lambda: jobs(db).get("waiting in line", ("",))[0] == "queued")
        world.bot.kill()
        world.discord.remove_guild(GUILD)
        sessions = len(world.discord.sessions)
        world.bot.start()
        await world.discord.wait_until_ready(timeout=30, after=sessions)
        await eventually(lambda: jobs(db)["waiting in line"][0] == "delivered", within=30)
        (job,) = world.modelslab.processing_jobs
        await world.modelslab.complete(job.id)
        await eventually(lambda: jobs(db)["at modelslab"][0] == "delivered", within=30)
        await asyncio.sleep(1.5)
        assert submits_with(world, "waiting in line") == []
        assert refunds(db) == 1
        assert world.discord.messages(channel, include_ephemeral=False) == []
        assert world.discord.direct_messages == {}
    finally:
        await stop()
