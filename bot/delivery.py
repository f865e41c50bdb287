"""Showing jobs to members in Discord: status updates, results with their buttons, failures.

Results go out as the interaction's followup while its token is valid, and as an ordinary
channel message after (tokens die 15 minutes after the command) or when the followup fails.
When the channel refuses the bot too, the member gets the result by direct message. Images are
re-uploaded, never linked: ModelsLab's links expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Sequence

import discord
from PIL import Image

from bot.components import delete_id, paint_id, remix_id, reroll_id
from bot.jobs.delivery import DeliveryFailed
from bot.jobs.models import Job, JobStatus, Output
from bot.metrics import Metrics

log = logging.getLogger(__name__)

TOKEN_MARGIN = 60.0  # don't start a followup with a token this close to expiring
STATUS_EDIT_INTERVAL = 5.0  # the status message is edited at most this often
STATUS_EDIT_TIMEOUT = 10.0  # a status edit Discord does not answer is given up after this
HISTORY_SEARCH_LIMIT = 50
UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord's per-file limit for bots in servers without boosts


def short_id(track_id: str) -> str:
    return track_id[:8]


def job_marker(job: Job) -> str:
    return f"job `{short_id(job.track_id)}`"


def describe(job: Job) -> str:
    """The line under a result: what was asked, so others can learn from it."""
    options = job.options
    parts = []
    if job.seed is not None:
        parts.append(f"seed {job.seed}")
    parts.append(f"{job.endpoint} endpoint")
    model = job.payload.get("model_id")
    if model:
        parts.append(f"model {model}")
    strength = job.payload.get("strength")
    if strength is not None:
        parts.append(f"strength {strength:g}")
    if options.get("remix_of"):
        parts.append(f"remix of `{short_id(options['remix_of'])}`")
    parts.append(job_marker(job))
    return " · ".join(parts)


def quote(text: str, limit: int = 600) -> str:
    text = text.strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return "\n".join("> " + line for line in text.splitlines() or [""])


def result_text(job: Job) -> str:
    return (f"<@{job.requester.user_id}> your image is ready.\n{quote(job.prompt)}\n"
            f"{describe(job)}")


def failure_text(job: Job) -> str:
    return (f"<@{job.requester.user_id}> your image could not be made. {job.error or ''}\n"
            f"{quote(job.prompt, 200)}\n{job_marker(job)}")


def message_link(job: Job, message_id: int) -> str:
    r = job.requester
    return f"https://discord.com/channels/{r.guild_id or '@me'}/{r.channel_id}/{message_id}"


def result_view(job: Job, count: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for index in range(count):
        label = "Remix" if count == 1 else f"Remix {index + 1}"
        view.add_item(discord.ui.Button(label=label, style=discord.ButtonStyle.primary,
                                        custom_id=remix_id(job.track_id, index)))
    view.add_item(discord.ui.Button(label="Edit region", style=discord.ButtonStyle.secondary,
                                    custom_id=paint_id(job.track_id)))
    view.add_item(discord.ui.Button(label="Re-roll", style=discord.ButtonStyle.secondary,
                                    custom_id=reroll_id(job.track_id)))
    view.add_item(discord.ui.Button(label="Delete", style=discord.ButtonStyle.danger,
                                    custom_id=delete_id(job.track_id)))
    return view


def status_text(job: Job, position: int | None, paused_until: float | None = None) -> str:
    if job.status is JobStatus.QUEUED:
        where = f"#{position} in line" if position else "in line"
        pause = (f" ModelsLab asked us to pause; sending resumes <t:{int(paused_until) + 1}:R>."
                 if paused_until else "")
        return (f"Queued: {where}.{pause} I'll post the result in this channel. "
                f"({job_marker(job)})")
    if job.status in (JobStatus.SUBMITTED, JobStatus.PROCESSING):
        eta = f" about {round(job.eta)} s" if job.eta else ""
        return (f"Generating at ModelsLab{',' if eta else ''}{eta}. "
                f"I'll post the result in this channel. ({job_marker(job)})")
    return f"Finishing up… ({job_marker(job)})"


def fit_for_upload(output: Output, limit: int = UPLOAD_LIMIT) -> tuple[str, bytes]:
    """The output as it can be posted: over Discord's per-file limit, it is re-encoded as a
    high-quality JPEG (scaled down only if that is still too big)."""
    if len(output.data) <= limit:
        return output.filename, output.data
    with Image.open(io.BytesIO(output.data)) as image:
        picture = image.convert("RGB")
    stem = output.filename.rsplit(".", 1)[0]
    for scale in (1.0, 0.75, 0.5, 0.35):
        resized = picture if scale == 1.0 else picture.resize(
            (max(1, int(picture.width * scale)), max(1, int(picture.height * scale))),
            Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        resized.save(buffer, "JPEG", quality=92, optimize=True)
        if buffer.tell() <= limit:
            return f"{stem}.jpg", buffer.getvalue()
    return f"{stem}.jpg", buffer.getvalue()


class DiscordDelivery:
    """The jobs layer's ``Delivery``, speaking to Discord through the bot's connection."""

    def __init__(self, client: discord.Client) -> None:
        self.client = client
        self._last_status: dict[str, tuple[float, str]] = {}
        self.metrics: Metrics | None = None  # set by the services: counts where results went

    def _webhook(self, job: Job) -> discord.Webhook | None:
        r = job.requester
        if not r.interaction_token or not r.application_id or r.token_expires_at is None:
            return None
        if r.token_expires_at - time.time() < TOKEN_MARGIN:
            return None
        return discord.Webhook.partial(r.application_id, r.interaction_token, client=self.client)

    async def _files(self, job: Job, outputs: Sequence[Output]) -> list[discord.File]:
        # Outside NSFW channels a flagged output is always a spoiler; inside, as the server's
        # NSFW policy says.
        in_nsfw_channel = bool(job.options.get("nsfw_channel"))
        spoil = job.nsfw and (not in_nsfw_channel
                              or job.options.get("nsfw_policy") == "spoiler")
        fitted = await asyncio.to_thread(lambda: [fit_for_upload(o) for o in outputs])
        return [discord.File(io.BytesIO(data), filename=name, spoiler=spoil)
                for name, data in fitted]

    async def deliver(self, job: Job, outputs: Sequence[Output]) -> int | None:
        succeeded = job.status is JobStatus.SUCCEEDED
        text = result_text(job) if succeeded else failure_text(job)
        mentions = discord.AllowedMentions(users=[discord.Object(job.requester.user_id)],
                                           everyone=False, roles=False)
        view = result_view(job, len(outputs)) if succeeded else None

        webhook = self._webhook(job)
        if webhook is not None and not succeeded:
            # A failure is the member's business: shown where their status was, privately.
            # (Editing is idempotent, so a repeat after a crash shows nothing twice.)
            try:
                await webhook.edit_message("@original", content=text)  # type: ignore[arg-type]
                self._count("followup")
                return None
            except discord.HTTPException as exc:
                log.info("job %s: status edit failed (%s); posting in the channel",
                         job.track_id, exc.status)
        elif webhook is not None:
            try:
                message = await webhook.send(text, files=await self._files(job, outputs), wait=True,
                                             allowed_mentions=mentions, view=view)
                await self._mark_done(webhook, job, message_link(job, message.id))
                self._count("followup")
                return message.id
            except discord.HTTPException as exc:
                log.info("job %s: followup failed (%s); posting in the channel", job.track_id,
                         exc.status)

        channel = self.client.get_partial_messageable(job.requester.channel_id,
                                                      guild_id=job.requester.guild_id)
        try:
            kwargs = {"view": view} if view else {}
            message = await channel.send(text, files=await self._files(job, outputs),
                                         allowed_mentions=mentions, **kwargs)
            self._count("channel")
            return message.id
        except (discord.Forbidden, discord.NotFound) as exc:
            log.warning("job %s: cannot post in channel %s (%s); telling the member directly",
                        job.track_id, job.requester.channel_id, exc.status)
        except discord.HTTPException as exc:
            raise DeliveryFailed(f"Discord answered {exc.status}") from exc
        return await self._direct_message(job, outputs, text)

    async def _direct_message(self, job: Job, outputs: Sequence[Output], text: str) -> int | None:
        note = (f"\nI could not post this in <#{job.requester.channel_id}>: I'm not allowed to "
                f"send messages there. An admin can fix my permissions.")
        try:
            user = await self.client.fetch_user(job.requester.user_id)
            message = await user.send(text + note, files=await self._files(job, outputs))
            self._count("direct")
            return message.id
        except discord.HTTPException as exc:
            raise DeliveryFailed(f"neither the channel nor a direct message worked "
                                 f"({exc.status})") from exc

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.delivery(outcome)

    async def find_delivered(self, job: Job) -> int | None:
        """After a crash mid-delivery: look for the message in the channel's recent history."""
        channel = self.client.get_partial_messageable(job.requester.channel_id,
                                                      guild_id=job.requester.guild_id)
        marker = job_marker(job)
        bot_id = self.client.user.id if self.client.user else None
        try:
            async for message in channel.history(limit=HISTORY_SEARCH_LIMIT):
                if message.author.id == bot_id and marker in message.content:
                    return message.id
        except discord.HTTPException as exc:
            log.warning("job %s: could not read channel history (%s)", job.track_id, exc.status)
        return None

    async def progress(self, job: Job, position: int | None, *,
                       paused_until: float | None = None) -> None:
        webhook = self._webhook(job)
        if webhook is None:
            return
        text = status_text(job, position, paused_until)
        last = self._last_status.get(job.track_id)
        now = time.monotonic()
        if last and (last[1] == text or now - last[0] < STATUS_EDIT_INTERVAL):
            return
        self._last_status[job.track_id] = (now, text)
        try:
            await webhook.edit_message("@original", content=text)  # type: ignore[arg-type]
        except discord.HTTPException as exc:
            log.info("job %s: status not updated (%s)", job.track_id, exc.status)

    async def _mark_done(self, webhook: discord.Webhook, job: Job, url: str) -> None:
        self._last_status.pop(job.track_id, None)
        # The result is out; if this edit fails, a stale status line is harmless.
        with contextlib.suppress(discord.HTTPException, TimeoutError):
            async with asyncio.timeout(STATUS_EDIT_TIMEOUT):
                await webhook.edit_message("@original",  # type: ignore[arg-type]
                                           content=f"Done: {url} ({job_marker(job)})")
