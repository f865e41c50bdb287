"""/img2img, /inpaint and /quota end to end: real interactions in, images posted back."""

from __future__ import annotations

import asyncio
import io
import time

import pytest
from PIL import Image

from tests.e2e.conftest import ALICE, BOB

pytestmark = pytest.mark.asyncio(loop_scope="module")

FOX = "a red fox in fresh snow"


def ready_for(user: int, prompt: str | None = None):
    def match(message: dict) -> bool:
        text = message["content"]
        return (f"<@{user}>" in text and "your image is ready" in text
                and (prompt is None or prompt in text))
    return match


def submits_with(world, prompt: str):
    return [s for s in world.modelslab.submits if s.body.get("prompt") == prompt]


async def eventually(predicate, within: float = 20.0):
    deadline = time.monotonic() + within
    while True:
        if (value := predicate()):
            return value
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def buttons(message: dict) -> list[str]:
    return [c["label"] for row in message["components"] for c in row["components"]]


async def status(ix, words: str, within: float = 15) -> dict:
    """The member's private status message, once it says ``words``."""
    return await ix.wait_original(lambda m: words in m["content"], timeout=within)


@pytest.mark.parametrize(("endpoint", "path", "key"), [
    ("v6", "/api/v6/images/img2img", "api"),
    ("enterprise", "/api/v1/enterprise/img2img", "enterprise"),
    ("enterprise_pony", "/api/v1/enterprise/pony/img2img", "enterprise"),
    ("realtime", "/api/v1/enterprise/realtime/img2img", "enterprise"),
])
async def test_img2img_on_each_endpoint_is_delivered(world, endpoint, path, key):
    channel = world.channel()
    image = world.image(size=(800, 600))
    prompt = f"{FOX} via {endpoint}"
    ix = await world.discord.slash(ALICE, channel, "img2img", {
        "image": image, "prompt": prompt, "endpoint": endpoint, "samples": 2, "seed": 77})
    answer = await ix.response()
    assert answer["type"] == 5 and ix.ephemeral  # acknowledged at once, privately

    message = await world.discord.wait_for_message(channel, ready_for(ALICE, prompt), timeout=20)
    (submit,) = submits_with(world, prompt)
    assert submit.path == path
    assert submit.body["key"] == (world.modelslab.api_key if key == "api"
                                  else world.modelslab.enterprise_key)
    assert submit.body["init_image"] == image["url"]  # unchanged image: Discord's own URL
    assert submit.body["samples"] == 2 and submit.body["seed"] == 77
    assert submit.body["webhook"].startswith(world.bot.env["PUBLIC_BASE_URL"])
    assert (submit.body.get("safety_checker") in ("yes", True))  # not an NSFW channel
    if endpoint == "realtime":
        assert "model_id" not in submit.body and (submit.body["width"],
                                                  submit.body["height"]) == (800, 600)
    else:
        assert submit.body["model_id"] == "pony_realism"

    assert f"<@{ALICE}>" in message["content"] and prompt in message["content"]
    assert "seed 77" in message["content"] and f"{endpoint} endpoint" in message["content"]
    assert len(message["files"]) == 2
    for file in message["files"]:
        assert Image.open(io.BytesIO(file["data"])).format == "PNG"
        assert not file["filename"].startswith("SPOILER_")
    assert buttons(message) == ["Remix 1", "Upscale 1", "Remix 2", "Upscale 2", "Edit region",
                               "Re-roll", "Delete"]
    done = await status(ix, "Done")
    assert done["flags"] & 64  # the status stayed private


async def test_inpaint_converts_a_transparent_mask_and_is_delivered(world):
    channel = world.channel()
    image = world.image(size=(512, 512))
    mask_img = Image.new("RGBA", (256, 256), (0, 0, 0, 255))
    mask_img.paste((0, 0, 0, 0), (64, 64, 192, 192))  # transparent square: repaint here
    buf = io.BytesIO()
    mask_img.save(buf, "PNG")
    mask = world.discord.add_attachment("mask.png", buf.getvalue(), "image/png")
    prompt = "a wooden door"
    ix = await world.discord.slash(ALICE, channel, "inpaint",
                                   {"image": image, "mask": mask, "prompt": prompt})
    await world.discord.wait_for_message(channel, ready_for(ALICE, prompt), timeout=20)
    (submit,) = submits_with(world, prompt)
    assert submit.path == "/api/v6/images/inpaint"
    assert submit.body["steps"] == 21 and "num_inference_steps" not in submit.body
    sent_mask = Image.open(io.BytesIO(world.discord.file_at(submit.body["mask_image"])))
    assert sent_mask.size == (512, 512) and sent_mask.mode == "L"
    assert [value for value, n in enumerate(sent_mask.histogram()) if n] == [0, 255]
    assert sent_mask.getpixel((256, 256)) == 255 and sent_mask.getpixel((10, 10)) == 0
    # the converted mask was uploaded with the member's private status message
    assert any(f["filename"] == "mask.png" for f in ix.original["files"])


