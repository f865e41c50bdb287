"""Several real bot processes (``python -m bot``) on one PostgreSQL database, one gateway
shard each, against the local fake Discord and fake ModelsLab. Used by the end-to-end tests
(tests/e2e/test_processes.py) and the load benchmark (``bench.load --processes``)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tests.e2e.conftest import ALICE, bot_settings
from tests.e2e.harness import BotProcess, free_port
from tests.fakes import FakeDiscord, FakeModelsLab, png_bytes

_channel_ids = itertools.count(900_000)


def guild_of_shard(shard: int, shards: int) -> int:
    """A server id that Discord routes to ``shard``: ``(id >> 22) % shards == shard``."""
    return ((shards + shard) << 22) + 7


async def until(probe, within: float = 30.0):
    """The first true value of ``probe()`` (sync or async), waiting up to ``within``."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@dataclass
class Cluster:
    discord: FakeDiscord
    modelslab: FakeModelsLab
    bots: list[BotProcess]
    ports: list[int]
    database: str

    @property
    def shards(self) -> int:
        return len(self.bots)

    def guild(self, shard: int) -> int:
        return guild_of_shard(shard, self.shards)

    def channel(self, shard: int) -> int:
        channel_id = next(_channel_ids)
        self.discord.add_channel(self.guild(shard), channel_id, f"room-{channel_id}")
        return channel_id

    def image(self) -> dict:
        return self.discord.add_attachment("photo.png", png_bytes(320, 240, (200, 90, 30)),
                                           "image/png")

    def bot_serving(self, port: int) -> BotProcess:
        return self.bots[self.ports.index(port)]

    def bot_with_pid(self, pid: int) -> BotProcess | None:
        return next((b for b in self.bots if b.alive() and b.proc.pid == pid), None)

    async def sql(self, query: str, *args):
        conn = await asyncpg.connect(self.database)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    async def lease_holder(self, track_id: str, step: str) -> BotProcess:
        """The process holding the job's lease for ``step`` (its owner names its pid)."""
        async def holder():
            rows = await self.sql("SELECT owner FROM job_leases WHERE track_id = $1 "
                                  "AND step = $2", track_id, step)
            return self.bot_with_pid(int(rows[0]["owner"].split(":")[1])) if rows else None
        return await until(holder, within=30)

    async def status(self, track_id: str) -> str | None:
        rows = await self.sql("SELECT status FROM jobs WHERE track_id = $1", track_id)
        return rows[0]["status"] if rows else None

    async def start(self, index: int, *, before: int | None = None) -> None:
        """Start bot ``index`` (again) and wait until its shard's session is ready
        (``before``: already started; sessions before this one are not its)."""
        if before is None:
            before = len(self.discord.sessions)
            self.bots[index].start()
        guild = self.guild(index)

        async def ready():
            session = self.discord.session_for_guild(guild)
            return session if session is not None and session.index > before else None
        try:
            await until(ready, within=60)
        except AssertionError:
            raise AssertionError(f"bot {index} never became ready:\n"
                                 + self.bots[index].log()[-4000:]) from None

    async def stop(self) -> None:
        for bot in self.bots:
            await bot.terminate()
        await self.modelslab.close()
        await self.discord.close()


async def start_cluster(tmp: Path, database: str, processes: int, *,
                        members: Iterable[int] = (ALICE,), together: bool = False,
                        **settings: str) -> Cluster:
    """``processes`` bots, bot ``i`` serving shard ``i`` of ``processes``, each with its own
    web port; each process's webhooks arrive at the next process, never at itself. A server
    per shard, with ``members`` in each. ``together``: all started at the same moment."""
    discord_fake = FakeDiscord()
    await discord_fake.start()
    modelslab = FakeModelsLab()
    await modelslab.start()
    modelslab.auto_complete_after = 0.3
    modelslab.eta = 0.3
    members = list(members)
    for shard in range(processes):
        guild = guild_of_shard(shard, processes)
        discord_fake.add_guild(guild, f"Shard {shard} server", owner_id=ALICE)
        for member in members:
            discord_fake.add_member(guild, member, f"member{member}")
    ports = [free_port() for _ in range(processes)]
    bots = []
    for index in range(processes):
        workdir = tmp / f"bot{index}"
        workdir.mkdir(parents=True)
        env = bot_settings(
            discord_fake, modelslab, workdir, DATABASE_URL=database,
            SHARD_COUNT=str(processes), SHARD_IDS=str(index), WEB_PORT=str(ports[index]),
            PUBLIC_BASE_URL=f"http://127.0.0.1:{ports[(index + 1) % processes]}",
            **settings)
        bots.append(BotProcess(env, workdir))
    cluster = Cluster(discord_fake, modelslab, bots, ports, database)
    try:
        if together:
            before = len(discord_fake.sessions)
            for bot in bots:
                bot.start()
            for index in range(processes):
                await cluster.start(index, before=before)
        else:
            for index in range(processes):
                await cluster.start(index)
        await until(lambda: discord_fake.command_syncs, within=30)
    except BaseException:
        await cluster.stop()
        raise
    return cluster
