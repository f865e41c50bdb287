"""Load benchmark: many members issuing commands at once against the real bot, in webhook
mode and in polling mode, over the local fake Discord and fake ModelsLab.

    .venv/bin/python -m bench.load [--members 100] [--generation 2.5] [--slots 5]
                                   [--discord-latency 0.08] [--deep-queue] [--history N]

--deep-queue is the busy-server run: 1,000 members at once, 10 slots, 1 s jobs. The fake
Discord answers every call after --discord-latency seconds and applies Discord's rate limits
(50 requests a second per bot, interactions exempt; 5 per 5 s per route and channel or token),
answering 429 as Discord does; the bot's 429s are counted. While the queue is deep, new members
keep arriving, and how fast their commands are acknowledged is measured. --history N runs the
history benchmark instead (bench.history): N realistic past jobs, then the hot queries timed.

The bot runs as its own process (`python -m bot`), exactly as in the end-to-end tests. Each
member sends one /img2img at the same moment; the fake ModelsLab takes --generation seconds
per job and answers 429 beyond --slots queued jobs, like an account's queue limit. It prints:
acknowledgement latency, the bot's overhead from "result available at the API" to "message
posted", webhook throughput (bench.webhooks), API slot utilisation against the ideal set by
MODELSLAB_MAX_CONCURRENCY, the bot's peak memory, and lost and duplicated results. It asserts
nothing: timings on a shared machine are not test material.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from pathlib import Path

from bench.webhooks import _async, peak_rss_mib, percentile, settle
from bench.webhooks import run as webhook_capacity
from tests.e2e.conftest import GUILD, start_world

FIRST_MEMBER = 200_000


def figures(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"p50 {statistics.median(values):7.1f} ms   p99 {percentile(values, 99):7.1f} ms   "
            f"max {max(values):7.1f} ms")


async def one_mode(mode: str, members: int, generation: float, slots: int,
                   latency: float = 0.08, late_members: int = 0) -> dict:
    settings = {"MODELSLAB_MAX_CONCURRENCY": str(slots), "DAILY_IMAGE_QUOTA": "1000",
                "LOG_LEVEL": "WARNING"}
    if mode == "polling":
        settings["PUBLIC_BASE_URL"] = ""  # unset: every job is polled
    world, stop = await start_world(Path(tempfile.mkdtemp(prefix=f"remixer-load-{mode}-")),
                                    **settings)
    try:
        fake_ml, fake_dc = world.modelslab, world.discord
        fake_ml.auto_complete_after = generation
        fake_ml.eta = generation
        fake_ml.queue_limit = slots
        fake_dc.latency = latency
        fake_dc.rate_limits = True
        calls_before = sum(1 for c in fake_dc.rest_log if c.api)
        limited_before = fake_dc.rate_limited
        channel = world.channel()
        users = [FIRST_MEMBER + n for n in range(members)]
        late_users = [FIRST_MEMBER + members + n for n in range(late_members)]
        for user in users + late_users:
            fake_dc.add_member(GUILD, user, f"member{user}")
        image = world.image(size=(1024, 1024))
        wall_minus_mono = time.time() - time.monotonic()

        started = time.monotonic()
        interactions = await asyncio.gather(*(
            fake_dc.slash(user, channel, "img2img", {"image": image, "prompt": f"job {user}"})
            for user in users))
        await asyncio.gather(*(ix.response(timeout=30) for ix in interactions))
        acks = [ix.response_latency * 1000 for ix in interactions]
        # While the queue is full, new members keep arriving, one every 0.2 s: from the moment
        # the burst's commands are all in the queue (their images checked and stored).
        await settle(_async(lambda: len(fake_ml.submits) + sum(
            1 for ix in interactions if ix.original and "Queued" in ix.original["content"])),
            lambda n: n >= members, within=120)
        late_acks = []
        for user in late_users:
            ix = await fake_dc.slash(user, channel, "img2img",
                                     {"image": image, "prompt": f"job {user}"})
            await ix.response(timeout=30)
            late_acks.append(ix.response_latency * 1000)
            await asyncio.sleep(0.2)
        everyone = members + late_members

        found: dict[str, list] = {}
        scanned, unanswered = 0, []

        def posted() -> dict[str, list]:
            """Results posted so far (read incrementally: the fakes share this process)."""
            nonlocal scanned, unanswered
            log = fake_dc.rest_log
            todo, scanned, unanswered = [*unanswered, *range(scanned, len(log))], len(log), []
            for index in todo:
                call = log[index]
                if call.status == 0:
                    unanswered.append(index)
                    continue
                if call.method != "POST" or call.status != 200 or not isinstance(call.json, dict):
                    continue
                content = call.json.get("content") or ""
                if "your image is ready" in content:
                    prompt = content.split("\n> ", 1)[1].split("\n", 1)[0]
                    found.setdefault(prompt, []).append(call)
            return found

        await settle(_async(lambda: len(posted())), lambda n: n >= everyone,
                     within=60 + everyone * generation / slots * 3)
        await asyncio.sleep(1.0)  # room for duplicates to show
        results = posted()
        jobs = {job.body["prompt"]: job for job in fake_ml.jobs.values()}
        overheads = []
        for prompt, calls in results.items():
            job = jobs.get(prompt)
            if job is not None and job.finished is not None:
                available = job.finished + wall_minus_mono
                overheads.append((calls[0].time - available) * 1000)
        finished = [j.finished for j in fake_ml.jobs.values() if j.finished is not None]
        first_submit = min(j.created for j in fake_ml.jobs.values())
        makespan = max(finished) - first_submit
        busy = sum(j.finished - j.created for j in fake_ml.jobs.values() if j.finished)
        bot_calls = sum(1 for c in fake_dc.rest_log if c.api) - calls_before
        # How stale a waiting member's place in line gets: the longest gap between two
        # "Queued" edits of their status (from the first), per member, until it is sent.
        edits: dict[str, list] = {}
        for call in fake_dc.rest_log:
            if call.method == "PATCH" and call.path.endswith("/@original") and isinstance(
                    call.json, dict):
                edits.setdefault(call.path, []).append(call)
        gaps = []
        for calls in edits.values():
            times = []
            for call in calls:
                times.append(call.time)
                if not (call.json.get("content") or "").startswith("Queued"):
                    break
            gaps.extend(b - a for a, b in itertools.pairwise(times))
        return {
            "mode": mode,
            "acks": acks,
            "late_acks": late_acks,
            "overheads": overheads,
            "utilisation": busy / (slots * makespan) if makespan > 0 else float("nan"),
            "ideal_makespan": -(-everyone // slots) * generation,
            "makespan": makespan,
            "wall": time.monotonic() - started,
            "rate_limited": sum(1 for r in fake_ml.requests
                                if r.response and r.response.status == 429),
            "discord_calls": bot_calls,
            "status_gaps": [g * 1000 for g in gaps],
            "discord_429": fake_dc.rate_limited - limited_before,
            "rss": peak_rss_mib(world.bot.proc.pid),
            "lost": everyone - len(results),
            "duplicated": sum(len(calls) - 1 for calls in results.values()),
            "submits": len(fake_ml.submits),
        }
    finally:
        await stop()


async def main(members: int, generation: float, slots: int, latency: float = 0.08,
               late_members: int = 0, webhooks_run: bool = True) -> None:
    print(f"{members} members send /img2img at once (then {late_members} more, one every "
          f"0.2 s); ModelsLab takes {generation} s a job and allows {slots} queued; "
          f"MODELSLAB_MAX_CONCURRENCY={slots}; Discord answers in {latency * 1000:.0f} ms, "
          f"with its rate limits")
    for mode in ("webhook", "polling"):
        r = await one_mode(mode, members, generation, slots, latency, late_members)
        print(f"\n== {mode} mode ==")
        print(f"acknowledgement latency:    {figures(r['acks'])}")
        if r["late_acks"]:
            print(f"  ... queue full, new member: {figures(r['late_acks'])}")
        print(f"result -> message posted:   {figures(r['overheads'])}")
        print(f"place in line refreshed:    {figures(r['status_gaps'])} (gap between edits)")
        print(f"API slot utilisation:       {r['utilisation'] * 100:5.1f} % of the ideal "
              f"({r['makespan']:.1f} s for the work, {r['ideal_makespan']:.1f} s ideal)")
        print(f"429s from ModelsLab:        {r['rate_limited']}   submits: {r['submits']}")
        share = r["discord_429"] / r["discord_calls"] * 100 if r["discord_calls"] else 0.0
        print(f"429s from Discord:          {r['discord_429']} of {r['discord_calls']} calls "
              f"({share:.2f} %)")
        print(f"bot peak memory (RSS):      {r['rss']:.1f} MiB")
        print(f"lost: {r['lost']}, duplicated: {r['duplicated']}")
    if webhooks_run:
        print("\n== webhook throughput (python -m bench.webhooks) ==")
        await webhook_capacity(500, 32, 1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--generation", type=float, default=2.5)
    parser.add_argument("--slots", type=int, default=5)
    parser.add_argument("--discord-latency", type=float, default=0.08)
    parser.add_argument("--deep-queue", action="store_true",
                        help="1,000 members at once, 10 slots, 1 s jobs, new members arriving")
    parser.add_argument("--history", type=int, default=0, metavar="N",
                        help="fill a database with N past jobs and time the hot queries")
    args = parser.parse_args()
    if args.history:
        from bench.history import main as history_main
        asyncio.run(history_main(args.history))
    elif args.deep_queue:
        asyncio.run(main(1000, 1.0, 10, args.discord_latency, late_members=50,
                         webhooks_run=False))
    else:
        asyncio.run(main(args.members, args.generation, args.slots, args.discord_latency))
