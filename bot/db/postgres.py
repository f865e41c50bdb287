"""PostgreSQL through asyncpg, behind the same few calls the store makes of aiosqlite.

``PgDatabase`` stands where the store keeps its aiosqlite connection: ``execute``,
``execute_fetchall`` and ``executemany`` take the store's SQLite-flavoured SQL, translated by
``bot.db.dialect``. Every write runs in a transaction that first takes one transaction-level
advisory lock (``WRITE_LOCK``): writers from every process take turns, as they do on SQLite
(``BEGIN IMMEDIATE``), so a transition's check and its change stay one step across processes.
Reads never wait for it. Rows are asyncpg records: ``row["name"]`` and ``row[0]`` both work.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from bot.db.dialect import Dialect, is_pragma, is_write

log = logging.getLogger(__name__)

WRITE_LOCK = 0x52454D49  # "REMI": the one advisory lock every write transaction takes
VERSION_TABLE = "schema_version"
CHANNEL = "remixer_jobs"  # LISTEN/NOTIFY: new work or a free API slot

Params = Sequence[Any] | Mapping[str, Any]


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class PgConnection:
    """One connection, inside a transaction: the ``db`` a store's ``_write()`` yields."""

    def __init__(self, conn: asyncpg.Connection, dialect: Dialect) -> None:
        self._conn = conn
        self._dialect = dialect

    async def execute_fetchall(self, sql: str, params: Params = ()) -> list[asyncpg.Record]:
        if is_pragma(sql):
            return []
        t = self._dialect.translate(sql, params)
        return list(await self._conn.fetch(t.sql, *t.args(params)))

    async def execute(self, sql: str, params: Params = ()) -> None:
        if is_pragma(sql):
            return
        t = self._dialect.translate(sql, params)
        await self._conn.execute(t.sql, *t.args(params))

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        for params in rows:  # each row's NULLs may differ, so each is translated for itself
            await self.execute(sql, params)

    async def executescript(self, sql: str) -> None:
        for statement in (s.strip() for s in sql.split(";")):
            if statement:
                await self.execute(statement)


class PgDatabase:
    """A pool of connections to one PostgreSQL database."""

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self.pool = pool
        self.url = url
        self._primary_keys: dict[str, tuple[str, ...]] = {}
        self._listener: asyncpg.Connection | None = None
        self._leading: dict[int, asyncpg.Connection] = {}
        self.dialect = Dialect(lambda table: self._primary_keys.get(table, ()))

    @classmethod
    async def connect(cls, url: str, *, min_size: int = 1, max_size: int = 10) -> PgDatabase:
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size)
        return cls(pool, url)

    async def close(self) -> None:
        for conn in self._leading.values():
            await conn.close()
        self._leading.clear()
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        await self.pool.close()

    async def load_primary_keys(self) -> None:
        rows = await self.pool.fetch(
            "SELECT tc.table_name, kcu.column_name FROM information_schema.table_constraints tc "
            "JOIN information_schema.key_column_usage kcu ON kcu.constraint_name = "
            "tc.constraint_name AND kcu.table_schema = tc.table_schema "
            "WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = current_schema() "
            "ORDER BY tc.table_name, kcu.ordinal_position")
        keys: dict[str, list[str]] = {}
        for row in rows:
            keys.setdefault(row[0], []).append(row[1])
        self._primary_keys = {table: tuple(columns) for table, columns in keys.items()}
        self.dialect.forget()

    @asynccontextmanager
    async def transaction(self, *, lock: bool = True) -> AsyncIterator[PgConnection]:
        """One write transaction, after every other process's (the advisory lock)."""
        async with self.pool.acquire() as conn, conn.transaction():
            if lock:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
            yield PgConnection(conn, self.dialect)

    @asynccontextmanager
    async def advisory_lock(self, name: str) -> AsyncIterator[None]:
        """Held by one connection (one process) at a time, until the block ends; released by
        PostgreSQL itself if the process dies."""
        key = _lock_key(name)
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", key)
            try:
                yield
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", key)

    async def lead(self, name: str) -> bool:
        """Hold (or try to take) the session advisory lock ``name`` on a connection of its
        own, kept open: True while this process holds it."""
        key = _lock_key(name)
        if key in self._leading:
            conn = self._leading[key]
            if not conn.is_closed():
                return True
            del self._leading[key]
        conn = await asyncpg.connect(self.url)
        if await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            self._leading[key] = conn
            return True
        await conn.close()
        return False

    async def notify(self) -> None:
        await self.pool.execute("SELECT pg_notify($1, '')", CHANNEL)

    async def listen(self, wake: Callable[[], None]) -> None:
        """``wake()`` on every notification, on a connection of its own (kept open)."""
        if self._listener is None:
            self._listener = await asyncpg.connect(self.url)
        await self._listener.add_listener(CHANNEL, lambda *_: wake())

    async def execute_fetchall(self, sql: str, params: Params = ()) -> list[asyncpg.Record]:
        if is_pragma(sql):
            return []
        if is_write(sql):
            async with self.transaction() as db:
                return await db.execute_fetchall(sql, params)
        t = self.dialect.translate(sql, params)
        return list(await self.pool.fetch(t.sql, *t.args(params)))

    async def execute(self, sql: str, params: Params = ()) -> None:
        await self.execute_fetchall(sql, params)

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        async with self.transaction() as db:
            await db.executemany(sql, rows)

    async def executescript(self, sql: str) -> None:
        async with self.transaction() as db:
            await db.executescript(sql)

    # --- schema version (SQLite keeps it in PRAGMA user_version) ---------------------------

    @staticmethod
    async def schema_version(db: PgConnection) -> int:
        """Inside the migration's transaction (under the write lock)."""
        await db._conn.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} "
                               "(only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row), "
                               "version BIGINT NOT NULL)")
        version = await db._conn.fetchval(f"SELECT version FROM {VERSION_TABLE}")
        return int(version or 0)

    @staticmethod
    async def set_schema_version(db: PgConnection, number: int) -> None:
        await db._conn.execute(
            f"INSERT INTO {VERSION_TABLE} (only_row, version) VALUES (TRUE, $1) "
            "ON CONFLICT (only_row) DO UPDATE SET version = EXCLUDED.version", number)
