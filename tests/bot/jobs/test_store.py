"""The job store on both backends (a real SQLite file, and a real PostgreSQL server started by
the tests on loopback): transitions, fairness, secrets, migrations."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bot.jobs.models import JobStatus, NewJob, Output, Requester
from bot.jobs.store import (
    MIGRATIONS,
    JobStore,
    QuotaExceeded,
    QuotaRule,
    TooManyJobs,
    utc_day,
)

ROOT = Path(__file__).resolve().parents[3]


def new_job(user: int = 1, **extra) -> NewJob:
    return NewJob(endpoint="v6", payload={"prompt": "p", "samples": 1},
                  requester=Requester(user_id=user, guild_id=10, channel_id=20,
                                      interaction_token="tok", token_expires_at=900.0),
                  images=1, options={"prompt": "p"}, **extra)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> str:
    """Where a store lives: a SQLite file, or a fresh database on the tests' PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "data" / "bot.sqlite3")
    return request.getfixturevalue("postgres_server").fresh_database()


@pytest.fixture
async def store(database):
    s = await JobStore.open(database)
    yield s
    await s.close()


@pytest.fixture
async def sqlite_store(tmp_path):
    s = await JobStore.open(tmp_path / "data" / "bot.sqlite3")
    yield s
    await s.close()


async def test_a_new_job_is_queued_and_persisted_with_its_payload(store):
    job = await store.create(new_job(), now=100.0)
    assert job.status is JobStatus.QUEUED
    assert job.payload["track_id"] == job.track_id  # the exact body that will be sent
    assert len(job.track_id) >= 24
    rows = await store.read("SELECT status, user_id, interaction_token FROM jobs")
    assert [tuple(row) for row in rows] == [("queued", 1, "tok")]


async def test_discord_ids_keep_all_64_bits(store):
    snowflake = 1_234_567_890_123_456_789
    requester = Requester(user_id=snowflake, guild_id=snowflake + 1, channel_id=snowflake + 2,
                          interaction_token="tok", token_expires_at=900.5,
                          application_id=snowflake + 3)
    job = await store.create(NewJob(endpoint="v6", payload={"prompt": "p"}, requester=requester,
                                    images=1, options={}))
    again = await store.get(job.track_id)
    assert again.requester == requester
    assert await store.images_used(snowflake, snowflake + 1, utc_day(job.created_at)) == 1


