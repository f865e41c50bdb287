"""/img2img and /inpaint.

Discord's min/max/choices below are read from the catalogue, but Discord enforces them only in
its own client: every value is checked again by the bot (GenerationService) before anything
is sent. Each command acknowledges at once with a private "thinking" response, so refusals
stay private and the status message that follows is the member's own.
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import UserFacingError
from bot.generation import GenerationRequest, HostedFile, Upload, token_expiry
from bot.jobs.models import Job, Requester
from bot.modelslab.catalogue import ENDPOINTS, IMG2IMG_ENDPOINTS, SCHEDULERS, Operation
from bot.modelslab.payload import GenerationOptions

if TYPE_CHECKING:
    from bot.app import RemixerBot

log = logging.getLogger(__name__)


def _span(option: str, kind: type = int) -> tuple[float, float]:
    """The widest range any endpoint allows, for Discord's client-side hint."""
    lows, highs = [], []
    for endpoint in ENDPOINTS.values():
        rule = endpoint.rule(option)
        if rule is None:
            continue
        values = rule.allowed if rule.allowed else (rule.minimum, rule.maximum)
        lows.append(min(values))
        highs.append(max(values))
    return kind(min(lows)), kind(max(highs))


SIZE = _span("width")
STEPS = _span("steps")
CLIP = _span("clip_skip")
GUIDANCE = _span("guidance_scale", float)
SEED = _span("seed")
SCHEDULER_MAX = 64  # longer than any scheduler name: a free text is capped
ENDPOINT_CHOICES = [app_commands.Choice(name=name, value=name) for name in IMG2IMG_ENDPOINTS]

DESCRIPTIONS = {
    "image": "The image to transform (PNG, JPEG or WebP)",
    "mask": "White where the image should be repainted, black where it is kept",
    "prompt": "What the result should show",
    "negative_prompt": "What the result should avoid",
    "strength": "How far to move away from the image: 0 keeps it, 1 ignores it",
    "endpoint": "Which ModelsLab endpoint runs the job",
    "model": "The ModelsLab model id",
    "width": "Output width in pixels (a multiple of 8); follows the image when left out",
    "height": "Output height in pixels (a multiple of 8); follows the image when left out",
    "samples": "How many images to make (1-4); each counts against your quota",
    "steps": "Denoising steps",
    "guidance_scale": "How closely to follow the prompt",
    "scheduler": "The sampler's scheduler",
    "seed": "A seed to repeat a result; random when left out",
    "clip_skip": "CLIP layers to skip",
    "karras": "Use Karras sigmas",
}


def requester_of(interaction: discord.Interaction) -> Requester:
    return Requester(
        user_id=interaction.user.id,
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id or 0,
        interaction_token=interaction.token,
        token_expires_at=token_expiry(interaction.created_at.timestamp()),
        application_id=interaction.application_id,
    )


def is_nsfw_channel(interaction: discord.Interaction) -> bool:
    channel = interaction.channel
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


def upload_of(attachment: discord.Attachment) -> Upload:
    return Upload(url=attachment.url, filename=attachment.filename, size=attachment.size)


async def host_on_interaction(interaction: discord.Interaction,
                              files: list[HostedFile]) -> list[str]:
    """Converted images (a mask, a re-encoded image) are uploaded to Discord with the
    member's private status message; ModelsLab fetches them from there."""
    message = await interaction.edit_original_response(
        content="Preparing your images…",
        attachments=[discord.File(io.BytesIO(f.data), filename=f.filename) for f in files])
    by_name = {a.filename: a.url for a in message.attachments}
    try:
        return [by_name[f.filename] for f in files]
    except KeyError:
        raise UserFacingError("Discord did not keep the converted images; please try "
                              "again.") from None


async def start_job(bot: RemixerBot, interaction: discord.Interaction,
                    request: GenerationRequest) -> Job | None:
    """Run a request for an interaction that is already deferred (privately)."""
    assert bot.generation is not None
    try:
        job = await bot.generation.start(
            request, host=lambda files: host_on_interaction(interaction, files))
    except UserFacingError as exc:
        await interaction.edit_original_response(content=str(exc), attachments=[])
        return None
    # The engine shows the job's status in this response from here on (it may be done
    # already), so nothing more is written to it here.
    return job


