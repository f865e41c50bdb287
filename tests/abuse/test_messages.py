"""What members see stays within Discord's rules, whatever they type; deliveries never
duplicate; ModelsLab's words about the account never reach a public channel.

The real bot against the local fake Discord (which enforces Discord's limits and its message
nonces) and the local fake ModelsLab."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
import pytest_asyncio

from tests.e2e.conftest import (
    ALICE,
    BOB,
    start_world,
)
from tests.e2e.test_generate import eventually
from tests.e2e.test_remix import button, modal_fields

pytestmark = pytest.mark.asyncio(loop_scope="module")

LONGEST_MODEL = "m" * 50 + "_" + "x" * 49  # 100 characters: the longest model id accepted


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory):
    """The usual world, with the longest model id on ModelsLab's model list (ids on no list
    are refused before anything is sent)."""
    world, stop = await start_world(tmp_path_factory.mktemp("bot"),
                                    prepare=lambda ml: ml.models.append(LONGEST_MODEL))
    yield world
    await stop()


def results(world, channel: int, words: str) -> list[dict]:
    return [m for m in world.discord.messages(channel, include_ephemeral=False)
            if "your image is ready" in m["content"] and words in m["content"]]


def dms(world, user: int, words: str) -> list[dict]:
    return [m for m in world.discord.direct_messages.get(user, []) if words in m["content"]]


def delivered(world, prompt: str) -> bool:
    """The bot considers the job with ``prompt`` delivered."""
    with sqlite3.connect(world.bot.env["DATABASE_PATH"]) as db:
        return db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'delivered' AND "
                          "instr(options, ?) > 0", (prompt,)).fetchone()[0] == 1


async def start(world, channel: int, prompt: str, *, expire: bool = False, **options):
    """/img2img by Alice; with ``expire`` her token stops working at once, so the result
    must go to the channel (or, failing that, her direct messages)."""
    ix = await world.discord.slash(ALICE, channel, "img2img",
                                   {"image": world.image(), "prompt": prompt, **options})
    await ix.response()
    if expire:
        world.discord.expire(ix)
    return ix


async def test_the_longest_prompt_and_model_id_still_arrive_by_direct_message(world):
    channel = world.channel()
    world.discord.deny(channel, "send")
    # Blank lines and markdown double in size once quoted and escaped.
    prompt = ("tall *order* " + "\n" * 900 + "_x_ " * 200)[:2000]
    await start(world, channel, prompt, expire=True, model=LONGEST_MODEL)
    (message,) = await eventually(lambda: dms(world, ALICE, "tall \\*order\\*"), within=30)
    assert len(message["content"]) <= 2000
    assert "mmmmmmmmmm" in message["content"] and "tall \\*order\\*" in message["content"]
    assert "I could not post this in" in message["content"]
    assert len(message["files"]) == 1
    await asyncio.sleep(1.0)
    assert len(dms(world, ALICE, "tall \\*order\\*")) == 1


async def test_a_prompt_is_shown_as_text_not_markdown_or_mentions(world):
    channel = world.channel()
    prompt = ("# Free nitro\n[click here](https://evil.example/steal) <@1002> @everyone "
              "-# small print")
    await start(world, channel, prompt)
    (message,) = await eventually(lambda: results(world, channel, "Free nitro"))
    content = message["content"]
    assert "<@1002>" not in content and "@everyone" not in content
    assert "[click here](" not in content  # no masked link
    assert "\n> # " not in content  # no heading
    assert "> \\# Free nitro" in content  # still in its quote block, as typed
    assert [m["id"] for m in message["mentions"]] == [str(ALICE)]
    assert not message["mention_everyone"]


async def test_history_shows_prompts_as_text_on_one_line(world):
    channel = world.channel()
    prompt = "# Loud\n<@1002> see [here](https://evil.example) " + "w" * 300
    await start(world, channel, prompt)
    await eventually(lambda: results(world, channel, "Loud"))
    ix = await world.discord.slash(ALICE, channel, "history", {})
    text = (await ix.response())["data"]["content"]
    (line,) = [line for line in text.splitlines() if "Loud" in line]
    assert "<@1002>" not in line and "[here](" not in line
    assert "\\# Loud" in line and "w…" in line
    assert len(text) <= 2000


async def test_the_scheduler_option_is_capped(world):
    (img2img,) = [c for c in world.discord.global_commands if c["name"] == "img2img"]
    (scheduler,) = [o for o in img2img["options"] if o["name"] == "scheduler"]
    assert scheduler["max_length"] <= 100
    channel = world.channel()
    before = len(world.modelslab.requests)
    # a modified client sends a huge one anyway: the member still gets an answer
    ix = await world.discord.slash(ALICE, channel, "img2img", {
        "image": world.image(), "prompt": "x", "scheduler": "Karras" * 600},
        client_checks=False)
    shown = await ix.wait_original(lambda m: m["content"] and "thinking" not in m["content"],
                                   timeout=15)
    assert shown["flags"] & 64 and len(shown["content"]) <= 2000
    assert len(world.modelslab.requests) == before


async def test_a_remix_of_the_longest_prompt_opens_its_form_within_the_limits(world):
    channel = world.channel()
    prompt = "a remix " + "p" * 1992
    await start(world, channel, prompt, strength=0.123456)
    (result,) = await eventually(lambda: results(world, channel, "a remix ppp"), within=30)
    click = await world.discord.click(ALICE, result, button(result, "Remix"))
    await click.response()
    assert click.modal is not None  # Discord accepted the form
    fields = modal_fields(click.modal)
    assert fields["Prompt"] == prompt
    assert fields["Strength (0 keeps the image, 1 ignores it)"] == "0.123"


async def test_a_refused_upload_is_sent_again_smaller_not_retried_and_refunded(world):
    channel = world.channel()
    world.modelslab.image_size = 1024  # about 5 KB each
    world.discord.attachment_size_limit = 4000  # this server takes less
    try:
        ix = await start(world, channel, "a big picture")
        (message,) = await eventually(lambda: results(world, channel, "a big picture"),
                                      within=30)
        assert len(message["files"]) == 1 and len(message["files"][0]["data"]) <= 4000
        refused = [c for c in world.discord.rest_log if c.status == 413]
        assert 1 <= len(refused) <= 2  # one refusal, then the smaller form
        done = await ix.wait_original(lambda m: "Done" in m["content"], timeout=10)
        assert done["flags"] & 64
    finally:
        world.modelslab.image_size = 64
        world.discord.attachment_size_limit = 10 * 1024 * 1024


async def test_a_channel_post_whose_answer_was_lost_is_not_posted_twice(world):
    channel = world.channel()
    # Discord posts it but answers 500, to the post and to the client's four retries: the
    # bot hears a failure and tries again later.
    world.discord.lose_answer_next("POST", rf"^/channels/{channel}/messages$", 500, times=5)
    await start(world, channel, "said once in the channel", expire=True)
    await eventually(lambda: results(world, channel, "said once in the channel"), within=30)
    await eventually(lambda: delivered(world, "said once in the channel"), within=90)
    await asyncio.sleep(1.0)
    assert len(results(world, channel, "said once in the channel")) == 1


async def test_a_direct_message_whose_answer_was_lost_is_not_sent_twice(world):
    channel = world.channel()
    world.discord.deny(channel, "send")
    world.discord.lose_answer_next("POST", r"^/channels/\d+/messages$", 500, times=5)
    await start(world, channel, "said once in private", expire=True)
    await eventually(lambda: dms(world, ALICE, "said once in private"), within=30)
    await eventually(lambda: delivered(world, "said once in private"), within=90)
    await asyncio.sleep(1.0)
    assert len(dms(world, ALICE, "said once in private")) == 1


async def test_a_followup_posted_despite_a_server_error_is_not_posted_again(world):
    channel = world.channel()
    # Discord posts the followup but answers 500, to it and to the client's four retries.
    world.discord.lose_answer_next("POST", r"^/webhooks/\d+/", 500, times=5)
    await start(world, channel, "followed up once")
    await eventually(lambda: results(world, channel, "followed up once"), within=30)
    await eventually(lambda: delivered(world, "followed up once"), within=90)
    await asyncio.sleep(1.0)
    assert len(results(world, channel, "followed up once")) == 1


async def test_account_errors_reach_the_member_privately_never_the_channel(world):
    channel = world.channel()
    words = "Insufficient credits: your wallet balance is 0.00 USD. Please top up to continue."
    world.modelslab.script("submit", 200, {"status": "error", "message": words})
    world.modelslab.hang_next("submit", 1.0)  # the token is gone before the answer comes
    await start(world, channel, "costs money", expire=True)
    (private,) = await eventually(lambda: dms(world, ALICE, "Insufficient credits"), within=30)
    assert "costs money" in private["content"]
    await asyncio.sleep(1.0)
    public = world.discord.messages(channel, include_ephemeral=False)
    assert not [m for m in public if "credit" in m["content"].lower()
                or "wallet" in m["content"].lower()]
    assert words in world.bot.log()


async def test_a_prompt_quoting_another_jobs_marker_cannot_pass_for_its_delivery(tmp_path):
    """The bot dies while delivering job A; another member's result quotes A's marker in its
    prompt. After the restart A is still delivered: the quote is not taken for A's message."""
    world, stop = await start_world(tmp_path)
    try:
        world.modelslab.auto_complete_after = None
        channel = world.channel()
        db = sqlite3.connect(tmp_path / "bot.sqlite3")
        await start(world, channel, "the real thing")
        await eventually(lambda: len(world.modelslab.processing_jobs) == 1)
        (track_a,) = db.execute("SELECT track_id FROM jobs").fetchone()
        ix_b = await world.discord.slash(BOB, channel, "img2img", {
            "image": world.image(), "prompt": f"look: job `{track_a[:8]}` was mine"})
        await ix_b.response()
        await eventually(lambda: len(world.modelslab.processing_jobs) == 2)
        job_a, job_b = world.modelslab.processing_jobs
        await world.modelslab.complete(job_b.id)
        await eventually(lambda: results(world, channel, "was mine"))

        world.discord.fail_next("POST", r"^/webhooks/", 500, times=1000)
        await world.modelslab.complete(job_a.id)
        await eventually(lambda: db.execute(
            "SELECT delivering_since FROM jobs WHERE track_id = ?", (track_a,)).fetchone()[0])
        world.bot.kill()
        world.discord.clear_failures()
        sessions = len(world.discord.sessions)
        world.bot.start()
        await world.discord.wait_until_ready(timeout=30, after=sessions)
        await eventually(lambda: results(world, channel, "the real thing"), within=30)
        await eventually(lambda: db.execute(
            "SELECT COUNT(*) FROM jobs WHERE status != 'delivered'").fetchone()[0] == 0)
        assert len(results(world, channel, "the real thing")) == 1
    finally:
        await stop()
