"""Members cannot step around a server's rules: not from a direct message, not by repeating
refused commands, not by clicking faster than a person would. End to end, against the real
bot process and the local fakes."""

from __future__ import annotations

import itertools
import sqlite3

import pytest
import pytest_asyncio

from tests.e2e.conftest import start_world
from tests.e2e.test_quotas import command, new_server, submitted
from tests.fakes import png_bytes

pytestmark = pytest.mark.asyncio(loop_scope="module")
_ids = itertools.count(90_000)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("bot")
    world, stop = await start_world(path)
    world.db_path = path / "bot.sqlite3"
    yield world
    await stop()


def downloads_of(world, attachment: dict) -> int:
    """How many times anyone fetched this attachment's bytes from the fake CDN."""
    return sum(1 for call in world.discord.rest_log
               if not call.api and f"/{attachment['id']}/" in call.path)


def uploads_since(world, start: int) -> int:
    return sum(1 for call in world.discord.rest_log[start:] if call.files)


def ledger_rows(world, user: int) -> int:
    with sqlite3.connect(world.db_path) as db:
        return db.execute("SELECT COUNT(*) FROM quota_ledger WHERE user_id = ?",
                          (user,)).fetchone()[0]


async def test_a_member_at_the_job_cap_is_refused_before_any_download(world):
    s = new_server(world)
    await command(world, s.admin, s.channel, "config max_jobs", {"count": 1})
    world.modelslab.auto_complete_after = None
    try:
        assert "Queued" in await command(world, s.member, s.channel, "img2img",
                                         {"image": world.image(), "prompt": "slow tortoise"})
        # An image the bot would have to convert and upload again (wider than 2048).
        big = world.discord.add_attachment("wide.png", png_bytes(2100, 64), "image/png")
        mark = len(world.discord.rest_log)
        for _ in range(3):
            text = await command(world, s.member, s.channel, "img2img",
                                 {"image": big, "prompt": "pushy tortoise"})
            assert "already have 1 jobs waiting or running" in text
        assert downloads_of(world, big) == 0
        assert uploads_since(world, mark) == 0
        assert submitted(world, "pushy tortoise") == 0
    finally:
        world.modelslab.auto_complete_after = 0.3
        for job in list(world.modelslab.processing_jobs):
            await world.modelslab.complete(job.id)
