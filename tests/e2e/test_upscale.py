"""The `Upscale` button: ModelsLab's super resolution as a job like any other, one image of
quota, posted once as a reply to the result it came from, and off when an admin says so."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.conftest import ALICE, BOB
from tests.e2e.test_generate import buttons, ready_for, status
from tests.e2e.test_quotas import command, new_server
from tests.e2e.test_remix import button, make_result

pytestmark = pytest.mark.asyncio(loop_scope="module")


def submits_tried(world) -> int:
    """Every submit ModelsLab saw (accepted or not); model list reads run in the background."""
    return sum(1 for r in world.modelslab.requests if r.kind == "submit")

PATH = "/api/v6/image_editing/super_resolution"


def upscaled(user: int):
    def match(message: dict) -> bool:
        return f"<@{user}>" in message["content"] and "upscaled image is ready" in \
            message["content"]
    return match


def upscale_submits(world) -> list:
    return [s for s in world.modelslab.submits if s.path == PATH]


async def test_upscale_is_posted_once_as_a_reply_naming_its_source(world):
    world.modelslab.webhook_repeats = 3  # ModelsLab repeats webhooks; still one post
    try:
        channel = world.channel()
        result = await make_result(world, channel, "two owls to upscale", samples=2)
        before = len(upscale_submits(world))
        click = await world.discord.click(BOB, result, button(result, "Upscale 2"))
        answer = await click.response()
        assert answer["type"] == 5 and click.ephemeral
        reply = await world.discord.wait_for_message(channel, upscaled(BOB), timeout=30)
        await world.modelslab.drain()
        await asyncio.sleep(1.0)  # room for a duplicate to show up, if there were one
    finally:
        world.modelslab.webhook_repeats = 1

    (submit,) = upscale_submits(world)[before:]
    # the second image, by a Discord link to it (links are signed afresh each time)
    assert world.discord.file_at(submit.body["init_image"]) == result["files"][1]["data"]
    assert submit.body == {
        "key": world.modelslab.api_key, "init_image": submit.body["init_image"],
        "scale": 4, "model_id": "RealESRGAN_x4plus", "face_enhance": False,
        "track_id": submit.body["track_id"], "webhook": submit.body["webhook"]}
    assert reply["message_reference"]["message_id"] == result["id"]
    marker = result["content"].split("job `")[1][:8]
    assert f"upscale of image 2 of `{marker}`" in reply["content"]
    assert len(reply["files"]) == 1
    assert buttons(reply) == ["Delete"]
    replies = [m for m in world.discord.messages(channel, include_ephemeral=False)
               if upscaled(BOB)(m)]
    assert len(replies) == 1
    await status(click, "Done")
    # one image of quota
    quota = await command(world, BOB, channel, "quota")
    assert "used **1**" in quota


async def test_upscale_works_by_polling_too(world):
    world.modelslab.send_webhooks = False
    try:
        channel = world.channel()
        result = await make_result(world, channel, "a polled upscale")
        before = len(world.modelslab.fetches)
        await world.discord.click(ALICE, result, button(result, "Upscale"))
        reply = await world.discord.wait_for_message(channel, upscaled(ALICE), timeout=60)
    finally:
        world.modelslab.send_webhooks = True
    assert reply["message_reference"]["message_id"] == result["id"]
    fetched = [f for f in world.modelslab.fetches[before:] if f.endpoint == "super_resolution"]
    assert fetched and fetched[-1].path.startswith("/api/v6/image_editing/fetch/")


async def test_admins_can_turn_upscaling_off(world):
    s = new_server(world)
    await command(world, s.member, s.channel, "img2img",
                  {"image": world.image(), "prompt": "a result made before"})
    before_off = await world.discord.wait_for_message(
        s.channel, ready_for(s.member, "a result made before"), timeout=30)
    text = await command(world, s.admin, s.channel, "config upscale", {"enabled": False})
    assert "off" in text
    await command(world, s.member, s.channel, "img2img",
                  {"image": world.image(), "prompt": "a result made after"})
    after_off = await world.discord.wait_for_message(
        s.channel, ready_for(s.member, "a result made after"), timeout=30)
    assert "Upscale" not in buttons(after_off)
    sent = submits_tried(world)
    click = await world.discord.click(s.member, before_off, button(before_off, "Upscale"))
    await status(click, "Upscaling is turned off on this server.")
    assert submits_tried(world) == sent
    shown = await command(world, s.admin, s.channel, "config show")
    assert "Upscale button: **off**" in shown


async def test_upscale_counts_against_the_quota(world):
    s = new_server(world)
    await command(world, s.admin, s.channel, "config daily_limit", {"limit": 1})
    await command(world, s.member, s.channel, "img2img",
                  {"image": world.image(), "prompt": "the only image today"})
    result = await world.discord.wait_for_message(
        s.channel, ready_for(s.member, "the only image today"), timeout=30)
    sent = submits_tried(world)
    click = await world.discord.click(s.member, result, button(result, "Upscale"))
    shown = await status(click, "You have used all 1 of your images for today")
    assert shown["flags"] & 64
    assert submits_tried(world) == sent


async def test_an_upscale_of_a_flagged_image_stays_hidden(world):
    channel = world.channel()
    world.modelslab.nsfw = True
    try:
        result = await make_result(world, channel, "a flagged image to upscale")
    finally:
        world.modelslab.nsfw = False
    assert result["files"][0]["filename"].startswith("SPOILER_")
    await world.discord.click(ALICE, result, button(result, "Upscale"))
    reply = await world.discord.wait_for_message(channel, upscaled(ALICE), timeout=30)
    assert all(f["filename"].startswith("SPOILER_") for f in reply["files"])
