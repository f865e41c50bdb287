"""The mask painter's links: a capability to paint one image and submit one inpaint job.

A link is ``PUBLIC_BASE_URL/paint/<token>``. The token is 256 random bits; only its hash is
stored, with what it is bound to: the member, the server, the channel, the source image (and
the source job, whose prompt and mask the page starts from). It lives as long as the Discord
interaction that made it (15 minutes), because the painted mask is hosted, like every
converted image, with that interaction's private response. The first browser that opens it
claims it (a cookie whose hash is stored), and it submits once.

Submitting builds the same ``GenerationRequest`` as ``/inpaint`` (the mask given as bytes, then
checked and prepared by the same code as an upload), so quota, checks, queue and delivery are
the same. The service knows nothing of Discord: the caller hands it a way to host files for a
link (``HostFor``).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from bot.cooldowns import Cooldowns
from bot.errors import UserFacingError
from bot.generation import (
    DOWNLOAD_TIMEOUT,
    GenerationRequest,
    GenerationService,
    HostFiles,
    Upload,
)
from bot.images import (
    MAX_UPLOAD_BYTES,
    ImageRejected,
    check_image,
    check_image_async,
    declared_pixels,
    prepare_mask,
    run_image_work,
)
from bot.jobs.models import Job, Requester
from bot.jobs.store import JobStore, hash_secret
from bot.modelslab.catalogue import (
    ENDPOINTS,
    INPAINT,
    Endpoint,
    KeyKind,
    Operation,
    by_choice,
)
from bot.modelslab.payload import GenerationOptions
from bot.net import read_capped

log = logging.getLogger(__name__)

LINK_LIFETIME = 15 * 60  # a Discord interaction token's life: the mask is hosted through it
SUBMIT_MARGIN = 60.0  # the hosting edit needs the token alive: submitting closes this early
KEEP_EXPIRED = 24 * 3600  # expired links are remembered a day, to say "expired", not "invalid"
# What a painter job keeps of its source job's settings (the page sets prompt, negative
# prompt, strength and samples; the image, hence size and seed, is new).
KEPT_OPTIONS = ("model", "steps", "guidance_scale", "scheduler", "clip_skip")
FORM_FIELDS = ("prompt", "negative_prompt", "strength", "samples")

NOT_VALID = "This painter link is not valid."
EXPIRED = "This painter link has expired; ask for a new one with Edit region."
USED = ("This painter link was already used; ask for a new one with Edit region to paint "
        "again.")
FOREIGN = ("This painter link was opened in another browser, and only that browser can use "
           "it; ask for a new one with Edit region.")
EMPTY_MASK = "Nothing is painted: paint the region to repaint first."
FULL_MASK = ("The painted region covers the whole image: leave some of it unpainted (to "
             "change everything, use /img2img).")


class LinkRefused(Exception):
    """A painter link that cannot be used, in words, with the HTTP status to answer."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class FormRefused(UserFacingError):
    """A submission refused in words; the link is left as it was."""


@dataclass(frozen=True, slots=True)
class PaintLink:
    key: str
    user_id: int
    guild_id: int | None
    channel_id: int
    image_url: str
    image_name: str
    mask_url: str | None
    source_track_id: str | None
    options: dict[str, Any]
    nsfw_channel: bool
    interaction_token: str | None
    application_id: int | None
    created_at: float
    expires_at: float
    browser_hash: str | None
    used_at: float | None
    track_id: str | None

    @classmethod
    def from_row(cls, row: Any) -> PaintLink:
        return cls(
            key=row["key"], user_id=row["user_id"], guild_id=row["guild_id"],
            channel_id=row["channel_id"], image_url=row["image_url"],
            image_name=row["image_name"], mask_url=row["mask_url"],
            source_track_id=row["source_track_id"], options=json.loads(row["options"]),
            nsfw_channel=bool(row["nsfw_channel"]), interaction_token=row["interaction_token"],
            application_id=row["application_id"], created_at=row["created_at"],
            expires_at=row["expires_at"], browser_hash=row["browser_hash"],
            used_at=row["used_at"], track_id=row["track_id"])

    def form_defaults(self) -> dict[str, Any]:
        """What the page's form starts with."""
        return {"prompt": self.options.get("prompt") or "",
                "negative_prompt": self.options.get("negative_prompt") or "",
                "strength": self.options.get("strength"),
                "samples": self.options.get("samples") or 1,
                "has_mask": self.mask_url is not None,
                "source_job": self.source_track_id[:8] if self.source_track_id else None}

    def channel_url(self) -> str:
        return f"https://discord.com/channels/{self.guild_id or '@me'}/{self.channel_id}"


@dataclass(frozen=True, slots=True)
class Submitted:
    job: Job
    position: int | None
    channel_url: str


# Given a link, a way to host its converted images (through the link's interaction).
HostFor = Callable[[PaintLink], HostFiles]


def _plain_times(text: str) -> str:
    """Discord's relative timestamps (``<t:N:R>``) as words, for a web page."""
    def words(match: re.Match[str]) -> str:
        seconds = max(1, int(match[1]) - int(time.time()))
        return f"in {seconds} second{'s' if seconds != 1 else ''}"
    return re.sub(r"<t:(\d+):R>", words, text)


