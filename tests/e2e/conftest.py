"""Fixtures for end-to-end tests: both fakes on loopback and the real bot as a process.

One bot process serves a whole test module (starting it takes a couple of seconds); each
test works in its own channel so tests don't see each other's messages.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import discord
import pytest
import pytest_asyncio

from tests.e2e.harness import BotProcess, free_port
from tests.fakes import FakeDiscord, FakeModelsLab, png_bytes
from tests.support.jobs import cdn_host

GUILD = 10
ALICE, BOB, MOD = 1001, 1002, 1003
_channel_ids = itertools.count(5000)


@dataclass
class World:
    discord: FakeDiscord
    modelslab: FakeModelsLab
    bot: BotProcess

    def channel(self, *, nsfw: bool = False) -> int:
        channel_id = next(_channel_ids)
        self.discord.add_channel(GUILD, channel_id, f"room-{channel_id}", nsfw=nsfw)
        return channel_id

    def image(self, name: str = "photo.png", size: tuple[int, int] = (640, 480),
              color=(30, 120, 200)) -> dict:
        return self.discord.add_attachment(name, png_bytes(*size, color), "image/png")


def bot_settings(discord_fake: FakeDiscord, modelslab: FakeModelsLab, tmp_path, *,
                 enterprise: bool = True, **extra: str) -> dict[str, str]:
    port = free_port()
    env = {
        **discord_fake.bot_env(),
        "MODELSLAB_API_KEY": modelslab.api_key,
        "MODELSLAB_BASE_URL": modelslab.base_url,
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "WEB_HOST": "127.0.0.1",
        "WEB_PORT": str(port),
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(free_port()),
        "DATABASE_PATH": str(tmp_path / "bot.sqlite3"),
        "LOG_LEVEL": "INFO",
        # Tests act faster than any member: the cooldown is tested on its own
        # (tests/abuse/test_server_rules.py), with the bot's defaults.
        "COOLDOWN_BURST": "0",
        # The fakes live on loopback: outbound requests may go there, and outputs come from it.
        "ALLOW_LOOPBACK_OUTBOUND": "1",
        "MODELSLAB_OUTPUT_HOSTS": cdn_host(modelslab),
    }
    if enterprise:
        env["MODELSLAB_ENTERPRISE_API_KEY"] = modelslab.enterprise_key
    env.update(extra)
    return env


async def start_world(tmp_path, prepare=None, **settings) -> tuple[World, object]:
    """``prepare(modelslab)``, when given, runs before the bot starts."""
    discord_fake = FakeDiscord()
    await discord_fake.start()
    modelslab = FakeModelsLab()
    await modelslab.start()
    modelslab.auto_complete_after = 0.3
    modelslab.eta = 0.3
    if prepare is not None:
        prepare(modelslab)
    discord_fake.add_guild(GUILD, "Remix Club", owner_id=ALICE)
    discord_fake.add_member(GUILD, ALICE, "alice")
    discord_fake.add_member(GUILD, BOB, "bob", permissions=discord.Permissions.none().value)
    discord_fake.add_member(GUILD, MOD, "mod",
                            permissions=discord.Permissions(manage_messages=True).value)
    bot = BotProcess(bot_settings(discord_fake, modelslab, tmp_path, **settings), tmp_path)
    bot.start()
    try:
        await discord_fake.wait_until_ready(timeout=30, commands=True)
    except Exception:
        await bot.terminate()
        raise AssertionError("the bot never became ready:\n" + bot.log()[-4000:]) from None
    # The bot reads ModelsLab's model lists in the background at start; let that happen
    # before a test counts requests.
    lists = 2 if settings.get("enterprise", True) else 1
    for _ in range(200):
        if len(modelslab.model_list_calls) >= lists:
            break
        await asyncio.sleep(0.05)
    world = World(discord_fake, modelslab, bot)

    async def stop() -> None:
        await bot.terminate()
        await modelslab.close()
        await discord_fake.close()

    return world, stop


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory):
    world, stop = await start_world(tmp_path_factory.mktemp("bot"))
    yield world
    await stop()


@pytest.fixture(autouse=True)
def _show_bot_log_on_failure(request):
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "world" in request.fixturenames:
        world = request.getfixturevalue("world")
        print("---- bot log (tail) ----\n" + world.bot.log()[-6000:])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)
