"""Small network helpers used wherever the bot reads from or trusts the network."""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp
from yarl import URL


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port), or None when the URL can't be read, or when aiohttp (yarl),
    which would fetch it, reads it differently from the standard library (a backslash or
    odd unicode in the host, a port out of range): it would be fetched from elsewhere."""
    try:
        parts = urlsplit(url)
        port = parts.port
        fetched = URL(url)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    found = (scheme, (parts.hostname or "").lower(), port or (443 if scheme == "https" else 80))
    if (fetched.scheme, (fetched.raw_host or "").lower(), fetched.port) != found:
        return None
    return found


async def read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, or its first ``limit + 1`` bytes when it is longer (so the caller can
    tell "too large"). One ``read(n)`` returns only what has arrived so far."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await stream.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
