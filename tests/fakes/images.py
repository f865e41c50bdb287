"""Small, deterministic image bytes for tests (PNG and JPEG, made with Pillow)."""

from __future__ import annotations

import hashlib
import io

from PIL import Image

__all__ = ["color_for", "jpeg_bytes", "png_bytes", "png_for"]

RGB = tuple[int, int, int]


def color_for(seed: str) -> RGB:
    """A solid colour derived from ``seed``: the same seed always gives the same colour."""
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    return (digest[0], digest[1], digest[2])


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_bytes(width: int = 64, height: int = 64, color: RGB = (200, 40, 120)) -> bytes:
    """A ``width`` x ``height`` solid-colour RGB PNG."""
    return _encode(Image.new("RGB", (width, height), color), "PNG")


def jpeg_bytes(width: int = 64, height: int = 64, color: RGB = (40, 120, 200)) -> bytes:
    """A ``width`` x ``height`` solid-colour RGB JPEG."""
    return _encode(Image.new("RGB", (width, height), color), "JPEG", quality=90)


def png_for(seed: str, size: int = 64) -> bytes:
    """A ``size`` x ``size`` PNG whose colour is derived from ``seed`` (deterministic)."""
    return png_bytes(size, size, color_for(seed))
