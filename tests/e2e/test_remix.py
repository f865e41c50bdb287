"""Remix, Re-roll, Delete and the `Remix image` menu, end to end, also across restarts."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ALICE, BOB, MOD
from tests.e2e.test_generate import buttons, eventually, ready_for, submits_with

pytestmark = pytest.mark.asyncio(loop_scope="module")


def button(message: dict, label: str) -> str:
    for row in message["components"]:
        for component in row["components"]:
            if component["label"] == label:
                return component["custom_id"]
    raise AssertionError(f"no {label!r} button on the message: {buttons(message)}")


async def make_result(world, channel: int, prompt: str, user: int = ALICE, **options) -> dict:
    await world.discord.slash(user, channel, "img2img",
                              {"image": world.image(), "prompt": prompt, **options})
    return await world.discord.wait_for_message(channel, ready_for(user, prompt), timeout=20)


def same_image(world, url: str, file: dict) -> bool:
    """ModelsLab was given a URL that serves exactly this posted file."""
    return world.discord.file_at(url) == file["data"]


def modal_fields(modal: dict) -> dict[str, str]:
    """Label -> prefilled value of a modal's text inputs (rows or labels, as sent)."""
    fields = {}
    for row in modal["components"]:
        inner = row.get("components") or ([row["component"]] if "component" in row else [])
        for item in inner:
            fields[item.get("label") or row.get("label")] = item.get("value")
    return fields


async def test_remix_of_a_remix(world):
    channel = world.channel()
    first = await make_result(world, channel, "a lighthouse", endpoint="enterprise", steps=31)

    click = await world.discord.click(BOB, first, button(first, "Remix"))
    await click.response()
    assert click.modal is not None
    fields = modal_fields(click.modal)
    assert fields["Prompt"] == "a lighthouse"  # the first field, prefilled
    assert fields["Strength (0 keeps the image, 1 ignores it)"] == "0.7"  # what was used
    submit = await world.discord.submit_modal(BOB, channel, click.modal["custom_id"],
                                              {"Prompt": "a lighthouse at night"})
    await submit.response()
    second = await world.discord.wait_for_message(
        channel, ready_for(BOB, "a lighthouse at night"), timeout=20)

    (sent,) = submits_with(world, "a lighthouse at night")
    assert sent.path == "/api/v1/enterprise/img2img"  # the source job's endpoint
    assert sent.body["num_inference_steps"] == 31  # the source's settings carry over
    assert same_image(world, sent.body["init_image"], first["files"][0])
    assert "remix of" in second["content"]

    click = await world.discord.click(ALICE, second, button(second, "Remix"))
    await click.response()
    submit = await world.discord.submit_modal(ALICE, channel, click.modal["custom_id"],
                                              {"Prompt": "a lighthouse in a storm"})
    third = await world.discord.wait_for_message(
        channel, ready_for(ALICE, "a lighthouse in a storm"), timeout=20)
    (sent,) = submits_with(world, "a lighthouse in a storm")
    assert same_image(world, sent.body["init_image"], second["files"][0])
    assert buttons(third) == ["Remix", "Upscale", "Edit region", "Re-roll", "Delete"]


async def test_each_image_of_a_result_has_its_own_remix_button(world):
    channel = world.channel()
    result = await make_result(world, channel, "three cats", samples=3)
    assert buttons(result) == ["Remix 1", "Upscale 1", "Remix 2", "Upscale 2", "Remix 3",
                               "Upscale 3", "Edit region", "Re-roll", "Delete"]
    click = await world.discord.click(ALICE, result, button(result, "Remix 3"))
    await click.response()
    await world.discord.submit_modal(ALICE, channel, click.modal["custom_id"],
                                     {"Prompt": "the third cat, alone"})
    await world.discord.wait_for_message(channel, ready_for(ALICE, "the third cat, alone"),
                                         timeout=20)
    (sent,) = submits_with(world, "the third cat, alone")
    assert same_image(world, sent.body["init_image"], result["files"][2])
    assert not same_image(world, sent.body["init_image"], result["files"][0])


async def test_reroll_keeps_the_settings_with_a_new_seed(world):
    channel = world.channel()
    first = await make_result(world, channel, "a red kite", seed=1234, guidance_scale=9)
    click = await world.discord.click(BOB, first, button(first, "Re-roll"))
    await click.response()
    await eventually(lambda: len(submits_with(world, "a red kite")) == 2)
    original, reroll = submits_with(world, "a red kite")
    assert original.body["seed"] == 1234 and reroll.body["seed"] is None
    assert reroll.body["guidance_scale"] == 9.0
    assert (world.discord.file_at(reroll.body["init_image"])
            == world.discord.file_at(original.body["init_image"]))
    await world.discord.wait_for_message(
        channel, lambda m: ready_for(BOB, "a red kite")(m), timeout=20)


async def test_delete_is_for_the_requester_and_moderators(world):
    channel = world.channel()
    mine = await make_result(world, channel, "delete me")
    refused = await world.discord.click(BOB, mine, button(mine, "Delete"))
    answer = await refused.response()
    assert refused.ephemeral and "Only the member who asked" in answer["data"]["content"]
    assert not mine["deleted"]

    moderated = await world.discord.click(MOD, mine, button(mine, "Delete"))
    await moderated.response()
    await eventually(lambda: mine["deleted"])

    own = await make_result(world, channel, "delete me too")
    await (await world.discord.click(ALICE, own, button(own, "Delete"))).response()
    await eventually(lambda: own["deleted"])


async def test_remix_image_message_menu(world):
    channel = world.channel()
    image = world.image("holiday.png", size=(900, 600))
    posted = world.discord.post_user_message(channel, BOB, "look at this", attachments=[image])
    ix = await world.discord.message_command(ALICE, channel, "Remix image", posted)
    await ix.response()
    assert ix.modal is not None
    await world.discord.submit_modal(ALICE, channel, ix.modal["custom_id"],
                                     {"Prompt": "as an oil painting", "Strength (0 keeps the "
                                      "image, 1 ignores it)": "0.45"})
    await world.discord.wait_for_message(channel, ready_for(ALICE, "as an oil painting"),
                                         timeout=20)
    (sent,) = submits_with(world, "as an oil painting")
    assert world.discord.file_at(sent.body["init_image"]) == world.discord.file_at(image["url"])
    assert sent.body["strength"] == 0.45
    assert sent.path == "/api/v6/images/img2img"


async def test_remix_menu_on_a_message_without_an_image(world):
    channel = world.channel()
    posted = world.discord.post_user_message(channel, BOB, "just words")
    ix = await world.discord.message_command(ALICE, channel, "Remix image", posted)
    answer = await ix.response()
    assert ix.ephemeral and "no image" in answer["data"]["content"]


async def test_a_bad_strength_in_the_modal_is_refused_in_words(world):
    channel = world.channel()
    result = await make_result(world, channel, "a calm lake")
    click = await world.discord.click(ALICE, result, button(result, "Remix"))
    await click.response()
    before = len(world.modelslab.requests)
    submit = await world.discord.submit_modal(
        ALICE, channel, click.modal["custom_id"],
        {"Strength (0 keeps the image, 1 ignores it)": "lots"})
    answer = await submit.response()
    assert submit.ephemeral and "strength must be a number" in answer["data"]["content"]
    assert len(world.modelslab.requests) == before
