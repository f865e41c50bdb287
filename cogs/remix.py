"""Remixing: the buttons on every result (Remix, Re-roll, Delete) and the `Remix image`
message menu.

The buttons are DynamicItems: their state (the job) lives in the custom id and the job row,
so they keep working after a restart and on results days old.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import discord
from discord import app_commands
from discord.ext import commands

from bot.components import (
    DELETE_TEMPLATE,
    REMIX_TEMPLATE,
    REROLL_TEMPLATE,
    delete_id,
    remix_id,
    reroll_id,
)
from bot.errors import UserFacingError
from bot.generation import GenerationRequest, Upload
from bot.jobs.models import Job, Requester
from bot.modelslab.catalogue import ENDPOINTS, Operation
from bot.modelslab.payload import GenerationOptions
from cogs.generate import is_nsfw_channel, requester_of, start_job, take_turn, upload_of

if TYPE_CHECKING:
    from bot.app import RemixerBot

log = logging.getLogger(__name__)

# What a remix keeps of its source's settings; the image, size, seed and count are its own.
KEPT_OPTIONS = ("negative_prompt", "strength", "model", "steps", "guidance_scale", "scheduler",
                "clip_skip", "karras", "algorithm", "enhance_prompt", "lora", "lora_strength",
                "vae", "style")
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


NO_SERVER = ("This result was not made in a server, so there are no server rules to make "
             "another one under. Use Remixer in your server instead.")


def requester_for(interaction: discord.Interaction, job: Job) -> Requester | None:
    """Who asks, and under which server's rules. A button on a result acts for the server the
    job came from, also on a result delivered by direct message: there the new job is
    checked and charged under that server and posted in its channel (status updates, which
    would go to the DM, are left out). None: the job came from no server."""
    if interaction.guild_id is not None:
        return requester_of(interaction)
    if job.requester.guild_id is None:
        return None
    return Requester(user_id=interaction.user.id, guild_id=job.requester.guild_id,
                     channel_id=job.requester.channel_id)


async def start_for(interaction: discord.Interaction, request: GenerationRequest) -> None:
    job = await start_job(bot_of(interaction), interaction, request)
    if job is not None and interaction.guild_id is None:
        await interaction.edit_original_response(
            content=f"Queued: the result will be posted in <#{request.requester.channel_id}>.")


def endpoint_for_remix(job: Job) -> str:
    # A remix has no mask: an inpainting result is remixed with the img2img endpoint of the
    # same choice (v6 inpainting -> v6, enterprise inpainting -> enterprise).
    source = ENDPOINTS.get(job.endpoint)
    return source.choice_name if source is not None else "v6"


# A link with less time left than this is refreshed before use: ModelsLab may fetch it a while
# after the job is queued.
REFRESH_MARGIN = 30 * 60
MAX_CACHED_LINKS = 2_000
_fresh_links: dict[str, tuple[str, float]] = {}  # stored link -> (refreshed link, expires at)
_refreshing = asyncio.Lock()  # clicks at once wait for one refresh instead of each asking


def link_expiry(url: str) -> float | None:
    """When a Discord CDN link stops working (its ``ex`` parameter, hex Unix time); None for
    a link that carries none."""
    try:
        return float(int(parse_qs(urlsplit(url).query)["ex"][0], 16))
    except (KeyError, IndexError, ValueError):
        return None


def usable(url: str, now: float) -> bool:
    expiry = link_expiry(url)
    return expiry is None or expiry - now > REFRESH_MARGIN


async def refreshed(bot: RemixerBot, *urls: str | None,
                    discord_now: float = 0.0) -> list[str | None]:
    """Discord's attachment links expire after about a day; a re-roll of an older result asks
    Discord for fresh links to the same files (the old ones are kept if it cannot). Only links
    expired or near expiry are refreshed, and a refreshed link is reused for its lifetime, so
    clicking Re-roll again and again does not spend the bot's Discord rate limit.
    ``discord_now``: Discord's clock (an interaction's time), which the links' expiry follows;
    the later of it and this machine's clock is used, so a skewed clock errs on refreshing."""
    now = max(time.time(), discord_now)
    chosen: dict[str, str] = {}

    def still_wanted() -> list[str]:
        wanted = []
        for url in urls:
            if not url or url in chosen:
                continue
            cached = _fresh_links.get(url)
            if usable(url, now):
                chosen[url] = url
            elif cached is not None and cached[1] - now > REFRESH_MARGIN:
                chosen[url] = cached[0]
            else:
                wanted.append(url)
        return wanted

    if not still_wanted():
        return [chosen.get(u, u) if u else u for u in urls]
    async with _refreshing:
        wanted = still_wanted()  # another click may have refreshed them meanwhile
        if not wanted:
            return [chosen.get(u, u) if u else u for u in urls]
        try:
            data = await bot.http.request(
                discord.http.Route("POST", "/attachments/refresh-urls"),
                json={"attachment_urls": wanted})
        except discord.HTTPException as exc:
            log.info("attachment links not refreshed (%s)", exc.status)
            data = None
        for item in (data or {}).get("refreshed_urls", []):
            original, fresh = item.get("original"), item.get("refreshed")
            if original in wanted and isinstance(fresh, str) and fresh:
                chosen[original] = fresh
                expiry = link_expiry(fresh)
                if expiry is not None:
                    _fresh_links[original] = (fresh, expiry)
        if len(_fresh_links) > MAX_CACHED_LINKS:
            for key, (_, expiry) in list(_fresh_links.items()):
                if expiry <= now:
                    del _fresh_links[key]
            while len(_fresh_links) > MAX_CACHED_LINKS:
                del _fresh_links[next(iter(_fresh_links))]
    return [chosen.get(u, u) if u else u for u in urls]


