"""The job store: every job from the moment it is asked for, with atomic transitions.

On SQLite (the default) or PostgreSQL (``DATABASE_URL=postgresql://...``, for several bot
processes): the SQL below is written once, in SQLite's flavour, and ``bot.db.dialect``
translates each statement for PostgreSQL (with a hand-written form where one is needed).

One aiosqlite connection in WAL mode; every write runs inside ``BEGIN IMMEDIATE`` under an
asyncio lock, so a transition's check and its change are one step. A transition names the
states it may start from (see ``models.TRANSITIONS``) and reports whether it happened: the
loser of a race (a webhook against a poll, a repeated webhook) simply gets ``False``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import heapq
import hmac
import json
import logging
import secrets
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from bot.db.postgres import PgDatabase
from bot.jobs.models import (
    IN_FLIGHT,
    UNFINISHED,
    Job,
    JobStatus,
    NewJob,
    Output,
    sources_of,
)

log = logging.getLogger(__name__)

MIGRATIONS: tuple[str, ...] = (
    # 1: jobs, their downloaded outputs, and small key-value state.
    """
    CREATE TABLE jobs (
        track_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        webhook_secret_hash TEXT,
        endpoint TEXT NOT NULL,
        status TEXT NOT NULL,
        payload TEXT NOT NULL,
        options TEXT NOT NULL DEFAULT '{}',
        user_id INTEGER NOT NULL,
        guild_id INTEGER,
        channel_id INTEGER NOT NULL,
        interaction_token TEXT,
        token_expires_at REAL,
        application_id INTEGER,
        images INTEGER NOT NULL,
        parent_track_id TEXT REFERENCES jobs(track_id),
        request_id TEXT,
        fetch_url TEXT,
        eta REAL,
        outputs TEXT NOT NULL DEFAULT '[]',
        future_links TEXT NOT NULL DEFAULT '[]',
        nsfw INTEGER NOT NULL DEFAULT 0,
        seed INTEGER,
        error TEXT,
        created_at REAL NOT NULL,
        submitted_at REAL,
        processing_at REAL,
        result_at REAL,
        finished_at REAL,
        delivered_at REAL,
        submit_attempts INTEGER NOT NULL DEFAULT 0,
        poll_attempts INTEGER NOT NULL DEFAULT 0,
        delivery_attempts INTEGER NOT NULL DEFAULT 0,
        next_poll_at REAL,
        not_before REAL,
        dispatch_seq INTEGER,
        downloaded INTEGER NOT NULL DEFAULT 0,
        delivering_since REAL,
        result_message_id INTEGER
    );
    CREATE INDEX jobs_by_status ON jobs(status, seq);
    CREATE INDEX jobs_by_user ON jobs(user_id, status);
    CREATE TABLE job_outputs (
        track_id TEXT NOT NULL REFERENCES jobs(track_id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        filename TEXT NOT NULL,
        content_type TEXT NOT NULL,
        data BLOB NOT NULL,
        source_url TEXT NOT NULL,
        PRIMARY KEY (track_id, idx)
    );
    CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 2: quotas (a ledger of reservations and refunds), server settings, member limits.
    """
    CREATE TABLE quota_ledger (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        guild_id INTEGER,
        user_id INTEGER NOT NULL,
        track_id TEXT NOT NULL REFERENCES jobs(track_id),
        images INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('reserve', 'refund')),
        day TEXT NOT NULL,
        at REAL NOT NULL,
        UNIQUE (track_id, kind)
    );
    CREATE INDEX ledger_by_member ON quota_ledger(guild_id, user_id, day);
    CREATE TABLE guild_settings (
        guild_id INTEGER PRIMARY KEY,
        daily_limit INTEGER,
        max_active_jobs INTEGER,
        default_endpoint TEXT,
        default_model TEXT,
        nsfw_policy TEXT,
        allowed_channels TEXT NOT NULL DEFAULT '[]',
        updated_at REAL,
        updated_by INTEGER
    );
    CREATE TABLE member_limits (
        guild_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        daily_limit INTEGER,
        updated_at REAL,
        updated_by INTEGER,
        PRIMARY KEY (guild_id, user_id)
    );
    """,
    # 3: a submit whose outcome is unknown waits for its webhook without holding an API slot;
    # the active jobs are counted from a small index of their own, never from the history.
    """
    ALTER TABLE jobs ADD COLUMN awaiting_webhook INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_active ON jobs(status, awaiting_webhook) WHERE status != 'delivered';
    """,
    # 4: each server's member cooldown (NULL: the bot's defaults).
    """
    ALTER TABLE guild_settings ADD COLUMN cooldown_burst INTEGER;
    ALTER TABLE guild_settings ADD COLUMN cooldown_seconds REAL;
    """,
    # 5: painter links. Only a hash of each link's secret is kept; a link is bound to its
    # member, server, channel and image, claimed by the first browser that opens it (a hash
    # of that browser's cookie), and used once.
    """
    CREATE TABLE paint_links (
        key TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL,
        guild_id INTEGER,
        channel_id INTEGER NOT NULL,
        image_url TEXT NOT NULL,
        image_name TEXT NOT NULL,
        mask_url TEXT,
        source_track_id TEXT,
        options TEXT NOT NULL DEFAULT '{}',
        nsfw_channel INTEGER NOT NULL DEFAULT 0,
        interaction_token TEXT,
        application_id INTEGER,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        browser_hash TEXT,
        used_at REAL,
        track_id TEXT
    );
    CREATE INDEX paint_links_by_expiry ON paint_links(expires_at);
    """,
    # 6: per-server ModelsLab choices: safety filter type, upscaling, the models allowed.
    """
    ALTER TABLE guild_settings ADD COLUMN safety_checker_type TEXT;
    ALTER TABLE guild_settings ADD COLUMN upscale_enabled INTEGER;
    ALTER TABLE guild_settings ADD COLUMN allowed_models TEXT NOT NULL DEFAULT '[]';
    """,
    # 7: a year of history slows nothing down. Fair turns are kept in two small tables
    # (servers, then members in a server) instead of being read from every job ever sent;
    # the models a server uses are counted as jobs arrive; the hot queries have indexes of
    # their own; delivered jobs past the retention period lose their bulky fields.
    """
    CREATE TABLE served_guilds (
        guild_key INTEGER PRIMARY KEY,
        last_turn INTEGER NOT NULL
    );
    CREATE TABLE served_members (
        guild_key INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        last_turn INTEGER NOT NULL,
        PRIMARY KEY (guild_key, user_id)
    );
    INSERT INTO served_guilds (guild_key, last_turn)
        SELECT COALESCE(guild_id, 0), MAX(dispatch_seq) FROM jobs
        WHERE dispatch_seq IS NOT NULL GROUP BY COALESCE(guild_id, 0);
    INSERT INTO served_members (guild_key, user_id, last_turn)
        SELECT COALESCE(guild_id, 0), user_id, MAX(dispatch_seq) FROM jobs
        WHERE dispatch_seq IS NOT NULL GROUP BY COALESCE(guild_id, 0), user_id;
    CREATE TABLE guild_models (
        guild_key INTEGER NOT NULL,
        model_id TEXT NOT NULL,
        uses INTEGER NOT NULL,
        PRIMARY KEY (guild_key, model_id)
    );
    INSERT INTO guild_models (guild_key, model_id, uses)
        SELECT COALESCE(guild_id, 0), json_extract(payload, '$.model_id'), COUNT(*) FROM jobs
        WHERE json_extract(payload, '$.model_id') IS NOT NULL
        GROUP BY COALESCE(guild_id, 0), json_extract(payload, '$.model_id');
    CREATE INDEX jobs_queue ON jobs(seq, guild_id, user_id, not_before, track_id)
        WHERE status = 'queued';
    CREATE INDEX jobs_polls ON jobs(next_poll_at) WHERE status IN ('submitted', 'processing');
    CREATE INDEX jobs_by_member ON jobs(user_id, guild_id, seq);
    CREATE INDEX jobs_by_delivery ON jobs(delivered_at) WHERE status = 'delivered';
    CREATE INDEX jobs_member_active ON jobs(user_id, guild_id, status)
        WHERE status IN ('queued', 'submitted', 'processing');
    """,
)
# Migrations after which the file is rewritten once (VACUUM cannot run in a transaction):
# 3 turns on incremental auto-vacuum for a database created before it was the default.
VACUUM_AFTER: frozenset[int] = frozenset({3})
JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024  # bytes of WAL kept after a checkpoint


