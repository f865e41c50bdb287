"""Painting a region: the `Edit region` button on every result, the `Edit region` message menu
and ``/inpaint`` without a mask all answer privately, at once, with a link to the painter
(bot/web/paint.py). Without PUBLIC_BASE_URL there is no page to link to: they open a modal
with a file upload for the mask instead.
"""

from __future__ import annotations

import io
import logging
import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.components import PAINT_TEMPLATE, REMIX_TEMPLATE, REROLL_TEMPLATE, paint_id
from bot.errors import UserFacingError
from bot.generation import GenerationRequest, HostedFile, HostFiles, Upload
from bot.jobs.models import Job
from bot.modelslab.catalogue import INPAINT, Operation
from bot.modelslab.payload import GenerationOptions
from bot.painter import KEPT_OPTIONS, Painter, PaintLink, inpaint_endpoint_for
from bot.web.paint import PAINTER
from cogs.generate import is_nsfw_channel, requester_of, start_job, take_turn, upload_of
from cogs.remix import IMAGE_NAME, NO_SERVER, PromptModal, refreshed, requester_for

if TYPE_CHECKING:
    from bot.app import RemixerBot

log = logging.getLogger(__name__)

MAX_LINKS = 5  # one link button per image, one row


def bot_of(interaction: discord.Interaction) -> RemixerBot:
    return interaction.client  # type: ignore[return-value]


def images_of(message: discord.Message | None) -> list[discord.Attachment]:
    return [a for a in (message.attachments if message else [])
            if (a.content_type or "").startswith("image/") or IMAGE_NAME.search(a.filename)]


def painter_of(bot: RemixerBot) -> Painter | None:
    cog = bot.get_cog("Paint")
    return cog.painter if isinstance(cog, Paint) else None


def result_track_id(bot: RemixerBot, message: discord.Message) -> str | None:
    """The job behind one of the bot's own results, read from its buttons' custom ids."""
    if bot.user is None or message.author.id != bot.user.id:
        return None
    for row in message.components:
        for child in getattr(row, "children", []):
            custom_id = getattr(child, "custom_id", None) or ""
            for template in (PAINT_TEMPLATE, REMIX_TEMPLATE, REROLL_TEMPLATE):
                match = re.fullmatch(template, custom_id)
                if match:
                    return match["track"]
    return None


def host_through(bot: RemixerBot) -> Any:
    """Hosting for a painter job: the mask is uploaded with the private response that gave
    the link (its interaction token lives as long as the link; submitting closes a minute
    before it dies, see bot.painter.SUBMIT_MARGIN). That response keeps its link buttons: a
    result with several images has one link per image."""
    def host_for(link: PaintLink) -> HostFiles:
        async def host(files: list[HostedFile]) -> list[str]:
            if not link.interaction_token or not link.application_id:
                raise UserFacingError("This painter link cannot host the mask; ask for a new "
                                      "one with Edit region.")
            webhook = discord.Webhook.partial(link.application_id, link.interaction_token,
                                              client=bot)
            try:
                message = await webhook.edit_message(
                    "@original", content="Preparing your images…",
                    attachments=[discord.File(io.BytesIO(f.data), filename=f.filename)
                                 for f in files])
            except discord.HTTPException as exc:
                log.info("painter: hosting through the interaction failed (%s)", exc.status)
                raise UserFacingError("Discord would not take the mask (the link's time may "
                                      "be up); ask for a new one with Edit region.") from None
            by_name = {a.filename: a.url for a in message.attachments}
            try:
                return [by_name[f.filename] for f in files]
            except KeyError:
                raise UserFacingError("Discord did not keep the converted images; please "
                                      "try again.") from None
        return host
    return host_for


async def offer_painter(interaction: discord.Interaction, images: list[Upload], *,
                        source: Job | None = None,
                        options: dict[str, Any] | None = None) -> None:
    """Answer privately, at once: a link to the painter per image, or the modal when this
    Remixer has no public web server."""
    bot = bot_of(interaction)
    painter = painter_of(bot)
    if painter is None:
        defaults = {**(source.options if source else {}), **(options or {})}
        await interaction.response.send_modal(PaintModal(
            image=images[0], source=source,
            prompt=(options or {}).get("prompt") or (source.prompt if source else ""),
            negative_prompt=defaults.get("negative_prompt") or "",
            strength=defaults.get("strength"), options=options or {}))
        return
    mask_url = None
    if source is not None and source.endpoint == INPAINT.name:
        (mask_url,) = await refreshed(bot, source.options.get("mask_url"))
    requester = requester_of(interaction)
    base = bot.settings.public_base_url
    view = discord.ui.View(timeout=None)
    for index, image in enumerate(images[:MAX_LINKS]):
        token = await painter.create(requester, image, mask_url=mask_url, source=source,
                                     options=options, nsfw_channel=is_nsfw_channel(interaction))
        label = "Open the painter" if len(images) == 1 else f"Paint image {index + 1}"
        view.add_item(discord.ui.Button(label=label, url=f"{base}/paint/{token}"))
    expires = int(requester.token_expires_at or 0)
    start = "your last mask is loaded; " if mask_url else ""
    await interaction.response.send_message(
        f"Paint the region to repaint ({start}white is repainted), then press Generate. The "
        f"link is yours alone, works once, and expires <t:{expires}:R>.", view=view,
        ephemeral=True)


