"""Output downloads as they really are: megabytes, arriving in many pieces."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from bot.jobs.downloads import DownloadError, DownloadPolicy, OutputDownloader
from tests.support.jobs import LOOPBACK_OUTPUTS

pytestmark = pytest.mark.asyncio


def noise_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, "PNG")
    return buf.getvalue()


async def test_a_large_output_is_downloaded_whole(fake, http):
    data = noise_png(1024)  # about 3 MB: it reaches the bot in many pieces
    url = fake.cdn_put("big.png", data)
    downloader = OutputDownloader(http, output_hosts=LOOPBACK_OUTPUTS)
    output = await downloader.download("track-id-1234", 0, url)
    assert output.data == data and output.content_type == "image/png"


async def test_an_output_over_the_cap_is_refused(fake, http):
    url = fake.cdn_put("big.png", noise_png(1024))
    downloader = OutputDownloader(http, DownloadPolicy(max_bytes=1024 * 1024),
                                  output_hosts=LOOPBACK_OUTPUTS)
    with pytest.raises(DownloadError, match="larger than 1 MiB"):
        await downloader.download("track-id-1234", 0, url)
