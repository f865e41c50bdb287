"""Downloading a finished job's images from ModelsLab's CDN, at once, with limits.

Output links expire (some plans delete them after 24 hours), so the bytes are fetched as soon
as a job succeeds and re-uploaded to Discord later. A fresh output can answer 404 for a while
before the CDN has it: those answers are retried. No API key is ever sent here.

Every link, whether it came from a webhook, a fetch or the submit's own answer, must be on one
of ModelsLab's output hosts (``OutputHosts``, the MODELSLAB_OUTPUT_HOSTS setting) before
anything is fetched; the session refuses non-public addresses on every connection and hop.
"""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass

import aiohttp
from PIL import Image

from bot.jobs.models import Output
from bot.net import MAX_REDIRECTS, OutputHosts, blocked_reason, read_capped

log = logging.getLogger(__name__)

IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}
_PIL_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


class DownloadError(Exception):
    """An output could not be had; ``str()`` says why in words fit for a member."""


@dataclass(frozen=True, slots=True)
class DownloadPolicy:
    max_bytes: int = 25 * 1024 * 1024
    timeout: float = 60.0
    not_found_window: float = 120.0  # how long a 404 counts as "not there yet"
    first_retry_delay: float = 0.5
    max_retry_delay: float = 8.0
    max_pixels: int = 64_000_000


class OutputDownloader:
    def __init__(self, session: aiohttp.ClientSession,
                 policy: DownloadPolicy | None = None, *,
                 output_hosts: OutputHosts | None = None) -> None:
        self._session = session
        self.policy = policy or DownloadPolicy()
        self.output_hosts = output_hosts or OutputHosts()

    def check_host(self, track_id: str, index: int, url: str) -> None:
        """Refuse, before anything is fetched, a link that is not on ModelsLab's hosts."""
        if not self.output_hosts.allows(url):
            log.warning("output %s of %s not downloaded: %r is not on an output host "
                        "(MODELSLAB_OUTPUT_HOSTS)", index, track_id, url[:200])
            raise DownloadError(f"image {index + 1} is not on one of ModelsLab's output "
                                f"hosts, so it was not downloaded")

    async def download_all(self, track_id: str, urls: tuple[str, ...]) -> list[Output]:
        for index, url in enumerate(urls):  # all checked before any is fetched
            self.check_host(track_id, index, url)
        results = await asyncio.gather(
            *(self.download(track_id, index, url) for index, url in enumerate(urls)))
        return list(results)

    async def download(self, track_id: str, index: int, url: str) -> Output:
        self.check_host(track_id, index, url)
        policy = self.policy
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.not_found_window
        delay = policy.first_retry_delay
        while True:
            try:
                return await self._once(track_id, index, url)
            except _RetryLater as exc:
                if loop.time() + delay > deadline:
                    raise DownloadError(f"image {index + 1} never appeared ({exc})") from None
                log.debug("output %s of %s not ready (%s); retrying in %.1fs",
                          index, track_id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, policy.max_retry_delay)

    async def _once(self, track_id: str, index: int, url: str) -> Output:
        limits = aiohttp.ClientTimeout(total=self.policy.timeout, sock_connect=10)
        try:
            async with self._session.get(url, timeout=limits, allow_redirects=True,
                                         max_redirects=MAX_REDIRECTS) as resp:
                if resp.status in (404, 403) or resp.status >= 500 or resp.status == 429:
                    raise _RetryLater(f"HTTP {resp.status}")
                if resp.status != 200:
                    raise DownloadError(f"image {index + 1} could not be downloaded "
                                        f"(HTTP {resp.status})")
                declared = resp.content_type.lower()
                if declared not in IMAGE_TYPES and declared != "application/octet-stream":
                    raise DownloadError(f"image {index + 1} is not an image ({declared})")
                if (resp.content_length or 0) > self.policy.max_bytes:
                    raise DownloadError(f"image {index + 1} is larger than "
                                        f"{self.policy.max_bytes // 2**20} MiB")
                data = await read_capped(resp.content, self.policy.max_bytes)
        except (aiohttp.ClientError, TimeoutError) as exc:
            if (blocked := blocked_reason(exc)) is not None:
                log.warning("output %s of %s not downloaded: %s", index, track_id, blocked)
                raise DownloadError(f"image {index + 1} is on an address Remixer does not "
                                    f"connect to (not on the public internet)") from None
            raise _RetryLater(type(exc).__name__) from None
        if len(data) > self.policy.max_bytes:
            raise DownloadError(f"image {index + 1} is larger than "
                                f"{self.policy.max_bytes // 2**20} MiB")
        content_type = await asyncio.to_thread(self._verify, data, index)
        extension = IMAGE_TYPES[content_type]
        return Output(index=index, filename=f"remix_{track_id[:8]}_{index + 1}.{extension}",
                      content_type=content_type, data=data, source_url=url)

    def _verify(self, data: bytes, index: int) -> str:
        """The real type of the bytes, after Pillow has checked they are a whole image."""
        try:
            with Image.open(io.BytesIO(data)) as image:
                kind = _PIL_TYPES.get(image.format or "")
                if kind is None:
                    raise DownloadError(f"image {index + 1} is in an unsupported format")
                if image.width * image.height > self.policy.max_pixels:
                    raise DownloadError(f"image {index + 1} is too large to post")
                image.verify()
        except DownloadError:
            raise
        except Exception:
            raise DownloadError(f"image {index + 1} is damaged") from None
        return kind


class _RetryLater(Exception):
    pass
