"""/quota, /history and /config: what members can see of their usage, and what admins
(Manage Server) can change. Settings live in SQLite and apply to the next command."""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.delivery import as_text, clip, message_link, short_id
from bot.errors import UserFacingError
from bot.jobs.models import Job, JobStatus
from bot.modelslab.catalogue import (
    ENDPOINTS,
    IMG2IMG_ENDPOINTS,
    MODEL_ID_MAX_LENGTH,
    MODEL_ID_PATTERN,
    SAFETY_CHECKER_TYPES,
    Operation,
)
from bot.servers import NSFW_POLICIES, Servers, ServerSettings, Usage
from cogs.generate import model_choices_for

if TYPE_CHECKING:
    from bot.app import RemixerBot

log = logging.getLogger(__name__)

HISTORY_PAGE = 5
HISTORY_TEMPLATE = r"history:(?P<user>[0-9]{1,20}):(?P<page>[0-9]{1,4})"
STATUS_WORDS = {
    JobStatus.QUEUED: "waiting", JobStatus.SUBMITTED: "sent", JobStatus.PROCESSING: "generating",
    JobStatus.SUCCEEDED: "finishing", JobStatus.FAILED: "failed", JobStatus.DELIVERED: "done",
}


def bot_of(interaction: discord.Interaction) -> RemixerBot:
    return interaction.client  # type: ignore[return-value]


def can_manage(interaction: discord.Interaction) -> bool:
    # Discord's default_permissions only hides commands in its client; the bot checks again.
    return bool(interaction.guild_id and interaction.permissions.manage_guild)


def require_manage(interaction: discord.Interaction) -> None:
    if not can_manage(interaction):
        raise UserFacingError("Only members with the Manage Server permission can do that.")


def describe_usage(who: str, usage: Usage) -> str:
    reset = (f"{discord.utils.format_dt(usage.resets_at, 'R')} "
             f"({discord.utils.format_dt(usage.resets_at, 'f')})")
    if usage.limit is None:
        return (f"{who} used **{usage.used}** images today (UTC); no daily limit applies. "
                f"The count resets {reset}.")
    return (f"{who} used **{usage.used}** of **{usage.limit}** images today (UTC); "
            f"**{usage.remaining}** left. The count resets {reset}.")


def where_taken_by_server(option: str) -> tuple:
    """Endpoints that take a field the server sets (not a member option)."""
    return tuple(e for e in ENDPOINTS.values() if e.takes(option))


def describe_server(server: ServerSettings, overrides: list[tuple[int, int | None]],
                    models_note: str | None = None) -> str:
    channels = (", ".join(f"<#{c}>" for c in server.allowed_channels)
                if server.allowed_channels else "every channel")
    lines = [
        "**Remixer settings for this server**",
        f"Daily limit: **{server.daily_limit}** images per member"
        + (" (the bot's default)" if server.daily_limit_is_default else ""),
        f"Jobs one member may have waiting or running: **{server.max_active_jobs}**",
        f"Default endpoint: **{server.default_endpoint}**",
        f"Default model: **{server.default_model}**",
        f"In channels marked NSFW, flagged images are: **{server.nsfw_policy}**"
        + (" (posted as they are)" if server.nsfw_policy == "allow" else " (posted hidden)")
        + "; elsewhere the safety checker is always on",
        f"Remixer works in: {channels}",
        f"Cooldown: {describe_cooldown(server.cooldown_burst, server.cooldown_seconds)}",
    ]
    filtered = ", ".join(e.title for e in where_taken_by_server("safety_checker_type"))
    lines.append(f"Safety filter on the {filtered} endpoints: "
                 f"**{server.safety_checker_type or 'sensitive_content_text'}**"
                 + ("" if server.safety_checker_type else " (ModelsLab's default)"))
    lines.append(f"Upscale button: **{'on' if server.upscale_enabled else 'off'}**")
    lines.append("Models members may use: " + (", ".join(server.allowed_models)
                                               if server.allowed_models else "any"))
    if models_note:
        lines.append(models_note)
    if overrides:
        lines.append("Member limits: " + ", ".join(
            f"<@{user}>: {'unlimited' if limit is None else limit}" for user, limit in overrides))
    return "\n".join(lines)


