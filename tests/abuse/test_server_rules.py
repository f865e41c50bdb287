"""Members cannot step around a server's rules: not from a direct message, not by repeating
refused commands, not by clicking faster than a person would. End to end, against the real
bot process and the local fakes."""

from __future__ import annotations

import itertools
import re
import sqlite3
import time

import pytest
import pytest_asyncio

from tests.e2e.conftest import start_world
from tests.e2e.test_generate import eventually, ready_for
from tests.e2e.test_quotas import command, new_server, submitted
from tests.e2e.test_remix import button
from tests.fakes import png_bytes
from tests.fakes.discord import ClientRefused

pytestmark = pytest.mark.asyncio(loop_scope="module")
_ids = itertools.count(90_000)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("bot")
    # An empty value: the bot's default cooldown, which a member using it normally never meets.
    world, stop = await start_world(path, COOLDOWN_BURST="")
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


SERVER_ONLY_TEXT = "works only in a server that has added it"


async def test_commands_are_registered_for_servers_only(world):
    registered = world.discord.commands
    for name in ("img2img", "inpaint", "Remix image", "quota", "history", "config"):
        assert registered[name]["contexts"] == [0], name
        assert registered[name]["integration_types"] == [0], name
    s = new_server(world)
    with pytest.raises(ClientRefused):  # Discord's client offers them only in servers
        await world.discord.dm_slash(s.member, "img2img", {"image": world.image(),
                                                           "prompt": "a dm fox"})


async def test_a_command_sent_from_a_dm_is_refused_and_costs_nothing(world):
    s = new_server(world)
    await command(world, s.admin, s.channel, "config member_limit",
                  {"member": s.member, "limit": 0})
    image = world.image()
    for name, options in [("img2img", {"image": image, "prompt": "a dm fox"}),
                          ("inpaint", {"image": image, "mask": world.image("mask.png"),
                                       "prompt": "a dm fox"}),
                          ("quota", {}), ("history", {})]:
        ix = await world.discord.dm_slash(s.member, name, options, client_checks=False)
        answer = await ix.response()
        assert answer["type"] == 4 and ix.ephemeral, name
        assert SERVER_ONLY_TEXT in answer["data"]["content"], name
    assert submitted(world, "a dm fox") == 0
    assert downloads_of(world, image) == 0
    assert ledger_rows(world, s.member) == 0


async def test_a_command_through_a_user_install_is_refused(world):
    s = new_server(world)
    await command(world, s.admin, s.channel, "config member_limit",
                  {"member": s.member, "limit": 0})
    image = world.image()
    ix = await world.discord.slash(s.member, s.channel, "img2img",
                                   {"image": image, "prompt": "a user-app fox"},
                                   user_install=True, client_checks=False)
    answer = await ix.response()
    assert ix.ephemeral and SERVER_ONLY_TEXT in answer["data"]["content"]
    assert submitted(world, "a user-app fox") == 0 and downloads_of(world, image) == 0
    assert ledger_rows(world, s.member) == 0


async def test_buttons_on_a_result_in_a_dm_act_under_the_servers_rules(world):
    s = new_server(world)
    await command(world, s.admin, s.channel, "config daily_limit", {"limit": 1})
    await command(world, s.member, s.channel, "img2img",
                  {"image": world.image(), "prompt": "a homing pigeon"})
    result = await world.discord.wait_for_message(
        s.channel, ready_for(s.member, "a homing pigeon"), timeout=20)
    in_dm = world.discord.forward_to_dm(s.member, result)  # as a result delivered by DM

    ix = await world.discord.click(s.member, in_dm, button(in_dm, "Re-roll"))
    refused = await ix.wait_original(lambda m: "used all" in m["content"], timeout=15)
    assert "used all 1 of your images for today" in refused["content"]
    click = await world.discord.click(s.member, in_dm, button(in_dm, "Remix"))
    await click.response()
    submit = await world.discord.submit_modal(s.member, world.discord.dm_channel(s.member),
                                              click.modal["custom_id"],
                                              {"Prompt": "a pigeon remixed"})
    await submit.wait_original(lambda m: "used all" in m["content"], timeout=15)
    assert ledger_rows(world, s.member) == 1 and submitted(world, "a pigeon remixed") == 0

    await command(world, s.admin, s.channel, "config daily_limit", {"limit": 5})
    ix = await world.discord.click(s.member, in_dm, button(in_dm, "Re-roll"))
    queued = await ix.wait_original(lambda m: "Queued" in m["content"], timeout=15)
    assert f"<#{s.channel}>" in queued["content"]
    await eventually(lambda: sum(1 for m in world.discord.messages(s.channel)
                                 if ready_for(s.member, "a homing pigeon")(m)) == 2)
    with sqlite3.connect(world.db_path) as db:
        guilds = {row[0] for row in db.execute(
            "SELECT guild_id FROM quota_ledger WHERE user_id = ?", (s.member,))}
    assert guilds == {s.guild}


