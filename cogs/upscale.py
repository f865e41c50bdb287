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
from cogs.generate import is_nsfw_channel, take_turn
from cogs.remix import NO_SERVER, bot_of, requester_for, source_job

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
        job = await source_job(interaction, self.track_id)
        if job is None:
            return
        # Under the rules of the server the result came from, also on a result in a DM.
        requester = requester_for(interaction, job)
        if requester is None:
            await interaction.response.send_message(NO_SERVER, ephemeral=True)
            return
        message = interaction.message
        attachments = message.attachments if message else []
        if self.index >= len(attachments):
            await interaction.response.send_message("That image is no longer on the message.",
                                                    ephemeral=True)
            return
        bot = bot_of(interaction)
        # The cooldown before any work: a storm of clicks costs nothing.
        if not await take_turn(bot, interaction, requester.guild_id):
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert bot.generation is not None and bot.cooldowns is not None
        in_place = interaction.guild_id is not None  # else: a result in a DM
        try:
            await bot.generation.start_upscale(
                job, self.index, attachments[self.index].url, requester,
                reply_to=message.id if message and in_place else None,
                nsfw_channel=is_nsfw_channel(interaction) if in_place
                else bool(job.options.get("nsfw_channel")))
        except UserFacingError as exc:
            bot.cooldowns.refund(requester.guild_id, requester.user_id)
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
