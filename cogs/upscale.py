"""The `Upscale` button on each image of a result: ModelsLab's super resolution, as a job like
any other (fair queue, webhook or polling, one image of quota, delivered once), posted as a
reply to the result it came from.

The button is a DynamicItem: its state (the job and the image's index) lives in the custom
id, so it works after a restart and on results days old.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.components import UPSCALE_TEMPLATE, upscale_id
from bot.errors import UserFacingError
from cogs.generate import is_nsfw_channel, requester_of
from cogs.remix import bot_of, source_job

if TYPE_CHECKING:
    from bot.app import RemixerBot

log = logging.getLogger(__name__)


class UpscaleButton(discord.ui.DynamicItem[discord.ui.Button], template=UPSCALE_TEMPLATE):
    def __init__(self, track_id: str, index: int) -> None:
        super().__init__(discord.ui.Button(label="Upscale",
                                           custom_id=upscale_id(track_id, index)))
        self.track_id, self.index = track_id, index

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> UpscaleButton:
        return cls(match["track"], int(match["index"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        # COOLDOWN: the per-member cooldown check (Cooldowns.check(guild_id, user_id)) belongs
        # here, before anything else, once cooldowns exist.
        job = await source_job(interaction, self.track_id)
        if job is None:
            return
        message = interaction.message
        attachments = message.attachments if message else []
        if self.index >= len(attachments):
            await interaction.response.send_message("That image is no longer on the message.",
                                                    ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        bot = bot_of(interaction)
        assert bot.generation is not None
        try:
            await bot.generation.start_upscale(
                job, self.index, attachments[self.index].url, requester_of(interaction),
                reply_to=message.id if message else None,
                nsfw_channel=is_nsfw_channel(interaction))
        except UserFacingError as exc:
            await interaction.edit_original_response(content=str(exc))


class Upscale(commands.Cog):
    def __init__(self, bot: RemixerBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(UpscaleButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(UpscaleButton)


async def setup(bot: RemixerBot) -> None:
    await bot.add_cog(Upscale(bot))
