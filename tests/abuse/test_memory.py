"""No member can exhaust the bot's memory or CPU: images that decode to hundreds of megabytes,
sent by many members at once, and results piling up over time.

Each test starts a bot of its own and reads its memory from /proc/<pid>/status: VmHWM is the
peak resident size over the process's life, VmRSS the size now.
"""

from __future__ import annotations

import asyncio
import gc
import io
import itertools
import re

import discord
import pytest
from PIL import Image

from tests.e2e.conftest import GUILD, start_world
from tests.e2e.test_generate import eventually, ready_for

pytestmark = pytest.mark.asyncio(loop_scope="function")

MB = 1024 * 1024
PEAK_LIMIT = 400 * MB
HUGE_SIDE = 6320  # the largest square Remixer accepts: 39.9 megapixels
_ids = itertools.count(90_000)


def memory(pid: int, field: str) -> int:
    """A /proc/<pid>/status figure (VmHWM, VmRSS), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        match = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
    assert match, field
    return int(match.group(1)) * 1024


def flat_huge_png() -> bytes:
    """A 170 KB PNG of one colour that decodes to 160 MB of RGBA pixels."""
    buffer = io.BytesIO()
    Image.new("RGBA", (HUGE_SIDE, HUGE_SIDE), (30, 120, 200, 255)).save(buffer, "PNG")
    return buffer.getvalue()


def add_members(world, count: int) -> list[int]:
    members = [next(_ids) for _ in range(count)]
    for member in members:
        world.discord.add_member(GUILD, member, f"member{member}",
                                 permissions=discord.Permissions.none().value)
    return members


def answered(content: str) -> bool:
    """The member's private response says something final about the job: a status (it is in
    line, at ModelsLab, or done) or a refusal; not the placeholder."""
    return bool(content) and "Preparing" not in content


def huge_submits(world) -> list:
    return [s for s in world.modelslab.submits
            if str(s.body.get("prompt", "")).startswith("huge canvas")]


async def test_sixteen_huge_images_at_once_stay_within_memory_and_others_are_answered(
        tmp_path):
    world, stop = await start_world(tmp_path)
    try:
        pid = world.bot.proc.pid
        channel = world.channel()
        data = flat_huge_png()
        assert len(data) < 200 * 1024
        members = add_members(world, 17)
        crowd, latecomer = members[:16], members[16]
        await asyncio.sleep(1)  # the bot settles after start-up
        baseline = memory(pid, "VmRSS")

        sent = await asyncio.gather(*(
            world.discord.slash(member, channel, "img2img", {
                "image": world.discord.add_attachment("huge.png", data, "image/png"),
                "prompt": f"huge canvas {member}"})
            for member in crowd))
        for ix in sent:  # every one is acknowledged (privately deferred)
            await ix.response(timeout=10)
            assert ix.deferred, ix.responses

        # While the big images are being worked on, another member's ordinary command is
        # still acknowledged within Discord's 3 seconds (the fake refuses a later answer).
        normal = await world.discord.slash(latecomer, channel, "img2img", {
            "image": world.image(), "prompt": "an ordinary photo"})
        await normal.response(timeout=10)
        assert normal.deferred and normal.answer is not None, normal.responses
        assert normal.response_latency is not None and normal.response_latency < 3.0
        assert len(huge_submits(world)) < 16  # the bot was still busy with the big ones

        for ix in [*sent, normal]:  # every one gets an answer in their private response
            shown = await ix.wait_original(lambda m: answered(m["content"]), timeout=240)
            assert any(words in shown["content"] for words in
                       ("Queued", "Generating", "Finishing", "Done")), shown["content"]
        for member in crowd:
            await world.discord.wait_for_message(
                channel, ready_for(member, f"huge canvas {member}"), timeout=120)

        peak = memory(pid, "VmHWM")
        print(f"bot RSS at rest {baseline / MB:.0f} MB; peak with 16 huge images "
              f"{peak / MB:.0f} MB; {memory(pid, 'VmRSS') / MB:.0f} MB after")
        assert peak < PEAK_LIMIT, f"peak RSS {peak / MB:.0f} MB"
        assert len(huge_submits(world)) == 16
    finally:
        await stop()


RESULTS = 2_000
WARM_UP = 1_200
SENDERS = 40  # members sending one command after another, each waiting for their result


async def post_results(world, channel: int, members: list[int], count: int,
                       image: bytes) -> list:
    """``count`` results posted by the bot: the members take turns, each waiting for their
    result before the next command; returns the interactions in order of sending."""
    done: list = []
    turns = iter(range(count))

    async def member_turns(member: int) -> None:
        for n in turns:
            ix = await world.discord.slash(member, channel, "img2img", {
                "image": world.discord.add_attachment("small.png", image, "image/png"),
                "prompt": f"result {n}", "samples": 1})
            done.append(ix)
            await eventually(lambda ix=ix: ix.followup_ids, within=120)

    await asyncio.gather(*(member_turns(member) for member in members))
    return done


async def test_memory_stays_flat_as_results_pile_up_and_old_buttons_still_work(tmp_path):
    world, stop = await start_world(tmp_path, DAILY_IMAGE_QUOTA="100000",
                                    MODELSLAB_MAX_CONCURRENCY="50", LOG_LEVEL="WARNING")
    try:
        world.modelslab.mode = "success"  # results come back with the submit: the fast path
        world.discord.human_delay = 0
        pid = world.bot.proc.pid
        channel = world.channel()
        members = add_members(world, SENDERS)
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 40, 120)).save(buffer, "PNG")
        image = buffer.getvalue()

        first = await post_results(world, channel, members, WARM_UP, image)
        gc.collect()
        before = memory(pid, "VmRSS")
        await post_results(world, channel, members, RESULTS, image)
        await asyncio.sleep(2)  # the last deliveries' tasks end
        after = memory(pid, "VmRSS")
        growth = (after - before) / RESULTS
        print(f"bot RSS {before / MB:.1f} MB after {WARM_UP} results, {after / MB:.1f} MB "
              f"after {RESULTS} more: {growth:.0f} bytes per result")
        assert growth < 1024, f"{growth:.0f} bytes per result"

        # The buttons on the first result still answer (through their persistent handlers).
        message = world.discord.message(first[0].followup_ids[0])
        ids = [c["custom_id"] for row in message["components"] for c in row["components"]]
        remix = next(i for i in ids if i.startswith("remix:"))
        click = await world.discord.click(first[0].user_id, message, remix)
        await click.response(timeout=10)
        assert click.modal is not None, click.responses
    finally:
        await stop()
