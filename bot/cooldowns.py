"""A per-member cooldown: a token bucket per (server, member), kept in memory.

A member may take ``burst`` actions in quick succession, then one every ``seconds``; the
server's settings (``/config cooldown``) say how many and how often, 0 meaning off. Refused
actions cost nothing: a refusal by the cooldown takes no token, and an action refused later
for another reason gives its token back (``refund``). Every entry point that starts work
(commands, buttons, any other front end) calls ``check`` first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.errors import UserFacingError
from bot.servers import Servers

MAX_TRACKED = 10_000  # members with a partly used bucket; full buckets are forgotten


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float  # monotonic time of ``tokens``


class Cooldowns:
    def __init__(self, servers: Servers, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.servers = servers
        self._clock = clock
        self._wall = wall
        self._buckets: dict[tuple[int | None, int], _Bucket] = {}

    async def check(self, guild_id: int | None, user_id: int) -> None:
        """Take one action's token, or refuse (UserFacingError saying when to try again)."""
        server = await self.servers.get(guild_id)
        burst, seconds = server.cooldown_burst, server.cooldown_seconds
        if burst <= 0 or seconds <= 0:
            return
        now = self._clock()
        key = (guild_id, user_id)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(float(burst), now)
        else:
            bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.at) / seconds)
            bucket.at = now
        if bucket.tokens < 1:
            wait = (1 - bucket.tokens) * seconds
            self._buckets[key] = bucket
            at = math.ceil(self._wall() + wait)
            raise UserFacingError(f"You're going a bit fast; try again <t:{at}:R>.")
        bucket.tokens -= 1
        self._buckets[key] = bucket
        if len(self._buckets) > MAX_TRACKED:
            self._forget_full(burst, seconds, now)

    def refund(self, guild_id: int | None, user_id: int) -> None:
        """Give back the token of an action that was refused after ``check`` let it through."""
        bucket = self._buckets.get((guild_id, user_id))
        if bucket is not None:
            bucket.tokens += 1

    def _forget_full(self, burst: int, seconds: float, now: float) -> None:
        # Approximate (every server's rule taken as this one's): a forgotten bucket starts
        # full again, which only ever favours the member.
        for key, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.at) / seconds >= burst:
                del self._buckets[key]
