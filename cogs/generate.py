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
from bot.modelslab.catalogue import (
    ALGORITHMS,
    ENDPOINTS,
    IMG2IMG_ENDPOINTS,
    INPAINT_ENDPOINTS,
    MODEL_ID_PATTERN,
    SCHEDULERS,
    STYLES,
    Operation,
    by_choice,
)
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
LORA_STRENGTH = _span("lora_strength", float)
SCHEDULER_MAX = 64  # longer than any scheduler name: a free text is capped
ENDPOINT_CHOICES = [app_commands.Choice(name=name, value=name) for name in IMG2IMG_ENDPOINTS]
INPAINT_ENDPOINT_CHOICES = [app_commands.Choice(name=name, value=name)
                            for name in INPAINT_ENDPOINTS]
ALGORITHM_CHOICES = [app_commands.Choice(name=name, value=name) for name in ALGORITHMS]

DESCRIPTIONS = {
    "image": "The image to transform (PNG, JPEG or WebP)",
    "mask": "White where the image should be repainted; leave it out to paint the region",
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
    "algorithm": "The DPM-Solver algorithm type (v6 and inpainting)",
    "enhance_prompt": "Let ModelsLab rewrite your prompt (off unless you turn it on)",
    "lora": "A LoRA model id (enterprise endpoints)",
    "lora_strength": "How strongly the LoRA applies (enterprise endpoints)",
    "vae": "A VAE id (enterprise endpoints)",
    "style": "A style preset (realtime endpoint)",
}
INPAINT_DESCRIPTIONS = {**DESCRIPTIONS, "endpoint": "v6 (default) or enterprise inpainting"}


async def model_choices_for(bot: RemixerBot, guild_id: int | None, current: str,
                            interaction: discord.Interaction | None = None,
                            ) -> list[app_commands.Choice[str]]:
    """The `model` box: ModelsLab's model list (cached, filtered by what was typed, limited to
    the server's allowed models; on a command, the list of the chosen endpoint's key); when
    the list can't be read, the server's default and the models used here, as before, with a
    note that any model id is accepted."""
    models = bot.services.models
    server = await bot.servers.get(guild_id) if bot.servers else None
    allowed = list(server.allowed_models) if server and server.allowed_models else None
    if models is not None and models.available:
        kind = None
        if interaction is not None and interaction.command is not None:
            operation = (Operation.INPAINT if interaction.command.name == "inpaint"
                         else Operation.IMG2IMG)
            chosen = getattr(interaction.namespace, "endpoint", None) or (
                server.default_endpoint if server and operation is Operation.IMG2IMG
                else "v6")
            endpoint = by_choice(operation, chosen)
            kind = endpoint.key if endpoint is not None else None
        names = models.suggest(current, allowed, kind)
        return [app_commands.Choice(name=m, value=m) for m in names]
    store = bot.services.store
    default = server.default_model if server else bot.settings.default_model_id
    used = await store.models_used(guild_id) if store else []
    pool = allowed or [default, *[m for m in used if m != default]]
    text = current.strip().lower()
    found = [m for m in pool if text in m.lower()][:24]
    choices = [app_commands.Choice(name=m, value=m) for m in found]
    if models is not None and not allowed:
        typed = current.strip()[:100] or default
        choices.insert(0, app_commands.Choice(
            name=f"{typed} (ModelsLab's model list can't be read; any id is accepted)"[:100],
            value=typed))
    return choices[:25]


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


async def take_turn(bot: RemixerBot, interaction: discord.Interaction,
                    guild_id: int | None) -> bool:
    """The member's cooldown, before anything else (the interaction is not answered yet):
    False when they must wait, and they have been told privately until when."""
    assert bot.cooldowns is not None
    try:
        await bot.cooldowns.check(guild_id, interaction.user.id)
    except UserFacingError as exc:
        await interaction.response.send_message(str(exc), ephemeral=True)
        return False
    return True


async def start_job(bot: RemixerBot, interaction: discord.Interaction,
                    request: GenerationRequest) -> Job | None:
    """Run a request for an interaction that is already deferred (privately), and that
    passed the cooldown (``take_turn``): refused, it gives its turn back."""
    assert bot.generation is not None and bot.cooldowns is not None
    try:
        job = await bot.generation.start(
            request, host=lambda files: host_on_interaction(interaction, files))
    except UserFacingError as exc:
        bot.cooldowns.refund(request.requester.guild_id, request.requester.user_id)
        await interaction.edit_original_response(content=str(exc), attachments=[])
        return None
    except BaseException:
        bot.cooldowns.refund(request.requester.guild_id, request.requester.user_id)
        raise
    # The engine shows the job's status in this response from here on (it may be done
    # already), so nothing more is written to it here.
    return job