def describe_cooldown(burst: int, seconds: float) -> str:
    if burst <= 0 or seconds <= 0:
        return "**off**"
    return (f"up to **{burst}** action{'s' if burst != 1 else ''} in quick succession, then "
            f"one every **{seconds:g}** s")


def history_page(jobs: list[Job], page: int, total: int) -> str:
    if not jobs:
        return "You have no jobs here yet." if page == 0 else "No more jobs."
    lines = [f"**Your jobs** (page {page + 1} of {max(1, -(-total // HISTORY_PAGE))})"]
    for job in jobs:
        prompt = clip(as_text(" ".join(job.prompt.split())), 120)  # one line, as text
        state = STATUS_WORDS[job.status]
        if job.status is JobStatus.DELIVERED and job.error:
            state = "failed"
        link = (f" · [result]({message_link(job, job.result_message_id)})"
                if job.result_message_id and not job.error else "")
        when = discord.utils.format_dt(dt.datetime.fromtimestamp(job.created_at, dt.UTC), "R")
        lines.append(f"`{short_id(job.track_id)}` {state} · {when} · {prompt}{link}")
    return "\n".join(lines)


class HistoryButton(discord.ui.DynamicItem[discord.ui.Button], template=HISTORY_TEMPLATE):
    def __init__(self, user_id: int, page: int, label: str = "Page") -> None:
        super().__init__(discord.ui.Button(label=label, custom_id=f"history:{user_id}:{page}"))
        self.user_id, self.page = user_id, page

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> HistoryButton:
        return cls(int(match["user"]), int(match["page"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        if interaction.user.id != self.user_id:
            await interaction.response.send_message("That is someone else's history.",
                                                    ephemeral=True)
            return
        content, view = await render_history(bot_of(interaction), interaction, self.page)
        await interaction.response.edit_message(content=content, view=view)


async def render_history(bot: RemixerBot, interaction: discord.Interaction,
                         page: int) -> tuple[str, discord.ui.View]:
    store = bot.services.store
    assert store is not None
    total = await store.count_jobs(interaction.user.id, interaction.guild_id)
    jobs = await store.recent_jobs(interaction.user.id, interaction.guild_id,
                                   limit=HISTORY_PAGE, offset=page * HISTORY_PAGE)
    view = discord.ui.View(timeout=None)
    previous = discord.ui.Button(label="Newer", custom_id=f"history:{interaction.user.id}:"
                                 f"{max(0, page - 1)}", disabled=page == 0)
    following = discord.ui.Button(label="Older", custom_id=f"history:{interaction.user.id}:"
                                  f"{page + 1}", disabled=(page + 1) * HISTORY_PAGE >= total)
    view.add_item(previous)
    view.add_item(following)
    return history_page(jobs, page, total), view


class Admin(commands.Cog):
    def __init__(self, bot: RemixerBot) -> None:
        self.bot = bot

    @property
    def servers(self) -> Servers:
        assert self.bot.servers is not None
        return self.bot.servers

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(HistoryButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(HistoryButton)

    @app_commands.command(name="quota", description="Images used today, the limit, and when "
                                                    "it resets")
    @app_commands.describe(member="Whose quota to show (needs Manage Server for others)")
    async def quota(self, interaction: discord.Interaction,
                    member: discord.User | None = None) -> None:
        target = member or interaction.user
        if target.id != interaction.user.id and not can_manage(interaction):
            raise UserFacingError("Only members with the Manage Server permission can see "
                                  "another member's quota.")
        server = await self.servers.get(interaction.guild_id)
        usage = await self.servers.usage(server, target.id)
        who = "You have" if target.id == interaction.user.id else f"{target.mention} has"
        await interaction.response.send_message(describe_usage(who, usage), ephemeral=True,
                                                allowed_mentions=discord.AllowedMentions.none())

    @app_commands.command(name="history", description="Your recent jobs, with links to results")
    async def history(self, interaction: discord.Interaction) -> None:
        content, view = await render_history(self.bot, interaction, 0)
        await interaction.response.send_message(content, view=view, ephemeral=True)

    config = app_commands.Group(
        name="config", description="Remixer's settings for this server (Manage Server)",
        default_permissions=discord.Permissions(manage_guild=True), guild_only=True)

    async def _done(self, interaction: discord.Interaction, text: str) -> None:
        await interaction.response.send_message(text, ephemeral=True,
                                                allowed_mentions=discord.AllowedMentions.none())

    @config.command(name="show", description="Show this server's settings")
    async def config_show(self, interaction: discord.Interaction) -> None:
        require_manage(interaction)
        server = await self.servers.get(interaction.guild_id)
        overrides = await self.servers.member_overrides(interaction.guild_id)
        models = self.bot.services.models
        await self._done(interaction, describe_server(
            server, overrides, models.status() if models is not None else None))

    @config.command(name="daily_limit", description="Images each member may make per day")
    @app_commands.describe(limit="Images per member per UTC day (each sample counts)")
    async def config_daily_limit(self, interaction: discord.Interaction,
                                 limit: app_commands.Range[int, 0, 100_000]) -> None:
        require_manage(interaction)
        if not 0 <= limit <= 100_000:
            raise UserFacingError("limit must be a whole number from 0 to 100000.")
        await self.servers.update(interaction.guild_id, interaction.user.id, daily_limit=limit)
        await self._done(interaction, f"Members may now make **{limit}** images a day. "
                                      f"This applies from the next command.")

    @config.command(name="member_limit",
                    description="A member's own daily limit (or unlimited; neither clears it)")
    @app_commands.describe(member="The member", limit="Their images per day",
                           unlimited="No daily limit for them")
    async def config_member_limit(self, interaction: discord.Interaction, member: discord.User,
                                  limit: app_commands.Range[int, 0, 100_000] | None = None,
                                  unlimited: bool | None = None) -> None:
        require_manage(interaction)
        guild = interaction.guild_id
        if unlimited and limit is not None:
            raise UserFacingError("Give either a limit or unlimited, not both.")
        if unlimited:
            await self.servers.set_member_limit(guild, member.id, None, interaction.user.id)
            text = f"{member.mention} now has no daily limit."
        elif limit is not None:
            if not 0 <= limit <= 100_000:
                raise UserFacingError("limit must be a whole number from 0 to 100000.")
            await self.servers.set_member_limit(guild, member.id, limit, interaction.user.id)
            text = f"{member.mention} may now make **{limit}** images a day."
        else:
            await self.servers.clear_member_limit(guild, member.id)
            text = f"{member.mention} now has the server's daily limit."
        await self._done(interaction, text)

    @config.command(name="max_jobs", description="Jobs one member may have waiting or running")
    async def config_max_jobs(self, interaction: discord.Interaction,
                              count: app_commands.Range[int, 1, 50]) -> None:
        require_manage(interaction)
        if not 1 <= count <= 50:
            raise UserFacingError("count must be a whole number from 1 to 50.")
        await self.servers.update(interaction.guild_id, interaction.user.id,
                                  max_active_jobs=count)
        await self._done(interaction, f"Each member may now have **{count}** jobs waiting or "
                                      f"running at once.")

    @config.command(name="default_endpoint",
                    description="The img2img endpoint used when a member picks none")
    @app_commands.choices(endpoint=[app_commands.Choice(name=n, value=n)
                                    for n in IMG2IMG_ENDPOINTS])
    async def config_default_endpoint(self, interaction: discord.Interaction,
                                      endpoint: app_commands.Choice[str]) -> None:
        require_manage(interaction)
        assert self.bot.generation is not None
        # The same check a member's command meets: an img2img endpoint this bot has a key for.
        chosen = self.bot.generation.resolve_endpoint(Operation.IMG2IMG, endpoint.value)
        await self.servers.update(interaction.guild_id, interaction.user.id,
                                  default_endpoint=chosen.name)
        await self._done(interaction, f"The default endpoint is now **{chosen.name}**.")

    @config.command(name="default_model", description="The model used when a member names none")
    async def config_default_model(self, interaction: discord.Interaction,
                                   model: app_commands.Range[str, 1, 100]) -> None:
        require_manage(interaction)
        model = self._known_model(model)
        await self.servers.update(interaction.guild_id, interaction.user.id,
                                  default_model=model)
        await self._done(interaction, f"The default model is now **{model}**.")

    @config_default_model.autocomplete("model")
    async def default_model_choices(self, interaction: discord.Interaction,
                                    current: str) -> list[app_commands.Choice[str]]:
        return await model_choices_for(self.bot, interaction.guild_id, current)

    def _known_model(self, model: str) -> str:
        """A well-formed model id that ModelsLab lists (when its list could be read)."""
        model = model.strip()
        if not MODEL_ID_PATTERN.match(model) or len(model) > MODEL_ID_MAX_LENGTH:
            raise UserFacingError(f"{model!r} is not a model id (letters, digits, '.', '_' "
                                  f"and '-' only).")
        models = self.bot.services.models
        if models is not None and models.available and not models.knows(model):
            closest = models.closest(model)
            hint = f" The closest names: {', '.join(closest)}." if closest else ""
            raise UserFacingError(f"{model} is not a model on ModelsLab's model list.{hint}")
        return model

    @config.command(name="safety_filter",
                    description="How the safety checker hides flagged images, where the "
                                "endpoint lets it choose")
    @app_commands.describe(type="sensitive_content_text (ModelsLab's default), blur, "
                                "pixelate or black")
    @app_commands.choices(type=[app_commands.Choice(name=t, value=t)
                                for t in SAFETY_CHECKER_TYPES])
    async def config_safety_filter(self, interaction: discord.Interaction,
                                   type: app_commands.Choice[str]) -> None:
        require_manage(interaction)
        if type.value not in SAFETY_CHECKER_TYPES:
            raise UserFacingError(f"type must be one of {', '.join(SAFETY_CHECKER_TYPES)}.")
        await self.servers.update(interaction.guild_id, interaction.user.id,
                                  safety_checker_type=type.value)
        where = ", ".join(e.title for e in where_taken_by_server("safety_checker_type"))
        await self._done(interaction, f"Images the safety checker flags are now shown as "
                                      f"**{type.value}** on the {where} endpoints.")

    @config.command(name="models", description="The models members may use (none listed: all)")
    @app_commands.choices(action=[app_commands.Choice(name=a, value=a)
                                  for a in ("add", "remove", "clear")])
    async def config_models(self, interaction: discord.Interaction,
                            action: app_commands.Choice[str],
                            model: app_commands.Range[str, 1, 100] | None = None) -> None:
        require_manage(interaction)
        server = await self.servers.get(interaction.guild_id)
        allowed = list(server.allowed_models)
        if action.value == "clear":
            allowed = []
        elif model is None:
            raise UserFacingError(f"Name the model to {action.value}.")
        elif action.value == "add":
            model = self._known_model(model)
            if model.lower() not in {m.lower() for m in allowed}:
                allowed.append(model)
        elif action.value == "remove":
            allowed = [m for m in allowed if m.lower() != model.strip().lower()]
        updated = await self.servers.update(interaction.guild_id, interaction.user.id,
                                            allowed_models=allowed)
        shown = (", ".join(updated.allowed_models) if updated.allowed_models
                 else "any model")
        await self._done(interaction, f"Members may now use: {shown}.")

    @config_models.autocomplete("model")
    async def models_choices(self, interaction: discord.Interaction,
                             current: str) -> list[app_commands.Choice[str]]:
        namespace = interaction.namespace
        if getattr(namespace, "action", None) == "remove":
            server = await self.servers.get(interaction.guild_id)
            text = current.strip().lower()
            return [app_commands.Choice(name=m, value=m) for m in server.allowed_models
                    if text in m.lower()][:25]
        models = self.bot.services.models
        if models is None or not models.available:
            return []
        return [app_commands.Choice(name=m, value=m) for m in models.suggest(current)]

    @config.command(name="upscale", description="Turn the Upscale button on or off")
    async def config_upscale(self, interaction: discord.Interaction, enabled: bool) -> None:
        require_manage(interaction)
        await self.servers.update(interaction.guild_id, interaction.user.id,
                                  upscale_enabled=1 if enabled else 0)
        await self._done(interaction, "The Upscale button is now **on**." if enabled else
                         "The Upscale button is now **off**: new results don't show it, and "
                         "older ones answer that upscaling is turned off.")

    @config.command(name="nsfw", description="In channels marked NSFW: post flagged images "
                                             "as they are, or as spoilers")
    @app_commands.choices(policy=[app_commands.Choice(name=p, value=p) for p in NSFW_POLICIES])
    async def config_nsfw(self, interaction: discord.Interaction,
                          policy: app_commands.Choice[str]) -> None:
        require_manage(interaction)
        if policy.value not in NSFW_POLICIES:
            raise UserFacingError(f"policy must be one of {', '.join(NSFW_POLICIES)}.")
        await self.servers.update(interaction.guild_id, interaction.user.id,
                                  nsfw_policy=policy.value)
        await self._done(interaction, f"In channels marked NSFW, flagged images are now: "
                                      f"**{policy.value}**. Elsewhere the safety checker "
                                      f"stays on.")

    @config.command(name="channels", description="Where Remixer may be used (none: anywhere)")
    @app_commands.choices(action=[app_commands.Choice(name=a, value=a)
                                  for a in ("add", "remove", "clear")])
    async def config_channels(self, interaction: discord.Interaction,
                              action: app_commands.Choice[str],
                              channel: discord.TextChannel | None = None) -> None:
        require_manage(interaction)
        server = await self.servers.get(interaction.guild_id)
        channels = list(server.allowed_channels)
        if action.value == "clear":
            channels = []
        elif channel is None:
            raise UserFacingError(f"Name the channel to {action.value}.")
        elif action.value == "add" and channel.id not in channels:
            channels.append(channel.id)
        elif action.value == "remove" and channel.id in channels:
            channels.remove(channel.id)
        updated = await self.servers.update(interaction.guild_id, interaction.user.id,
                                            allowed_channels=channels)
        where = (", ".join(f"<#{c}>" for c in updated.allowed_channels)
                 if updated.allowed_channels else "every channel")
        await self._done(interaction, f"Remixer now works in: {where}.")

    @config.command(name="cooldown",
                    description="How fast one member may start jobs (0 turns the cooldown off)")
    @app_commands.describe(burst="Actions in quick succession (default 5; 0: no cooldown)",
                           seconds="Then one action every this many seconds (default 5; "
                                   "0: no cooldown)")
    async def config_cooldown(self, interaction: discord.Interaction,
                              burst: app_commands.Range[int, 0, 100],
                              seconds: app_commands.Range[float, 0.0, 3600.0]) -> None:
        require_manage(interaction)
        if not 0 <= burst <= 100:
            raise UserFacingError("burst must be a whole number from 0 to 100.")
        if not 0 <= seconds <= 3600:
            raise UserFacingError("seconds must be a number from 0 to 3600.")
        updated = await self.servers.update(interaction.guild_id, interaction.user.id,
                                            cooldown_burst=burst, cooldown_seconds=seconds)
        cooldown = describe_cooldown(updated.cooldown_burst, updated.cooldown_seconds)
        await self._done(interaction, f"Each member's cooldown is now: {cooldown}. Refused "
                                      f"commands don't count.")


async def setup(bot: RemixerBot) -> None:
    await bot.add_cog(Admin(bot))