class PaintModal(PromptModal):
    """The painter without a web page: upload a mask (white = repaint) and write the prompt."""

    def __init__(self, *, image: Upload, source: Job | None, prompt: str = "",
                 negative_prompt: str = "", strength: float | None = None,
                 options: dict[str, Any] | None = None) -> None:
        self.mask = discord.ui.FileUpload(min_values=1, max_values=1, required=True)
        super().__init__(title="Edit region", prompt=prompt, negative_prompt=negative_prompt,
                         strength=strength, first=(discord.ui.Label(
                             text="Mask", component=self.mask,
                             description="White where the image is repainted, black where "
                                         "it is kept"),))
        self.image, self.source, self.options = image, source, options or {}

    async def on_submit(self, interaction: discord.Interaction) -> None:
        ok, strength = await self.read_strength(interaction)
        if not ok:
            return
        if not self.mask.values:
            await interaction.response.send_message("Upload a mask to edit a region.",
                                                    ephemeral=True)
            return
        requester = (requester_for(interaction, self.source) if self.source
                     else requester_of(interaction) if interaction.guild_id else None)
        if requester is None:
            await interaction.response.send_message(NO_SERVER, ephemeral=True)
            return
        bot = bot_of(interaction)
        if not await take_turn(bot, interaction, requester.guild_id):  # as every command
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        # From a source job, its settings but not its size or seed; from /inpaint, all of
        # the command's options.
        kept = {k: v for k, v in (self.source.options if self.source else {}).items()
                if k in KEPT_OPTIONS}
        kept.update({k: v for k, v in self.options.items()
                     if v is not None and k in GenerationOptions.model_fields})
        kept.update(prompt=self.prompt.value, negative_prompt=self.negative.value.strip() or None,
                    strength=strength if strength is not None else kept.get("strength"))
        target = inpaint_endpoint_for(self.options.get("endpoint"),
                                      self.source.endpoint if self.source else None)
        kept = {k: v for k, v in kept.items() if k == "prompt" or target.takes(k)}
        try:
            options = GenerationOptions(**kept)
        except ValueError:
            assert bot.cooldowns is not None
            bot.cooldowns.refund(requester.guild_id, requester.user_id)
            await interaction.edit_original_response(content="Those values can't be used.")
            return
        source = self.source
        await start_job(bot, interaction, GenerationRequest(
            operation=Operation.INPAINT, options=options, image=self.image,
            endpoint=target.choice_name, mask=upload_of(self.mask.values[0]),
            requester=requester,
            nsfw_channel=is_nsfw_channel(interaction),
            parent_track_id=source.track_id if source else None,
            extra={"remix_of": source.track_id} if source else {}))


class EditRegionButton(discord.ui.DynamicItem[discord.ui.Button], template=PAINT_TEMPLATE):
    def __init__(self, track_id: str) -> None:
        super().__init__(discord.ui.Button(label="Edit region", custom_id=paint_id(track_id)))
        self.track_id = track_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> EditRegionButton:
        return cls(match["track"])

    async def callback(self, interaction: discord.Interaction) -> None:
        store = bot_of(interaction).services.store
        job = await store.get(self.track_id) if store else None
        images = images_of(interaction.message)
        if not images:
            await interaction.response.send_message("That image is no longer on the message.",
                                                    ephemeral=True)
            return
        await offer_painter(interaction, [upload_of(a) for a in images], source=job)


@app_commands.context_menu(name="Edit region")
@app_commands.allowed_contexts(guilds=True, dms=False, private_channels=False)
@app_commands.allowed_installs(guilds=True, users=False)
async def edit_region_message(interaction: discord.Interaction,
                              message: discord.Message) -> None:
    images = images_of(message)
    if not images:
        await interaction.response.send_message("That message has no image to edit.",
                                                ephemeral=True)
        return
    bot = bot_of(interaction)
    track_id = result_track_id(bot, message)
    store = bot.services.store
    job = await store.get(track_id) if track_id and store else None
    await offer_painter(interaction, [upload_of(a) for a in images], source=job)


class Paint(commands.Cog):
    def __init__(self, bot: RemixerBot) -> None:
        self.bot = bot
        self.painter: Painter | None = None

    async def cog_load(self) -> None:
        services = self.bot.services
        if self.bot.settings.public_base_url and services.web and self.bot.generation \
                and services.store and services.session:
            self.painter = Painter(services.store, self.bot.generation, services.session,
                                   host_through(self.bot), cooldowns=self.bot.cooldowns)
            slot = services.web.app[PAINTER]
            slot.public_base_url = self.bot.settings.public_base_url
            slot.painter = self.painter
        self.bot.add_dynamic_items(EditRegionButton)
        self.bot.tree.add_command(edit_region_message)

    async def cog_unload(self) -> None:
        if self.bot.services.web is not None:
            self.bot.services.web.app[PAINTER].painter = None
        self.bot.remove_dynamic_items(EditRegionButton)
        self.bot.tree.remove_command(edit_region_message.name, type=edit_region_message.type)


async def setup(bot: RemixerBot) -> None:
    await bot.add_cog(Paint(bot))
