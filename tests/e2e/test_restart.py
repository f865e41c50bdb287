"""The real bot process stopped, killed and started again: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from tests.e2e.conftest import ALICE, BOB, start_world
from tests.e2e.test_generate import eventually, ready_for, submits_with
from tests.e2e.test_remix import button

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def restart(world) -> None:
    sessions = len(world.discord.sessions)
    await world.bot.terminate()
    world.bot.start()
    await world.discord.wait_until_ready(timeout=30, after=sessions)


async def test_buttons_work_after_a_restart_on_results_days_old(tmp_path):
    world, stop = await start_world(tmp_path)
    try:
        channel = world.channel()
        await world.discord.slash(ALICE, channel, "img2img",
                                  {"image": world.image(), "prompt": "an old photo"})
        result = await world.discord.wait_for_message(channel, ready_for(ALICE, "an old photo"),
                                                      timeout=20)
        syncs = len(world.discord.command_syncs)
        await restart(world)
        assert len(world.discord.command_syncs) == syncs  # unchanged commands: no re-sync
        world.discord.advance(3 * 24 * 3600)  # three days later

        click = await world.discord.click(BOB, result, button(result, "Remix"))
        await click.response()
        assert click.modal is not None
        await world.discord.submit_modal(BOB, channel, click.modal["custom_id"],
                                         {"Prompt": "an old photo, restored"})
        await world.discord.wait_for_message(channel,
                                             ready_for(BOB, "an old photo, restored"),
                                             timeout=20)
        reroll = await world.discord.click(BOB, result, button(result, "Re-roll"))
        await reroll.response()
        await eventually(lambda: len(submits_with(world, "an old photo")) == 2)
        (_, again) = submits_with(world, "an old photo")
        await world.discord.wait_for_message(
            channel, lambda m: ready_for(BOB, "an old photo")(m) and "restored" not in
            m["content"], timeout=20)
        assert again.body["seed"] is None
    finally:
        await stop()


async def test_sigkill_while_processing_then_restart_delivers_exactly_once(tmp_path):
    world, stop = await start_world(tmp_path)
    try:
        world.modelslab.auto_complete_after = None
        channel = world.channel()
        await world.discord.slash(ALICE, channel, "img2img",
                                  {"image": world.image(), "prompt": "survive the crash",
                                   "samples": 2})
        db = sqlite3.connect(tmp_path / "bot.sqlite3")
        # Killed once the bot has recorded the job as processing (a kill before that leaves
        # a submit of unknown outcome, which waits for its webhook and is never resent).
        await eventually(lambda: db.execute(
            "SELECT COUNT(*) FROM jobs WHERE status = 'processing'").fetchone()[0] == 1)
        world.bot.kill()
        (job,) = world.modelslab.processing_jobs
        await world.modelslab.complete(job.id)  # its webhook finds no bot
        assert world.modelslab.webhook_results[-1] is None
        sessions = len(world.discord.sessions)
        world.bot.start()
        await world.discord.wait_until_ready(timeout=30, after=sessions)
        await world.discord.wait_for_message(channel, ready_for(ALICE, "survive the crash"),
                                             timeout=30)
        await asyncio.sleep(1.5)  # room for a duplicate to show, if there were one
        posted = [m for m in world.discord.messages(channel, include_ephemeral=False)
                  if ready_for(ALICE, "survive the crash")(m)]
        assert len(posted) == 1 and len(posted[0]["files"]) == 2
        assert len(submits_with(world, "survive the crash")) == 1  # never submitted twice
    finally:
        await stop()
