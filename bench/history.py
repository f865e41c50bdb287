"""History benchmark: a year of a busy bot's jobs in the database, then the hot queries timed.

    .venv/bin/python -m bench.load --history 500000     (or: python -m bench.history 500000)

Fills a fresh database (the bot's own schema, through ``JobStore.open``) with N realistic past
jobs from a generator: several servers of different sizes, thousands of members, every
endpoint and model, successes, refunded failures, 1 to 4 images, prompts of all lengths,
spread over a year, with the request fields of jobs older than the retention period already
trimmed as the bot's sweep leaves them. Then, with a queue of waiting members on top, it times
each query the bot runs on its hot path, through the store's own methods, and prints p50/p99,
the database size and its growth per 1,000 jobs. It asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import sqlite3
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from bot.jobs.models import NewJob, Requester
from bot.jobs.store import JobStore, hash_secret, utc_day

DAY = 86400.0
RETENTION_DAYS = 90
GUILDS = [(900_000 + n, size) for n, size in enumerate((12_000, 4_000, 1_500, 600, 150, 40))]
MODELS = ["pony_realism", "sdxl", "juggernaut-xl", "dreamshaper-8", "realistic-vision-v51",
          "anything-v5", "epicrealism", "flux", "revanimated", "majicmix"]
WORDS = [
    "a", "lighthouse", "at", "dusk", "fox", "forest", "neon", "city", "portrait", "of", "an",
    "old", "sailor", "watercolor", "cinematic", "lighting", "dragon", "over", "mountains",
    "cyberpunk", "street", "rain", "reflections", "studio", "photo", "of", "a", "cat", "oil",
    "painting", "castle", "snow", "soft", "focus", "golden", "hour", "macro", "shot",
]


def prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 60)))


def past_jobs(n: int, now: float, seed: int = 7) -> Iterator[tuple[tuple, list[tuple]]]:
    """(jobs row, ledger rows) for ``n`` past jobs, oldest first, spread over a year."""
    rng = random.Random(seed)
    members = {guild: [guild * 100_000 + m for m in range(size)] for guild, size in GUILDS}
    weights = [size for _, size in GUILDS]
    start = now - 365 * DAY
    for seq in range(1, n + 1):
        created = start + (seq / n) * 365 * DAY
        guild = rng.choices([g for g, _ in GUILDS], weights)[0]
        # A few members make most of the jobs (the busiest, a few thousand a year: the daily
        # quota caps anyone at about 7,000).
        pool = members[guild]
        user = pool[int(len(pool) * rng.random() ** 2)]
        endpoint = rng.choices(["v6", "inpaint", "realtime"], [6, 3, 1])[0]
        images = rng.choices([1, 2, 4], [6, 3, 1])[0]
        failed = rng.random() < 0.06
        text = prompt(rng)
        model = rng.choice(MODELS)
        track_id = secrets.token_urlsafe(18)
        old = created < now - RETENTION_DAYS * DAY
        if old:
            payload = {"prompt": text[:100], "model_id": model}
            options, outputs = {}, []
        else:
            payload = {"key": "", "model_id": model, "prompt": text,
                       "negative_prompt": "blurry, low quality, watermark",
                       "init_image": f"https://cdn.discordapp.com/ephemeral-attachments/1/"
                                     f"{seq}/photo.png", "width": 1024, "height": 1024,
                       "samples": images, "num_inference_steps": 30, "strength": 0.7,
                       "guidance_scale": 7.5, "seed": rng.randint(0, 2**32),
                       "track_id": track_id, "webhook": None}
            options = {"prompt": text, "samples": images, "nsfw_channel": False,
                       "remix_of": None, "strength": 0.7}
            outputs = [] if failed else [f"https://pub-cdn.modelslab.com/generations/"
                                         f"{secrets.token_hex(16)}.png" for _ in range(images)]
        finished = created + rng.uniform(3, 40)
        channel = guild * 10 + rng.randint(0, 5)
        row = (track_id, seq, hash_secret(secrets.token_urlsafe(8)), endpoint, "delivered",
               json.dumps(payload), json.dumps(options), user, guild, channel, None, None,
               1100, images, str(rng.randint(10**8, 10**9)), json.dumps(outputs),
               rng.random() < 0.03, payload.get("seed"),
               "ModelsLab could not make the image: NSFW content detected. Your images were "
               "not charged." if failed else None,
               created, created + 0.1, created + 0.5, finished, finished, finished + 0.4,
               seq, rng.randint(10**17, 10**18) if not failed else None)
        day = utc_day(created)
        ledger = [(guild, user, track_id, images, "reserve", day, created)]
        if failed:
            ledger.append((guild, user, track_id, -images, "refund", day, finished))
        yield row, ledger


def fill(path: Path, n: int, now: float) -> tuple[Counter, dict]:
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous=OFF")
    models: Counter = Counter()
    served: dict[tuple[int, int], int] = {}
    batch: list[tuple] = []
    ledger: list[tuple] = []

    def flush() -> None:
        db.executemany(
            "INSERT INTO jobs (track_id, seq, webhook_secret_hash, endpoint, status, payload, "
            "options, user_id, guild_id, channel_id, interaction_token, token_expires_at, "
            "application_id, images, request_id, outputs, nsfw, seed, error, created_at, "
            "submitted_at, processing_at, result_at, finished_at, delivered_at, dispatch_seq, "
            "result_message_id, downloaded) VALUES (" + ",".join("?" * 27) + ", 1)", batch)
        db.executemany("INSERT INTO quota_ledger (guild_id, user_id, track_id, images, kind, "
                       "day, at) VALUES (?, ?, ?, ?, ?, ?, ?)", ledger)
        batch.clear()
        ledger.clear()

    for row, entries in past_jobs(n, now):
        batch.append(row)
        ledger.extend(entries)
        models[(row[8], json.loads(row[5])["model_id"])] += 1
        served[(row[8], row[7])] = row[25]
        if len(batch) >= 10_000:
            flush()
    flush()
    db.executemany("INSERT INTO guild_models (guild_key, model_id, uses) VALUES (?, ?, ?)",
                   [(g, m, c) for (g, m), c in models.items()])
    db.executemany("INSERT INTO served_members (guild_key, user_id, last_turn) VALUES (?, ?, ?)",
                   [(g, u, t) for (g, u), t in served.items()])
    last_turns: dict[int, int] = {}
    for (g, _), t in served.items():
        last_turns[g] = max(last_turns.get(g, 0), t)
    db.executemany("INSERT INTO served_guilds (guild_key, last_turn) VALUES (?, ?)",
                   list(last_turns.items()))
    db.execute("INSERT INTO state (key, value) VALUES ('turn', ?)", (str(n),))
    # How far the retention sweep got (the generator wrote old jobs already trimmed).
    db.execute("INSERT INTO state (key, value) SELECT 'retention_mark', json_array("
               "delivered_at, track_id) FROM jobs WHERE delivered_at < ? "
               "ORDER BY delivered_at DESC, track_id DESC LIMIT 1",
               (now - RETENTION_DAYS * DAY,))
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return models, served


async def timed(label: str, runs: int, call: Callable[[int], Awaitable[object]]) -> None:
    times = []
    for i in range(runs):
        start = time.perf_counter()
        await call(i)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"{label:34s} p50 {statistics.median(times):6.2f} ms   p99 {p99:6.2f} ms   "
          f"({runs} runs)")


def file_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


async def main(n: int, queued: int = 200) -> None:
    path = Path(tempfile.mkdtemp(prefix="remixer-history-")) / "bot.sqlite3"
    now = time.time()
    store = await JobStore.open(path)
    await store.close()
    started = time.monotonic()
    fill(path, n, now)
    filled = time.monotonic() - started
    size = file_size(path)
    print(f"{n:,} past jobs written in {filled:.0f} s (a year: {RETENTION_DAYS} days in full, "
          f"older ones as retention leaves them)")
    print(f"database size: {size / 2**20:.1f} MiB; growth per 1,000 jobs: "
          f"{size / n * 1000 / 2**10:.0f} KiB")

    store = await JobStore.open(path)
    rng = random.Random(3)
    sample = [row[0] for row in await store.read(
        "SELECT track_id FROM jobs WHERE seq % 997 = 0")]
    busy = [(g, g * 100_000) for g, _ in GUILDS]  # each server's busiest member
    # A queue of waiting members on top of the history, as on a busy evening.
    waiting = []
    for i in range(queued):
        guild = GUILDS[i % len(GUILDS)][0]
        waiting.append(await store.create(NewJob(
            endpoint="v6", payload={"prompt": "fox", "model_id": "sdxl", "samples": 1},
            requester=Requester(user_id=guild * 100_000 + i, guild_id=guild, channel_id=1),
            images=1, options={"prompt": "fox"}), now=now))
    print(f"with {queued} members waiting in the queue:\n")
    claimed = []

    async def claim(_: int) -> None:
        got = await store.claim_next(now)
        if got is not None:
            claimed.append(got)

    await timed("claim the next job (fair order)", min(queued, 150), claim)
    await timed("poll scan (due polls, next poll)", 500,
                lambda _: asyncio.gather(store.due_polls(now), store.next_poll_time()))
    secrets_of = {job.track_id: secret for job, secret in claimed}
    ids = list(secrets_of)
    await timed("webhook authentication", 500,
                lambda i: store.authenticate(ids[i % len(ids)], secrets_of[ids[i % len(ids)]]))
    await timed("webhook auth, forged", 500,
                lambda i: store.authenticate(rng.choice(sample), "forged"))
    await timed("/healthz and /metrics (counts)", 500,
                lambda _: asyncio.gather(store.counts(), store.in_flight()))
    await timed("/quota (images used today)", 500,
                lambda i: store.images_used(busy[i % 6][1], busy[i % 6][0], utc_day(now)))
    await timed("/history (count and first page)", 500,
                lambda i: asyncio.gather(store.count_jobs(busy[i % 6][1], busy[i % 6][0]),
                                         store.recent_jobs(busy[i % 6][1], busy[i % 6][0],
                                                           limit=10)))
    await timed("/history, a later page", 200,
                lambda i: store.recent_jobs(busy[i % 6][1], busy[i % 6][0], limit=10,
                                            offset=100))
    await timed("/config show (server settings)", 500,
                lambda i: store.read("SELECT * FROM guild_settings WHERE guild_id IS ?",
                                     (busy[i % 6][0],)))
    await timed("member's active jobs (command check)", 500,
                lambda i: store.read(
                    "SELECT COUNT(*) FROM jobs WHERE guild_id IS ? AND user_id = ? AND status "
                    "IN ('queued', 'submitted', 'processing')", (busy[i % 6][0], busy[i % 6][1])))
    await timed("model autocomplete", 500, lambda i: store.models_used(busy[i % 6][0]))
    await timed("place in line (whole queue)", 100, lambda _: store.queued_with_positions())
    await timed("a new job (enqueue)", 200, lambda i: store.create(NewJob(
        endpoint="v6", payload={"prompt": "owl", "model_id": "flux", "samples": 1},
        requester=Requester(user_id=7_000_000 + i, guild_id=GUILDS[0][0], channel_id=1),
        images=1, options={"prompt": "owl"}), now=now))
    start = time.perf_counter()
    trimmed = await store.apply_retention(now - RETENTION_DAYS * DAY)
    print(f"\nretention sweep: {trimmed} jobs to trim, "
          f"{(time.perf_counter() - start) * 1000:.0f} ms")
    await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jobs", type=int, nargs="?", default=500_000)
    args = parser.parse_args()
    asyncio.run(main(args.jobs))