@dataclass(frozen=True, slots=True)
class QuotaRule:
    """What a new job may cost its member: checked in the same transaction that writes it."""

    daily_limit: int | None  # images per UTC day; None: unlimited
    max_active: int | None  # jobs waiting or running at once; None: no cap


class QuotaExceeded(Exception):
    def __init__(self, used: int, limit: int, asked: int) -> None:
        super().__init__(f"{used} of {limit} used, {asked} asked")
        self.used, self.limit, self.asked = used, limit, asked


class TooManyJobs(Exception):
    def __init__(self, active: int, cap: int) -> None:
        super().__init__(f"{active} active, cap {cap}")
        self.active, self.cap = active, cap


def utc_day(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")


BUSY_PATIENCE = 30.0  # how long a write waits for another process to let go of the database


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_track_id() -> str:
    return secrets.token_urlsafe(18)


# The write transaction the current task is inside, per store: statements run in it (so a
# transaction can be built from the store's own methods, e.g. a claim under a limit).
_TRANSACTION: contextvars.ContextVar[tuple[Any, Any] | None] = contextvars.ContextVar(
    "store_transaction", default=None)


def _placeholders(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


def is_postgres_url(url: str | Path) -> bool:
    return isinstance(url, str) and url.startswith(("postgresql://", "postgres://"))


def sqlite_path(url: str | Path) -> Path:
    """``sqlite:///data/bot.sqlite3`` (relative) or ``sqlite:////var/lib/bot.sqlite3``, or a
    plain path."""
    if isinstance(url, str) and url.startswith("sqlite://"):
        return Path(url.removeprefix("sqlite://").removeprefix("/"))
    return Path(url)


@dataclass(frozen=True, slots=True)
class Waiting:
    """A queued job as the fair order sees it, with its server's and member's last turns."""

    track_id: str
    seq: int
    guild_key: int  # the server, 0 for direct messages
    user_id: int
    not_before: float | None
    guild_turn: int  # 0: never served
    member_turn: int


# The waiting jobs with their turns, oldest first: one pass over the small ``jobs_queue``
# index, each member's and server's turn found by primary key.
_WAITING_SQL = """
    SELECT j.track_id, j.seq, COALESCE(j.guild_id, 0) AS guild_key, j.user_id, j.not_before,
           COALESCE(g.last_turn, 0) AS guild_turn, COALESCE(m.last_turn, 0) AS member_turn
    FROM jobs j
    LEFT JOIN served_guilds g ON g.guild_key = COALESCE(j.guild_id, 0)
    LEFT JOIN served_members m ON m.guild_key = COALESCE(j.guild_id, 0) AND m.user_id = j.user_id
    WHERE j.status = 'queued' ORDER BY j.seq
"""


def first_in_line(waiting: Sequence[Waiting]) -> Waiting | None:
    """The first job of ``fair_order(waiting)``, found in one pass (claiming is hot)."""
    guilds: dict[int, tuple[int, int]] = {}  # server -> (its turn, its oldest job)
    members: dict[tuple[int, int], Waiting] = {}  # (server, member) -> their oldest job
    for job in waiting:
        key = (job.guild_key, job.user_id)
        if key not in members or job.seq < members[key].seq:
            members[key] = job
        turn, oldest = guilds.get(job.guild_key, (job.guild_turn, job.seq))
        guilds[job.guild_key] = (turn, min(oldest, job.seq))
    if not guilds:
        return None
    guild = min(guilds, key=lambda g: guilds[g])
    return min((job for (g, _), job in members.items() if g == guild),
               key=lambda job: (job.member_turn, job.seq))


def fair_order(waiting: Sequence[Waiting]) -> Iterator[Waiting]:
    """The order in which waiting jobs are sent: servers take turns (the one served least
    recently first, a server never served before ahead of all, ties to the oldest job), then
    inside a server its members take turns the same way, and a member's jobs go oldest first.

    Lazy: ``claim_next`` takes the first; place-in-line messages take all, so the number a
    member sees is the place their job has in this very order."""
    members: dict[int, dict[int, deque[Waiting]]] = {}
    for job in sorted(waiting, key=lambda w: w.seq):
        members.setdefault(job.guild_key, {}).setdefault(job.user_id, deque()).append(job)
    member_heaps: dict[int, list[tuple[int, int, int]]] = {}
    guild_heap: list[tuple[int, int, int]] = []
    for guild_key, queues in members.items():
        heap = [(q[0].member_turn, q[0].seq, user_id) for user_id, q in queues.items()]
        heapq.heapify(heap)
        member_heaps[guild_key] = heap
        first = next(iter(queues.values()))[0]
        guild_heap.append((first.guild_turn, min(h[1] for h in heap), guild_key))
    heapq.heapify(guild_heap)
    turn = max((max(w.guild_turn, w.member_turn) for w in waiting), default=0)
    while guild_heap:
        _, _, guild_key = heapq.heappop(guild_heap)
        heap = member_heaps[guild_key]
        _, _, user_id = heapq.heappop(heap)
        queue = members[guild_key][user_id]
        job = queue.popleft()
        yield job
        turn += 1
        if queue:
            heapq.heappush(heap, (turn, queue[0].seq, user_id))
        if heap:
            heapq.heappush(guild_heap, (turn, 0, guild_key))


class JobStore:
    def __init__(self, db: aiosqlite.Connection | PgDatabase, path: Path | None) -> None:
        self._db: Any = db
        self.path = path
        self.backend = "postgresql" if isinstance(db, PgDatabase) else "sqlite"
        self._duties: dict[str, asyncio.Lock] = {}
        self._lock = asyncio.Lock()
        self._delivered = 0  # delivered jobs: counted once at open, then as they happen

    @classmethod
    async def open(cls, path: str | Path) -> JobStore:
        """A SQLite file (a path or ``sqlite:///path``) or a ``postgresql://`` database."""
        if is_postgres_url(path):
            store = cls(await PgDatabase.connect(str(path)), None)
            await store._migrate()
            return store
        path = sqlite_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        db.row_factory = aiosqlite.Row
        # Before any table exists (a new file): freed pages can be given back to the disk.
        await db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.execute("PRAGMA busy_timeout=5000")
        store = cls(db, path)
        await store._migrate()
        return store

    async def close(self) -> None:
        await self._db.close()

    async def _migrate(self) -> None:
        if isinstance(self._db, PgDatabase):
            await self._migrate_postgres(self._db)
            return
        (version,) = await self._fetchone("PRAGMA user_version")
        vacuum = False
        for number, script in enumerate(MIGRATIONS, start=1):
            if number <= version:
                continue
            log.info("applying database migration %d", number)
            statements = [s.strip() for s in script.split(";") if s.strip()]
            async with self._write():
                for statement in statements:
                    await self._db.execute(statement)
                await self._db.execute(f"PRAGMA user_version={number}")
            vacuum = vacuum or (version > 0 and number in VACUUM_AFTER)
        if vacuum:  # an older file: rewritten once, so that auto-vacuum takes effect
            log.info("compacting the database once (this may take a moment)")
            async with self._lock:
                await self._db.execute("VACUUM")
        self._delivered = (await self._fetchone(
            "SELECT COUNT(*) FROM jobs WHERE status = 'delivered'"))[0]

    async def _migrate_postgres(self, pg: PgDatabase) -> None:
        """The same migrations, translated; all of them in one transaction under the write
        lock, so processes starting together migrate once."""
        async with pg.transaction() as db:
            version = await pg.schema_version(db)
            for number, script in enumerate(MIGRATIONS, start=1):
                if number <= version:
                    continue
                log.info("applying database migration %d", number)
                for statement in (s.strip() for s in script.split(";")):
                    if statement:
                        await db.execute(statement)
                await pg.set_schema_version(db, number)
        await pg.load_primary_keys()
        self._delivered = (await self._fetchone(
            "SELECT COUNT(*) FROM jobs WHERE status = 'delivered'"))[0]

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction.

        The lock keeps coroutines from interleaving statements on the one connection: a read
        cursor left open by one coroutine while another begins a write would turn BEGIN into
        an upgrade of a stale snapshot, which SQLite refuses at once. BEGIN is retried while
        another process holds the database (nothing has changed yet at that point).
        On PostgreSQL: one transaction after every other process's (see ``bot.db.postgres``).
        Inside a transaction, the store's own methods run their statements in it.
        """
        current = _TRANSACTION.get()
        if current is not None and current[0] is self:
            yield current[1]
            return
        async with self._transaction() as db:
            token = _TRANSACTION.set((self, db))
            try:
                yield db
            finally:
                _TRANSACTION.reset(token)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        if isinstance(self._db, PgDatabase):
            async with self._db.transaction() as db:
                yield db
            return
        async with self._lock:
            delay = 0.01
            deadline = time.monotonic() + BUSY_PATIENCE
            while True:
                try:
                    await self._settled("BEGIN IMMEDIATE", undo="ROLLBACK")
                    break
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or time.monotonic() + delay > deadline:
                        raise
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)
            try:
                yield self._db
            except BaseException:
                await self._settled("ROLLBACK")
                raise
            await self._settled("COMMIT")

    async def _settled(self, sql: str, *, undo: str | None = None) -> None:
        """BEGIN, COMMIT or ROLLBACK, run to its end even when the caller is cancelled: the
        statement runs on the database thread whatever happens to the caller, and a BEGIN
        whose caller is gone would leave the connection inside a transaction that swallows
        every later write until the store closes (and rolls them all back). A cancelled
        BEGIN is undone (``undo``) before the cancellation goes on."""
        step = asyncio.ensure_future(self._db.execute(sql))
        try:
            await asyncio.shield(step)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await step
                if undo is not None:
                    await self._db.execute(undo)
            raise

    async def _fetchall(self, sql: str,
                        params: Sequence[Any] | Mapping[str, Any] = ()) -> list[aiosqlite.Row]:
        """One statement, run whole in one trip to the database thread, under the same lock
        as transactions (see ``_write``). A single UPDATE or INSERT is atomic on its own, so
        this is also how one-statement changes are made (with ``RETURNING *``)."""
        current = _TRANSACTION.get()
        if current is not None and current[0] is self:
            return list(await current[1].execute_fetchall(sql, params))
        if isinstance(self._db, PgDatabase):
            return await self._db.execute_fetchall(sql, params)
        async with self._lock:
            delay = 0.01
            deadline = time.monotonic() + BUSY_PATIENCE
            while True:
                try:
                    return list(await self._db.execute_fetchall(sql, params))
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or time.monotonic() + delay > deadline:
                        raise
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)

    async def _change(self, sql: str,
                      params: Sequence[Any] | Mapping[str, Any] = ()) -> Job | None:
        """One atomic UPDATE/INSERT ... RETURNING *: the changed job, or None if none was."""
        rows = await self._fetchall(sql, params)
        return Job.from_row(rows[0]) if rows else None

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    async def claim_within(self, now: float, limit: int) -> tuple[Job, str] | None:
        """``claim_next``, only while fewer than ``limit`` jobs hold an API slot: one step,
        so the limit holds across every process sharing the database."""
        async with self._write():
            if await self.in_flight() >= limit:
                return None
            return await self.claim_next(now)

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """A duty that one process of the bot does at a time (command sync, sweeps): on
        PostgreSQL an advisory lock, held until the block ends; a lock of this process's on
        SQLite (one process)."""
        if isinstance(self._db, PgDatabase):
            async with self._db.advisory_lock(name):
                yield
            return
        lock = self._duties.setdefault(name, asyncio.Lock())
        async with lock:
            yield

    async def lead(self, name: str) -> bool:
        """Whether this process is the one doing the once-per-bot duty ``name`` (queue
        status, sweeps): on PostgreSQL the holder of an advisory lock kept for the life of
        the process (another takes it over if it dies); always on SQLite (one process)."""
        if isinstance(self._db, PgDatabase):
            return await self._db.lead(name)
        return True

    async def notify(self) -> None:
        """Wake the other processes' dispatchers (new work, a free slot): PostgreSQL only."""
        if isinstance(self._db, PgDatabase):
            await self._db.notify()

    async def listen(self, wake) -> None:
        """Call ``wake()`` when another process has new work or a free slot (PostgreSQL)."""
        if isinstance(self._db, PgDatabase):
            await self._db.listen(wake)

    async def ping(self) -> bool:
        try:
            return (await self._fetchone("SELECT 1"))[0] == 1
        except Exception:
            return False

    # --- reading ------------------------------------------------------------------------

    async def get(self, track_id: str) -> Job | None:
        row = await self._fetchone("SELECT * FROM jobs WHERE track_id = ?", (track_id,))
        return Job.from_row(row) if row else None

    async def _jobs(self, where: str, params: Sequence[Any] = ()) -> list[Job]:
        return [Job.from_row(row)
                for row in await self._fetchall(f"SELECT * FROM jobs WHERE {where}", params)]

    async def unfinished(self) -> list[Job]:
        return await self._jobs(f"status IN ({_placeholders(UNFINISHED)}) ORDER BY seq", UNFINISHED)

    async def count(self, *statuses: JobStatus) -> int:
        row = await self._fetchone(
            f"SELECT COUNT(*) FROM jobs WHERE status IN ({_placeholders(statuses)})", statuses)
        return row[0]

    async def counts(self) -> dict[JobStatus, int]:
        """Jobs by status. The active ones are read from the ``jobs_active`` index alone (no
        scan of the history); delivered jobs are counted once at open and then as they are
        delivered."""
        rows = await self._fetchall(
            "SELECT status, COUNT(*) FROM jobs WHERE status != 'delivered' GROUP BY status")
        found = {JobStatus(status): n for status, n in rows}
        found[JobStatus.DELIVERED] = self._delivered
        if isinstance(self._db, PgDatabase):  # other processes deliver too
            found[JobStatus.DELIVERED] = (await self._fetchone(
                "SELECT COUNT(*) FROM jobs WHERE status = 'delivered'"))[0]
        return {status: found.get(status, 0) for status in JobStatus}

    async def in_flight(self) -> int:
        """Jobs holding an API slot: submitted or processing, except a submit whose outcome
        is unknown (it waits for its webhook without occupying ModelsLab)."""
        row = await self._fetchone(
            "SELECT COUNT(*) FROM jobs WHERE status != 'delivered' AND status IN (?, ?) "
            "AND awaiting_webhook = 0", IN_FLIGHT)
        return row[0]

    async def awaiting_webhook(self) -> int:
        """Submits whose outcome is unknown, waiting for their webhook (no slot held)."""
        row = await self._fetchone(
            "SELECT COUNT(*) FROM jobs WHERE status != 'delivered' AND status = 'submitted' "
            "AND awaiting_webhook = 1")
        return row[0]

    async def queue_depth(self) -> int:
        return await self.count(JobStatus.QUEUED)

    async def _waiting(self) -> list[Waiting]:
        return [Waiting(*row) for row in await self._fetchall(_WAITING_SQL)]

    async def queue_places(self) -> dict[str, int]:
        """Every waiting job's 1-based place in the order they will be sent (``fair_order``),
        from one read of the small queue index."""
        return {job.track_id: n
                for n, job in enumerate(fair_order(await self._waiting()), start=1)}

    async def queue_position(self, track_id: str) -> int | None:
        """1-based place among queued jobs in the order they will be sent (``fair_order``);
        None when not queued."""
        for position, job in enumerate(fair_order(await self._waiting()), start=1):
            if job.track_id == track_id:
                return position
        return None

    async def queued_with_positions(self) -> list[tuple[Job, int]]:
        """Every queued job with its 1-based place in line, in the order they will be sent
        (``fair_order``)."""
        order = {job.track_id: n
                 for n, job in enumerate(fair_order(await self._waiting()), start=1)}
        jobs = await self._jobs("status = 'queued'")
        return sorted(((job, order[job.track_id]) for job in jobs if job.track_id in order),
                      key=lambda pair: pair[1])

    async def due_polls(self, now: float, limit: int = 50) -> list[Job]:
        return await self._jobs(
            "status IN ('submitted', 'processing') AND next_poll_at <= ? "
            "ORDER BY next_poll_at LIMIT ?", (now, limit))

    async def next_poll_time(self) -> float | None:
        return (await self._fetchone(
            "SELECT MIN(next_poll_at) FROM jobs WHERE status IN ('submitted', 'processing')"))[0]

    async def next_queued_time(self) -> float | None:
        return (await self._fetchone(
            "SELECT MIN(COALESCE(not_before, 0)) FROM jobs WHERE status = 'queued'"))[0]

    async def undelivered(self) -> list[Job]:
        return await self._jobs(
            "(status = 'failed' OR (status = 'succeeded' AND downloaded = 1)) ORDER BY seq")

    async def outputs(self, track_id: str) -> list[Output]:
        rows = await self._fetchall(
            "SELECT idx, filename, content_type, data, source_url FROM job_outputs "
            "WHERE track_id = ? ORDER BY idx", (track_id,))
        return [Output(r["idx"], r["filename"], r["content_type"], bytes(r["data"]),
                       r["source_url"]) for r in rows]

    async def authenticate(self, track_id: str, secret: str) -> Job | None:
        """The job, if ``secret`` is its webhook secret; None for anything else."""
        row = await self._fetchone("SELECT * FROM jobs WHERE track_id = ?", (track_id,))
        job_hash = row["webhook_secret_hash"] if row is not None else None
        # Compare even when there is nothing to compare with, so timing says nothing.
        matches = hmac.compare_digest(hash_secret(secret), job_hash or "0" * 64)
        return Job.from_row(row) if matches and job_hash else None

    # --- writing ------------------------------------------------------------------------

    async def create(self, new: NewJob, *, now: float | None = None,
                     quota: QuotaRule | None = None) -> Job:
        """Write the job row, status queued, before anything is sent anywhere, together with
        its images' reservation in the ledger. With ``quota``, the member's usage today and
        their active jobs are checked in the same transaction (QuotaExceeded, TooManyJobs),
        so two commands at once cannot both slip under the limit."""
        now = time.time() if now is None else now
        day = utc_day(now)
        track_id = new_track_id()
        r = new.requester
        async with self._write() as db:
            if quota is not None and quota.daily_limit is not None:
                used = await self._used(db, r.guild_id, r.user_id, day)
                if used + new.images > quota.daily_limit:
                    raise QuotaExceeded(used, quota.daily_limit, new.images)
            if quota is not None and quota.max_active is not None:
                rows = await db.execute_fetchall(
                    "SELECT COUNT(*) FROM jobs WHERE guild_id IS ? AND user_id = ? AND status "
                    "IN ('queued', 'submitted', 'processing')", (r.guild_id, r.user_id))
                active = next(iter(rows))[0]
                if active >= quota.max_active:
                    raise TooManyJobs(active, quota.max_active)
            rows = await db.execute_fetchall(
                "INSERT INTO jobs (track_id, seq, endpoint, status, payload, options, user_id, "
                "guild_id, channel_id, interaction_token, token_expires_at, application_id, "
                "images, parent_track_id, created_at) VALUES (?, "
                "(SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), ?, 'queued', ?, ?, ?, ?, ?, ?, "
                "?, ?, ?, ?, ?) RETURNING *",
                (track_id, new.endpoint, json.dumps({**new.payload, "track_id": track_id}),
                 json.dumps(new.options), r.user_id, r.guild_id, r.channel_id,
                 r.interaction_token, r.token_expires_at, r.application_id, new.images,
                 new.parent_track_id, now))
            job = Job.from_row(next(iter(rows)))
            model = new.payload.get("model_id")
            if isinstance(model, str) and model:
                await db.execute(
                    "INSERT INTO guild_models (guild_key, model_id, uses) VALUES (?, ?, 1) "
                    "ON CONFLICT(guild_key, model_id) DO UPDATE SET uses = guild_models.uses + 1",
                    (r.guild_id or 0, model))
            await db.execute(
                "INSERT INTO quota_ledger (guild_id, user_id, track_id, images, kind, day, at) "
                "VALUES (?, ?, ?, ?, 'reserve', ?, ?)",
                (r.guild_id, r.user_id, track_id, new.images, day, now))
        return job

    @staticmethod
    async def _used(db: aiosqlite.Connection, guild_id: int | None, user_id: int,
                    day: str) -> int:
        rows = await db.execute_fetchall(
            "SELECT COALESCE(SUM(images), 0) FROM quota_ledger WHERE guild_id IS ? "
            "AND user_id = ? AND day = ?", (guild_id, user_id, day))
        return int(next(iter(rows))[0])

    async def claim_next(self, now: float) -> tuple[Job, str] | None:
        """Move the next job, fairly chosen (``fair_order`` among the jobs ready now), from
        queued to submitted; returns it and a fresh webhook secret (only its hash is stored).

        The server's and the member's turns are written in the same transaction, in two
        small tables, so fairness survives a restart without reading the history."""
        secret = secrets.token_urlsafe(32)
        async with self._write() as db:
            ready = [w for w in (Waiting(*row) for row in await db.execute_fetchall(_WAITING_SQL))
                     if (w.not_before or 0) <= now]
            chosen = first_in_line(ready)
            if chosen is None:
                return None
            rows = await db.execute_fetchall("SELECT value FROM state WHERE key = 'turn'")
            turn = int(next(iter(rows))[0]) + 1 if rows else 1
            await db.execute("INSERT INTO state (key, value) VALUES ('turn', ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                             (str(turn),))
            await db.execute("INSERT INTO served_guilds (guild_key, last_turn) VALUES (?, ?) "
                             "ON CONFLICT(guild_key) DO UPDATE SET last_turn = excluded.last_turn",
                             (chosen.guild_key, turn))
            await db.execute("INSERT INTO served_members (guild_key, user_id, last_turn) "
                             "VALUES (?, ?, ?) ON CONFLICT(guild_key, user_id) DO UPDATE SET "
                             "last_turn = excluded.last_turn",
                             (chosen.guild_key, chosen.user_id, turn))
            rows = await db.execute_fetchall(
                """
                UPDATE jobs SET status = 'submitted', submitted_at = ?,
                    submit_attempts = submit_attempts + 1, webhook_secret_hash = ?,
                    awaiting_webhook = 0, not_before = NULL, next_poll_at = NULL,
                    dispatch_seq = ?
                WHERE track_id = ? AND status = 'queued' RETURNING *
                """, (now, hash_secret(secret), turn, chosen.track_id))
            job = Job.from_row(next(iter(rows)))
        return job, secret

    async def _transition(self, track_id: str, target: JobStatus, sets: str = "",
                          params: Sequence[Any] = (), *, extra_where: str = "") -> Job | None:
        """Move one job to ``target`` if it is in a state that may lead there.

        Returns the job as it now is, or None when it was not moved (the loser of a race)."""
        sources = sources_of(target)
        assignments = "status = ?" + (", " + sets if sets else "")
        return await self._change(
            f"UPDATE jobs SET {assignments} WHERE track_id = ? "
            f"AND status IN ({_placeholders(sources)}) {extra_where} RETURNING *",
            (target, *params, track_id, *sources),
        )

    async def requeue(self, track_id: str, *, not_before: float) -> Job | None:
        """Back to the queue (a 429, or a submit that never left): keeps its place in line.
        The turn it was given is handed back (when nothing was sent for its member or server
        since), so its member is not sent behind everyone for a job that never left."""
        sources = sources_of(JobStatus.QUEUED)
        async with self._write() as db:
            rows = list(await db.execute_fetchall(
                "UPDATE jobs SET status = 'queued', not_before = ?, webhook_secret_hash = NULL "
                f"WHERE track_id = ? AND status IN ({_placeholders(sources)}) "
                "AND request_id IS NULL RETURNING *", (not_before, track_id, *sources)))
            if not rows:
                return None
            job = Job.from_row(rows[0])
            turn = rows[0]["dispatch_seq"]
            if turn is not None:
                key = job.requester.guild_id or 0
                await db.execute("UPDATE served_guilds SET last_turn = 0 WHERE guild_key = ? "
                                 "AND last_turn = ?", (key, turn))
                await db.execute("UPDATE served_members SET last_turn = 0 WHERE guild_key = ? "
                                 "AND user_id = ? AND last_turn = ?",
                                 (key, job.requester.user_id, turn))
        return job

    async def mark_processing(self, track_id: str, *, request_id: str | None,
                              eta: float | None, fetch_url: str | None,
                              future_links: Sequence[str], next_poll_at: float,
                              now: float) -> Job | None:
        return await self._transition(
            track_id, JobStatus.PROCESSING,
            "request_id = ?, eta = ?, fetch_url = ?, future_links = ?, next_poll_at = ?, "
            "processing_at = ?, awaiting_webhook = 0",
            (request_id, eta, fetch_url, json.dumps(list(future_links)), next_poll_at, now))

    async def wait_for_webhook(self, track_id: str, *, until: float) -> bool:
        """A submit whose outcome is unknown: it is never sent again (that could charge
        twice), its webhook is still accepted, and it gives up at ``until``; meanwhile it
        holds no API slot (see ``in_flight``)."""
        return await self._change(
            "UPDATE jobs SET next_poll_at = ?, awaiting_webhook = 1 WHERE track_id = ? "
            "AND status = 'submitted' RETURNING *", (until, track_id)) is not None

    async def mark_succeeded(self, track_id: str, *, outputs: Sequence[str], nsfw: bool,
                             seed: int | None, request_id: str | None, now: float) -> Job | None:
        return await self._transition(
            track_id, JobStatus.SUCCEEDED,
            "outputs = ?, nsfw = ?, seed = COALESCE(?, seed), "
            "request_id = COALESCE(request_id, ?), result_at = ?, finished_at = ?, "
            "next_poll_at = NULL",
            (json.dumps(list(outputs)), int(nsfw), seed, request_id, now, now))

    async def mark_failed(self, track_id: str, *, error: str, now: float,
                          only_from: Sequence[JobStatus] | None = None) -> Job | None:
        """The job ended without images: its reservation is refunded in the same step.

        ``only_from`` narrows the states it may end from: ModelsLab's word that a job failed
        must not overturn a success already taken (a racing webhook or poll)."""
        sources = tuple(only_from) if only_from is not None else sources_of(JobStatus.FAILED)
        async with self._write() as db:
            rows = list(await db.execute_fetchall(
                "UPDATE jobs SET status = 'failed', error = ?, result_at = COALESCE(result_at, "
                f"?), finished_at = ?, next_poll_at = NULL WHERE track_id = ? AND status IN "
                f"({_placeholders(sources)}) RETURNING *",
                (error, now, now, track_id, *sources)))
            if not rows:
                return None
            await db.execute(
                "INSERT OR IGNORE INTO quota_ledger (guild_id, user_id, track_id, images, kind, "
                "day, at) SELECT guild_id, user_id, track_id, -images, 'refund', day, ? "
                "FROM quota_ledger WHERE track_id = ? AND kind = 'reserve'", (now, track_id))
        return Job.from_row(rows[0])

    async def schedule_poll(self, track_id: str, *, at: float) -> bool:
        return await self._change(
            "UPDATE jobs SET next_poll_at = ?, poll_attempts = poll_attempts + 1 "
            "WHERE track_id = ? AND status IN ('submitted', 'processing') RETURNING *",
            (at, track_id)) is not None

    async def save_outputs(self, track_id: str, outputs: Sequence[Output]) -> Job | None:
        """Keep the downloaded images until delivery. The images are written first and the
        job marked downloaded after, so a crash between leaves a job that is downloaded again
        (its rows are replaced), never one marked downloaded without its images."""
        async with self._lock:
            await self._db.executemany(
                "INSERT OR REPLACE INTO job_outputs (track_id, idx, filename, content_type, "
                "data, source_url) VALUES (?, ?, ?, ?, ?, ?)",
                [(track_id, o.index, o.filename, o.content_type, o.data, o.source_url)
                 for o in outputs])
        return await self._change(
            "UPDATE jobs SET downloaded = 1 WHERE track_id = ? AND status = 'succeeded' "
            "AND downloaded = 0 RETURNING *", (track_id,))

    async def begin_delivery(self, track_id: str, *, now: float) -> Job | None:
        """Note that a delivery is starting (so a crash mid-post can be checked on restart)."""
        return await self._change(
            "UPDATE jobs SET delivering_since = COALESCE(delivering_since, ?), "
            "delivery_attempts = delivery_attempts + 1 WHERE track_id = ? AND "
            "(status = 'failed' OR (status = 'succeeded' AND downloaded = 1)) RETURNING *",
            (now, track_id))

    async def end_delivery_attempt(self, track_id: str) -> None:
        """The attempt posted nothing: a restart need not look for its message."""
        await self._fetchall("UPDATE jobs SET delivering_since = NULL WHERE track_id = ?",
                             (track_id,))

    async def mark_delivered(self, track_id: str, *, message_id: int | None,
                             now: float) -> Job | None:
        """Final. The images it kept are dropped by the next ``purge_delivered_outputs``."""
        job = await self._change(
            "UPDATE jobs SET status = 'delivered', delivered_at = ?, result_message_id = ?, "
            "interaction_token = NULL, awaiting_webhook = 0 WHERE track_id = ? AND status IN "
            "('succeeded', 'failed') RETURNING *", (now, message_id, track_id))
        if job is not None:
            self._delivered += 1
        return job

    async def cancel_queued(self, guild_id: int, *, error: str, now: float) -> list[Job]:
        """Every queued job of one server fails at once, each refunded, in one step (a job
        the dispatcher claimed first is no longer queued and is left alone)."""
        async with self._write() as db:
            rows = list(await db.execute_fetchall(
                "UPDATE jobs SET status = 'failed', error = ?, result_at = COALESCE(result_at, "
                "?), finished_at = ?, next_poll_at = NULL WHERE guild_id = ? AND status = "
                "'queued' RETURNING *", (error, now, now, guild_id)))
            for row in rows:
                await db.execute(
                    "INSERT OR IGNORE INTO quota_ledger (guild_id, user_id, track_id, images, "
                    "kind, day, at) SELECT guild_id, user_id, track_id, -images, 'refund', day, "
                    "? FROM quota_ledger WHERE track_id = ? AND kind = 'reserve'",
                    (now, row["track_id"]))
        return [Job.from_row(row) for row in rows]

    async def unfinished_guilds(self) -> set[int]:
        """The servers that have jobs not yet delivered."""
        rows = await self._fetchall(
            f"SELECT DISTINCT guild_id FROM jobs WHERE guild_id IS NOT NULL AND status IN "
            f"({_placeholders(UNFINISHED)})", UNFINISHED)
        return {row[0] for row in rows}

    async def purge_delivered_outputs(self) -> None:
        """Drop the images of delivered jobs (Discord holds them now), and give the freed
        pages back to the disk, so a backlog of stored images leaves no larger file behind."""
        rows = await self._fetchall(
            "DELETE FROM job_outputs WHERE EXISTS (SELECT 1 FROM jobs WHERE "
            "jobs.track_id = job_outputs.track_id AND jobs.status = 'delivered') RETURNING 1")
        if rows:
            await self.compact()

    async def apply_retention(self, before: float, batch: int = 500) -> int:
        """Delivered jobs delivered before ``before`` lose their bulky fields: the payload
        (all but a short prompt and the model, for /history), the options, the output links
        and any token. Their rows, statuses and ledger entries stay, so /quota and /history
        still count right. Works in small batches (webhooks and commands wait on the same
        lock) and remembers how far it got, so each run reads only what is new."""
        done = 0
        mark = await self.get_state("retention_mark")
        since_at, since_id = (json.loads(mark) if mark else (0.0, ""))
        while True:
            rows = await self._fetchall(
                "SELECT track_id, delivered_at, payload FROM jobs WHERE status = 'delivered' "
                "AND delivered_at < ? AND delivered_at >= ? AND (delivered_at > ? OR "
                "track_id > ?) ORDER BY delivered_at, track_id LIMIT ?",
                (before, since_at, since_at, since_id, batch))
            if not rows:
                break
            trimmed = []
            for row in rows:
                payload = json.loads(row["payload"])
                kept = {"prompt": str(payload.get("prompt", ""))[:100]}
                if isinstance(payload.get("model_id"), str):
                    kept["model_id"] = payload["model_id"][:100]
                trimmed.append((json.dumps(kept), row["track_id"]))
            since_at, since_id = rows[-1]["delivered_at"], rows[-1]["track_id"]
            async with self._write() as db:
                await db.executemany(
                    "UPDATE jobs SET payload = ?, options = '{}', outputs = '[]', "
                    "future_links = '[]', interaction_token = NULL WHERE track_id = ? "
                    "AND status = 'delivered'", trimmed)
                await db.execute("INSERT INTO state (key, value) VALUES ('retention_mark', ?) "
                                 "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                                 (json.dumps([since_at, since_id]),))
            done += len(rows)
            if len(rows) < batch:
                break
        return done

    async def compact(self) -> None:
        """Free pages back to the file system (incremental auto-vacuum), then a checkpoint
        that truncates the WAL. Both are skipped quietly while another process reads."""
        async with self._lock:
            try:
                # executescript runs the pragma to the end (one step frees only one page).
                await self._db.executescript("PRAGMA incremental_vacuum;")
                await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                log.info("database compaction postponed: %s", exc)

    async def images_used(self, user_id: int, guild_id: int | None, day: str) -> int:
        """Images counted against a member on a UTC day: reservations less refunds."""
        row = await self._fetchone(
            "SELECT COALESCE(SUM(images), 0) FROM quota_ledger WHERE guild_id IS ? "
            "AND user_id = ? AND day = ?", (guild_id, user_id, day))
        return int(row[0])

    async def ledger(self, guild_id: int | None, *, since_day: str | None = None,
                     user_id: int | None = None) -> list[aiosqlite.Row]:
        """The ledger rows of a server, oldest first (for audits)."""
        return await self._fetchall(
            "SELECT * FROM quota_ledger WHERE guild_id IS ? AND day >= COALESCE(?, '') "
            "AND (? IS NULL OR user_id = ?) ORDER BY id",
            (guild_id, since_day, user_id, user_id))

    async def recent_jobs(self, user_id: int, guild_id: int | None, *, limit: int,
                          offset: int = 0) -> list[Job]:
        return await self._jobs("user_id = ? AND guild_id IS ? ORDER BY seq DESC LIMIT ? "
                                "OFFSET ?", (user_id, guild_id, limit, offset))

    async def count_jobs(self, user_id: int, guild_id: int | None) -> int:
        row = await self._fetchone("SELECT COUNT(*) FROM jobs WHERE user_id = ? AND "
                                   "guild_id IS ?", (user_id, guild_id))
        return int(row[0])

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        """A read for other services sharing this database (server settings)."""
        return await self._fetchall(sql, params)

    async def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One atomic statement for other services sharing this database."""
        await self._fetchall(sql, params)

    async def models_used(self, guild_id: int | None, limit: int = 20) -> list[str]:
        """The models most used in a server, most used first (for autocomplete)."""
        rows = await self._fetchall(
            "SELECT model_id FROM guild_models WHERE guild_key = ? "
            "ORDER BY uses DESC, model_id LIMIT ?", (guild_id or 0, limit))
        return [row[0] for row in rows]

    async def get_state(self, key: str) -> str | None:
        row = await self._fetchone("SELECT value FROM state WHERE key = ?", (key,))
        return row[0] if row else None

    async def set_state(self, key: str, value: str) -> None:
        await self._fetchall("INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) "
                             "DO UPDATE SET value = excluded.value", (key, value))
