"""A busy server: talking to Discord never holds up the jobs."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import GUILD, start_world
from tests.e2e.test_generate import eventually

FIRST_MEMBER = 90_000


@pytest.mark.asyncio
async def test_a_discord_that_hangs_on_status_edits_does_not_hold_up_any_result(tmp_path):
    """Polling mode, one slot, a queue of members; Discord never answers an edit of a
    member's status message. Every result is still fetched and posted."""
    world, stop = await start_world(tmp_path, PUBLIC_BASE_URL="", MODELSLAB_MAX_CONCURRENCY="1",
                                    LOG_LEVEL="WARNING")
    try:
        world.modelslab.auto_complete_after = 0.2
        world.modelslab.eta = 0.2
        world.discord.hang("PATCH", r"/webhooks/\d+/[^/]+/messages/@original$")
        channel = world.channel()
        members = [FIRST_MEMBER + n for n in range(6)]
        for user in members:
            world.discord.add_member(GUILD, user, f"member{user}")
        for user in members:
            ix = await world.discord.slash(user, channel, "img2img",
                                           {"image": world.image(), "prompt": f"fox {user}"})
            await ix.response(timeout=10)

        def posted() -> set[int]:
            found = set()
            for call in world.discord.rest_log:
                content = (call.json or {}).get("content") if isinstance(call.json, dict) else None
                if call.method == "POST" and call.status == 200 and content \
                        and "your image is ready" in content:
                    found.add(int(content.split("<@", 1)[1].split(">", 1)[0]))
            return found

        await eventually(lambda: posted() >= set(members), within=90)
        hung = [c for c in world.discord.rest_log
                if c.method == "PATCH" and c.path.endswith("/messages/@original")]
        assert hung and all(c.status == 0 for c in hung)  # none was ever answered
    finally:
        await stop()