STRENGTH_LABEL = "Strength (0 keeps the image, 1 ignores it)"


class PromptModal(discord.ui.Modal):
    """A form with the prompt, negative prompt and strength, each input inside a Label
    (Discord's current modal layout, not action rows), after any ``first`` items."""

    def __init__(self, *, title: str, prompt: str = "", negative_prompt: str = "",
                 strength: float | None = None, first: tuple[discord.ui.Item, ...] = ()) -> None:
        super().__init__(title=title, timeout=15 * 60)
        self.prompt = discord.ui.TextInput(default=prompt[:2000] or None,
                                           max_length=2000, style=discord.TextStyle.paragraph)
        self.negative = discord.ui.TextInput(required=False,
                                             default=negative_prompt[:2000] or None,
                                             max_length=2000, style=discord.TextStyle.paragraph)
        self.strength = discord.ui.TextInput(
            required=False, max_length=6,
            default=f"{round(strength, 3):g}" if strength is not None else None, placeholder="0.7")
        for item in first:
            self.add_item(item)
        for text, item in (("Prompt", self.prompt), ("Negative prompt", self.negative),
                           (STRENGTH_LABEL, self.strength)):
            self.add_item(discord.ui.Label(text=text, component=item))

    async def read_strength(self, interaction: discord.Interaction) -> tuple[bool, float | None]:
        """(True, the strength or None when left empty), or (False, None) when it is not a
        number: the member has then been told so."""
        if not self.strength.value.strip():
            return True, None
        try:
            return True, float(self.strength.value.strip().replace(",", "."))
        except ValueError:
            await interaction.response.send_message(
                f"strength must be a number between 0 and 1, not {self.strength.value!r}.",
                ephemeral=True)
            return False, None

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        log.error("%s failed", self.title, exc_info=error)
        text = str(error) if isinstance(error, UserFacingError) else \
            "Something went wrong on my side; it has been logged."
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)


