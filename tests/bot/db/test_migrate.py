"""``python -m bot.migrate``: an existing SQLite database moved into PostgreSQL, whole."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bot.jobs.models import JobStatus, Output
from bot.jobs.store import JobStore, QuotaRule, utc_day
from tests.bot.jobs.test_store import new_job

ROOT = Path(__file__).resolve().parents[3]
NOW = 1_800_000_000.0


def run_migrate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.migrate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


async def fill(path: Path) -> dict[str, str]:
    store = await JobStore.open(path)
    rule = QuotaRule(daily_limit=10, max_active=None)
    delivered = await store.create(new_job(user=1), quota=rule, now=NOW)
    failed = await store.create(new_job(user=2), quota=rule, now=NOW)
    running = await store.create(new_job(user=3), quota=rule, now=NOW)
    waiting = await store.create(new_job(user=4), quota=rule, now=NOW)
    await store.claim_next(now=NOW)  # user 1
    await store.mark_succeeded(delivered.track_id, outputs=["https://x/1.png"], nsfw=False,
                               seed=5, request_id="9", now=NOW + 1)
    await store.save_outputs(delivered.track_id,
                             [Output(0, "a.png", "image/png", b"\x89PNG\x00\xff", "u")])
    await store.mark_delivered(delivered.track_id, message_id=4242, now=NOW + 2)
    await store.mark_failed(failed.track_id, error="nope", now=NOW + 3)
    await store.claim_next(now=NOW + 4)  # user 3 (user 2's job is over)
    await store.write("INSERT INTO guild_settings (guild_id, daily_limit, allowed_channels) "
                      "VALUES (?, ?, ?)", (10, 7, "[20]"))
    await store.write("INSERT INTO member_limits (guild_id, user_id, daily_limit) "
                      "VALUES (?, ?, ?)", (10, 3, 2))
    await store.set_state("global_commands_hash", "abc")
    await store.close()
    return {"delivered": delivered.track_id, "failed": failed.track_id,
            "waiting": waiting.track_id, "running": running.track_id}


async def test_a_sqlite_database_moves_into_postgresql_whole(tmp_path, postgres_server):
    source = tmp_path / "bot.sqlite3"
    ids = await fill(source)
    target = postgres_server.fresh_database()
    done = run_migrate(f"sqlite:///{source}", target)
    assert done.returncode == 0, done.stderr
    assert "jobs: 4 rows" in done.stdout and "quota_ledger: 5 rows" in done.stdout

    store = await JobStore.open(target)
    try:
        statuses = {name: (await store.get(track_id)).status for name, track_id in ids.items()}
        assert statuses == {"delivered": JobStatus.DELIVERED, "failed": JobStatus.FAILED,
                            "waiting": JobStatus.QUEUED, "running": JobStatus.SUBMITTED}
        assert (await store.get(ids["delivered"])).result_message_id == 4242
        assert await store.outputs(ids["delivered"]) == [
            Output(0, "a.png", "image/png", b"\x89PNG\x00\xff", "u")]
        day = utc_day(NOW)
        assert [await store.images_used(u, 10, day) for u in (1, 2, 3, 4)] == [1, 0, 1, 1]
        assert (await store.counts())[JobStatus.DELIVERED] == 1
        rows = await store.read("SELECT daily_limit, allowed_channels FROM guild_settings "
                                "WHERE guild_id = ?", (10,))
        assert [tuple(r) for r in rows] == [(7, "[20]")]
        rows = await store.read("SELECT daily_limit FROM member_limits WHERE user_id = ?", (3,))
        assert [tuple(r) for r in rows] == [(2,)]
        assert await store.get_state("global_commands_hash") == "abc"
        # Work goes on where it stopped: fairness remembers who was served, new rows follow.
        new = await store.create(new_job(user=1), quota=QuotaRule(10, None), now=NOW + 5)
        assert await store.queue_position(new.track_id) == 2  # after the one waiting
        assert (await store.claim_next(now=NOW + 6))[0].track_id == ids["waiting"]
        ledger = await store.ledger(10)
        assert len({row["id"] for row in ledger}) == len(ledger) == 6
    finally:
        await store.close()

    again = run_migrate(str(source), target)
    assert again.returncode == 1 and "already has jobs" in again.stderr


def test_a_missing_source_is_refused_and_nothing_is_created(tmp_path, postgres_server):
    done = run_migrate(f"sqlite:///{tmp_path}/nothing.sqlite3",
                       postgres_server.fresh_database())
    assert done.returncode == 1 and "no SQLite database" in done.stderr
    assert not (tmp_path / "nothing.sqlite3").exists()