async def final_text(ix) -> str:
    """What the member finally reads in answer to a command or click."""
    answer = await ix.response(timeout=15)
    if answer["type"] == 4:
        assert ix.ephemeral
        return answer["data"]["content"]
    shown = await ix.wait_original(lambda m: bool(m["content"]) and "Preparing" not in
                                   m["content"], timeout=15)
    return shown["content"]


def retry_at(text: str) -> int:
    match = re.search(r"<t:(\d+):R>", text)
    assert match, text
    return int(match.group(1))


async def test_a_member_using_the_bot_normally_never_meets_the_cooldown(world):
    s = new_server(world)
    await command(world, s.admin, s.channel, "config max_jobs", {"count": 10})
    shown = await command(world, s.admin, s.channel, "config show")
    assert "Cooldown: up to **5** actions in quick succession, then one every **5** s" in shown
    for n in range(5):  # five in quick succession
        assert "Queued" in await command(world, s.member, s.channel, "img2img",
                                         {"image": world.image(), "prompt": f"quick hare {n}"})


async def test_the_cooldown_answers_privately_and_refused_commands_do_not_count(world):
    s = new_server(world)
    elsewhere = next(_ids)
    world.discord.add_channel(s.guild, elsewhere, "off-topic")
    await command(world, s.admin, s.channel, "config max_jobs", {"count": 10})
    await command(world, s.admin, s.channel, "config channels",
                  {"action": "add", "channel": s.channel})
    text = await command(world, s.admin, s.channel, "config cooldown",
                         {"burst": 2, "seconds": 600})
    assert "up to **2** actions in quick succession, then one every **600** s" in text
    for _ in range(3):  # refused for another reason: no turn is used up
        assert "can't be used in this channel" in await command(
            world, s.member, elsewhere, "img2img", {"image": world.image(), "prompt": "lost"})
    for n in range(2):
        assert "Queued" in await command(world, s.member, s.channel, "img2img",
                                         {"image": world.image(), "prompt": f"hasty {n}"})
    ix = await world.discord.slash(s.member, s.channel, "img2img",
                                   {"image": world.image(), "prompt": "too hasty"})
    text = await final_text(ix)
    assert text.startswith("You're going a bit fast; try again <t:")
    assert retry_at(text) > time.time() + 500  # about ten minutes from now
    assert submitted(world, "too hasty") == 0
    assert "Queued" in await command(world, s.other, s.channel, "img2img",
                                     {"image": world.image(), "prompt": "someone else"})

    assert "**off**" in await command(world, s.admin, s.channel, "config cooldown",
                                      {"burst": 0, "seconds": 5})
    assert "Cooldown: **off**" in await command(world, s.admin, s.channel, "config show")
    assert "Queued" in await command(world, s.member, s.channel, "img2img",
                                     {"image": world.image(), "prompt": "calm again"})


async def test_a_reroll_storm_spends_neither_work_nor_discords_rate_limit(world):
    s = new_server(world)
    await command(world, s.admin, s.channel, "config max_jobs", {"count": 10})
    await command(world, s.admin, s.channel, "config cooldown", {"burst": 5, "seconds": 600})
    ttl = world.discord.attachment_url_ttl
    world.discord.attachment_url_ttl = 5 * 60  # the member's image link expires soon...
    try:
        await world.discord.slash(s.member, s.channel, "img2img",
                                  {"image": world.image(), "prompt": "a spinning top"})
        result = await world.discord.wait_for_message(
            s.channel, ready_for(s.member, "a spinning top"), timeout=20)
    finally:
        world.discord.attachment_url_ttl = ttl  # ...and refreshed links last a day
    refreshes = sum(1 for c in world.discord.rest_log if c.path == "/attachments/refresh-urls")
    clicks = [await world.discord.click(s.member, result, button(result, "Re-roll"))
              for _ in range(8)]
    texts = [await final_text(ix) for ix in clicks]
    # The command took one of the five turns: four re-rolls pass, four wait.
    assert sum("going a bit fast" in t for t in texts) == 4, texts
    assert sum(1 for c in world.discord.rest_log
               if c.path == "/attachments/refresh-urls") - refreshes <= 1
    await eventually(lambda: sum(1 for m in world.discord.messages(s.channel)
                                 if ready_for(s.member, "a spinning top")(m)) == 5, within=40)
    assert submitted(world, "a spinning top") == 5
