"""Turning a member's request into a queued job: endpoint, options, attachments, payload.

Everything here is checked before anything is sent to ModelsLab, and every refusal is a
``UserFacingError`` in words. The service knows nothing of Discord: the caller hands it the
attachments' URLs and a way to host converted images (``HostFiles``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bot.errors import UserFacingError
from bot.images import (
    MAX_UPLOAD_BYTES,
    CheckedImage,
    ImageRejected,
    check_declared_size,
    check_image_async,
    prepare_init_image_async,
    prepare_mask_async,
)
from bot.jobs.engine import JobEngine
from bot.jobs.models import Job, NewJob, Requester
from bot.jobs.store import QuotaExceeded, QuotaRule, TooManyJobs
from bot.modelslab.catalogue import (
    DEFAULT_IMG2IMG_ENDPOINT,
    DEFAULT_INPAINT_ENDPOINT,
    UPSCALE,
    Endpoint,
    KeyKind,
    Operation,
    by_choice,
    choices_for,
)
from bot.modelslab.models import ModelList
from bot.modelslab.payload import GenerationOptions, SourceImage, build_payload
from bot.net import MAX_REDIRECTS, blocked_reason, read_capped
from bot.servers import Servers, ServerSettings, next_reset
from bot.settings import Settings

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=10)


@dataclass(frozen=True, slots=True)
class Upload:
    """An image a member gave (a Discord attachment, or an earlier result)."""

    url: str
    filename: str
    size: int | None = None


@dataclass(frozen=True, slots=True)
class HostedFile:
    filename: str
    data: bytes
    content_type: str


# Puts converted images where ModelsLab can fetch them; returns their URLs in order.
HostFiles = Callable[[list[HostedFile]], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    operation: Operation
    options: GenerationOptions
    image: Upload
    requester: Requester
    endpoint: str | None = None
    mask: Upload | None = None
    mask_data: bytes | None = None  # a mask given as bytes (the painter), checked like an upload
    nsfw_channel: bool = False
    parent_track_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # kept with the job (e.g. remix source)


NO_SERVER = "Remixer works only in a server that has added it; use it in your server."


def quota_refusal(used: int, limit: int, asked: int, resets_at: dt.datetime) -> UserFacingError:
    when = f"<t:{int(resets_at.timestamp())}:R>"
    if used >= limit:
        return UserFacingError(f"You have used all {limit} of your images for today "
                               f"({used} of {limit}). Your quota resets {when}.")
    return UserFacingError(f"This would make {asked} image{'s' if asked != 1 else ''}, and "
                           f"you have {limit - used} of your {limit} left today ({used} "
                           f"used). Ask for fewer samples, or wait until your quota resets "
                           f"{when}.")


def too_many_jobs(active: int) -> UserFacingError:
    return UserFacingError(
        f"You already have {active} jobs waiting or running, the most one member may have "
        f"at once on this server. Try again when one is done.")


class GenerationService:
    def __init__(self, settings: Settings, engine: JobEngine,
                 session: aiohttp.ClientSession, servers: Servers,
                 models: ModelList | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.servers = servers
        self.models = models  # ModelsLab's model lists, when they could be read
        self._session = session

    def resolve_endpoint(self, operation: Operation, name: str | None,
                         default: str | None = None) -> Endpoint:
        """The endpoint a command's `endpoint` choice picks (its catalogue name may differ:
        `/inpaint endpoint:enterprise` is enterprise inpainting)."""
        if default is None:
            default = (DEFAULT_INPAINT_ENDPOINT if operation is Operation.INPAINT
                       else DEFAULT_IMG2IMG_ENDPOINT)
        endpoint = by_choice(operation, name or default)
        if endpoint is None:
            choices = ", ".join(choices_for(operation))
            raise UserFacingError(f"{name} is not an endpoint; choose one of {choices}.")
        if endpoint.key is KeyKind.ENTERPRISE and not self.settings.enterprise_enabled:
            raise UserFacingError(
                f"The {endpoint.title} endpoint needs an enterprise ModelsLab key, and this "
                f"server's Remixer has none. Use the v6 endpoint, or ask an admin to set "
                f"MODELSLAB_ENTERPRISE_API_KEY.")
        return endpoint

    def check_model(self, endpoint: Endpoint, options: GenerationOptions,
                    server: ServerSettings) -> None:
        """A model a member names must be one this server allows and one ModelsLab lists
        (when its list could be read); refused with the closest names otherwise."""
        model = (options.model or "").strip()
        if not endpoint.takes("model") or not model:
            return
        if server.allowed_models and model.lower() not in {m.lower()
                                                           for m in server.allowed_models}:
            raise UserFacingError(
                f"{model} is not one of the models this server allows: "
                f"{', '.join(server.allowed_models)}.")
        models = self.models
        if models is None or not models.available or models.knows(model):
            return
        closest = models.closest(model)
        hint = f" The closest names: {', '.join(closest)}." if closest else ""
        raise UserFacingError(f"{model} is not a model on ModelsLab's model list, so nothing "
                              f"was sent.{hint}")

    def check_options(self, endpoint: Endpoint, options: GenerationOptions,
                      default_model: str) -> int:
        """Refuse options before any download (the real size is not needed to judge them);
        returns how many images the job would make."""
        body = build_payload(endpoint, options,
                             image=SourceImage("https://example.invalid/x", 1024, 1024),
                             mask=SourceImage("https://example.invalid/m", 1024, 1024)
                             if endpoint.takes("mask") else None, default_model=default_model)
        return int(body.get("samples", 1))

    async def start(self, request: GenerationRequest, host: HostFiles) -> Job:
        """Check everything, host converted images, write the job and queue it."""
        if not self.engine.accepting:  # shutting down: start nothing (jobs written resume)
            raise UserFacingError("Remixer is restarting; try again in a minute.")
        r = request.requester
        if r.guild_id is None:  # no server: no quota, member limit or channel list applies
            raise UserFacingError(NO_SERVER)
        server = await self.servers.get(r.guild_id)
        self.servers.check_channel(server, r.channel_id)
        endpoint = self.resolve_endpoint(
            request.operation, request.endpoint,
            server.default_endpoint if request.operation is Operation.IMG2IMG else None)
        images = self.check_options(endpoint, request.options, server.default_model)
        self.check_model(endpoint, request.options, server)
        # A quick look at the quota before any download; the binding check is made when the
        # job is written, in the same transaction.
        quota = await self.servers.quota_rule(server, r.user_id)
        usage = await self.servers.usage(server, r.user_id, rule=quota)
        if quota.daily_limit is not None and usage.used + images > quota.daily_limit:
            self.engine.metrics.quota_refused("daily_limit")
            raise quota_refusal(usage.used, quota.daily_limit, images, usage.resets_at)
        # Likewise the active-job cap: a refused command must cost no download or upload.
        if quota.max_active is not None:
            active = await self.servers.active_jobs(server, r.user_id)
            if active >= quota.max_active:
                self.engine.metrics.quota_refused("active_jobs")
                raise too_many_jobs(active)

        image = await self._fetch_checked(request.image, "image")
        mask = await self._fetch_checked(request.mask, "mask") if request.mask else None
        if mask is None and request.mask_data is not None:
            mask = await self._checked(request.mask_data, "mask", "mask.png")

        # Pillow work is CPU-bound (a large photo takes a good fraction of a second) and
        # memory-hungry: it runs on the image threads, within the process-wide decode budget.
        to_host: list[HostedFile] = []
        prepared = await prepare_init_image_async(image)
        width, height = prepared.size if prepared else image.size
        if prepared is not None:
            to_host.append(HostedFile(f"input{prepared.filename_suffix}", prepared.data,
                                      prepared.content_type))
        if mask is not None:
            mask_png = await prepare_mask_async(mask, (width, height))
            to_host.append(HostedFile("mask.png", mask_png, "image/png"))
        urls = await host(to_host) if to_host else []
        image_url = urls.pop(0) if prepared is not None else request.image.url
        mask_url = urls.pop(0) if mask is not None else None

        payload = build_payload(
            endpoint, request.options,
            image=SourceImage(image_url, width, height),
            mask=SourceImage(mask_url, width, height) if mask_url else None,
            default_model=server.default_model,
            # Outside channels marked NSFW the safety checker is always on; inside, it stays
            # on unless the server's policy lets flagged images through as they are.
            safety_checker=not request.nsfw_channel or server.nsfw_policy == "spoiler",
            safety_checker_type=server.safety_checker_type,
        )
        options = {**request.options.given(), **request.extra,
                   "endpoint": endpoint.name, "image_url": image_url,
                   "image_size": [width, height], "nsfw_channel": request.nsfw_channel,
                   "nsfw_policy": server.nsfw_policy,
                   "upscale_enabled": server.upscale_enabled}
        if mask_url:
            options["mask_url"] = mask_url
        new = NewJob(endpoint=endpoint.name, payload=payload, requester=request.requester,
                     images=int(payload.get("samples", 1)), options=options,
                     parent_track_id=request.parent_track_id)
        return await self._enqueue(new, quota)

    async def start_upscale(self, source: Job, index: int, image_url: str,
                            requester: Requester, *, reply_to: int | None,
                            nsfw_channel: bool) -> Job:
        """Super resolution of one image of a result: a job like any other, one image of
        quota, posted as a reply to ``reply_to`` naming its source."""
        if not self.engine.accepting:
            raise UserFacingError("Remixer is restarting; try again in a minute.")
        if requester.guild_id is None:  # no server: no quota, member limit or channel list
            raise UserFacingError(NO_SERVER)
        server = await self.servers.get(requester.guild_id)
        if not server.upscale_enabled:
            raise UserFacingError("Upscaling is turned off on this server.")
        self.servers.check_channel(server, requester.channel_id)
        quota = await self.servers.quota_rule(server, requester.user_id)
        usage = await self.servers.usage(server, requester.user_id, rule=quota)
        if quota.daily_limit is not None and usage.used + 1 > quota.daily_limit:
            self.engine.metrics.quota_refused("daily_limit")
            raise quota_refusal(usage.used, quota.daily_limit, 1, usage.resets_at)
        payload = build_payload(UPSCALE, GenerationOptions(),
                                image=SourceImage(image_url, 0, 0),
                                default_model=server.default_model)
        options = {"endpoint": UPSCALE.name, "image_url": image_url,
                   "upscale_of": source.track_id, "image_index": index,
                   "reply_to": reply_to, "nsfw_channel": nsfw_channel,
                   "nsfw_policy": server.nsfw_policy, "source_nsfw": source.nsfw}
        new = NewJob(endpoint=UPSCALE.name, payload=payload, requester=requester, images=1,
                     options=options, parent_track_id=source.track_id)
        return await self._enqueue(new, quota)

    async def _enqueue(self, new: NewJob, quota: QuotaRule) -> Job:
        try:
            return await self.engine.enqueue(new, quota=quota)
        except QuotaExceeded as exc:
            self.engine.metrics.quota_refused("daily_limit")
            raise quota_refusal(exc.used, exc.limit, exc.asked, next_reset()) from None
        except TooManyJobs as exc:
            self.engine.metrics.quota_refused("active_jobs")
            raise too_many_jobs(exc.active) from None

    async def _fetch_checked(self, upload: Upload, label: str) -> CheckedImage:
        if upload.size is not None:
            check_declared_size(upload.size, label)
        try:
            # The session connects only to public addresses, each redirect hop re-checked.
            async with self._session.get(upload.url, timeout=DOWNLOAD_TIMEOUT,
                                         max_redirects=MAX_REDIRECTS) as resp:
                if resp.status != 200:
                    raise UserFacingError(f"The {label} could not be downloaded from Discord "
                                          f"(HTTP {resp.status}); try attaching it again.")
                data = await read_capped(resp.content, MAX_UPLOAD_BYTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            if (blocked := blocked_reason(exc)) is not None:
                log.warning("the %s was not downloaded: %s", label, blocked)
                raise UserFacingError(f"The {label}'s link points to an address that is not on "
                                      f"the public internet, so Remixer did not download it; "
                                      f"attach the file itself.") from None
            raise UserFacingError(f"The {label} could not be downloaded from Discord; "
                                  f"try again in a moment.") from None
        return await self._checked(data, label, upload.filename)

    async def _checked(self, data: bytes, label: str, filename: str) -> CheckedImage:
        try:
            # The init image is checked and prepared in one decode.
            return await check_image_async(data, label=label, declared_size=len(data),
                                           prepare=label == "image")
        except ImageRejected:
            raise
        except Exception:
            log.exception("unexpected error checking the %s %s", label, filename)
            raise ImageRejected(f"The {label} is not an image Remixer can read.",
                                label=label) from None


def token_expiry(created_at: float) -> float:
    """Interaction tokens work for 15 minutes from the interaction."""
    return created_at + 15 * 60
