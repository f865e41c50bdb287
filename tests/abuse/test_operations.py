"""Operators get the right diagnosis and a clean command list: `python -m bot` as an admin
runs it, against the local fakes (or nothing at all) on loopback."""

from __future__ import annotations

import socket

import pytest
import pytest_asyncio

from tests.e2e.conftest import bot_settings, start_world
from tests.e2e.harness import BotProcess, free_port
from tests.e2e.test_generate import ready_for
from tests.e2e.test_quotas import new_server
from tests.e2e.test_remix import button
from tests.fakes import FakeDiscord, FakeModelsLab

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory):
    world, stop = await start_world(tmp_path_factory.mktemp("bot"))
    yield world
    await stop()


@pytest_asyncio.fixture(loop_scope="module")
async def fakes():
    discord_fake = FakeDiscord()
    await discord_fake.start()
    modelslab = FakeModelsLab()
    await modelslab.start()
    yield discord_fake, modelslab
    await modelslab.close()
    await discord_fake.close()


async def test_unreachable_discord_is_reported_as_such(tmp_path, fakes):
    discord_fake, modelslab = fakes
    env = bot_settings(discord_fake, modelslab, tmp_path)
    closed = free_port()  # nothing listens there
    env["DISCORD_API_BASE"] = f"http://127.0.0.1:{closed}/api/v10"
    env["DISCORD_GATEWAY_URL"] = f"ws://127.0.0.1:{closed}/gateway"
    bot = BotProcess(env, tmp_path)
    bot.start()
    try:
        assert await bot.wait_exit(within=60) == 1
    finally:
        bot.kill()
    log = bot.log()
    assert (f"Remixer cannot start: Discord cannot be reached (127.0.0.1:{closed}: "
            f"Connection refused)") in log
    assert "web server" not in log and "Traceback" not in log


async def test_a_taken_web_port_is_still_reported_as_the_web_server(tmp_path, fakes):
    discord_fake, modelslab = fakes
    env = bot_settings(discord_fake, modelslab, tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env["WEB_PORT"] = str(taken.getsockname()[1])
        bot = BotProcess(env, tmp_path)
        bot.start()
        try:
            assert await bot.wait_exit(within=60) == 1
        finally:
            bot.kill()
    log = bot.log()
    assert f"Remixer cannot start: the web server cannot listen on 127.0.0.1:{env['WEB_PORT']}" \
        in log
    assert "Discord cannot be reached" not in log


async def test_with_a_dev_server_commands_are_synced_there_only(tmp_path):
    world, stop = await start_world(tmp_path, DEV_GUILD_ID="10")
    try:
        assert world.discord.command_syncs
        assert [kind for kind, _, _ in world.discord.command_syncs] == ["guild"]
        assert world.discord.global_commands == []
        names = sorted(c["name"] for c in world.discord.guild_commands(10))
        assert {"img2img", "inpaint", "config", "Remix image"} <= set(names)
        assert "commands synced to server 10 only, not globally" in world.bot.log()
        channel = world.channel()
        ix = await world.discord.slash(1001, channel, "img2img",
                                       {"image": world.image(), "prompt": "dev fox"})
        await ix.wait_original(lambda m: "Queued" in m["content"] or "ready" in m["content"])
    finally:
        await stop()


async def test_the_remix_form_uses_labels_around_its_inputs(world):
    s = new_server(world)
    await world.discord.slash(s.member, s.channel, "img2img",
                              {"image": world.image(), "prompt": "a paper boat"})
    result = await world.discord.wait_for_message(s.channel, ready_for(s.member, "a paper boat"),
                                                  timeout=20)
    click = await world.discord.click(s.member, result, button(result, "Remix"))
    await click.response()
    layout = click.modal["components"]
    assert [c["type"] for c in layout] == [18, 18, 18]  # labels, no action rows
    assert [c["label"] for c in layout] == ["Prompt", "Negative prompt",
                                            "Strength (0 keeps the image, 1 ignores it)"]
    assert all(c["component"]["type"] == 4 and not c["component"].get("label") for c in layout)
    assert layout[0]["component"]["value"] == "a paper boat"
    submit = await world.discord.submit_modal(s.member, s.channel, click.modal["custom_id"],
                                              {"Prompt": "a paper boat at sea",
                                               "Strength (0 keeps the image, 1 ignores it)":
                                               "0.5"})
    await submit.response()
    await world.discord.wait_for_message(s.channel, ready_for(s.member, "a paper boat at sea"),
                                         timeout=20)
    (sent,) = [r for r in world.modelslab.submits if r.body.get("prompt") == "a paper boat at sea"]
    assert sent.body["strength"] == 0.5
