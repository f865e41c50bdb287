"""The real bot killed with SIGKILL at each stage of a job, and Discord failing under it.
Every job ends delivered exactly once, or failed in words and refunded; none is lost, and
none is submitted twice unless the first submit provably never reached ModelsLab."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from tests.e2e.conftest import ALICE, BOB, start_world
from tests.e2e.test_generate import eventually, submits_with

pytestmark = pytest.mark.asyncio(loop_scope="module")


def status_count(db: sqlite3.Connection, where: str) -> int:
    return db.execute(f"SELECT COUNT(*) FROM jobs WHERE {where}").fetchone()[0]


def results(world, channel: int, prompt: str) -> list[dict]:
    return [m for m in world.discord.messages(channel, include_ephemeral=False)
            if "your image is ready" in m["content"] and prompt in m["content"]]


async def restart(world) -> None:
    sessions = len(world.discord.sessions)
    world.bot.start()
    await world.discord.wait_until_ready(timeout=30, after=sessions)


async def settle(db: sqlite3.Connection, jobs: int = 1) -> None:
    """Until ``jobs`` jobs exist and every one is delivered."""
    await eventually(lambda: status_count(db, "1") >= jobs
                     and status_count(db, "status != 'delivered'") == 0, within=30)
    await asyncio.sleep(1.0)  # room for a duplicate to show, if there were one


async def test_killed_with_one_job_at_modelslab_and_one_queued(tmp_path):
    world, stop = await start_world(tmp_path, MODELSLAB_MAX_CONCURRENCY="1")
    try:
        world.modelslab.auto_complete_after = None
        channel = world.channel()
        db = sqlite3.connect(tmp_path / "bot.sqlite3")
        await world.discord.slash(ALICE, channel, "img2img", {"image": world.image(),
                                                              "prompt": "first in line"})
        await world.discord.slash(BOB, channel, "img2img", {"image": world.image(),
                                                            "prompt": "second in line"})
        await eventually(lambda: status_count(db, "status = 'processing'") == 1
                         and status_count(db, "status = 'queued'") == 1)
        world.bot.kill()
        (job,) = world.modelslab.processing_jobs
        await world.modelslab.complete(job.id)  # its webhook finds nobody
        world.modelslab.auto_complete_after = 0.3
        await restart(world)
        await settle(db, jobs=2)
        assert len(results(world, channel, "first in line")) == 1
        assert len(results(world, channel, "second in line")) == 1
        assert len(submits_with(world, "first in line")) == 1
        assert len(submits_with(world, "second in line")) == 1
    finally:
        await stop()


async def test_killed_with_the_submit_sent_but_unanswered(tmp_path):
    """ModelsLab got the job but the bot died before the answer: it is never sent again, and
    its webhook (which still carries the job's secret) delivers it."""
    world, stop = await start_world(tmp_path)
    try:
        world.modelslab.hang_next("submit", 3)
        channel = world.channel()
        db = sqlite3.connect(tmp_path / "bot.sqlite3")
        await world.discord.slash(ALICE, channel, "img2img", {"image": world.image(),
                                                              "prompt": "in flight"})
        await eventually(lambda: any(r.kind == "submit" for r in world.modelslab.requests)
                         and status_count(db, "status = 'submitted'") == 1)
        world.bot.kill()
        await restart(world)
        await eventually(lambda: results(world, channel, "in flight"), within=30)
        await settle(db)
        assert len(results(world, channel, "in flight")) == 1
        assert len([r for r in world.modelslab.requests if r.kind == "submit"]) == 1
    finally:
        await stop()


async def test_killed_after_success_before_delivery(tmp_path):
    world, stop = await start_world(tmp_path)
    try:
        channel = world.channel()
        db = sqlite3.connect(tmp_path / "bot.sqlite3")
        world.discord.fail_next("POST", r"^/webhooks/", 500, times=1000)
        world.discord.fail_next("POST", rf"^/channels/{channel}/messages$", 500, times=1000)
        await world.discord.slash(ALICE, channel, "img2img", {"image": world.image(),
                                                              "prompt": "stuck at the door"})
        await eventually(lambda: status_count(
            db, "status = 'succeeded' AND downloaded = 1") == 1)
        world.bot.kill()
        world.discord.clear_failures()
        await restart(world)
        await settle(db)
        assert len(results(world, channel, "stuck at the door")) == 1
        assert len(submits_with(world, "stuck at the door")) == 1
    finally:
        await stop()


async def test_killed_mid_post_is_not_posted_twice(tmp_path):
    """Discord posted the result, but the bot died before hearing so: after the restart the
    bot finds its message in the channel instead of posting it again."""
    world, stop = await start_world(tmp_path)
    try:
        channel = world.channel()
        db = sqlite3.connect(tmp_path / "bot.sqlite3")
        world.discord.hold_next("POST", r"^/webhooks/\d+/", 10)
        await world.discord.slash(ALICE, channel, "img2img", {"image": world.image(),
                                                              "prompt": "posted once"})
        await eventually(lambda: results(world, channel, "posted once"))
        world.bot.kill()
        assert status_count(db, "status = 'succeeded'") == 1  # not marked delivered yet
        await restart(world)
        await settle(db)
        assert len(results(world, channel, "posted once")) == 1
    finally:
        await stop()


async def test_discord_500_and_429_during_delivery(tmp_path):
    world, stop = await start_world(tmp_path)
    try:
        channel = world.channel()
        db = sqlite3.connect(tmp_path / "bot.sqlite3")
        world.discord.fail_next("POST", r"^/webhooks/", 500, times=1)
        world.discord.fail_next("POST", r"^/webhooks/", 429, times=1, retry_after=0.5)
        await world.discord.slash(ALICE, channel, "img2img", {"image": world.image(),
                                                              "prompt": "through the storm"})
        await settle(db)
        assert len(results(world, channel, "through the storm")) == 1
        statuses = [c.status for c in world.discord.rest_log
                    if c.method == "POST" and c.path.startswith("/webhooks/")]
        assert 500 in statuses and 429 in statuses
    finally:
        await stop()
