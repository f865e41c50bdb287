"""Showing jobs to members in Discord: status updates, results with their buttons, failures.

Results go out as the interaction's followup while its token is valid, and as an ordinary
channel message after (tokens die 15 minutes after the command) or when the followup fails.
When the channel refuses the bot too, the member gets the result by direct message. Images are
re-uploaded, never linked: ModelsLab's links expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import re
import time
from collections.abc import Sequence

import aiohttp
import discord
from PIL import Image

from bot.components import delete_id, paint_id, remix_id, reroll_id, upscale_id
from bot.images import run_image_work
from bot.jobs.delivery import DeliveryFailed, NotInServer
from bot.jobs.models import Job, JobStatus, Output
from bot.metrics import Metrics

log = logging.getLogger(__name__)

TOKEN_MARGIN = 60.0  # don't start a followup with a token this close to expiring
STATUS_EDIT_INTERVAL = 5.0  # the status message is edited at most this often
STATUS_EDIT_TIMEOUT = 10.0  # a status edit Discord does not answer is given up after this
HISTORY_SEARCH_LIMIT = 50
STATUS_MEMORY = 1000  # past this many remembered statuses, the stale ones are dropped
TOKEN_LIFETIME = 15 * 60.0
UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord's per-file limit for bots in servers without boosts


MESSAGE_LIMIT = 2000  # Discord's limit on a message's content, in characters
MODEL_SHOWN = 60  # a model id longer than this is shown shortened
ERROR_SHOWN = 900  # and so is an error text
PROMPT_SHOWN = 600  # the most of a prompt a result quotes
FAILURE_PROMPT_SHOWN = 200
SIMPLE_PROMPT_SHOWN = 100  # after Discord refused a message: the simpler one
NONCE_LENGTH = 25  # Discord's longest message nonce

# ModelsLab's words about the account (not about the image): credit, billing, the key.
ACCOUNT_ERROR = re.compile(
    r"credit|balance|billing|payment|subscri|wallet|top.?up|insufficient fund|"
    r"\bkey\b|unauthori[sz]ed|plan (has )?expired|upgrade your plan",
    re.IGNORECASE)
ACCOUNT_NOTICE = ("your image could not be made because of a problem with this server's "
                  "ModelsLab account; an admin can see the details in the bot's log. "
                  "Your images were not charged.")


def short_id(track_id: str) -> str:
    return track_id[:8]


def job_marker(job: Job) -> str:
    return f"job `{short_id(job.track_id)}`"


def is_account_error(text: str | None) -> bool:
    """ModelsLab's error is about the account (credit, billing, key), not the image: it
    concerns the admins, and is never shown in a public channel."""
    return bool(text) and ACCOUNT_ERROR.search(text or "") is not None


def delivery_nonce(job: Job, destination: str) -> str:
    """The same string for every attempt to post this job's message at ``destination``:
    Discord then returns the message already posted instead of posting it twice."""
    digest = hashlib.sha256(f"{job.track_id}:{destination}".encode()).hexdigest()
    return digest[:NONCE_LENGTH]


def as_text(text: str) -> str:
    """A member's words shown as words: no markdown, headings, masked links or mentions.
    (An underscore inside a word formats nothing and is left as it is.)"""
    text = re.sub(r"([\\*~|`\[\]])", r"\\\1", text)
    text = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)
    text = re.sub(r"(?m)^(\s*)(#{1,3}\s|-#\s|>)", r"\1\\\2", text)  # headings, subtext, quotes
    text = re.sub(r"<(?=[@#:/&!]|a:|t:)", "<\u200b", text)  # <@id>, <#id>, <:emoji:>, <t:..>
    return re.sub(r"@(?=everyone|here)", "@\u200b", text)


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with "…" where it was cut (never mid-escape)."""
    if len(text) <= limit:
        return text
    if limit <= 1:
        return "…"[:max(0, limit)]
    cut = text[: limit - 1]
    trailing = len(cut) - len(cut.rstrip("\\"))
    if trailing % 2:
        cut = cut[:-1]  # an escape cut in two would escape the "…"
    return cut + "…"