async def test_database_uses_wal_and_records_its_schema_version(sqlite_store, tmp_path):
    db = sqlite3.connect(tmp_path / "data" / "bot.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_reopening_keeps_jobs_and_does_not_migrate_again(database):
    path = database
    first = await JobStore.open(path)
    job = await first.create(new_job())
    await first.close()
    again = await JobStore.open(path)
    assert (await again.get(job.track_id)).status is JobStatus.QUEUED
    await again.close()


async def test_transitions_are_atomic_and_idempotent(store):
    job = await store.create(new_job())
    claimed, _secret = await store.claim_next(now=1.0)
    assert claimed.track_id == job.track_id and claimed.status is JobStatus.SUBMITTED
    moved = await store.mark_processing(job.track_id, request_id="55", eta=3, fetch_url=None,
                                        future_links=["https://cdn/x.png"], next_poll_at=5,
                                        now=2)
    assert moved.status is JobStatus.PROCESSING and moved.request_id == "55"
    assert await store.mark_processing(job.track_id, request_id="56", eta=3, fetch_url=None,
                                       future_links=[], next_poll_at=5, now=2) is None
    won = [await store.mark_succeeded(job.track_id, outputs=["https://cdn/x.png"], nsfw=False,
                                      seed=1, request_id="55", now=3) for _ in range(3)]
    assert [w is not None for w in won] == [True, False, False]  # webhook, repeat, poll
    assert won[0].status is JobStatus.SUCCEEDED and won[0].outputs == ("https://cdn/x.png",)
    assert await store.mark_failed(job.track_id, error="late", now=4) is not None  # download
    assert await store.mark_delivered(job.track_id, message_id=9, now=5) is not None
    assert await store.mark_delivered(job.track_id, message_id=10, now=6) is None
    final = await store.get(job.track_id)
    assert final.status is JobStatus.DELIVERED and final.result_message_id == 9
    assert final.request_id == "55" and final.requester.interaction_token is None
    # nothing moves a delivered job
    assert await store.mark_failed(job.track_id, error="x", now=7) is None
    assert await store.requeue(job.track_id, not_before=0) is None


async def test_illegal_moves_are_refused(store):
    job = await store.create(new_job())
    assert await store.mark_succeeded(job.track_id, outputs=["https://x/1.png"], nsfw=False,
                                      seed=None, request_id=None, now=1) is None
    assert await store.mark_delivered(job.track_id, message_id=None, now=1) is None
    assert (await store.get(job.track_id)).status is JobStatus.QUEUED


async def test_requeue_only_before_modelslab_gave_an_id(store):
    job = await store.create(new_job())
    await store.claim_next(now=1.0)
    assert await store.requeue(job.track_id, not_before=50.0) is not None
    assert await store.claim_next(now=10.0) is None  # not before its time
    assert (await store.claim_next(now=50.0))[0].track_id == job.track_id


async def test_fair_order_round_robins_members(store):
    for _ in range(4):
        await store.create(new_job(user=1))
    await store.create(new_job(user=2))
    await store.create(new_job(user=3))
    order = []
    while (claimed := await store.claim_next(now=1.0)) is not None:
        order.append(claimed[0].requester.user_id)
    assert order == [1, 2, 3, 1, 1, 1]


async def test_fairness_survives_reopening(database):
    path = database
    store = await JobStore.open(path)
    for _ in range(3):
        await store.create(new_job(user=1))
    await store.claim_next(now=1.0)  # member 1 was just served
    await store.create(new_job(user=2))
    await store.close()
    store = await JobStore.open(path)
    assert (await store.claim_next(now=2.0))[0].requester.user_id == 2
    await store.close()


async def test_webhook_secret_is_stored_hashed_and_checked(store, tmp_path):
    job = await store.create(new_job())
    _, secret = await store.claim_next(now=1.0)
    assert (await store.authenticate(job.track_id, secret)).track_id == job.track_id
    assert await store.authenticate(job.track_id, secret + "x") is None
    assert await store.authenticate(job.track_id, "") is None
    assert await store.authenticate("unknown", secret) is None
    if store.backend == "sqlite":
        raw = (tmp_path / "data" / "bot.sqlite3").read_bytes()
        wal = tmp_path / "data" / "bot.sqlite3-wal"
        raw += wal.read_bytes() if wal.exists() else b""
    else:
        raw = repr([tuple(row) for row in await store.read("SELECT * FROM jobs")]).encode()
    assert secret.encode() not in raw


async def test_a_queued_job_has_no_valid_secret(store):
    job = await store.create(new_job())
    assert await store.authenticate(job.track_id, "anything") is None


async def test_outputs_are_kept_until_delivered(store):
    job = await store.create(new_job())
    await store.claim_next(now=1.0)
    await store.mark_succeeded(job.track_id, outputs=["https://x/1.png"], nsfw=True, seed=3,
                               request_id="1", now=2)
    out = Output(0, "a.png", "image/png", b"\x89PNG...", "https://x/1.png")
    assert (await store.save_outputs(job.track_id, [out])).downloaded is True
    assert await store.save_outputs(job.track_id, [out]) is None
    assert await store.outputs(job.track_id) == [out]
    assert [j.track_id for j in await store.undelivered()] == [job.track_id]
    await store.mark_delivered(job.track_id, message_id=1, now=3)
    await store.purge_delivered_outputs()
    assert await store.outputs(job.track_id) == []
    assert await store.undelivered() == []


async def test_queue_position_and_depth(store):
    jobs = [await store.create(new_job(user=i)) for i in range(3)]
    assert [await store.queue_position(j.track_id) for j in jobs] == [1, 2, 3]
    await store.claim_next(now=1.0)
    assert await store.queue_position(jobs[0].track_id) is None
    assert await store.queue_position(jobs[2].track_id) == 2
    assert await store.queue_depth() == 2 and await store.in_flight() == 1


async def test_two_processes_writing_at_once_lose_nothing(database):
    """Another process holding the database makes writes wait, never fail."""
    path = database
    script = (
        "import asyncio, sys\n"
        "from bot.jobs.store import JobStore\n"
        "from tests.bot.jobs.test_store import new_job\n"
        "async def main():\n"
        "    s = await JobStore.open(sys.argv[1])\n"
        "    await asyncio.gather(*(s.create(new_job(user=2)) for _ in range(300)))\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    store = await JobStore.open(path)
    other = await asyncio.create_subprocess_exec(sys.executable, "-c", script, str(path),
                                                 cwd=ROOT, stderr=subprocess.PIPE)

    async def mine():
        await store.create(new_job(user=1))
        await store.claim_next(now=1.0)
        await store.counts()

    await asyncio.gather(*(mine() for _ in range(300)))
    _, errors = await other.communicate()
    assert other.returncode == 0, errors.decode()[-2000:]
    counts = await store.counts()
    await store.close()
    assert sum(counts.values()) == 600
    assert counts[JobStatus.SUBMITTED] == 300


async def test_concurrent_commands_cannot_slip_past_the_daily_limit(store):
    rule = QuotaRule(daily_limit=3, max_active=None)
    results = await asyncio.gather(*(store.create(new_job(user=7), quota=rule)
                                     for _ in range(10)), return_exceptions=True)
    accepted = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    assert len(accepted) == 3 and len(refused) == 7
    assert {(r.used, r.limit) for r in refused} == {(3, 3)}


async def test_a_failure_is_refunded_once_in_the_same_step(store):
    job = await store.create(new_job(user=8), quota=QuotaRule(daily_limit=5, max_active=None),
                             now=1_000_000.0)
    day = utc_day(1_000_000.0)
    assert await store.images_used(8, 10, day) == 1
    assert await store.mark_failed(job.track_id, error="x", now=1_000_050.0) is not None
    assert await store.mark_failed(job.track_id, error="x", now=1_000_060.0) is None
    assert await store.images_used(8, 10, day) == 0
    rows = await store.ledger(10, user_id=8)
    assert [(r["kind"], r["images"], r["day"]) for r in rows] == [("reserve", 1, day),
                                                                  ("refund", -1, day)]


async def test_the_active_job_cap_counts_waiting_and_running_jobs(store):
    rule = QuotaRule(daily_limit=None, max_active=2)
    first = await store.create(new_job(user=9), quota=rule)
    await store.create(new_job(user=9), quota=rule)
    with pytest.raises(TooManyJobs):
        await store.create(new_job(user=9), quota=rule)
    await store.mark_failed(first.track_id, error="x", now=1.0)
    await store.create(new_job(user=9), quota=rule)  # a slot came free


async def test_counts_touch_only_the_active_jobs_index(sqlite_store):
    """/healthz and /metrics read the counts: no scan of the delivered history."""
    store = sqlite_store
    jobs = [await store.create(new_job(user=i)) for i in range(4)]
    for job in jobs[:2]:
        await store.mark_failed(job.track_id, error="x", now=1.0)
        await store.mark_delivered(job.track_id, message_id=None, now=2.0)
    await store.claim_next(now=3.0)
    counts = await store.counts()
    assert counts[JobStatus.DELIVERED] == 2 and counts[JobStatus.QUEUED] == 1
    assert counts[JobStatus.SUBMITTED] == 1
    plans = [" ".join(str(row[3]) for row in await store.read("EXPLAIN QUERY PLAN " + sql, args))
             for sql, args in (
                 ("SELECT status, COUNT(*) FROM jobs WHERE status != 'delivered' "
                  "GROUP BY status", ()),
                 ("SELECT COUNT(*) FROM jobs WHERE status != 'delivered' AND status IN (?, ?) "
                  "AND awaiting_webhook = 0", ("submitted", "processing")))]
    assert all("jobs_active" in plan for plan in plans), plans


async def test_a_submit_awaiting_its_webhook_holds_no_slot(store):
    await store.create(new_job())
    job, _ = await store.claim_next(now=1.0)
    assert await store.in_flight() == 1
    assert await store.wait_for_webhook(job.track_id, until=900.0)
    assert await store.in_flight() == 0 and await store.awaiting_webhook() == 1
    assert (await store.get(job.track_id)).status is JobStatus.SUBMITTED  # never resent
    moved = await store.mark_processing(job.track_id, request_id="77", eta=1.0, fetch_url=None,
                                        future_links=(), next_poll_at=2.0, now=2.0)
    assert moved is not None  # its webhook named ModelsLab's id: it is at the API again
    assert await store.in_flight() == 1 and await store.awaiting_webhook() == 0


async def test_new_databases_vacuum_incrementally_and_old_ones_are_converted(tmp_path):
    new = await JobStore.open(tmp_path / "new.sqlite3")
    await new.close()
    old_path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(old_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for number, script in enumerate(MIGRATIONS[:2], start=1):
        db.executescript(script)
        db.execute(f"PRAGMA user_version={number}")
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    db.close()
    old = await JobStore.open(old_path)
    await old.close()
    for path in (tmp_path / "new.sqlite3", old_path):
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        db.close()


async def test_purging_delivered_images_gives_the_space_back(sqlite_store, tmp_path):
    store = sqlite_store
    path = tmp_path / "data" / "bot.sqlite3"
    blob = bytes(range(256)) * 4096  # 1 MiB
    for user in range(8):
        job = await store.create(new_job(user=user))
        await store.claim_next(now=1.0)
        await store.mark_succeeded(job.track_id, outputs=["u"], nsfw=False, seed=1,
                                   request_id="r", now=2.0)
        await store.save_outputs(job.track_id, [Output(0, "a.png", "image/png", blob, "u")])
    (full,) = (await store.read("PRAGMA page_count"))[0]
    for job in await store.undelivered():
        await store.mark_delivered(job.track_id, message_id=1, now=3.0)
    await store.purge_delivered_outputs()
    (after,) = (await store.read("PRAGMA page_count"))[0]
    assert after < full // 4, (after, full)
    assert file_bytes(path) < 2 * 2**20 and file_bytes(f"{path}-wal") < 2 * 2**20


def file_bytes(path) -> int:
    return Path(path).stat().st_size if Path(path).exists() else 0


async def test_on_postgresql_the_claim_skips_locked_rows_and_overrides_still_match(
        postgres_server):
    """The hand-written PostgreSQL statements are keyed by the store's SQLite text: when a
    statement changes, its override must change with it (this fails until it does)."""
    store = await JobStore.open(postgres_server.fresh_database())
    try:
        await store.create(new_job())
        assert (await store.claim_next(now=1.0)) is not None
        run = [t.sql for t in store._db.dialect._cache.values()]
        assert any("FOR UPDATE OF j SKIP LOCKED" in sql for sql in run)
    finally:
        await store.close()
def job_in(guild: int | None, user: int, prompt: str = "p", model: str | None = None) -> NewJob:
    payload = {"prompt": prompt, "samples": 1, **({"model_id": model} if model else {})}
    return NewJob(endpoint="v6", payload=payload,
                  requester=Requester(user_id=user, guild_id=guild, channel_id=20,
                                      interaction_token="tok", token_expires_at=900.0),
                  images=1, options={"prompt": prompt, "remix_of": None})


async def claim_all(store, now: float = 1.0) -> list:
    claimed = []
    while (next_one := await store.claim_next(now=now)) is not None:
        claimed.append(next_one[0])
    return claimed


async def test_servers_take_turns_before_members_so_a_big_server_cannot_starve_a_small_one(
        store):
    # A big server sends six jobs from three members first; a small one sends two after.
    for user in (1, 2, 3, 1, 2, 3):
        await store.create(job_in(100, user))
    for _ in range(2):
        await store.create(job_in(200, 9))
    order = [(job.requester.guild_id, job.requester.user_id) for job in await claim_all(store)]
    assert order == [(100, 1), (200, 9), (100, 2), (200, 9), (100, 3), (100, 1), (100, 2),
                     (100, 3)]


async def test_server_turns_survive_reopening(tmp_path):
    path = tmp_path / "db.sqlite3"
    store = await JobStore.open(path)
    await store.create(job_in(100, 1))
    await store.create(job_in(100, 2))
    await store.create(job_in(200, 3))
    assert (await store.claim_next(now=1.0))[0].requester.guild_id == 100
    await store.close()
    store = await JobStore.open(path)
    assert (await store.claim_next(now=2.0))[0].requester.guild_id == 200
    await store.close()


async def test_the_place_in_line_shown_is_the_order_jobs_are_sent(store):
    arrivals = [(100, 1), (100, 1), (100, 1), (100, 2), (200, 5), (None, 7), (100, 3),
                (200, 5), (200, 6), (100, 2)]
    for guild, user in arrivals:
        await store.create(job_in(guild, user))
    # One earlier job of member 2 was already sent: members not yet served go before them.
    first = await store.claim_next(now=1.0)
    shown = {job.track_id: place for job, place in await store.queued_with_positions()}
    assert sorted(shown.values()) == list(range(1, len(arrivals)))
    sent = [job.track_id for job in await claim_all(store, now=2.0)]
    assert [shown[t] for t in sent] == list(range(1, len(arrivals)))
    assert first[0].track_id not in shown


async def test_a_single_place_in_line_is_the_same_as_in_the_full_list(store):
    for guild, user in [(100, 1), (100, 1), (200, 2), (100, 3)]:
        await store.create(job_in(guild, user))
    places = [(job.requester.guild_id, job.requester.user_id, place)
              for job, place in await store.queued_with_positions()]
    assert places == [(100, 1, 1), (200, 2, 2), (100, 3, 3), (100, 1, 4)]
    for job, place in await store.queued_with_positions():
        assert await store.queue_position(job.track_id) == place


async def deliver_all(store, now: float) -> None:
    for job in await claim_all(store, now=now):
        await store.mark_processing(job.track_id, request_id="1", eta=1, fetch_url=None,
                                    future_links=[], next_poll_at=now, now=now)
        if job.requester.user_id % 2:
            await store.mark_succeeded(job.track_id, outputs=["https://cdn/x.png"], nsfw=False,
                                       seed=1, request_id="1", now=now)
        else:
            await store.mark_failed(job.track_id, error="refused", now=now)
        await store.mark_delivered(job.track_id, message_id=5, now=now)


async def test_retention_drops_bulky_fields_but_quota_and_history_stay_right(store):
    day = 86400.0
    for n in range(6):
        await store.create(job_in(100, 1 + n % 2, prompt=f"old fox {n}", model="pony"),
                           now=10 * day)
    await deliver_all(store, now=10 * day + 5)
    await store.create(job_in(100, 1, prompt="new fox", model="pony"), now=99 * day)
    await deliver_all(store, now=99 * day + 5)
    old_day, new_day = utc_day(10 * day), utc_day(99 * day)
    before = ([await store.images_used(u, 100, d) for u in (1, 2) for d in (old_day, new_day)],
              [await store.count_jobs(u, 100) for u in (1, 2)])

    assert await store.apply_retention(before=99 * day) == 6
    assert await store.apply_retention(before=99 * day) == 0  # nothing new to trim

    after = ([await store.images_used(u, 100, d) for u in (1, 2) for d in (old_day, new_day)],
             [await store.count_jobs(u, 100) for u in (1, 2)])
    assert after == before == ([3, 1, 0, 0], [4, 3])  # member 2's failures were refunded
    history = await store.recent_jobs(1, 100, limit=10)
    assert [job.prompt for job in history] == ["new fox", "old fox 4", "old fox 2", "old fox 0"]
    assert [job.status for job in history] == [JobStatus.DELIVERED] * 4
    (row,) = await store.read(  # what is left of an old job, on either backend
        "SELECT payload, options, outputs, interaction_token FROM jobs WHERE payload LIKE "
        "'%old fox 0%'")
    assert tuple(row) == ('{"prompt": "old fox 0", "model_id": "pony"}', "{}", "[]", None)
    (kept,) = await store.read("SELECT options FROM jobs WHERE payload LIKE '%new fox%'")
    assert "remix_of" in kept[0]  # within the retention period: untouched
    assert await store.models_used(100) == ["pony"]

