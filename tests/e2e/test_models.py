"""The models that exist: the `model` box answers from ModelsLab's model lists (500 entries
on each route in the fake), cached and refreshed in the background, never fetched on a
keystroke; unknown ids are refused with the closest names; admins can limit a server to a
list; and when the list cannot be read the bot says so and accepts any well-formed id."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from tests.e2e.conftest import ALICE, start_world
from tests.e2e.test_generate import eventually, ready_for, status, submits_with
from tests.e2e.test_quotas import command, new_server

pytestmark = pytest.mark.asyncio(loop_scope="module")


def submits_tried(world) -> int:
    """Every submit ModelsLab saw (accepted or not); model list reads run in the background."""
    return sum(1 for r in world.modelslab.requests if r.kind == "submit")


async def typed(world, channel: int, text: str, command_name: str = "img2img",
                user: int = ALICE) -> list[str]:
    ix = await world.discord.autocomplete(user, channel, command_name, {"model": text},
                                          focused="model")
    return [c["value"] for c in ix.choices]


async def test_the_model_box_answers_from_the_model_list(world):
    channel = world.channel()
    assert await typed(world, channel, "community-model-47") == [
        f"community-model-{n}" for n in range(470, 480)]
    assert await typed(world, channel, "JUGGERNAUT") == ["juggernaut-xl-v9"]
    # an enterprise endpoint's box answers from the enterprise list (models on its servers)
    ix = await world.discord.autocomplete(ALICE, channel, "img2img", {
        "endpoint": "enterprise_pony", "model": "community-model-490"}, focused="model")
    assert [c["value"] for c in ix.choices] == ["enterprise-community-model-490"]
    many = await typed(world, channel, "model-4")
    assert len(many) == 25 and all("model-4" in m for m in many)
    assert len(await typed(world, channel, "")) == 25
    assert await typed(world, channel, "pony_", "inpaint") == ["pony_realism"]


async def test_no_model_list_fetch_on_a_keystroke(world):
    channel = world.channel()
    await eventually(lambda: len(world.modelslab.model_list_calls) >= 2)
    before = len(world.modelslab.model_list_calls)
    for text in ("d", "dr", "dre", "drea", "dream", "dreams", "dreamsh"):
        await typed(world, channel, text)
    assert await typed(world, channel, "dreamsh") == ["dreamshaper-8"]
    assert len(world.modelslab.model_list_calls) == before
    paths = {r.path for r in world.modelslab.model_list_calls}
    assert paths == {"/api/v4/dreambooth/model_list", "/api/v1/enterprise/get_all_models"}


async def test_an_unknown_model_is_refused_with_the_closest_names(world):
    channel = world.channel()
    before = submits_tried(world)
    ix = await world.discord.slash(ALICE, channel, "img2img", {
        "image": world.image(), "prompt": "x", "model": "dreamshaper-9"})
    shown = await status(ix, "dreamshaper-9 is not a model on ModelsLab's model list")
    assert "The closest names: dreamshaper-8" in shown["content"]
    assert submits_tried(world) == before  # nothing sent
    prompt = "a model deep in the list"
    await world.discord.slash(ALICE, channel, "img2img", {
        "image": world.image(), "prompt": prompt, "model": "community-model-321"})
    await world.discord.wait_for_message(channel, ready_for(ALICE, prompt), timeout=30)
    (submit,) = submits_with(world, prompt)
    assert submit.body["model_id"] == "community-model-321"


async def test_config_default_model_uses_the_list(world):
    s = new_server(world)
    ix = await world.discord.autocomplete(s.admin, s.channel, "config default_model",
                                          {"model": "realistic"}, focused="model")
    # the default applies on every endpoint: both lists, best match first
    assert [c["value"] for c in ix.choices] == ["realistic-vision-v51",
                                                "enterprise-realistic-vision-v51"]
    text = await command(world, s.admin, s.channel, "config default_model",
                         {"model": "realistic-vision-v5"})
    assert "not a model on ModelsLab's model list" in text and "realistic-vision-v51" in text
    text = await command(world, s.admin, s.channel, "config default_model",
                         {"model": "realistic-vision-v51"})
    assert "realistic-vision-v51" in text and "not a model" not in text


async def test_admins_limit_a_server_to_a_list_of_models(world):
    s = new_server(world)
    text = await command(world, s.admin, s.channel, "config models",
                         {"action": "add", "model": "community-model-001"})
    assert "community-model-001" in text
    await command(world, s.admin, s.channel, "config models",
                  {"action": "add", "model": "dreamshaper-8"})
    assert await typed(world, s.channel, "", user=s.member) == ["dreamshaper-8",
                                                                 "community-model-001"]
    text = await command(world, s.member, s.channel, "img2img", {
        "image": world.image(), "prompt": "x", "model": "pony_realism"})
    assert ("pony_realism is not one of the models this server allows: community-model-001, "
            "dreamshaper-8") in text
    text = await command(world, s.admin, s.channel, "config models",
                         {"action": "add", "model": "no-such-model-anywhere"})
    assert "not a model on ModelsLab's model list" in text
    await command(world, s.admin, s.channel, "config models",
                  {"action": "remove", "model": "dreamshaper-8"})
    shown = await command(world, s.admin, s.channel, "config show")
    assert "Models members may use: community-model-001" in shown
    assert "ModelsLab's model list: 1000 models" in shown
    await command(world, s.admin, s.channel, "config models", {"action": "clear"})
    assert len(await typed(world, s.channel, "", user=s.member)) == 25


async def test_the_list_is_refreshed_in_the_background(tmp_path):
    world, stop = await start_world(tmp_path, MODEL_LIST_REFRESH="1")
    try:
        channel = world.channel()
        assert await typed(world, channel, "brand-new") == []
        calls = len(world.modelslab.model_list_calls)
        world.modelslab.models.append("brand-new-model")

        async def shown() -> bool:
            return await typed(world, channel, "brand-new") == ["brand-new-model"]

        deadline = asyncio.get_running_loop().time() + 30
        while not await shown():
            assert asyncio.get_running_loop().time() < deadline, "the new model never showed"
            await asyncio.sleep(0.2)
        assert len(world.modelslab.model_list_calls) > calls
    finally:
        await stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def listless(tmp_path_factory):
    """A bot whose ModelsLab cannot answer the model lists."""
    def unreadable(fake) -> None:
        fake.script("models", 500, "<html>Internal Server Error</html>",
                    content_type="text/html", times=10_000)
    world, stop = await start_world(tmp_path_factory.mktemp("listless"), prepare=unreadable)
    yield world
    await stop()


async def test_without_a_list_the_bot_says_so_and_accepts_any_model(listless):
    world = listless
    channel = world.channel()
    await eventually(lambda: len(world.modelslab.model_list_calls) >= 1)
    ix = await world.discord.autocomplete(ALICE, channel, "img2img",
                                          {"model": "my-own-model"}, focused="model")
    assert ix.choices[0]["value"] == "my-own-model"
    assert "can't be read" in ix.choices[0]["name"]
    prompt = "a model the bot cannot check"
    await world.discord.slash(ALICE, channel, "img2img", {
        "image": world.image(), "prompt": prompt, "model": "my-own-model"})
    await world.discord.wait_for_message(channel, ready_for(ALICE, prompt), timeout=30)
    (submit,) = submits_with(world, prompt)
    assert submit.body["model_id"] == "my-own-model"
    s = new_server(world)
    shown = await command(world, s.admin, s.channel, "config show")
    assert "model list could not be read" in shown and "any well-formed model id" in shown
    assert "could not be read" in world.bot.log()


async def test_the_lora_box_offers_the_loras_on_the_lists(world):
    channel = world.channel()
    ix = await world.discord.autocomplete(ALICE, channel, "img2img", {
        "endpoint": "enterprise", "lora": "detail"}, focused="lora")
    assert [c["value"] for c in ix.choices] == ["add-detail-xl", "more_details", "detail"]
    ix = await world.discord.autocomplete(ALICE, channel, "inpaint", {"lora": ""},
                                          focused="lora")
    assert [c["value"] for c in ix.choices] == ["more_details", "add-detail-xl",
                                                "epi-noise-offset"]
    # a LoRA is not a model
    assert await typed(world, channel, "more_details") == []
