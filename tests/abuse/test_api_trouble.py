"""ModelsLab in trouble, against the real bot and the local fakes: a brownout that loses the
answers to submits, a 429 asking for a day's pause, and a backlog of images that cannot be
delivered. The pipeline keeps moving, members are told what is happening, and the database
file shrinks back once the backlog is gone."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import time

import pytest

from tests.e2e.conftest import ALICE, BOB, GUILD, MOD, start_world
from tests.e2e.test_generate import eventually, ready_for, submits_with

pytestmark = pytest.mark.asyncio(loop_scope="function")

CAROL = 1004


def show_log(world) -> str:
    return "---- bot log (tail) ----\n" + world.bot.log()[-6000:]


def fake_job_for(world, prompt: str):
    (job,) = [j for j in world.modelslab.jobs.values() if j.body.get("prompt") == prompt]
    return job


def results(world, channel: int, prompt: str) -> list[dict]:
    return [m for m in world.discord.messages(channel, include_ephemeral=False)
            if "your image is ready" in m["content"] and prompt in m["content"]]


async def test_a_brownout_does_not_freeze_the_slots(tmp_path):
    """Two slots; the first two submits reach ModelsLab but their answers are lost (a gateway
    timeout). Those two wait for their webhooks without holding the slots, so the jobs queued
    behind them are sent as soon as ModelsLab answers again, not 15 minutes later. Nothing is
    submitted twice, and the lost ones are still delivered when their webhooks come."""
    world, stop = await start_world(tmp_path, MODELSLAB_MAX_CONCURRENCY="2")
    try:
        fake = world.modelslab
        fake.auto_complete_after = None  # ModelsLab is slow: nothing finishes on its own
        fake.lose_answer_next("submit", times=2)
        world.discord.add_member(GUILD, CAROL, "carol")
        channel = world.channel()
        members = (ALICE, BOB, MOD, CAROL)
        prompts = [f"brownout job {n}" for n in range(4)]
        for member, prompt in zip(members, prompts, strict=True):
            ix = await world.discord.slash(member, channel, "img2img",
                                           {"image": world.image(), "prompt": prompt})
            await ix.response(timeout=30)
            if prompt == prompts[0]:
                await eventually(lambda: len(fake.submits) >= 1)
            if prompt == prompts[1]:
                await eventually(lambda: len(fake.submits) >= 2)
        lost = [r for r in fake.requests if r.kind == "submit" and r.answer_lost]
        assert {r.body["prompt"] for r in lost} == set(prompts[:2]), show_log(world)

        # The API answers again: the jobs behind the brownout go out at once.
        await eventually(lambda: submits_with(world, prompts[2])
                         and submits_with(world, prompts[3]), within=60)
        for prompt in prompts[2:]:
            await fake.complete(fake_job_for(world, prompt).id)
        for member, prompt in zip(members[2:], prompts[2:], strict=True):
            await world.discord.wait_for_message(channel, ready_for(member, prompt),
                                                 timeout=60)

        # The lost ones were made at ModelsLab all along; their webhooks still count.
        for prompt in prompts[:2]:
            await fake.complete(fake_job_for(world, prompt).id)
        for member, prompt in zip(members[:2], prompts[:2], strict=True):
            await world.discord.wait_for_message(channel, ready_for(member, prompt),
                                                 timeout=60)
        await asyncio.sleep(1.0)  # room for a duplicate to show
        for prompt in prompts:
            assert len(submits_with(world, prompt)) == 1, prompt  # never sent twice
            assert len(results(world, channel, prompt)) == 1, prompt  # delivered once
    finally:
        await stop()


async def test_a_day_long_retry_after_pauses_briefly_and_members_are_told(tmp_path):
    """ModelsLab answers 429 asking for a pause of a day. The bot pauses at most
    MODELSLAB_MAX_PAUSE (here 20 s; 5 minutes by default), the queued member's status says
    so and until when, and the job goes out once the pause is over."""
    world, stop = await start_world(tmp_path, MODELSLAB_MAX_PAUSE="20")
    try:
        fake = world.modelslab
        fake.script("submit", 429, {"status": "error", "message": "Rate limit exceeded",
                                    "retry_after": 86400})
        channel = world.channel()
        prompt = "a patient heron"
        asked = time.time()
        ix = await world.discord.slash(ALICE, channel, "img2img",
                                       {"image": world.image(), "prompt": prompt})
        status = await ix.wait_original(lambda m: "asked us to pause" in m["content"],
                                        timeout=40)
        assert "ModelsLab asked us to pause; sending resumes <t:" in status["content"]
        (resumes,) = re.findall(r"<t:(\d+):R>", status["content"])
        assert asked < int(resumes) <= asked + 20 + 10, show_log(world)  # not a day

        await world.discord.wait_for_message(channel, ready_for(ALICE, prompt), timeout=90)
        submits = [r for r in fake.requests
                   if r.kind == "submit" and r.body.get("prompt") == prompt]
        assert [r.response.status for r in submits] == [429, 200]
    finally:
        await stop()


def database_bytes(path) -> int:
    return sum(os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.exists(p))


def page_count(path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA page_count").fetchone()[0]
    finally:
        db.close()


async def test_the_database_shrinks_back_after_a_backlog_of_undeliverable_images(tmp_path):
    """Discord refuses every post while large results pile up in the database; once they
    are delivered and purged, the file gives the space back."""
    world, stop = await start_world(tmp_path)
    path = tmp_path / "bot.sqlite3"
    try:
        fake = world.modelslab
        fake.image_noise = True  # images that do not compress: ~0.75 MiB each
        fake.image_size = 512
        channel = world.channel()
        before = database_bytes(path)
        world.discord.fail_next("POST", r"^/webhooks/", 500, times=100_000)
        world.discord.fail_next("POST", r"^/channels/\d+/messages$", 500, times=100_000)
        prompts = [f"heavy result {n}" for n in range(5)]
        for n, prompt in enumerate(prompts):
            await world.discord.slash((ALICE, BOB, MOD)[n % 3], channel, "img2img",
                                      {"image": world.image(), "prompt": prompt, "samples": 4})
        db = sqlite3.connect(path)
        try:
            await eventually(lambda: db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded' AND downloaded = 1"
            ).fetchone()[0] == len(prompts), within=90)
        finally:
            db.close()
        peak = database_bytes(path)
        peak_pages = page_count(path)
        assert peak > before + 10 * 2**20, (before, peak)  # the backlog really is stored

        world.discord.clear_failures()
        for prompt in prompts:
            await eventually(lambda p=prompt: results(world, channel, p), within=90)
        # The next sweep (every 30 s) drops the delivered images and returns their pages.
        await eventually(lambda: database_bytes(path) < before + 2 * 2**20, within=120)
        assert page_count(path) < peak_pages // 4, (page_count(path), peak_pages)
    finally:
        await stop()
