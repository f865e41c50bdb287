"""Copy a SQLite database into PostgreSQL, once: ``python -m bot.migrate SOURCE TARGET``.

    python -m bot.migrate sqlite:///data/bot.sqlite3 postgresql://remixer:secret@db/remixer

Every table is copied whole (jobs with their stored images, the quota ledger, server
settings, member limits, painter links, the bot's small state, and any table a later
version adds), in one transaction: the target ends up with all of it or none of it. The
target must be empty of jobs (a new database); both are brought to the current schema
first. Stop the bot before copying, and start it with ``DATABASE_URL`` set to the target.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from bot.db.postgres import VERSION_TABLE, PgDatabase
from bot.jobs.store import JobStore, is_postgres_url, sqlite_path

USAGE_EXAMPLE = ("python -m bot.migrate sqlite:///data/bot.sqlite3 "
                 "postgresql://user:password@host:5432/remixer")


class MigrationRefused(Exception):
    pass


async def _tables_in_order(source: JobStore) -> list[str]:
    """The source's tables, each after the tables its foreign keys point at."""
    rows = await source.read("SELECT name FROM sqlite_master WHERE type = 'table' "
                             "AND name NOT LIKE 'sqlite_%' ORDER BY name")
    names = [row[0] for row in rows]
    needs = {name: {r["table"] for r in await source.read(
        f"SELECT * FROM pragma_foreign_key_list('{name}')")} - {name} for name in names}
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [n for n in names if n not in ordered and needs[n] <= set(ordered)]
        if not ready:  # a cycle: copy the rest as they come
            ready = [n for n in names if n not in ordered]
        ordered.extend(ready)
    return ordered


async def copy(source_url: str, target_url: str, *, out=sys.stdout) -> dict[str, int]:
    """Copy everything; returns the rows copied per table."""
    if not is_postgres_url(target_url):
        raise MigrationRefused("the target must be a postgresql:// URL")
    if is_postgres_url(source_url):
        raise MigrationRefused("the source must be a SQLite database (sqlite:///path)")
    if not sqlite_path(source_url).is_file():
        raise MigrationRefused(f"there is no SQLite database at {sqlite_path(source_url)}")
    source = await JobStore.open(source_url)
    try:
        target = await JobStore.open(target_url)
        try:
            return await _copy(source, target, out)
        finally:
            await target.close()
    finally:
        await source.close()


async def _copy(source: JobStore, target: JobStore, out) -> dict[str, int]:
    pg: PgDatabase = target._db
    if (await target.read("SELECT COUNT(*) FROM jobs"))[0][0]:
        raise MigrationRefused("the target database already has jobs; copy into a new one")
    copied: dict[str, int] = {}
    async with pg.transaction() as db:
        for table in await _tables_in_order(source):
            if table == VERSION_TABLE:
                continue
            columns = [r["name"] for r in await source.read(
                f"SELECT name FROM pragma_table_info('{table}')")]
            target_columns = {r[0] for r in await db.execute_fetchall(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                "AND table_schema = current_schema()", (table,))}
            if not target_columns:
                raise MigrationRefused(f"table {table} does not exist in the target")
            columns = [c for c in columns if c in target_columns]
            names = ", ".join(columns)
            await db.execute(f"DELETE FROM {table}")  # e.g. state written at open
            rows = await source.read(f"SELECT {names} FROM {table} ORDER BY rowid")
            statement = (f"INSERT INTO {table} ({names}) VALUES "
                         f"({', '.join('?' * len(columns))})")
            for row in rows:
                await db.execute(statement, tuple(row))
            copied[table] = len(rows)
            # A serial column (the ledger's id) continues after the copied rows.
            for (column,) in await db.execute_fetchall(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                    "AND table_schema = current_schema() AND column_default LIKE 'nextval%'",
                    (table,)):
                await db.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                    f"COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)")
            print(f"{table}: {len(rows)} rows", file=out)
    return copied


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bot.migrate",
        description="Copy Remixer's SQLite database into a new PostgreSQL database.",
        epilog=f"Example: {USAGE_EXAMPLE}")
    parser.add_argument("source", help="sqlite:///path/to/bot.sqlite3 (or a plain path)")
    parser.add_argument("target", help="postgresql://user:password@host:port/database")
    args = parser.parse_args(argv)
    try:
        copied = asyncio.run(copy(args.source, args.target))
    except MigrationRefused as exc:
        print(f"Nothing copied: {exc}.", file=sys.stderr)
        return 1
    print(f"Copied {sum(copied.values())} rows from {len(copied)} tables. Start the bot with "
          f"DATABASE_URL set to the PostgreSQL URL.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