def mask_coverage(data: bytes) -> tuple[bool, bool]:
    """(anything painted, everything painted) for a mask, read as prepare_mask reads it."""
    checked = check_image(data, label="mask", declared_size=len(data))
    try:
        prepared = prepare_mask(checked, checked.display_size)
    except ImageRejected:
        return False, False  # prepare_mask refuses a mask that marks nothing
    from io import BytesIO

    from PIL import Image
    with Image.open(BytesIO(prepared)) as image:
        low, high = image.convert("L").getextrema()
    return high == 255, low == 255


def inpaint_endpoint_for(choice: str | None, source_endpoint: str | None) -> Endpoint:
    """The inpainting endpoint a painter link runs on."""
    if choice and (chosen := by_choice(Operation.INPAINT, choice)) is not None:
        return chosen
    source = ENDPOINTS.get(source_endpoint or "")
    if source is not None:
        same = by_choice(Operation.INPAINT, source.choice_name)
        if same is not None:
            return same
        if source.key is KeyKind.ENTERPRISE:
            enterprise = by_choice(Operation.INPAINT, "enterprise")
            if enterprise is not None:
                return enterprise
    return INPAINT


class Painter:
    def __init__(self, store: JobStore, generation: GenerationService,
                 session: aiohttp.ClientSession, host_for: HostFor,
                 cooldowns: Cooldowns | None = None) -> None:
        self.store = store
        self.cooldowns = cooldowns  # the member cooldown the commands share
        self.generation = generation
        self._session = session
        self._host_for = host_for

    # --- links --------------------------------------------------------------------------

    async def create(self, requester: Requester, image: Upload, *, mask_url: str | None = None,
                     source: Job | None = None, options: dict[str, Any] | None = None,
                     nsfw_channel: bool = False) -> str:
        """A new link's token (put it after ``/paint/``). ``options``: the command's options:
        the form's defaults (prompt, negative prompt, strength, samples) and the rest, kept
        for the job; from a ``source`` job only its prompt and KEPT_OPTIONS are kept."""
        now = time.time()
        token = secrets.token_urlsafe(32)
        kept: dict[str, Any] = {}
        if source is not None:
            kept.update({k: v for k, v in source.options.items()
                         if k in (*KEPT_OPTIONS, "negative_prompt", "strength")})
            kept["prompt"] = source.prompt
        kept.update({k: v for k, v in (options or {}).items()
                     if v is not None and k in GenerationOptions.model_fields})
        # The inpainting endpoint: the command's choice, else the source's family (an
        # enterprise result is edited on enterprise inpainting); only what it takes is kept.
        target = inpaint_endpoint_for((options or {}).get("endpoint"),
                                      source.endpoint if source is not None else None)
        kept = {k: v for k, v in kept.items()
                if k == "prompt" or k in FORM_FIELDS or target.takes(k)}
        kept["endpoint"] = target.choice_name
        expires = requester.token_expires_at or now + LINK_LIFETIME
        await self.store.write("DELETE FROM paint_links WHERE expires_at < ?",
                               (now - KEEP_EXPIRED,))
        await self.store.write(
            "INSERT INTO paint_links (key, user_id, guild_id, channel_id, image_url, "
            "image_name, mask_url, source_track_id, options, nsfw_channel, interaction_token, "
            "application_id, created_at, expires_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (hash_secret(token), requester.user_id, requester.guild_id, requester.channel_id,
             image.url, image.filename, mask_url, source.track_id if source else None,
             json.dumps(kept), int(nsfw_channel), requester.interaction_token,
             requester.application_id, now, expires))
        return token

    async def _get(self, token: str) -> PaintLink:
        if not token or len(token) > 100:
            raise LinkRefused(404, NOT_VALID)
        rows = await self.store.read("SELECT * FROM paint_links WHERE key = ?",
                                     (hash_secret(token),))
        if not rows:
            raise LinkRefused(404, NOT_VALID)
        return PaintLink.from_row(rows[0])

    @staticmethod
    def _usable(link: PaintLink, browser: str | None, *, margin: float = 0.0) -> None:
        if link.used_at is not None:
            raise LinkRefused(410, USED)
        if time.time() > link.expires_at - margin:
            raise LinkRefused(410, EXPIRED)
        if link.browser_hash is not None and (
                not browser or not secrets.compare_digest(hash_secret(browser),
                                                          link.browser_hash)):
            raise LinkRefused(410, FOREIGN)

    async def open(self, token: str, browser: str | None) -> tuple[PaintLink, str]:
        """The page is opened: the link and the browser's secret (new when the link was not
        claimed yet: the first browser to open a link claims it)."""
        link = await self._get(token)
        self._usable(link, browser if link.browser_hash else None)
        if link.browser_hash is not None:
            assert browser is not None
            return link, browser
        secret = secrets.token_urlsafe(32)
        rows = await self.store.read(
            "UPDATE paint_links SET browser_hash = ? WHERE key = ? AND browser_hash IS NULL "
            "RETURNING key", (hash_secret(secret), link.key))
        if not rows:  # another browser claimed it a moment ago
            raise LinkRefused(410, FOREIGN)
        return link, secret

    async def check(self, token: str, browser: str | None) -> PaintLink:
        """A request from the page (its image, its mask, its defaults)."""
        link = await self._get(token)
        if link.browser_hash is None:
            raise LinkRefused(410, FOREIGN)
        self._usable(link, browser)
        return link

    async def source_image(self, link: PaintLink, *, mask: bool = False) -> tuple[bytes, str]:
        """The link's image (or its starting mask), fetched by the bot so the page's canvas
        stays same-origin; checked as an image before it is passed on."""
        url = link.mask_url if mask else link.image_url
        if not url:
            raise LinkRefused(404, "This painter link has no mask to start from.")
        try:
            async with self._session.get(url, timeout=DOWNLOAD_TIMEOUT) as resp:
                if resp.status != 200:
                    raise UserFacingError(f"Discord did not give the image (HTTP "
                                          f"{resp.status}); ask for a new link.")
                data = await read_capped(resp.content, MAX_UPLOAD_BYTES)
        except (aiohttp.ClientError, TimeoutError):
            raise UserFacingError("The image could not be downloaded from Discord; try "
                                  "again in a moment.") from None
        checked = await check_image_async(data, label="mask" if mask else "image")
        return data, checked.content_type

    # --- submitting ---------------------------------------------------------------------

    @staticmethod
    def options_from(link: PaintLink, form: dict[str, str]) -> GenerationOptions:
        def number(name: str, kind: type) -> Any:
            text = (form.get(name) or "").strip().replace(",", ".")
            if not text:
                return None
            try:
                return kind(float(text)) if kind is int and float(text).is_integer() \
                    else kind(text)
            except ValueError:
                raise FormRefused(f"{name.replace('_', ' ').capitalize()} must be a number, "
                                  f"not {text[:20]!r}.") from None

        prompt = (form.get("prompt") or "").strip()
        if not prompt:
            raise FormRefused("Write a prompt: what the painted region should show.")
        # The link keeps only options a job may take (see ``create``); the form's own win.
        kept = {k: v for k, v in link.options.items()
                if k in GenerationOptions.model_fields and k not in FORM_FIELDS}
        try:
            return GenerationOptions(
                **kept, prompt=prompt,
                negative_prompt=(form.get("negative_prompt") or "").strip() or None,
                strength=number("strength", float), samples=number("samples", int))
        except ValueError as exc:
            raise FormRefused(f"Those values can't be used: {exc}") from None

    async def submit(self, token: str, browser: str | None, mask: bytes,
                     form: dict[str, str]) -> Submitted:
        link = await self._get(token)
        if link.browser_hash is None:
            raise LinkRefused(410, FOREIGN)
        self._usable(link, browser, margin=SUBMIT_MARGIN)
        if self.cooldowns is not None:
            try:
                await self.cooldowns.check(link.guild_id, link.user_id)
            except UserFacingError as exc:
                raise FormRefused(_plain_times(str(exc))) from None
        try:
            return await self._submit_checked(link, form, mask)
        except BaseException:
            if self.cooldowns is not None:  # refused for another reason: the turn is given back
                self.cooldowns.refund(link.guild_id, link.user_id)
            raise

    async def _submit_checked(self, link: PaintLink, form: Mapping[str, str],
                              mask: bytes) -> Submitted:
        options = self.options_from(link, form)
        pixels = await run_image_work(0, lambda: declared_pixels(mask, label="mask"))
        painted, everything = await run_image_work(pixels, lambda: mask_coverage(mask))
        if not painted:
            raise FormRefused(EMPTY_MASK)
        if everything:
            raise FormRefused(FULL_MASK)
        # Single use: claimed in one statement; given back if the job is refused.
        claimed = await self.store.read(
            "UPDATE paint_links SET used_at = ? WHERE key = ? AND used_at IS NULL "
            "RETURNING key", (time.time(), link.key))
        if not claimed:
            raise LinkRefused(410, USED)
        requester = Requester(
            user_id=link.user_id, guild_id=link.guild_id, channel_id=link.channel_id,
            interaction_token=link.interaction_token, token_expires_at=link.expires_at,
            application_id=link.application_id)
        request = GenerationRequest(
            operation=Operation.INPAINT, options=options,
            endpoint=link.options.get("endpoint"),
            image=Upload(url=link.image_url, filename=link.image_name), mask_data=mask,
            requester=requester, nsfw_channel=link.nsfw_channel,
            parent_track_id=link.source_track_id,
            extra={"remix_of": link.source_track_id, "painted": True}
            if link.source_track_id else {"painted": True})
        try:
            job = await self.generation.start(request, host=self._host_for(link))
        except BaseException:
            await self.store.write("UPDATE paint_links SET used_at = NULL WHERE key = ?",
                                   (link.key,))
            raise
        await self.store.write("UPDATE paint_links SET track_id = ? WHERE key = ?",
                               (job.track_id, link.key))
        position = await self.store.queue_position(job.track_id)
        return Submitted(job, position, link.channel_url())