def describe(job: Job) -> str:
    """The line under a result: what was asked, so others can learn from it."""
    options = job.options
    parts = []
    if job.seed is not None:
        parts.append(f"seed {job.seed}")
    parts.append(f"{clip(as_text(str(job.endpoint)), 40)} endpoint")
    model = job.payload.get("model_id")
    if model:
        parts.append(f"model {clip(as_text(str(model)), MODEL_SHOWN)}")
    strength = job.payload.get("strength")
    if isinstance(strength, int | float):
        parts.append(f"strength {strength:g}")
    if options.get("remix_of"):
        parts.append(f"remix of `{short_id(str(options['remix_of']))}`")
    if options.get("upscale_of"):
        parts.append(f"upscale of image {int(options.get('image_index') or 0) + 1} of "
                     f"`{short_id(str(options['upscale_of']))}`")
    parts.append(job_marker(job))
    return " · ".join(parts)


def quote(text: str, limit: int = PROMPT_SHOWN) -> str:
    """The member's text as a quote block of at most ``limit`` characters, shown as text."""
    text = text.strip()
    lines = [as_text(line) for line in text.splitlines()] or [""]
    quoted = "\n".join("> " + line for line in lines)
    if len(quoted) <= limit:
        return quoted
    quoted = clip(quoted, max(limit, 3))
    return quoted if not quoted.endswith("\n…") else quoted[:-2] + "…"


def _compose(head: str, prompt: str, tail: str, prompt_limit: int,
             limit: int = MESSAGE_LIMIT) -> str:
    """The fixed parts first; the prompt's quote gets what is left (and at most
    ``prompt_limit``)."""
    if not prompt.strip():  # an upscale: nothing was asked in words
        return clip(f"{head}\n{tail}", limit)
    room = limit - len(head) - len(tail) - 2
    text = f"{head}\n{quote(prompt, max(3, min(prompt_limit, room)))}\n{tail}"
    return clip(text, limit)


def result_text(job: Job, *, extra: str = "", limit: int = MESSAGE_LIMIT,
                prompt_limit: int = PROMPT_SHOWN) -> str:
    if job.options.get("upscale_of"):
        head = f"<@{job.requester.user_id}> your upscaled image is ready."
        return _compose(head, "", describe(job) + extra, prompt_limit, limit)
    head = f"<@{job.requester.user_id}> your image is ready."
    return _compose(head, job.prompt, describe(job) + extra, prompt_limit, limit)


def failure_text(job: Job, *, extra: str = "", limit: int = MESSAGE_LIMIT,
                 prompt_limit: int = FAILURE_PROMPT_SHOWN, public: bool = False) -> str:
    if public and is_account_error(job.error):
        head = f"<@{job.requester.user_id}> {ACCOUNT_NOTICE}"
    else:
        error = clip(" ".join((job.error or "").split()), ERROR_SHOWN)
        head = f"<@{job.requester.user_id}> your image could not be made. {error}".rstrip()
    tail = job_marker(job) if job.prompt else describe(job)
    return _compose(head, job.prompt, tail + extra, prompt_limit, limit)


def message_link(job: Job, message_id: int) -> str:
    r = job.requester
    return f"https://discord.com/channels/{r.guild_id or '@me'}/{r.channel_id}/{message_id}"


class ResultButtons(discord.ui.View):
    """The buttons under a result, sent as components only.

    discord.py keeps every dispatchable View it sends in its view store for the life of the
    process (a few KB per result, forever). These buttons need nothing from there: clicks
    are answered by the persistent DynamicItem handlers (cogs/remix.py), which read the job
    from the custom id. So this view says it is not dispatchable, and is never stored."""

    def is_dispatchable(self) -> bool:
        return False


