"""Leases: which bot process is working on which job step, until when.

With several processes on one PostgreSQL database, a job step that must happen once (the
submit, the download and delivery) is done by the process holding that job's lease. A lease
has an expiry its holder renews every third of a period; when a process dies, its leases
run out and the others take its jobs over (``orphans``), through the same recovery a restart
does: a submit of unknown outcome waits for its webhook and is never sent again, a delivery
under way is first looked for in the channel. Delivered once, charged once.

On SQLite (one process) every lease is granted at once and nothing is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

from bot.jobs.models import Job
from bot.jobs.store import JobStore

log = logging.getLogger(__name__)

LEASE_SECONDS = 10.0  # a dead process's jobs are taken over within two of these

_TABLE = """
CREATE TABLE IF NOT EXISTS job_leases (
    track_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    step TEXT NOT NULL,
    expires_at REAL NOT NULL
)
"""


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Leases:
    def __init__(self, store: JobStore, *, period: float = LEASE_SECONDS,
                 clock: Callable[[], float] = time.time, owner: str | None = None) -> None:
        self.store = store
        self.period = period
        self.clock = clock
        self.owner = owner or process_name()
        self.shared = store.backend == "postgresql"  # several processes may share the store
        self._renewer: asyncio.Task[None] | None = None

    async def start(self, *, renew: bool = True) -> None:
        if not self.shared:
            return
        await self.store.write(_TABLE)
        if renew:
            self._renewer = asyncio.create_task(self._renew_loop(), name="leases-renew")

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self.shared:  # what this process leaves is taken over at once, not after expiry
            with contextlib.suppress(Exception):
                await self.store.write("DELETE FROM job_leases WHERE owner = ?", (self.owner,))

    async def acquire(self, track_id: str, step: str) -> bool:
        """This process now holds the job's lease (it had it, it was free or it ran out)."""
        if not self.shared:
            return True
        now = self.clock()
        rows = await self.store.read(
            "INSERT INTO job_leases (track_id, owner, step, expires_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(track_id) DO UPDATE SET owner = excluded.owner, step = excluded.step, "
            "expires_at = excluded.expires_at WHERE job_leases.owner = excluded.owner "
            "OR job_leases.expires_at < ? RETURNING track_id",
            (track_id, self.owner, step, now + self.period, now))
        return bool(rows)

    async def release(self, track_id: str) -> None:
        if self.shared:
            await self.store.write("DELETE FROM job_leases WHERE track_id = ? AND owner = ?",
                                   (track_id, self.owner))

    async def claim(self, now: float, limit: int) -> tuple[Job, str] | None:
        """The next job, under the global API limit, with its submit lease: one step."""
        async with self.store._write():
            claimed = await self.store.claim_within(now, limit)
            if claimed is not None and self.shared:
                await self.acquire(claimed[0].track_id, "submit")
        return claimed

    async def held_elsewhere(self) -> set[str]:
        """Jobs another live process is working on."""
        if not self.shared:
            return set()
        rows = await self.store.read(
            "SELECT track_id FROM job_leases WHERE owner != ? AND expires_at >= ?",
            (self.owner, self.clock()))
        return {row[0] for row in rows}

    async def orphans(self) -> list[Job]:
        """Unfinished jobs a dead process was working on: its lease ran out (a lease given
        back is deleted, so a job left to the next sweep on purpose is not taken here), or
        a result it never started to download (it died before taking the lease)."""
        if not self.shared:
            return []
        now = self.clock()
        # Run-out leases of jobs that need no taking over (processing: any process polls
        # it and takes its webhook) are dropped, and any lease long run out.
        await self.store.write(
            "DELETE FROM job_leases WHERE expires_at < ? OR (expires_at < ? AND track_id "
            "NOT IN (SELECT track_id FROM jobs WHERE status IN ('submitted', 'succeeded', "
            "'failed')))", (now - 20 * self.period, now))
        rows = await self.store.read(
            "SELECT * FROM jobs WHERE status IN ('submitted', 'succeeded', 'failed') "
            "AND NOT (status = 'submitted' AND awaiting_webhook = 1) AND ("
            "EXISTS (SELECT 1 FROM job_leases l WHERE l.track_id = jobs.track_id "
            "AND l.expires_at < ?) OR (status = 'succeeded' AND downloaded = 0 "
            "AND result_at < ? AND NOT EXISTS (SELECT 1 FROM job_leases l "
            "WHERE l.track_id = jobs.track_id))) ORDER BY seq", (now, now - self.period))
        return [Job.from_row(row) for row in rows]

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.period / 3)
            try:
                await self.store.write("UPDATE job_leases SET expires_at = ? WHERE owner = ?",
                                       (self.clock() + self.period, self.owner))
            except Exception:
                log.exception("could not renew this process's job leases")
