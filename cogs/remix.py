"""Remixing: the buttons on every result (Remix, Re-roll, Delete) and the `Remix image`
message menu.

The buttons are DynamicItems: their state (the job) lives in the custom id and the job row,
so they keep working after a restart and on results days old.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.components import DELETE_TEMPLATE, REMIX_TEMPLATE, REROLL_TEMPLATE
from bot.errors import UserFacingError
from bot.generation import GenerationRequest, Upload
from bot.jobs.models import Job
from bot.modelslab.catalogue import INPAINT, Operation
from bot.modelslab.payload import GenerationOptions
from cogs.generate import is_nsfw_channel, requester_of, start_job, upload_of

if TYPE_CHECKING:
    from bot.app import RemixerBot

log = logging.getLogger(__name__)

# What a remix keeps of its source's settings; the image, size, seed and count are its own.
KEPT_OPTIONS = ("negative_prompt", "strength", "model", "steps", "guidance_scale", "scheduler",
                "clip_skip", "karras")
IMAGE_NAME = re.compile(r"\.(png|jpe?g|webp)$", re.IGNORECASE)


def bot_of(interaction: discord.Interaction) -> RemixerBot:
    return interaction.client  # type: ignore[return-value]


async def source_job(interaction: discord.Interaction, track_id: str) -> Job | None:
    store = bot_of(interaction).services.store
    job = await store.get(track_id) if store else None
    if job is None:
        await interaction.response.send_message(
            "I don't know that result any more, so I can't do that with it.", ephemeral=True)
    return job


def endpoint_for_remix(job: Job) -> str:
    # A remix has no mask: an inpainting result is remixed with the v6 img2img endpoint.
    return "v6" if job.endpoint == INPAINT.name else job.endpoint


async def refreshed(bot: RemixerBot, *urls: str | None) -> list[str | None]:
    """Discord's attachment links expire after about a day; a re-roll of an older result asks
    Discord for fresh links to the same files (the old ones are kept if it cannot)."""
    wanted = [u for u in urls if u]
    if not wanted:
        return list(urls)
    try:
        data = await bot.http.request(discord.http.Route("POST", "/attachments/refresh-urls"),
                                      json={"attachment_urls": wanted})
    except discord.HTTPException as exc:
        log.info("attachment links not refreshed (%s)", exc.status)
        return list(urls)
    fresh = {item.get("original"): item.get("refreshed")
             for item in (data or {}).get("refreshed_urls", [])}
    return [fresh.get(u) or u if u else u for u in urls]


class RemixModal(discord.ui.Modal):
    """Prompt, negative prompt and strength for a remix; the prompt comes prefilled."""

    def __init__(self, *, title: str, image: Upload, prompt: str = "",
                 negative_prompt: str = "", strength: float | None = None,
                 source: Job | None = None) -> None:
        super().__init__(title=title, timeout=15 * 60)
        self.image = image
        self.source = source
        self.prompt = discord.ui.TextInput(label="Prompt", default=prompt[:2000] or None,
                                           max_length=2000, style=discord.TextStyle.paragraph)
        self.negative = discord.ui.TextInput(label="Negative prompt", required=False,
                                             default=negative_prompt[:2000] or None,
                                             max_length=2000, style=discord.TextStyle.paragraph)
        self.strength = discord.ui.TextInput(
            label="Strength (0 keeps the image, 1 ignores it)", required=False, max_length=6,
            default=f"{round(strength, 3):g}" if strength is not None else None,
            placeholder="0.7")
        for item in (self.prompt, self.negative, self.strength):
            self.add_item(item)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        strength: float | None = None
        if self.strength.value.strip():
            try:
                strength = float(self.strength.value.strip().replace(",", "."))
            except ValueError:
                await interaction.response.send_message(
                    f"strength must be a number between 0 and 1, not {self.strength.value!r}.",
                    ephemeral=True)
                return
        await interaction.response.defer(ephemeral=True, thinking=True)
        kept = {k: v for k, v in (self.source.options if self.source else {}).items()
                if k in KEPT_OPTIONS}
        kept.update(prompt=self.prompt.value,
                    negative_prompt=self.negative.value.strip() or None,
                    strength=strength if strength is not None else kept.get("strength"))
        try:
            options = GenerationOptions(**kept)
        except ValueError:
            await interaction.edit_original_response(content="Those values can't be used.")
            return
        request = GenerationRequest(
            operation=Operation.IMG2IMG, options=options, image=self.image,
            endpoint=endpoint_for_remix(self.source) if self.source else None,
            requester=requester_of(interaction), nsfw_channel=is_nsfw_channel(interaction),
            parent_track_id=self.source.track_id if self.source else None,
            extra={"remix_of": self.source.track_id} if self.source else {})
        await start_job(bot_of(interaction), interaction, request)

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        log.error("remix modal failed", exc_info=error)
        text = str(error) if isinstance(error, UserFacingError) else \
            "Something went wrong on my side; it has been logged."
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)


class RemixButton(discord.ui.DynamicItem[discord.ui.Button], template=REMIX_TEMPLATE):
    def __init__(self, track_id: str, index: int) -> None:
        super().__init__(discord.ui.Button(label="Remix", custom_id=f"remix:{track_id}:{index}"))
        self.track_id, self.index = track_id, index

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> RemixButton:
        return cls(match["track"], int(match["index"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        job = await source_job(interaction, self.track_id)
        if job is None:
            return
        attachments = interaction.message.attachments if interaction.message else []
        if self.index >= len(attachments):
            await interaction.response.send_message("That image is no longer on the message.",
                                                    ephemeral=True)
            return
        await interaction.response.send_modal(RemixModal(
            title="Remix this image", image=upload_of(attachments[self.index]),
            prompt=job.prompt, negative_prompt=job.options.get("negative_prompt") or "",
            strength=job.options.get("strength", job.payload.get("strength")), source=job))


class RerollButton(discord.ui.DynamicItem[discord.ui.Button], template=REROLL_TEMPLATE):
    def __init__(self, track_id: str) -> None:
        super().__init__(discord.ui.Button(label="Re-roll", custom_id=f"reroll:{track_id}"))
        self.track_id = track_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> RerollButton:
        return cls(match["track"])

    async def callback(self, interaction: discord.Interaction) -> None:
        job = await source_job(interaction, self.track_id)
        if job is None:
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        options = {k: v for k, v in job.options.items() if k in GenerationOptions.model_fields}
        options["seed"] = None  # same settings, new seed
        image_url = job.options.get("image_url") or job.payload["init_image"]
        mask_url = job.options.get("mask_url")
        image_url, mask_url = await refreshed(bot_of(interaction), image_url, mask_url)
        request = GenerationRequest(
            operation=Operation.INPAINT if job.endpoint == INPAINT.name else Operation.IMG2IMG,
            options=GenerationOptions(**options),
            image=Upload(url=image_url, filename="image"),
            mask=Upload(url=mask_url, filename="mask.png") if mask_url else None,
            endpoint=job.endpoint, requester=requester_of(interaction),
            nsfw_channel=is_nsfw_channel(interaction), parent_track_id=job.track_id,
            extra={k: v for k, v in job.options.items() if k == "remix_of"})
        await start_job(bot_of(interaction), interaction, request)


class DeleteButton(discord.ui.DynamicItem[discord.ui.Button], template=DELETE_TEMPLATE):
    def __init__(self, track_id: str) -> None:
        super().__init__(discord.ui.Button(label="Delete", custom_id=f"delete:{track_id}"))
        self.track_id = track_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> DeleteButton:
        return cls(match["track"])

    async def callback(self, interaction: discord.Interaction) -> None:
        job = await source_job(interaction, self.track_id)
        if job is None:
            return
        allowed = (interaction.user.id == job.requester.user_id
                   or (interaction.permissions and interaction.permissions.manage_messages))
        if not allowed:
            await interaction.response.send_message(
                "Only the member who asked for this image, or someone who can manage "
                "messages, can delete it.", ephemeral=True)
            return
        try:
            await interaction.response.defer(ephemeral=True, thinking=True)
            if interaction.message is not None:
                await interaction.message.delete()
        except discord.HTTPException as exc:
            await interaction.followup.send(f"Discord would not delete it ({exc.status}).",
                                            ephemeral=True)
            return
        await interaction.followup.send("Deleted.", ephemeral=True)


@app_commands.context_menu(name="Remix image")
async def remix_message(interaction: discord.Interaction, message: discord.Message) -> None:
    image = next((a for a in message.attachments
                  if (a.content_type or "").startswith("image/") or IMAGE_NAME.search(a.filename)),
                 None)
    if image is None:
        await interaction.response.send_message("That message has no image to remix.",
                                                ephemeral=True)
        return
    await interaction.response.send_modal(RemixModal(title="Remix image", image=upload_of(image)))


class Remix(commands.Cog):
    def __init__(self, bot: RemixerBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(RemixButton, RerollButton, DeleteButton)
        self.bot.tree.add_command(remix_message)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(RemixButton, RerollButton, DeleteButton)
        self.bot.tree.remove_command(remix_message.name, type=remix_message.type)


async def setup(bot: RemixerBot) -> None:
    await bot.add_cog(Remix(bot))