def result_view(job: Job, count: int) -> discord.ui.View:
    view = ResultButtons(timeout=None)
    if job.options.get("upscale_of"):  # an upscale is an end product: it can be deleted
        view.add_item(discord.ui.Button(label="Delete", style=discord.ButtonStyle.danger,
                                        custom_id=delete_id(job.track_id)))
        return view
    for index in range(count):
        label = "Remix" if count == 1 else f"Remix {index + 1}"
        view.add_item(discord.ui.Button(label=label, style=discord.ButtonStyle.primary,
                                        custom_id=remix_id(job.track_id, index)))
        if job.options.get("upscale_enabled", True):
            view.add_item(discord.ui.Button(
                label="Upscale" if count == 1 else f"Upscale {index + 1}",
                style=discord.ButtonStyle.secondary, custom_id=upscale_id(job.track_id, index)))
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


def output_pixels(output: Output) -> int:
    """The pixel count an output's header declares (0 when it can't be read)."""
    try:
        with Image.open(io.BytesIO(output.data)) as image:
            return image.width * image.height
    except Exception:
        return 0


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


def shrink(name: str, data: bytes) -> tuple[str, bytes]:
    """A smaller version of an image Discord refused: at most half its size, as PNG or JPEG,
    scaled down as far as it takes."""
    target = max(1, len(data) // 2)
    with Image.open(io.BytesIO(data)) as image:
        picture = image.convert("RGB")
    stem = name.rsplit(".", 1)[0]
    best: tuple[str, bytes] = (name, data)
    for scale in (1.0, 0.75, 0.5, 0.35, 0.25, 0.15):
        resized = picture if scale == 1.0 else picture.resize(
            (max(1, int(picture.width * scale)), max(1, int(picture.height * scale))),
            Image.Resampling.LANCZOS)
        for fmt, suffix, options in (("JPEG", "jpg", {"quality": 85, "optimize": True}),
                                     ("PNG", "png", {"optimize": True})):
            buffer = io.BytesIO()
            resized.save(buffer, fmt, **options)
            if buffer.tell() < len(best[1]):
                best = (f"{stem}.{suffix}", buffer.getvalue())
            if buffer.tell() <= target:
                return f"{stem}.{suffix}", buffer.getvalue()
    return best


def carries(message: discord.Message, job: Job) -> bool:
    """Whether ``message`` (the bot's) is this job's result or failure."""
    for row in message.components:
        for child in getattr(row, "children", ()):
            custom_id = getattr(child, "custom_id", None) or ""
            if custom_id.split(":")[1:2] == [job.track_id]:
                return True
    marker = job_marker(job)
    return any(marker in line for line in message.content.splitlines()
               if not line.startswith(">"))


class _Refused(Exception):
    """Discord refused what was sent (too long, too large, invalid): the same again cannot
    work."""

    def __init__(self, exc: discord.HTTPException) -> None:
        super().__init__(str(exc))
        self.exc = exc


def _raise_if_refused(exc: discord.HTTPException) -> None:
    if isinstance(exc, discord.Forbidden | discord.NotFound):
        return
    if exc.status in (400, 413) or exc.code in (50035, 40005):
        raise _Refused(exc) from exc


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

    async def _files(self, job: Job, outputs: Sequence[Output],
                     simple: bool = False) -> list[discord.File]:
        # Outside NSFW channels a flagged output is always a spoiler; inside, as the server's
        # NSFW policy says.
        in_nsfw_channel = bool(job.options.get("nsfw_channel"))
        # An upscale of a flagged image is flagged too (super resolution does not check).
        flagged = job.nsfw or bool(job.options.get("source_nsfw"))
        spoil = flagged and (not in_nsfw_channel
                              or job.options.get("nsfw_policy") == "spoiler")

        def fit() -> list[tuple[str, bytes]]:
            fitted = [fit_for_upload(o) for o in outputs]
            return [shrink(name, data) for name, data in fitted] if simple else fitted

        # Re-encoding an output over the upload limit decodes it: on the image threads,
        # within the decode budget, like members' images.
        large = [o for o in outputs if simple or len(o.data) > UPLOAD_LIMIT]
        pixels = sum([await run_image_work(0, lambda o=o: output_pixels(o)) for o in large])
        fitted = await run_image_work(pixels, fit)
        return [discord.File(io.BytesIO(data), filename=name, spoiler=spoil)
                for name, data in fitted]

    def _knows(self, guild_id: int) -> bool:
        """Whether this process's gateway shards carry the server (with several processes,
        another process may deliver a server's result: only its shard knows the server)."""
        serves = getattr(self.client, "serves_guild", None)
        return serves is None or serves(guild_id)

    async def deliver(self, job: Job, outputs: Sequence[Output]) -> int | None:
        self._last_status.pop(job.track_id, None)  # no status is shown for it any more
        # Jobs resumed at start-up wait until the bot knows which servers it is in.
        with contextlib.suppress(RuntimeError):
            await self.client.wait_until_ready()
        guild_id = job.requester.guild_id
        if guild_id is not None and self.client.is_ready() and self._knows(guild_id) and \
                self.client.get_guild(guild_id) is None:
            raise NotInServer(f"Remixer is no longer in server {guild_id}")
        try:
            return await self._send(job, outputs, simple=False)
        except _Refused as refused:
            # Sending the same form again cannot work: a shorter text and smaller files may
            # (and no buttons, if they were what Discord refused).
            log.warning("job %s: Discord refused the message (%s, code %s: %s); sending a "
                        "simpler one", job.track_id, refused.exc.status, refused.exc.code,
                        refused.exc.text[:300])
            buttons = "components" not in refused.exc.text
        try:
            return await self._send(job, outputs, simple=True, buttons=buttons)
        except _Refused as again:
            raise DeliveryFailed(f"Discord refused even the simpler message "
                                 f"({again.exc.status}, code {again.exc.code})") from again.exc

    async def _send(self, job: Job, outputs: Sequence[Output], *, simple: bool,
                    buttons: bool = True) -> int | None:
        succeeded = job.status is JobStatus.SUCCEEDED
        account = not succeeded and is_account_error(job.error)
        if account:
            log.warning("job %s: ModelsLab refused it for a reason concerning the account: %s",
                        job.track_id, job.error)
        limits = {"prompt_limit": SIMPLE_PROMPT_SHOWN} if simple else {}
        mentions = discord.AllowedMentions(users=[discord.Object(job.requester.user_id)],
                                           everyone=False, roles=False)
        view = result_view(job, len(outputs)) if succeeded and buttons else None

        webhook = self._webhook(job)
        if webhook is not None and not succeeded:
            # A failure is the member's business: shown where their status was, privately.
            # (Editing is idempotent, so a repeat after a crash shows nothing twice.)
            try:
                await webhook.edit_message("@original",  # type: ignore[arg-type]
                                           content=failure_text(job, **limits))
                self._count("followup")
                return None
            except discord.HTTPException as exc:
                _raise_if_refused(exc)
                log.info("job %s: status edit failed (%s); posting in the channel",
                         job.track_id, exc.status)
        elif webhook is not None and not job.options.get("reply_to"):
            try:
                message = await webhook.send(result_text(job, **limits),
                                             files=await self._files(job, outputs, simple),
                                             wait=True, allowed_mentions=mentions, view=view)
                await self._mark_done(webhook, job, message_link(job, message.id))
                self._count("followup")
                return message.id
            except discord.HTTPException as exc:
                _raise_if_refused(exc)
                log.info("job %s: followup failed (%s); posting in the channel", job.track_id,
                         exc.status)
                if exc.status >= 500 and (found := await self._posted_anyway(job)) is not None:
                    return found
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.info("job %s: followup answer lost (%r)", job.track_id, exc)
                if (found := await self._posted_anyway(job)) is not None:
                    return found

        if account:
            # The details go to the member privately; the channel hears a neutral sentence.
            with contextlib.suppress(DeliveryFailed):
                return await self._direct_message(job, outputs, failure_text(job, **limits),
                                                  note="")
        text = (result_text(job, **limits) if succeeded
                else failure_text(job, public=True, **limits))
        channel = self.client.get_partial_messageable(job.requester.channel_id,
                                                      guild_id=job.requester.guild_id)
        try:
            kwargs: dict = {"view": view} if view else {}
            if job.options.get("reply_to"):  # an upscale answers the result it came from
                kwargs["reference"] = discord.MessageReference(
                    message_id=int(job.options["reply_to"]), channel_id=job.requester.channel_id,
                    fail_if_not_exists=False)
            message = await channel.send(text, files=await self._files(job, outputs, simple),
                                         allowed_mentions=mentions,
                                         nonce=delivery_nonce(job, "channel"), **kwargs)
            self._count("channel")
            if webhook is not None and succeeded:
                await self._mark_done(webhook, job, message_link(job, message.id))
            return message.id
        except (discord.Forbidden, discord.NotFound) as exc:
            log.warning("job %s: cannot post in channel %s (%s); telling the member directly",
                        job.track_id, job.requester.channel_id, exc.status)
        except discord.HTTPException as exc:
            _raise_if_refused(exc)
            raise DeliveryFailed(f"Discord answered {exc.status}") from exc
        if account:
            raise DeliveryFailed("neither a direct message nor the channel worked")
        note = (f"\nI could not post this in <#{job.requester.channel_id}>: I'm not allowed to "
                f"send messages there. An admin can fix my permissions.")
        text = (result_text(job, extra=note, **limits) if succeeded
                else failure_text(job, extra=note, **limits))
        return await self._direct_message(job, outputs, text, note=note)

    async def _posted_anyway(self, job: Job) -> int | None:
        """A followup that failed on Discord's side may still have been posted."""
        found = await self.find_delivered(job)
        if found is not None:
            log.info("job %s: the followup was posted after all (message %s)", job.track_id,
                     found)
            self._count("followup")
        return found

    async def _direct_message(self, job: Job, outputs: Sequence[Output], text: str, *,
                              note: str) -> int | None:
        """``text`` already carries ``note`` (it was budgeted with it)."""
        try:
            user = await self.client.fetch_user(job.requester.user_id)
            message = await user.send(text, files=await self._files(job, outputs),
                                      nonce=delivery_nonce(job, "direct"))
            self._count("direct")
            return message.id
        except discord.HTTPException as exc:
            _raise_if_refused(exc)
            raise DeliveryFailed(f"neither the channel nor a direct message worked "
                                 f"({exc.status})") from exc

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.delivery(outcome)

    async def find_delivered(self, job: Job) -> int | None:
        """After a crash mid-delivery or a lost answer: the job's message in the channel's
        recent history, if it is there. Only what a member cannot write counts: a button
        carrying the job's id, or the marker on a line the bot wrote (a member's prompt is
        always quoted, so it can't fake one)."""
        channel = self.client.get_partial_messageable(job.requester.channel_id,
                                                      guild_id=job.requester.guild_id)
        bot_id = self.client.user.id if self.client.user else None
        try:
            async for message in channel.history(limit=HISTORY_SEARCH_LIMIT):
                if message.author.id == bot_id and carries(message, job):
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
        if len(self._last_status) > STATUS_MEMORY:
            self._forget_old_statuses(now)
        try:
            await webhook.edit_message("@original", content=text)  # type: ignore[arg-type]
        except discord.HTTPException as exc:
            log.info("job %s: status not updated (%s)", job.track_id, exc.status)

    def _forget_old_statuses(self, now: float) -> None:
        """Entries a delivery did not drop (a status update racing with it): after the
        interaction token's 15 minutes no status can be shown anyway."""
        for track_id, (at, _) in list(self._last_status.items()):
            if now - at > TOKEN_LIFETIME:
                del self._last_status[track_id]

    async def _mark_done(self, webhook: discord.Webhook, job: Job, url: str) -> None:
        self._last_status.pop(job.track_id, None)
        # The result is out; if this edit fails, a stale status line is harmless.
        with contextlib.suppress(discord.HTTPException, TimeoutError):
            async with asyncio.timeout(STATUS_EDIT_TIMEOUT):
                await webhook.edit_message("@original",  # type: ignore[arg-type]
                                           content=f"Done: {url} ({job_marker(job)})")
