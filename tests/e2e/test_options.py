"""Every option ModelsLab documents for these jobs, end to end: the exact body ModelsLab
receives, the refusals in words, enterprise inpainting, the per-server safety filter and the
protocol details (retry proof, fetch bodies, a processing answer without an id)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.e2e.conftest import ALICE
from tests.e2e.test_generate import eventually, ready_for, status, submits_with
from tests.e2e.test_quotas import command, new_server
from tests.e2e.test_remix import button

pytestmark = pytest.mark.asyncio(loop_scope="module")


def submits_tried(world) -> int:
    """Every submit ModelsLab saw (accepted or not); model list reads run in the background."""
    return sum(1 for r in world.modelslab.requests if r.kind == "submit")


def mask_attachment(world) -> dict:
    mask = Image.new("L", (512, 512), 0)
    mask.paste(255, (128, 128, 384, 384))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    return world.discord.add_attachment("mask.png", buf.getvalue(), "image/png")


async def run(world, command_name: str, prompt: str, **options) -> dict:
    """Run a command in a fresh channel; the body ModelsLab accepted for it."""
    channel = world.channel()
    await world.discord.slash(ALICE, channel, command_name,
                              {"image": world.image(size=(512, 512)), "prompt": prompt,
                               **options})
    await world.discord.wait_for_message(channel, ready_for(ALICE, prompt), timeout=30)
    (submit,) = submits_with(world, prompt)
    return submit


async def test_v6_sends_algorithm_and_never_lets_modelslab_rewrite_the_prompt(world):
    submit = await run(world, "img2img", "a fox, v6 algorithm", algorithm="sde-dpmsolver++",
                       width=1024, height=1024, seed=5)
    assert submit.path == "/api/v6/images/img2img"
    image_url = submit.body["init_image"]
    assert submit.body == {
        "key": world.modelslab.api_key, "prompt": "a fox, v6 algorithm",
        "init_image": image_url, "model_id": "pony_realism", "width": 1024, "height": 1024,
        "samples": 1, "num_inference_steps": 30, "guidance_scale": 7.5, "strength": 0.7,
        "seed": 5, "scheduler": "DPMSolverMultistepScheduler", "use_karras_sigmas": "yes",
        "clip_skip": 2, "safety_checker": "yes", "algorithm_type": "sde-dpmsolver++",
        "enhance_prompt": "no", "track_id": submit.body["track_id"],
        "webhook": submit.body["webhook"]}
    asked = await run(world, "img2img", "a fox, enhanced", enhance_prompt=True)
    assert asked.body["enhance_prompt"] == "yes"


@pytest.mark.parametrize(("endpoint", "path"), [
    ("enterprise", "/api/v1/enterprise/img2img"),
    ("enterprise_pony", "/api/v1/enterprise/pony/img2img"),
])
async def test_enterprise_sends_lora_vae_and_tomesd(world, endpoint, path):
    prompt = f"a castle with a lora on {endpoint}"
    submit = await run(world, "img2img", prompt, endpoint=endpoint, lora="more_details",
                       lora_strength=0.6, vae="sdxl-vae", width=512, height=512, seed=9)
    assert submit.path == path
    assert submit.body == {
        "key": world.modelslab.enterprise_key, "prompt": prompt,
        "init_image": submit.body["init_image"], "model_id": "pony_realism", "width": 512,
        "height": 512, "samples": 1, "num_inference_steps": 21, "guidance_scale": 7.5,
        "strength": 0.7, "seed": 9, "scheduler": "DPMSolverMultistepScheduler",
        "use_karras_sigmas": "yes", "clip_skip": 1, "safety_checker": "yes",
        "safety_checker_type": "sensitive_content_text", "enhance_prompt": "no",
        "lora_model": "more_details", "lora_strength": 0.6, "vae": "sdxl-vae",
        "tomesd": "yes", "track_id": submit.body["track_id"],
        "webhook": submit.body["webhook"]}


async def test_realtime_sends_style_and_no_guidance_scale(world):
    submit = await run(world, "img2img", "a lighthouse, realtime style", endpoint="realtime",
                       style="watercolor", seed=3)
    assert submit.path == "/api/v1/enterprise/realtime/img2img"
    assert submit.body == {
        "key": world.modelslab.enterprise_key, "prompt": "a lighthouse, realtime style",
        "init_image": submit.body["init_image"], "width": 512, "height": 512, "samples": 1,
        "strength": 0.7, "seed": 3, "safety_checker": True, "enhance_prompt": False,
        "enhance_style": "watercolor", "base64": False, "instant_response": False,
        "track_id": submit.body["track_id"], "webhook": submit.body["webhook"]}


async def test_style_autocomplete_offers_the_documented_styles(world):
    channel = world.channel()
    ix = await world.discord.autocomplete(ALICE, channel, "img2img",
                                          {"endpoint": "realtime", "style": "water"},
                                          focused="style")
    assert [c["value"] for c in ix.choices] == ["watercolor"]
    ix = await world.discord.autocomplete(ALICE, channel, "img2img", {"style": ""},
                                          focused="style")
    assert "anime" in [c["value"] for c in ix.choices] and len(ix.choices) <= 25


@pytest.mark.parametrize(("options", "words"), [
    ({"endpoint": "realtime", "guidance_scale": 7.0},
     "guidance_scale can't be set on the realtime endpoint; it applies on the v6, enterprise, "
     "enterprise Pony, inpainting and enterprise inpainting endpoints"),
    ({"lora": "more_details"},
     "lora can't be set on the v6 endpoint; it applies on the enterprise, enterprise Pony and "
     "enterprise inpainting endpoints"),
    ({"endpoint": "enterprise", "style": "anime"},
     "style can't be set on the enterprise endpoint; it applies on the realtime endpoint"),
    ({"endpoint": "realtime", "style": "van-gogh"},
     "van-gogh is not a style the realtime endpoint accepts"),
    ({"endpoint": "enterprise", "algorithm": "none"},
     "algorithm can't be set on the enterprise endpoint; it applies on the v6 and inpainting "
     "endpoints"),
    ({"endpoint": "enterprise", "lora_strength": 0.5}, "lora_strength needs a lora"),
    ({"endpoint": "realtime", "vae": "sdxl-vae"},
     "vae can't be set on the realtime endpoint; it applies on the enterprise"),
])
async def test_options_that_do_not_apply_are_refused_in_words(world, options, words):
    channel = world.channel()
    before = submits_tried(world)
    ix = await world.discord.slash(ALICE, channel, "img2img",
                                   {"image": world.image(), "prompt": "x", **options},
                                   client_checks=False)
    shown = await status(ix, words)
    assert shown["flags"] & 64
    assert submits_tried(world) == before


async def test_enterprise_inpainting(world):
    channel = world.channel()
    prompt = "a wooden door, enterprise inpainting"
    ix = await world.discord.slash(ALICE, channel, "inpaint", {
        "image": world.image(size=(512, 512)), "mask": mask_attachment(world),
        "prompt": prompt, "endpoint": "enterprise", "lora": "more_details", "seed": 11})
    result = await world.discord.wait_for_message(channel, ready_for(ALICE, prompt), timeout=30)
    (submit,) = submits_with(world, prompt)
    assert submit.path == "/api/v1/enterprise/inpaint"
    assert submit.body == {
        "key": world.modelslab.enterprise_key, "prompt": prompt,
        "init_image": submit.body["init_image"], "mask_image": submit.body["mask_image"],
        "model_id": "pony_realism", "width": 512, "height": 512, "samples": 1,
        "num_inference_steps": 21, "guidance_scale": 7.5, "strength": 0.7, "seed": 11,
        "scheduler": "DPMSolverMultistepScheduler", "use_karras_sigmas": "yes",
        "clip_skip": 1, "safety_checker": "yes", "safety_checker_type": "sensitive_content_text",
        "enhance_prompt": "no", "lora_model": "more_details", "tomesd": "yes",
        "track_id": submit.body["track_id"], "webhook": submit.body["webhook"]}
    assert world.discord.file_at(submit.body["mask_image"])  # the converted mask
    assert "enterprise_inpaint endpoint" in result["content"]
    await status(ix, "Done")
    # a re-roll runs on the same endpoint
    reroll = await world.discord.click(ALICE, result, button(result, "Re-roll"))
    await status(reroll, "Done", within=30)
    again = submits_with(world, prompt)
    assert [s.path for s in again] == ["/api/v1/enterprise/inpaint"] * 2
    assert world.discord.file_at(again[1].body["mask_image"]) == \
        world.discord.file_at(submit.body["mask_image"])
    # the v6 inpainting endpoint stays the default, and refuses what it does not take
    ix = await world.discord.slash(ALICE, channel, "inpaint", {
        "image": world.image(size=(512, 512)), "mask": mask_attachment(world),
        "prompt": "x", "lora": "more_details"})
    await status(ix, "lora can't be set on the inpainting endpoint; it applies on the "
                     "enterprise, enterprise Pony and enterprise inpainting endpoints")


async def test_safety_filter_is_chosen_per_server(world):
    s = new_server(world)
    text = await command(world, s.admin, s.channel, "config safety_filter", {"type": "blur"})
    assert "blur" in text
    prompt = "a beach, blurred where flagged"
    await command(world, s.member, s.channel, "img2img", {
        "image": world.image(), "prompt": prompt, "endpoint": "enterprise"})
    await world.discord.wait_for_message(s.channel, ready_for(s.member, prompt), timeout=30)
    (submit,) = submits_with(world, prompt)
    assert submit.body["safety_checker_type"] == "blur"
    shown = await command(world, s.admin, s.channel, "config show")
    assert "Safety filter" in shown and "**blur**" in shown
    # elsewhere the endpoint's own default
    other = await run(world, "img2img", "a beach elsewhere", endpoint="enterprise")
    assert other.body["safety_checker_type"] == "sensitive_content_text"


async def test_a_documented_try_again_503_without_a_job_is_sent_again(world):
    world.modelslab.script("submit", 503, {
        "status": "error", "message": "Service temporarily unavailable. Please try again later."})
    prompt = "a bridge after a 503"
    channel = world.channel()
    await world.discord.slash(ALICE, channel, "img2img",
                              {"image": world.image(), "prompt": prompt})
    await world.discord.wait_for_message(channel, ready_for(ALICE, prompt), timeout=40)
    tries = [r for r in world.modelslab.requests
             if r.kind == "submit" and r.body and r.body.get("prompt") == prompt]
    assert [r.response.status for r in tries] == [503, 200]
    assert len(submits_with(world, prompt)) == 1


async def test_polled_jobs_fetch_with_request_id_and_without_an_id(world):
    fake = world.modelslab
    fake.send_webhooks = False  # the bot must poll
    try:
        fake.transform_next("submit", lambda b: {k: v for k, v in b.items() if k != "id"})
        channel = world.channel()
        await world.discord.slash(ALICE, channel, "img2img",
                                  {"image": world.image(), "prompt": "no id given"})
        # The answer without an id is the next submit's: the second command waits for it.
        await eventually(lambda: submits_with(world, "no id given"), within=30)
        await world.discord.slash(ALICE, channel, "img2img",
                                  {"image": world.image(), "prompt": "an id given"})
        await world.discord.wait_for_message(channel, ready_for(ALICE, "no id given"),
                                             timeout=60)
        await world.discord.wait_for_message(channel, ready_for(ALICE, "an id given"),
                                             timeout=60)
    finally:
        fake.send_webhooks = True
    (without,) = submits_with(world, "no id given")
    (with_id,) = submits_with(world, "an id given")
    fetched = {r.job_id: r for r in fake.fetches if r.accepted}
    assert fetched[without.job_id].body == {"key": fake.api_key}
    assert fetched[with_id.job_id].body == {"key": fake.api_key,
                                            "request_id": str(with_id.job_id)}
