"""The bot class: owns the shared services (store, ModelsLab client, job engine, web server),
loads the cogs, keeps one error handler, and syncs commands only when they changed."""

from __future__ import annotations

import hashlib
import json
import logging

import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.delivery import DiscordDelivery
from bot.errors import UserFacingError
from bot.generation import GenerationService
from bot.runtime import Services
from bot.servers import Servers
from bot.settings import Settings

log = logging.getLogger(__name__)

# Loaded in this order; each load is guarded so one broken cog cannot stop the bot.
COGS: tuple[str, ...] = ("cogs.generate", "cogs.remix", "cogs.admin", "cogs.membership")
COMMANDS_HASH_KEY = "global_commands_hash"


def point_discord_at(settings: Settings) -> None:
    """Redirect discord.py to a local Discord when the (test-only) settings ask for it."""
    if settings.discord_api_base:
        discord.http.Route.BASE = settings.discord_api_base.rstrip("/")
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)
    if settings.discord_cdn_base:
        discord.asset.Asset.BASE = settings.discord_cdn_base.rstrip("/")


class RemixerTree(app_commands.CommandTree):
    """The one error handler: member mistakes are shown as they are, the rest is logged."""

    async def on_error(self, interaction: discord.Interaction,
                       error: app_commands.AppCommandError) -> None:
        original = getattr(error, "original", error)
        if isinstance(original, UserFacingError):
            await reply_privately(interaction, str(original))
            return
        log.error("command %s failed", interaction.command and interaction.command.name,
                  exc_info=original)
        await reply_privately(interaction, "Something went wrong on my side; it has been "
                              "logged. Please try again in a moment.")


async def reply_privately(interaction: discord.Interaction, text: str) -> None:
    """Answer only the member, whether or not the interaction was already acknowledged."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("could not answer interaction %s: %s", interaction.id, exc.status)


class RemixerBot(commands.Bot):
    def __init__(self, settings: Settings) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(command_prefix=commands.when_mentioned, intents=intents,
                         help_command=None, tree_cls=RemixerTree,
                         allowed_mentions=discord.AllowedMentions.none())
        self.settings = settings
        self.services = Services(settings, DiscordDelivery(self))
        self.generation: GenerationService | None = None
        self.servers: Servers | None = None

    async def setup_hook(self) -> None:
        await self.services.start()
        assert self.services.engine is not None and self.services.session is not None
        assert self.services.store is not None
        self.servers = Servers(self.services.store, self.settings)
        self.generation = GenerationService(self.settings, self.services.engine,
                                            self.services.session, self.servers)
        for name in COGS:
            try:
                await self.load_extension(name)
            except Exception:
                log.exception("could not load %s; the bot goes on without it", name)
        await self.sync_commands()

    async def sync_commands(self) -> None:
        """Global commands: synced only when their definition changed (Discord rate-limits
        syncs and global changes take a while to show). DEV_GUILD_ID: synced there each start."""
        store = self.services.store
        assert store is not None
        definition = json.dumps([c.to_dict(self.tree) for c in self.tree.get_commands()],
                                sort_keys=True)
        digest = hashlib.sha256(definition.encode()).hexdigest()
        if await store.get_state(COMMANDS_HASH_KEY) != digest:
            await self.tree.sync()
            await store.set_state(COMMANDS_HASH_KEY, digest)
            log.info("global commands synced")
        else:
            log.info("global commands unchanged; not synced")
        if self.settings.dev_guild_id:
            guild = discord.Object(self.settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
            log.info("commands synced to guild %s", self.settings.dev_guild_id)

    async def close(self) -> None:
        # Jobs first, while Discord is still reachable for deliveries in progress.
        await self.services.stop()
        await super().close()