@pytest.mark.parametrize(("options", "words"), [
    ({"endpoint": "enterprise", "steps": 30},
     "steps must be 21, 31 or 41 on the enterprise endpoint"),
    ({"width": 1000}, "width must be a multiple of 8 from 1024 to 2048 on the v6 endpoint"),
    ({"endpoint": "enterprise_pony", "scheduler": "KarrasVeScheduler"},
     "KarrasVeScheduler is not a scheduler the enterprise Pony endpoint accepts"),
    ({"endpoint": "realtime", "model": "anything-v5"},
     "model can't be set on the realtime endpoint"),
    ({"samples": 9}, "samples must be a whole number from 1 to 4"),
    ({"strength": 1.5}, "strength must be between 0 and 1"),
])
async def test_refused_options_are_private_and_call_nothing(world, options, words):
    channel = world.channel()
    before = len(world.modelslab.requests)
    # client_checks=False: the values reach the bot as a modified client would send them
    ix = await world.discord.slash(ALICE, channel, "img2img",
                                   {"image": world.image(), "prompt": "x", **options},
                                   client_checks=False)
    shown = await status(ix, words)
    assert shown["flags"] & 64
    assert len(world.modelslab.requests) == before
    assert [m for m in world.discord.messages(channel, include_ephemeral=False)] == []


@pytest.mark.parametrize(("name", "data", "content_type", "words"), [
    ("cat.png", b"\x89PNG this is not really a png" * 10, "image/png", "image"),
    ("cat.gif", b"GIF89a" + b"\x00" * 200, "image/gif", "GIF"),
    ("cat.png", b"", "image/png", "empty"),
])
async def test_bad_attachments_are_named_and_call_nothing(world, name, data, content_type,
                                                          words):
    channel = world.channel()
    before = len(world.modelslab.requests)
    attachment = world.discord.add_attachment(name, data, content_type)
    ix = await world.discord.slash(ALICE, channel, "img2img",
                                   {"image": attachment, "prompt": "x"})
    shown = await ix.wait_original(lambda m: "image" in m["content"].lower()
                                   and "ready" not in m["content"])
    assert words.lower() in shown["content"].lower()
    assert shown["flags"] & 64
    assert len(world.modelslab.requests) == before


async def test_a_truncated_photo_is_refused(world):
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), (200, 10, 10)).save(buf, "JPEG")
    attachment = world.discord.add_attachment("photo.jpg", buf.getvalue()[:400], "image/jpeg")
    channel = world.channel()
    ix = await world.discord.slash(ALICE, channel, "img2img", {"image": attachment,
                                                               "prompt": "x"})
    shown = await ix.wait_original(lambda m: "damaged" in m["content"] or
                                   "incomplete" in m["content"])
    assert shown["flags"] & 64


async def test_api_error_at_submit_reaches_the_member_in_words(world):
    channel = world.channel()
    world.modelslab.script("submit", 200, {"status": "error",
                                           "message": "Unable to fetch image from provided URL"})
    ix = await world.discord.slash(ALICE, channel, "img2img",
                                   {"image": world.image(), "prompt": "doomed"})
    shown = await status(ix, "Unable to fetch image from provided URL")
    assert "not charged" in shown["content"] and shown["flags"] & 64
    assert world.discord.messages(channel, include_ephemeral=False) == []


async def test_a_failed_generation_reaches_the_member_in_words(world):
    channel = world.channel()
    world.modelslab.fail_next_with("CUDA out of memory")
    ix = await world.discord.slash(ALICE, channel, "img2img",
                                   {"image": world.image(), "prompt": "too big to fail"})
    shown = await status(ix, "CUDA out of memory", within=20)
    assert "could not be made" in shown["content"]


