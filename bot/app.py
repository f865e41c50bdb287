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

from bot.cooldowns import Cooldowns
from bot.delivery import DiscordDelivery
from bot.errors import UserFacingError
from bot.generation import GenerationService
from bot.runtime import Services
from bot.servers import Servers
from bot.settings import Settings

log = logging.getLogger(__name__)

# Loaded in this order; each load is guarded so one broken cog cannot stop the bot.
COGS: tuple[str, ...] = ("cogs.generate", "cogs.remix", "cogs.admin", "cogs.paint",
                         "cogs.upscale", "cogs.membership")
COMMANDS_HASH_KEY = "global_commands_hash"
# Every command is for servers that added the bot: a server's quota, member limits and channel
# list apply to it. Not in DMs, group DMs, nor as a user-installed app, where none would.
SERVER_ONLY = app_commands.AppCommandContext(guild=True, dm_channel=False, private_channel=False)
SERVER_INSTALL_ONLY = app_commands.AppInstallationType(guild=True, user=False)
OUTSIDE_A_SERVER = ("Remixer works only in a server that has added it, where that server's "
                    "limits apply; it can't be used in direct messages or as an app you "
                    "installed yourself. Use it in your server instead.")


def in_a_server(interaction: discord.Interaction) -> bool:
    """The interaction comes from a server, through that server's install of the bot."""
    return interaction.guild_id is not None and interaction.is_guild_integration()


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

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        # Discord hides the commands outside servers, but an old client or a hand-made
        # request can still send one: refused here, before anything runs or is charged.
        if in_a_server(interaction):
            return True
        if interaction.type is discord.InteractionType.application_command:
            await reply_privately(interaction, OUTSIDE_A_SERVER)
        return False

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
        sharding = {}
        if isinstance(self, commands.AutoShardedBot):  # SHARD_COUNT / SHARD_IDS
            sharding = {"shard_count": settings.shard_count, "shard_ids": settings.shards}
        super().__init__(command_prefix=commands.when_mentioned, intents=intents,
                         help_command=None, tree_cls=RemixerTree,
                         allowed_mentions=discord.AllowedMentions.none(),
                         allowed_contexts=SERVER_ONLY, allowed_installs=SERVER_INSTALL_ONLY,
                         **sharding)
        self.settings = settings
        self.services = Services(settings, DiscordDelivery(self))
        self.generation: GenerationService | None = None
        self.servers: Servers | None = None
        self.cooldowns: Cooldowns | None = None

    def serves_guild(self, guild_id: int) -> bool:
        """Whether this process's gateway shards carry the server's events (Discord routes
        a server to shard ``(id >> 22) % SHARD_COUNT``); always, with one shard."""
        count = self.shard_count or 1
        ids = getattr(self, "shard_ids", None)
        return count <= 1 or ids is None or (guild_id >> 22) % count in ids

    async def setup_hook(self) -> None:
        await self.services.start()
        assert self.services.engine is not None and self.services.session is not None
        assert self.services.store is not None
        self.servers = Servers(self.services.store, self.settings)
        self.cooldowns = Cooldowns(self.servers)
        self.generation = GenerationService(self.settings, self.services.engine,
                                            self.services.session, self.servers,
                                            models=self.services.models)
        for name in COGS:
            try:
                await self.load_extension(name)
            except Exception:
                log.exception("could not load %s; the bot goes on without it", name)
        await self.sync_commands()

    async def sync_commands(self) -> None:
        """Global commands: synced only when their definition changed (Discord rate-limits
        syncs and global changes take a while to show). DEV_GUILD_ID: synced to that server
        only, each start, and not globally (both would show every command twice there)."""
        store = self.services.store
        assert store is not None
        if self.settings.dev_guild_id:
            guild = discord.Object(self.settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
            log.info("DEV_GUILD_ID is set: commands synced to server %s only, not globally",
                     self.settings.dev_guild_id)
            return
        definition = json.dumps([c.to_dict(self.tree) for c in self.tree.get_commands()],
                                sort_keys=True)
        digest = hashlib.sha256(definition.encode()).hexdigest()
        async with store.exclusive("command-sync"):  # one process of the bot at a time
            if await store.get_state(COMMANDS_HASH_KEY) != digest:
                await self.tree.sync()
                await store.set_state(COMMANDS_HASH_KEY, digest)
                log.info("global commands synced")
            else:
                log.info("global commands unchanged; not synced")

    async def close(self) -> None:
        # Jobs first, while Discord is still reachable for deliveries in progress.
        await self.services.stop()
        await super().close()


class ShardedRemixerBot(RemixerBot, commands.AutoShardedBot):
    """The same bot over several gateway shards (SHARD_COUNT), or some of them (SHARD_IDS)."""


def create_bot(settings: Settings) -> RemixerBot:
    """One shard unless SHARD_COUNT asks for more or SHARD_IDS names this process's."""
    if settings.shard_ids is not None or (settings.shard_count or 1) > 1:
        return ShardedRemixerBot(settings)
    return RemixerBot(settings)