class Generate(commands.Cog):
    def __init__(self, bot: RemixerBot) -> None:
        self.bot = bot

    @app_commands.command(name="img2img", description="Transform an image with a prompt")
    @app_commands.allowed_contexts(guilds=True, dms=False, private_channels=False)
    @app_commands.allowed_installs(guilds=True, users=False)
    @app_commands.describe(**{k: v for k, v in DESCRIPTIONS.items() if k != "mask"})
    @app_commands.choices(endpoint=ENDPOINT_CHOICES, algorithm=ALGORITHM_CHOICES)
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
        algorithm: app_commands.Choice[str] | None = None,
        enhance_prompt: bool | None = None,
        lora: app_commands.Range[str, 1, 100] | None = None,
        lora_strength: app_commands.Range[float, LORA_STRENGTH[0], LORA_STRENGTH[1]]
        | None = None,
        vae: app_commands.Range[str, 1, 100] | None = None,
        style: app_commands.Range[str, 1, 100] | None = None,
    ) -> None:
        if not await take_turn(self.bot, interaction, interaction.guild_id):
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        options = GenerationOptions(
            prompt=prompt, negative_prompt=negative_prompt, strength=strength, model=model,
            width=width, height=height, samples=samples, steps=steps,
            guidance_scale=guidance_scale, scheduler=scheduler, seed=seed,
            clip_skip=clip_skip, karras=karras,
            algorithm=algorithm.value if algorithm else None, enhance_prompt=enhance_prompt,
            lora=lora, lora_strength=lora_strength, vae=vae, style=style)
        await start_job(self.bot, interaction, GenerationRequest(
            operation=Operation.IMG2IMG, options=options, image=upload_of(image),
            endpoint=endpoint.value if endpoint else None,
            requester=requester_of(interaction), nsfw_channel=is_nsfw_channel(interaction)))

    @app_commands.command(name="inpaint", description="Repaint the white part of a mask")
    @app_commands.allowed_contexts(guilds=True, dms=False, private_channels=False)
    @app_commands.allowed_installs(guilds=True, users=False)
    @app_commands.describe(**{k: v for k, v in INPAINT_DESCRIPTIONS.items()
                              if k not in ("karras", "style")})
    @app_commands.choices(endpoint=INPAINT_ENDPOINT_CHOICES, algorithm=ALGORITHM_CHOICES)
    async def inpaint(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: app_commands.Range[str, 1, 2000],
        mask: discord.Attachment | None = None,
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
        endpoint: app_commands.Choice[str] | None = None,
        algorithm: app_commands.Choice[str] | None = None,
        enhance_prompt: bool | None = None,
        lora: app_commands.Range[str, 1, 100] | None = None,
        lora_strength: app_commands.Range[float, LORA_STRENGTH[0], LORA_STRENGTH[1]]
        | None = None,
        vae: app_commands.Range[str, 1, 100] | None = None,
    ) -> None:
        if mask is None:  # no mask: the member paints one (or uploads it in a modal)
            from cogs.paint import offer_painter
            await offer_painter(interaction, [upload_of(image)], options=dict(
                prompt=prompt, negative_prompt=negative_prompt, strength=strength,
                model=model, width=width, height=height, samples=samples, steps=steps,
                guidance_scale=guidance_scale, scheduler=scheduler, seed=seed,
                clip_skip=clip_skip, algorithm=algorithm.value if algorithm else None,
                enhance_prompt=enhance_prompt, lora=lora, lora_strength=lora_strength,
                vae=vae, endpoint=endpoint.value if endpoint else None))
            return
        if not await take_turn(self.bot, interaction, interaction.guild_id):
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        options = GenerationOptions(
            prompt=prompt, negative_prompt=negative_prompt, strength=strength, model=model,
            width=width, height=height, samples=samples, steps=steps,
            guidance_scale=guidance_scale, scheduler=scheduler, seed=seed, clip_skip=clip_skip,
            algorithm=algorithm.value if algorithm else None, enhance_prompt=enhance_prompt,
            lora=lora, lora_strength=lora_strength, vae=vae)
        await start_job(self.bot, interaction, GenerationRequest(
            operation=Operation.INPAINT, options=options, image=upload_of(image),
            endpoint=endpoint.value if endpoint else None,
            mask=upload_of(mask), requester=requester_of(interaction),
            nsfw_channel=is_nsfw_channel(interaction)))

    @img2img.autocomplete("scheduler")
    @inpaint.autocomplete("scheduler")
    async def scheduler_choices(self, interaction: discord.Interaction,
                                current: str) -> list[app_commands.Choice[str]]:
        chosen = getattr(interaction.namespace, "endpoint", None)
        inpainting = interaction.command and interaction.command.name == "inpaint"
        endpoint = by_choice(Operation.INPAINT if inpainting else Operation.IMG2IMG,
                             chosen or "v6")
        schedulers = endpoint.schedulers if endpoint and endpoint.schedulers else SCHEDULERS
        text = current.lower()
        return [app_commands.Choice(name=s, value=s) for s in schedulers
                if text in s.lower()][:25]

    @img2img.autocomplete("model")
    @inpaint.autocomplete("model")
    async def model_choices(self, interaction: discord.Interaction,
                            current: str) -> list[app_commands.Choice[str]]:
        return await model_choices_for(self.bot, interaction.guild_id, current, interaction)

    @img2img.autocomplete("lora")
    @inpaint.autocomplete("lora")
    async def lora_choices(self, interaction: discord.Interaction,
                           current: str) -> list[app_commands.Choice[str]]:
        """LoRAs from ModelsLab's lists; any other well-formed id may still be typed."""
        models = self.bot.services.models
        found = models.suggest_loras(current) if models is not None else []
        typed = current.strip()[:100]
        if typed and typed not in found and MODEL_ID_PATTERN.match(typed):
            found = [*found[:24], typed]
        return [app_commands.Choice(name=m, value=m) for m in found[:25]]

    @img2img.autocomplete("style")
    async def style_choices(self, interaction: discord.Interaction,
                            current: str) -> list[app_commands.Choice[str]]:
        text = current.strip().lower()
        return [app_commands.Choice(name=s, value=s) for s in STYLES if text in s][:25]


async def setup(bot: RemixerBot) -> None:
    await bot.add_cog(Generate(bot))
