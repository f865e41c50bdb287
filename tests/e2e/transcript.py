"""Print the transcript of one member session against the real bot and the local fakes:
what the member sent, what the bot answered, and what ModelsLab received.

    .venv/bin/python -m tests.e2e.transcript
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from tests.e2e.conftest import ALICE, BOB, start_world
from tests.e2e.test_generate import ready_for
from tests.e2e.test_remix import button


def show_payload(body: dict, fake) -> str:
    shown = {k: ("<enterprise key>" if v == fake.enterprise_key else
                 "<api key>" if v == fake.api_key else v) for k, v in body.items()}
    if "webhook" in shown:
        shown["webhook"] = shown["webhook"].rsplit("/", 1)[0] + "/<secret>"
    return json.dumps(shown, indent=2)


def say(who: str, text: str) -> None:
    print(f"\n{who}:\n  " + text.replace("\n", "\n  "))


async def main() -> None:
    world, stop = await start_world(Path(tempfile.mkdtemp(prefix="remixer-transcript-")))
    try:
        channel = world.channel()
        image = world.image("harbour.png", size=(1200, 900))
        options = {"image": image, "prompt": "a harbour at dawn, oil painting",
                   "endpoint": "enterprise", "steps": 31, "samples": 2}
        say("alice", f"/img2img image:harbour.png (1200x900) prompt:{options['prompt']!r} "
                     f"endpoint:enterprise steps:31 samples:2")
        ix = await world.discord.slash(ALICE, channel, "img2img", options)
        answer = await ix.response()
        say("bot (to alice only)", f"[interaction answered {ix.response_latency * 1000:.0f} ms "
                                   f"after it was sent: type {answer['type']}, ephemeral "
                                   f"{ix.ephemeral}]")
        status = await ix.wait_original(lambda m: "Queued" in m["content"] or
                                        "Generating" in m["content"])
        say("bot (to alice only)", status["content"])
        result = await world.discord.wait_for_message(channel, ready_for(ALICE), timeout=20)
        (submit,) = [s for s in world.modelslab.submits if s.body["prompt"] == options["prompt"]]
        say("ModelsLab received", f"POST {submit.path}\n" + show_payload(submit.body,
                                                                         world.modelslab))
        say("bot (in the channel)", result["content"] + "\n" + "files: " + ", ".join(
            f"{f['filename']} ({len(f['data'])} bytes)" for f in result["files"]) +
            "\nbuttons: " + " | ".join(c["label"] for row in result["components"]
                                       for c in row["components"]))
        done = await ix.wait_original(lambda m: "Done" in m["content"])
        say("bot (to alice only)", done["content"])

        say("bob", "clicks [Remix 2] on alice's result")
        click = await world.discord.click(BOB, result, button(result, "Remix 2"))
        await click.response()
        fields = [(item.get("label") or row.get("label"), item.get("value"))
                  for row in click.modal["components"]
                  for item in (row.get("components") or [row.get("component")])]
        say("bot (to bob only)", f"modal {click.modal['title']!r}: " + "; ".join(
            f"{label} = {value!r}" for label, value in fields))
        say("bob", "submits: Prompt = 'a harbour at dusk, oil painting', Strength = 0.5")
        await world.discord.submit_modal(BOB, channel, click.modal["custom_id"], {
            "Prompt": "a harbour at dusk, oil painting",
            "Strength (0 keeps the image, 1 ignores it)": "0.5"})
        remix = await world.discord.wait_for_message(channel, ready_for(BOB), timeout=20)
        (submit,) = [s for s in world.modelslab.submits
                     if s.body["prompt"] == "a harbour at dusk, oil painting"]
        say("ModelsLab received", f"POST {submit.path}\n" + show_payload(submit.body,
                                                                         world.modelslab))
        say("bot (in the channel)", remix["content"])
    finally:
        await stop()


if __name__ == "__main__":
    asyncio.run(main())
