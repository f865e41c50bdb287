"""Which servers Remixer is in: when it is removed from one, that server's jobs stop there.

Queued jobs are cancelled and refunded at once; jobs already at ModelsLab finish and their
results are dropped (the engine logs each). At every connection the same is done for servers
the bot left while it was offline.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

if TYPE_CHECKING:
    from bot.app import RemixerBot

log = logging.getLogger(__name__)


class Membership(commands.Cog):
    def __init__(self, bot: RemixerBot) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_guild_remove(self, guild: discord.Guild) -> None:
        engine = self.bot.services.engine
        if engine is None:
            return
        log.warning("Remixer was removed from server %s (%s)", guild.id, guild.name)
        await engine.leave_guild(guild.id)

    @commands.Cog.listener()
    async def on_guild_join(self, guild: discord.Guild) -> None:
        engine = self.bot.services.engine
        if engine is not None:
            engine.rejoin_guild(guild.id)

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        engine = self.bot.services.engine
        if engine is None:
            return
        guilds = {guild.id for guild in self.bot.guilds}
        for guild_id in guilds:
            engine.rejoin_guild(guild_id)
        # Only the servers of this process's shards: another process carries the others.
        await engine.keep_guilds(guilds, serves=self.bot.serves_guild)


async def setup(bot: RemixerBot) -> None:
    await bot.add_cog(Membership(bot))