class Generate(commands.Cog):
    def __init__(self, bot: RemixerBot) -> None:
        self.bot = bot

    @app_commands.command(name="img2img", description="Transform an image with a prompt")
    @app_commands.describe(**{k: v for k, v in DESCRIPTIONS.items() if k != "mask"})
    @app_commands.choices(endpoint=ENDPOINT_CHOICES)
    async def img2img(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: app_commands.Range[str, 1, 2000],
        negative_prompt: app_commands.Range[str, 1, 2000] | None = None,
        strength: app_commands.Range[float, 0.0, 1.0] | None = None,
        endpoint: app_commands.Choice[str] | None = None,
        model: app_commands.Range[str, 1, 100] | None = None,
        width: app_commands.Range[int, SIZE[0], SIZE[1]] | None = None,
        height: app_commands.Range[int, SIZE[0], SIZE[1]] | None = None,
        samples: app_commands.Range[int, 1, 4] | None = None,
        steps: app_commands.Range[int, STEPS[0], STEPS[1]] | None = None,
        guidance_scale: app_commands.Range[float, GUIDANCE[0], GUIDANCE[1]] | None = None,
        scheduler: app_commands.Range[str, 1, SCHEDULER_MAX] | None = None,
        seed: app_commands.Range[int, SEED[0], SEED[1]] | None = None,
        clip_skip: app_commands.Range[int, CLIP[0], CLIP[1]] | None = None,
        karras: bool | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        options = GenerationOptions(
            prompt=prompt, negative_prompt=negative_prompt, strength=strength, model=model,
            width=width, height=height, samples=samples, steps=steps,
            guidance_scale=guidance_scale, scheduler=scheduler, seed=seed,
            clip_skip=clip_skip, karras=karras)
        await start_job(self.bot, interaction, GenerationRequest(
            operation=Operation.IMG2IMG, options=options, image=upload_of(image),
            endpoint=endpoint.value if endpoint else None,
            requester=requester_of(interaction), nsfw_channel=is_nsfw_channel(interaction)))

    @app_commands.command(name="inpaint", description="Repaint the white part of a mask")
    @app_commands.describe(**{k: v for k, v in DESCRIPTIONS.items()
                              if k not in ("endpoint", "karras")})
    async def inpaint(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        mask: discord.Attachment,
        prompt: app_commands.Range[str, 1, 2000],
        negative_prompt: app_commands.Range[str, 1, 2000] | None = None,
        strength: app_commands.Range[float, 0.0, 1.0] | None = None,
        model: app_commands.Range[str, 1, 100] | None = None,
        width: app_commands.Range[int, SIZE[0], SIZE[1]] | None = None,
        height: app_commands.Range[int, SIZE[0], SIZE[1]] | None = None,
        samples: app_commands.Range[int, 1, 4] | None = None,
        steps: app_commands.Range[int, STEPS[0], STEPS[1]] | None = None,
        guidance_scale: app_commands.Range[float, GUIDANCE[0], GUIDANCE[1]] | None = None,
        scheduler: app_commands.Range[str, 1, SCHEDULER_MAX] | None = None,
        seed: app_commands.Range[int, SEED[0], SEED[1]] | None = None,
        clip_skip: app_commands.Range[int, CLIP[0], CLIP[1]] | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        options = GenerationOptions(
            prompt=prompt, negative_prompt=negative_prompt, strength=strength, model=model,
            width=width, height=height, samples=samples, steps=steps,
            guidance_scale=guidance_scale, scheduler=scheduler, seed=seed, clip_skip=clip_skip)
        await start_job(self.bot, interaction, GenerationRequest(
            operation=Operation.INPAINT, options=options, image=upload_of(image),
            mask=upload_of(mask), requester=requester_of(interaction),
            nsfw_channel=is_nsfw_channel(interaction)))

    @img2img.autocomplete("scheduler")
    @inpaint.autocomplete("scheduler")
    async def scheduler_choices(self, interaction: discord.Interaction,
                                current: str) -> list[app_commands.Choice[str]]:
        chosen = getattr(interaction.namespace, "endpoint", None)
        name = "inpaint" if interaction.command and interaction.command.name == "inpaint" \
            else (chosen or "v6")
        endpoint = ENDPOINTS.get(name)
        schedulers = endpoint.schedulers if endpoint and endpoint.schedulers else SCHEDULERS
        text = current.lower()
        return [app_commands.Choice(name=s, value=s) for s in schedulers
                if text in s.lower()][:25]

    @img2img.autocomplete("model")
    @inpaint.autocomplete("model")
    async def model_choices(self, interaction: discord.Interaction,
                            current: str) -> list[app_commands.Choice[str]]:
        store = self.bot.services.store
        used = await store.models_used(interaction.guild_id) if store else []
        models = [self.bot.settings.default_model_id,
                  *[m for m in used if m != self.bot.settings.default_model_id]]
        text = current.lower()
        return [app_commands.Choice(name=m, value=m) for m in models if text in m.lower()][:25]


async def setup(bot: RemixerBot) -> None:
    await bot.add_cog(Generate(bot))
