"""Load benchmark: many members issuing commands at once against the real bot, in webhook
mode and in polling mode, over the local fake Discord and fake ModelsLab.

    .venv/bin/python -m bench.load [--members 100] [--generation 2.5] [--slots 5]
    .venv/bin/python -m bench.load --processes 3 --database postgresql

With ``--database postgresql`` a PostgreSQL server is started on loopback (as the tests
start theirs) and the deep queue runs on 1, 2 ... ``--processes`` bot processes sharing it,
one gateway shard each, next to one process on SQLite in the same run; with two processes
or more, a further batch follows in which the process holding the most job leases is
SIGKILLed, and the time until its job steps are taken over is printed against the lease
period (lost and duplicated results count both batches).

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


LEASE = 2.0  # JOB_LEASE_SECONDS in the several-process runs


async def cluster_mode(processes: int, server, members: int, generation: float,
                       slots: int) -> dict:
    """The deep queue on ``processes`` bots sharing one PostgreSQL database (webhook mode);
    with two or more, then a batch with a SIGKILL (see ``_kill_and_time_takeover``)."""
    from tests.e2e.cluster import start_cluster

    users = [FIRST_MEMBER + n for n in range(members)]
    cluster = await start_cluster(
        Path(tempfile.mkdtemp(prefix=f"remixer-load-pg{processes}-")),
        server.fresh_database(), processes, members=users,
        MODELSLAB_MAX_CONCURRENCY=str(slots), DAILY_IMAGE_QUOTA="1000", LOG_LEVEL="WARNING",
        JOB_LEASE_SECONDS=str(LEASE))
    try:
        fake_ml, fake_dc = cluster.modelslab, cluster.discord
        fake_ml.auto_complete_after = generation
        fake_ml.eta = generation
        fake_ml.queue_limit = slots
        channels = [cluster.channel(shard) for shard in range(processes)]
        image = cluster.image()
        wall_minus_mono = time.time() - time.monotonic()
        started = time.monotonic()
        interactions = await asyncio.gather(*(
            fake_dc.slash(user, channels[n % processes], "img2img",
                          {"image": image, "prompt": f"job {user}"})
            for n, user in enumerate(users)))
        await asyncio.gather(*(ix.response(timeout=60) for ix in interactions))
        acks = [ix.response_latency * 1000 for ix in interactions]
        posted = _posted(fake_dc)
        await settle(_async(lambda: len(posted())), lambda n: n >= members,
                     within=60 + members * generation / slots * 3)
        await asyncio.sleep(1.0)  # room for duplicates to show
        result = _figures(fake_ml, posted(), members, slots, generation, wall_minus_mono)
        result.update(acks=acks, wall=time.monotonic() - started, takeover=None,
                      rss=max(peak_rss_mib(b.proc.pid) for b in cluster.bots if b.alive()))
        if processes > 1:  # then a smaller batch, with a SIGKILL in the middle of it
            extra = [FIRST_MEMBER + members + n for n in range(4 * processes)]
            for user in extra:
                for shard in range(processes):
                    fake_dc.add_member(cluster.guild(shard), user, f"member{user}")
            await asyncio.gather(*(
                fake_dc.slash(user, channels[n % processes], "img2img",
                              {"image": image, "prompt": f"job {user}"})
                for n, user in enumerate(extra)))
            total = members + len(extra)

            async def persisted() -> int:  # a command dies with its process until then
                return (await cluster.sql("SELECT COUNT(*) FROM jobs"))[0][0]
            await settle(persisted, lambda n: n >= total, within=60)
            result["takeover"] = await _kill_and_time_takeover(cluster)
            await settle(_async(lambda: len(posted())), lambda n: n >= total,
                         within=120 + len(extra) * generation)
            await asyncio.sleep(2 * LEASE)
            after = posted()
            result["lost"] = total - len(after)
            result["duplicated"] = sum(len(calls) - 1 for calls in after.values())
            result["submits"] = len(fake_ml.submits)
            result["peak"] = fake_ml.peak_processing
        return result
    finally:
        await cluster.stop()


async def _kill_and_time_takeover(cluster) -> float | None:
    """SIGKILL the process holding the most job leases; seconds until another process
    holds (or has finished) every job step it held."""
    deadline = time.monotonic() + 30
    while not (rows := await cluster.sql("SELECT owner, track_id FROM job_leases")):
        if time.monotonic() > deadline:  # nothing was ever in progress at a sample
            return None
        await asyncio.sleep(0.005)
    held: dict[int, list[str]] = {}
    for row in rows:
        held.setdefault(int(row["owner"].split(":")[1]), []).append(row["track_id"])
    pid = max(held, key=lambda p: len(held[p]), default=None)
    victim = cluster.bot_with_pid(pid) if pid is not None else None
    if victim is None:
        return None
    owner = next(r["owner"] for r in rows if int(r["owner"].split(":")[1]) == pid)
    killed_at = time.monotonic()
    victim.kill()
    took = float("inf")
    while time.monotonic() - killed_at < 30 * LEASE:
        left = await cluster.sql("SELECT COUNT(*) FROM job_leases WHERE owner = $1", owner)
        if left[0][0] == 0:
            took = time.monotonic() - killed_at
            break
        await asyncio.sleep(0.05)
    await cluster.start(cluster.bots.index(victim))  # as a supervisor would restart it
    return took


def _posted(fake_dc):
    def posted() -> dict[str, list]:
        found: dict[str, list] = {}
        for call in fake_dc.rest_log:
            if call.method != "POST" or call.status != 200 or not isinstance(call.json, dict):
                continue
            content = call.json.get("content") or ""
            if "your image is ready" in content:
                prompt = content.split("\n> ", 1)[1].split("\n", 1)[0]
                found.setdefault(prompt, []).append(call)
        return found
    return posted


def _figures(fake_ml, results: dict, members: int, slots: int, generation: float,
             wall_minus_mono: float) -> dict:
    jobs = {job.body["prompt"]: job for job in fake_ml.jobs.values()}
    overheads = []
    for prompt, calls in results.items():
        job = jobs.get(prompt)
        if job is not None and job.finished is not None:
            overheads.append((calls[0].time - (job.finished + wall_minus_mono)) * 1000)
    finished = [j.finished for j in fake_ml.jobs.values() if j.finished is not None]
    first_submit = min(j.created for j in fake_ml.jobs.values())
    makespan = max(finished) - first_submit
    busy = sum(j.finished - j.created for j in fake_ml.jobs.values() if j.finished)
    return {
        "overheads": overheads,
        "utilisation": busy / (slots * makespan) if makespan > 0 else float("nan"),
        "ideal_makespan": -(-members // slots) * generation,
        "makespan": makespan,
        "rate_limited": sum(1 for r in fake_ml.requests
                            if r.response and r.response.status == 429),
        "lost": members - len(results),
        "duplicated": sum(len(calls) - 1 for calls in results.values()),
        "submits": len(fake_ml.submits),
        "peak": fake_ml.peak_processing,
    }


def _print_deep_queue(label: str, r: dict, slots: int) -> None:
    print(f"{label:<26} util {r['utilisation'] * 100:5.1f} %   posted p99 "
          f"{percentile(r['overheads'], 99) if r['overheads'] else float('nan'):7.1f} ms   "
          f"ack p99 {percentile(r['acks'], 99):7.1f} ms   peak at API "
          f"{r.get('peak', '?')}/{slots}   lost {r['lost']}   dup {r['duplicated']}   "
          f"submits {r['submits']}"
          + (f"   takeover {r['takeover']:.1f} s (lease {LEASE:.0f} s)"
             if r.get("takeover") is not None else ""))


async def compare_databases(processes: int, members: int, generation: float,
                            slots: int) -> None:
    from tests.support.postgres import running_postgres

    print(f"{members} members send /img2img at once; ModelsLab takes {generation} s a job and "
          f"allows {slots} queued; MODELSLAB_MAX_CONCURRENCY={slots} (for all processes)")
    print("\n== deep queue: SQLite (one process) next to PostgreSQL (1..N processes) ==")
    r = await one_mode("webhook", members, generation, slots)
    _print_deep_queue("sqlite, 1 process", r, slots)
    with running_postgres() as server:
        for n in range(1, processes + 1):
            r = await cluster_mode(n, server, members, generation, slots)
            _print_deep_queue(f"postgresql, {n} process{'es' if n > 1 else ''}", r, slots)
    print("targets: utilisation >= 95 % of the ideal, result -> posted p99 <= 1000 ms, "
          f"takeover <= {2 * LEASE:.0f} s (2 lease periods)")


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
    parser.add_argument("--processes", type=int, default=1,
                        help="with --database postgresql: up to this many bot processes")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    if args.history:
        from bench.history import main as history_main
        asyncio.run(history_main(args.history))
    elif args.database == "postgresql":
        asyncio.run(compare_databases(args.processes, args.members, args.generation,
                                      args.slots))
    elif args.deep_queue:
        asyncio.run(main(1000, 1.0, 10, args.discord_latency, late_members=50,
                         webhooks_run=False))
    else:
        asyncio.run(main(args.members, args.generation, args.slots, args.discord_latency))
