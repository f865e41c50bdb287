"""The bot class: owns the shared resources (HTTP session, ModelsLab client) and loads cogs."""

from __future__ import annotations

import logging

import aiohttp
import discord
from discord.ext import commands

from bot.modelslab.client import ModelsLabClient
from bot.settings import Settings

log = logging.getLogger(__name__)

# Loaded in this order; each load is guarded so one broken cog cannot stop the bot.
COGS: tuple[str, ...] = ()


class RemixerBot(commands.Bot):
    def __init__(self, settings: Settings) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(command_prefix=commands.when_mentioned, intents=intents,
                         help_command=None)
        self.settings = settings
        self.http_session: aiohttp.ClientSession | None = None
        self.modelslab: ModelsLabClient | None = None

    async def setup_hook(self) -> None:
        self.http_session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=120, sock_connect=10),
            headers={"User-Agent": "Remixer (self-hosted Discord bot)"},
        )
        self.modelslab = ModelsLabClient(
            self.http_session,
            base_url=self.settings.modelslab_base_url,
            api_key=self.settings.modelslab_api_key,
            enterprise_key=self.settings.modelslab_enterprise_api_key,
        )
        for name in COGS:
            try:
                await self.load_extension(name)
            except Exception:
                log.exception("could not load %s; the bot goes on without it", name)

    async def close(self) -> None:
        await super().close()
        if self.http_session is not None:
            await self.http_session.close()
