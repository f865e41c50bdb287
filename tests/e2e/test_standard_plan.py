"""A bot run with only the standard ModelsLab key, and DEV_GUILD_ID set."""

from __future__ import annotations

import pytest
import pytest_asyncio

from tests.e2e.conftest import ALICE, GUILD, start_world
from tests.e2e.test_generate import ready_for

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def standard(tmp_path_factory):
    world, stop = await start_world(tmp_path_factory.mktemp("standard"), enterprise=False,
                                    DEV_GUILD_ID=str(GUILD))
    yield world
    await stop()


@pytest.mark.parametrize("endpoint", ["enterprise", "enterprise_pony", "realtime"])
async def test_enterprise_choices_are_refused_with_a_clear_sentence(standard, endpoint):
    channel = standard.channel()
    before = len(standard.modelslab.requests)
    ix = await standard.discord.slash(ALICE, channel, "img2img",
                                      {"image": standard.image(), "prompt": "x",
                                       "endpoint": endpoint})
    shown = await ix.wait_original(lambda m: "enterprise ModelsLab key" in m["content"])
    assert shown["flags"] & 64
    assert "MODELSLAB_ENTERPRISE_API_KEY" in shown["content"]
    assert len(standard.modelslab.requests) == before


async def test_v6_still_works(standard):
    channel = standard.channel()
    await standard.discord.slash(ALICE, channel, "img2img",
                                 {"image": standard.image(), "prompt": "plain v6"})
    await standard.discord.wait_for_message(channel, ready_for(ALICE, "plain v6"), timeout=20)


async def test_dev_guild_gets_the_commands_at_start_up(standard):
    names = {c["name"] for c in standard.discord.guild_commands(GUILD)}
    assert {"img2img", "inpaint", "quota", "Remix image"} <= names


async def test_an_enterprise_default_endpoint_is_refused_too(standard):
    channel = standard.channel()
    ix = await standard.discord.slash(ALICE, channel, "config default_endpoint",
                                      {"endpoint": "realtime"})
    answer = await ix.response()
    assert ix.ephemeral and "needs an enterprise ModelsLab key" in answer["data"]["content"]
    shown = await standard.discord.slash(ALICE, channel, "config show", {})
    assert "Default endpoint: **v6**" in (await shown.response())["data"]["content"]