async def test_expired_token_falls_back_to_a_channel_message(world):
    channel = world.channel()
    world.modelslab.auto_complete_after = 1.0
    try:
        ix = await world.discord.slash(ALICE, channel, "img2img",
                                       {"image": world.image(), "prompt": "late fox"})
        await ix.response()
        world.discord.expire(ix)  # the member's 15 minutes are over
        message = await world.discord.wait_for_message(channel, ready_for(ALICE, "late fox"),
                                                       timeout=20)
    finally:
        world.modelslab.auto_complete_after = 0.3
    assert int(message["id"]) not in [int(m["id"]) for m in ix.followup_messages]
    assert len(message["files"]) == 1 and buttons(message)[0] == "Remix"


async def test_nsfw_outputs_are_spoilered_outside_nsfw_channels(world):
    sfw, nsfw = world.channel(), world.channel(nsfw=True)
    world.modelslab.nsfw = True
    try:
        await world.discord.slash(ALICE, sfw, "img2img", {"image": world.image(),
                                                          "prompt": "spicy sfw"})
        await world.discord.slash(ALICE, nsfw, "img2img", {"image": world.image(),
                                                           "prompt": "spicy nsfw"})
        in_sfw = await world.discord.wait_for_message(sfw, ready_for(ALICE), timeout=20)
        in_nsfw = await world.discord.wait_for_message(nsfw, ready_for(ALICE), timeout=20)
    finally:
        world.modelslab.nsfw = False
    assert all(f["filename"].startswith("SPOILER_") for f in in_sfw["files"])
    assert not any(f["filename"].startswith("SPOILER_") for f in in_nsfw["files"])
    assert submits_with(world, "spicy sfw")[0].body["safety_checker"] == "yes"
    assert submits_with(world, "spicy nsfw")[0].body["safety_checker"] == "no"


async def test_when_the_channel_refuses_the_bot_the_member_gets_a_direct_message(world):
    channel = world.channel()
    world.discord.deny(channel, "send")
    world.modelslab.auto_complete_after = 1.0
    try:
        ix = await world.discord.slash(BOB, channel, "img2img",
                                       {"image": world.image(), "prompt": "locked out"})
        await ix.response()
        world.discord.expire(ix)
        await eventually(lambda: world.discord.direct_messages.get(BOB))
    finally:
        world.modelslab.auto_complete_after = 0.3
    (dm,) = world.discord.direct_messages[BOB]
    assert "your image is ready" in dm["content"] and f"<#{channel}>" in dm["content"]
    assert len(dm["files"]) == 1


async def test_scheduler_autocomplete_follows_the_endpoint(world):
    channel = world.channel()
    ix = await world.discord.autocomplete(ALICE, channel, "img2img",
                                          {"endpoint": "enterprise_pony", "scheduler": "karras"},
                                          focused="scheduler")
    assert ix.choices == []  # KarrasVeScheduler is not on the Pony list
    ix = await world.discord.autocomplete(ALICE, channel, "img2img",
                                          {"endpoint": "enterprise", "scheduler": "karras"},
                                          focused="scheduler")
    assert [c["value"] for c in ix.choices] == ["KarrasVeScheduler"]


async def test_quota_shows_todays_figures(world):
    channel = world.channel()
    ix = await world.discord.slash(BOB, channel, "quota", {})
    answer = await ix.response()
    text = answer["data"]["content"]
    assert ix.ephemeral
    used = sum(s.body.get("samples", 1) for s in world.modelslab.submits
               if s.body.get("prompt") == "locked out")
    assert f"used **{used}** of **20** images today" in text
    assert "<t:" in text  # the reset time, in the member's own time zone


async def test_commands_are_registered_with_their_fixed_names(world):
    commands = world.discord.commands
    assert {"img2img", "inpaint", "quota", "Remix image"} <= set(commands)
    img2img = {o["name"]: o for o in commands["img2img"]["options"]}
    assert list(img2img) == ["image", "prompt", "negative_prompt", "strength", "endpoint",
                             "model", "width", "height", "samples", "steps", "guidance_scale",
                             "scheduler", "seed", "clip_skip", "karras", "algorithm",
                             "enhance_prompt", "lora", "lora_strength", "vae", "style"]
    assert [c["value"] for c in img2img["endpoint"]["choices"]] == [
        "v6", "enterprise", "enterprise_pony", "realtime"]
    assert img2img["image"]["type"] == 11 and img2img["image"]["required"]
    assert img2img["model"].get("autocomplete") and img2img["scheduler"].get("autocomplete")
    inpaint = [o["name"] for o in commands["inpaint"]["options"]]
    assert inpaint[:3] == ["image", "prompt", "mask"] and "endpoint" in inpaint
    assert not commands["inpaint"]["options"][2].get("required")  # without it: the painter
