"""Per-server settings and per-member limits, stored in SQLite and read on every command, so a
change an admin makes applies to the next command without a restart."""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass

from bot.errors import UserFacingError
from bot.jobs.store import JobStore, QuotaRule, utc_day
from bot.modelslab.catalogue import DEFAULT_IMG2IMG_ENDPOINT
from bot.settings import Settings

DEFAULT_MAX_ACTIVE_JOBS = 3
NSFW_POLICIES = ("allow", "spoiler")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    guild_id: int | None
    daily_limit: int
    daily_limit_is_default: bool
    max_active_jobs: int
    default_endpoint: str
    default_model: str
    nsfw_policy: str  # in channels marked NSFW: "allow" (as is) or "spoiler"
    allowed_channels: tuple[int, ...]  # empty: every channel
    cooldown_burst: int = 5  # actions in quick succession; 0: no cooldown
    cooldown_seconds: float = 5.0  # then one action every this many seconds; 0: none
    safety_checker_type: str | None = None  # None: the endpoint's default
    upscale_enabled: bool = True
    allowed_models: tuple[str, ...] = ()  # empty: every model


@dataclass(frozen=True, slots=True)
class Usage:
    used: int
    limit: int | None  # None: unlimited
    resets_at: dt.datetime

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)


def next_reset(now: float | None = None) -> dt.datetime:
    at = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)
    return at.replace(hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(days=1)


class Servers:
    def __init__(self, store: JobStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    async def get(self, guild_id: int | None) -> ServerSettings:
        rows = await self.store.read("SELECT * FROM guild_settings WHERE guild_id IS ?",
                                     (guild_id,))
        row = rows[0] if rows else None

        def value(name: str):
            return row[name] if row is not None else None

        return ServerSettings(
            guild_id=guild_id,
            daily_limit=value("daily_limit") if value("daily_limit") is not None
            else self.settings.daily_image_quota,
            daily_limit_is_default=value("daily_limit") is None,
            max_active_jobs=value("max_active_jobs") or DEFAULT_MAX_ACTIVE_JOBS,
            default_endpoint=value("default_endpoint") or DEFAULT_IMG2IMG_ENDPOINT,
            default_model=value("default_model") or self.settings.default_model_id,
            nsfw_policy=value("nsfw_policy") or "allow",
            allowed_channels=tuple(json.loads(value("allowed_channels") or "[]")),
            cooldown_burst=value("cooldown_burst") if value("cooldown_burst") is not None
            else self.settings.cooldown_burst,
            cooldown_seconds=value("cooldown_seconds") if value("cooldown_seconds") is not None
            else self.settings.cooldown_seconds,
            safety_checker_type=value("safety_checker_type"),
            upscale_enabled=value("upscale_enabled") != 0,
            allowed_models=tuple(json.loads(value("allowed_models") or "[]")),
        )

    async def update(self, guild_id: int, by: int, **changes: object) -> ServerSettings:
        """Change some settings of a server (others keep their values)."""
        allowed = {"daily_limit", "max_active_jobs", "default_endpoint", "default_model",
                   "nsfw_policy", "allowed_channels", "cooldown_burst", "cooldown_seconds",
                   "safety_checker_type", "upscale_enabled", "allowed_models"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown server settings {sorted(unknown)}")
        columns = list(changes)
        values = [json.dumps(list(v)) if k in ("allowed_channels", "allowed_models") else v
                  for k, v in changes.items()]
        assignments = ", ".join(f"{c} = excluded.{c}" for c in columns)
        await self.store.write(
            f"INSERT INTO guild_settings (guild_id, {', '.join(columns)}, updated_at, "
            f"updated_by) VALUES (?, {', '.join('?' * len(columns))}, ?, ?) "
            f"ON CONFLICT(guild_id) DO UPDATE SET {assignments}, "
            f"updated_at = excluded.updated_at, updated_by = excluded.updated_by",
            (guild_id, *values, time.time(), by))
        return await self.get(guild_id)

    async def member_limit(self, guild_id: int | None, user_id: int) -> tuple[bool, int | None]:
        """(has an override, its daily limit: None meaning unlimited)."""
        rows = await self.store.read(
            "SELECT daily_limit FROM member_limits WHERE guild_id IS ? AND user_id = ?",
            (guild_id, user_id))
        return (True, rows[0][0]) if rows else (False, None)

    async def set_member_limit(self, guild_id: int, user_id: int, limit: int | None,
                               by: int) -> None:
        await self.store.write(
            "INSERT INTO member_limits (guild_id, user_id, daily_limit, updated_at, "
            "updated_by) VALUES (?, ?, ?, ?, ?) ON CONFLICT(guild_id, user_id) DO UPDATE SET "
            "daily_limit = excluded.daily_limit, updated_at = excluded.updated_at, "
            "updated_by = excluded.updated_by", (guild_id, user_id, limit, time.time(), by))

    async def clear_member_limit(self, guild_id: int, user_id: int) -> None:
        await self.store.write("DELETE FROM member_limits WHERE guild_id = ? AND user_id = ?",
                               (guild_id, user_id))

    async def member_overrides(self, guild_id: int) -> list[tuple[int, int | None]]:
        rows = await self.store.read("SELECT user_id, daily_limit FROM member_limits WHERE "
                                     "guild_id = ? ORDER BY user_id", (guild_id,))
        return [(row[0], row[1]) for row in rows]

    async def quota_rule(self, server: ServerSettings, user_id: int) -> QuotaRule:
        has_override, override = await self.member_limit(server.guild_id, user_id)
        limit = override if has_override else server.daily_limit
        return QuotaRule(daily_limit=limit, max_active=server.max_active_jobs)

    async def usage(self, server: ServerSettings, user_id: int, now: float | None = None,
                    rule: QuotaRule | None = None) -> Usage:
        now = time.time() if now is None else now
        rule = rule or await self.quota_rule(server, user_id)
        used = await self.store.images_used(user_id, server.guild_id, utc_day(now))
        return Usage(used=used, limit=rule.daily_limit, resets_at=next_reset(now))

    async def active_jobs(self, server: ServerSettings, user_id: int) -> int:
        """Jobs of the member on this server that are waiting or running (a quick look before
        any work; the binding check is made when the job is written)."""
        rows = await self.store.read(
            "SELECT COUNT(*) FROM jobs WHERE guild_id IS ? AND user_id = ? AND status "
            "IN ('queued', 'submitted', 'processing')", (server.guild_id, user_id))
        return int(rows[0][0]) if rows else 0

    def check_channel(self, server: ServerSettings, channel_id: int) -> None:
        if server.allowed_channels and channel_id not in server.allowed_channels:
            where = ", ".join(f"<#{c}>" for c in server.allowed_channels)
            raise UserFacingError(f"Remixer can't be used in this channel. On this server it "
                                  f"works in {where}.")