class RemixModal(PromptModal):
    """Prompt, negative prompt and strength for a remix; the prompt comes prefilled."""

    def __init__(self, *, title: str, image: Upload, prompt: str = "",
                 negative_prompt: str = "", strength: float | None = None,
                 source: Job | None = None) -> None:
        super().__init__(title=title, prompt=prompt, negative_prompt=negative_prompt,
                         strength=strength)
        self.image = image
        self.source = source

    async def on_submit(self, interaction: discord.Interaction) -> None:
        ok, strength = await self.read_strength(interaction)
        if not ok:
            return
        requester = (requester_for(interaction, self.source) if self.source
                     else requester_of(interaction) if interaction.guild_id else None)
        if requester is None:
            await interaction.response.send_message(NO_SERVER, ephemeral=True)
            return
        bot = bot_of(interaction)
        if not await take_turn(bot, interaction, requester.guild_id):
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
            assert bot.cooldowns is not None
            bot.cooldowns.refund(requester.guild_id, requester.user_id)
            await interaction.edit_original_response(content="Those values can't be used.")
            return
        request = GenerationRequest(
            operation=Operation.IMG2IMG, options=options, image=self.image,
            endpoint=endpoint_for_remix(self.source) if self.source else None,
            requester=requester, nsfw_channel=is_nsfw_channel(interaction),
            parent_track_id=self.source.track_id if self.source else None,
            extra={"remix_of": self.source.track_id} if self.source else {})
        await start_for(interaction, request)


class RemixButton(discord.ui.DynamicItem[discord.ui.Button], template=REMIX_TEMPLATE):
    def __init__(self, track_id: str, index: int) -> None:
        super().__init__(discord.ui.Button(label="Remix", custom_id=remix_id(track_id, index)))
        self.track_id, self.index = track_id, index

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> RemixButton:
        return cls(match["track"], int(match["index"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        job = await source_job(interaction, self.track_id)
        if job is None:
            return
        if requester_for(interaction, job) is None:
            await interaction.response.send_message(NO_SERVER, ephemeral=True)
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
        super().__init__(discord.ui.Button(label="Re-roll", custom_id=reroll_id(track_id)))
        self.track_id = track_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> RerollButton:
        return cls(match["track"])

    async def callback(self, interaction: discord.Interaction) -> None:
        job = await source_job(interaction, self.track_id)
        if job is None:
            return
        requester = requester_for(interaction, job)
        if requester is None:
            await interaction.response.send_message(NO_SERVER, ephemeral=True)
            return
        # The cooldown comes first: a storm of clicks costs neither work nor Discord calls.
        if not await take_turn(bot_of(interaction), interaction, requester.guild_id):
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        options = {k: v for k, v in job.options.items() if k in GenerationOptions.model_fields}
        options["seed"] = None  # same settings, new seed
        image_url = job.options.get("image_url") or job.payload["init_image"]
        mask_url = job.options.get("mask_url")
        image_url, mask_url = await refreshed(
            bot_of(interaction), image_url, mask_url,
            discord_now=interaction.created_at.timestamp())
        source = ENDPOINTS[job.endpoint]
        request = GenerationRequest(
            operation=source.operation,
            options=GenerationOptions(**options),
            image=Upload(url=image_url, filename="image"),
            mask=Upload(url=mask_url, filename="mask.png") if mask_url else None,
            endpoint=source.choice_name, requester=requester,
            nsfw_channel=is_nsfw_channel(interaction), parent_track_id=job.track_id,
            extra={k: v for k, v in job.options.items() if k == "remix_of"})
        await start_for(interaction, request)


class DeleteButton(discord.ui.DynamicItem[discord.ui.Button], template=DELETE_TEMPLATE):
    def __init__(self, track_id: str) -> None:
        super().__init__(discord.ui.Button(label="Delete", custom_id=delete_id(track_id)))
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
@app_commands.allowed_contexts(guilds=True, dms=False, private_channels=False)
@app_commands.allowed_installs(guilds=True, users=False)
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
