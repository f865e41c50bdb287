"""Checking members' attachments before anything is sent to ModelsLab, and preparing them.

Every refusal is an :class:`ImageRejected` whose ``str()`` is one sentence a member can act
on, naming the attachment ("The mask is not an image Remixer can read: ...").

The work here is CPU-bound (a full decode of up to :data:`MAX_PIXELS` pixels): call these
functions through their ``*_async`` forms (see below), never on the event loop.

Decompression bombs: the file's declared size is checked against :data:`MAX_SIDE` and
:data:`MAX_PIXELS` right after Pillow has read the header and before any pixel is decoded.
That check does not depend on Pillow's process-wide ``Image.MAX_IMAGE_PIXELS`` (left alone,
because other modules read images of other sizes); whatever Pillow raises or warns about a
bomb is turned into the same refusal.

Only PNG, JPEG and WebP are ever handed to Pillow's decoders (``formats=``); other files are
recognised by their first bytes only so the refusal can say what they are.

Memory and CPU: a small file can declare a huge picture (a 170 KB flat PNG is 40 megapixels,
160 MB decoded). The ``*_async`` functions are the ones the bot calls: they run the work on a
small pool of its own (not the event loop's default executor, which aiohttp's resolver uses
for DNS lookups) and under a process-wide budget of :data:`DECODE_BUDGET_PIXELS` being decoded
at once; beyond it work waits its turn. The init image is checked and prepared in one decode,
reduced while decoding where the format allows (JPEG) and reduced right after otherwise, with
no full-size copies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import io
import logging
import math
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL import Image, ImageCms, UnidentifiedImageError

from bot.errors import UserFacingError

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # stated limit per attachment (the README quotes it)
MAX_PIXELS = 40_000_000  # larger images are refused (decompression bombs too)
MAX_SIDE = 8192
MIN_SIDE = 64

ACCEPTED = "PNG, JPEG or WebP"
CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_PILLOW_FORMATS = ("PNG", "JPEG", "WEBP")
# Modes sent to ModelsLab untouched (with PNG or JPEG bytes); the rest are converted.
_SENDABLE_MODES = frozenset({"RGB", "RGBA", "L"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_ORIENTATION_TAG = 0x0112
# Same table as PIL.ImageOps.exif_transpose, applied after downscaling (cheaper).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_MASK_ASPECT_TOLERANCE = 0.02
_THRESHOLD = 128
_JPEG_QUALITY = 95
INIT_IMAGE_MAX_SIDE = 2048  # the init image is scaled down to this before it is sent
# Pixels being decoded at once, process-wide: one image of the largest accepted size
# (MAX_PIXELS) at a time, or several smaller ones. A decode costs 1 to 4 bytes a pixel.
DECODE_BUDGET_PIXELS = 48_000_000
IMAGE_THREADS = 2  # Pillow work runs on this many threads of its own
# Modes Image.reduce averages correctly (a palette index can't be averaged).
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA"})
_STRIP_ROWS = 512  # a big image is reduced this many source rows at a time
_TRIM_AFTER_PIXELS = 4_000_000  # after work this big, freed memory is handed back at once


class ImageRejected(UserFacingError):
    """An attachment that can't be used; ``str()`` is the member-facing sentence."""

    def __init__(self, message: str, *, label: str) -> None:
        super().__init__(message)
        self.label = label


@dataclass(frozen=True, slots=True)
class CheckedImage:
    """An attachment that decoded completely and is within every limit.

    ``width`` and ``height`` are the stored pixel size; ``orientation`` is the EXIF
    orientation (1 = upright; 5-8 swap the sides when shown, see :attr:`display_size`).
    """

    data: bytes  # the original bytes
    format: str  # "PNG" | "JPEG" | "WEBP"
    width: int
    height: int
    mode: str  # Pillow mode of the decoded image
    has_alpha: bool
    content_type: str  # image/png, image/jpeg, image/webp
    orientation: int = 1
    # What prepare_init_image(max_side=prepared_for) returns, made in the same decode as the
    # check (check_image(prepare=True)); prepared_for is None when not made.
    prepared: PreparedImage | None = None
    prepared_for: int | None = None

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    @property
    def display_size(self) -> tuple[int, int]:
        """The size as viewers show it, after the EXIF orientation."""
        if self.orientation in (5, 6, 7, 8):
            return (self.height, self.width)
        return (self.width, self.height)

    @property
    def filename_suffix(self) -> str:
        return {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}[self.format]


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """New bytes to send instead of the original (see :func:`prepare_init_image`)."""

    data: bytes
    content_type: str  # image/png or image/jpeg
    width: int
    height: int
    filename_suffix: str  # ".png" or ".jpg"

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


# --- checking -------------------------------------------------------------------------------

def check_declared_size(size: int, label: str) -> None:
    """Refuse an attachment by the size Discord reports, before downloading it."""
    if size <= 0:
        raise ImageRejected(_empty(label), label=label)
    if size > MAX_UPLOAD_BYTES:
        raise ImageRejected(_too_many_bytes(label, size), label=label)


def check_image(data: bytes, *, label: str = "image", declared_size: int | None = None,
                prepare: bool = False,
                max_side: int = INIT_IMAGE_MAX_SIDE) -> CheckedImage:
    """Decode ``data`` completely and check it against every limit, or raise ImageRejected.

    With ``prepare``, the same decode also makes what :func:`prepare_init_image` would return
    for ``max_side`` (kept in ``prepared``): the image is decoded once instead of twice, and a
    JPEG is decoded at reduced scale."""
    _check_bytes(data, label, declared_size)

    def examine(image: Image.Image) -> CheckedImage:
        fmt = _examinable_format(image, label)
        # Read before any draft() changes them: the stored size and mode.
        width, height, mode = image.width, image.height, image.mode
        if fmt != "JPEG" or not prepare:
            image.load()  # only a JPEG can be decoded at reduced scale (draft)
        orientation = _orientation(image)  # a JPEG's EXIF is in its header
        checked = CheckedImage(
            data=data, format=fmt, width=width, height=height, mode=mode,
            has_alpha=_has_alpha(image), content_type=CONTENT_TYPES[fmt],
            orientation=orientation)
        if not prepare:
            image.load()
            return checked
        if _sendable_as_is(checked, max_side):
            image.load()
            prepared = None
        else:
            prepared = _prepare_opened(image, checked, max_side)
        return _with_prepared(checked, prepared, max_side)

    return _decode(data, label, examine)


def _check_bytes(data: bytes, label: str, declared_size: int | None) -> None:
    """The checks made on the bytes alone, before Pillow sees them."""
    if declared_size is not None:
        check_declared_size(declared_size, label)
    if not data:
        raise ImageRejected(_empty(label), label=label)
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageRejected(_too_many_bytes(label, len(data)), label=label)
    sniffed = _sniff(data)
    if sniffed not in _PILLOW_FORMATS:
        raise ImageRejected(_unreadable(label, _describe_foreign(sniffed)), label=label)


def _examinable_format(image: Image.Image, label: str) -> str:
    fmt = "JPEG" if image.format == "MPO" else image.format
    if fmt not in _PILLOW_FORMATS:  # formats= makes this unreachable; kept as a guard
        raise ImageRejected(_unreadable(label, "it is not a PNG, JPEG or WebP file"),
                            label=label)
    # A camera's MPO (a JPEG with extra views appended) is a still photo: frame 0 is used.
    if image.format != "MPO" and (getattr(image, "is_animated", False)
                                  or getattr(image, "n_frames", 1) > 1):
        raise ImageRejected(
            f"The {label} is animated: animated images can't be used; "
            f"send a still {ACCEPTED}.", label=label)
    return fmt


def _with_prepared(checked: CheckedImage, prepared: PreparedImage | None,
                   max_side: int) -> CheckedImage:
    return CheckedImage(
        data=checked.data, format=checked.format, width=checked.width, height=checked.height,
        mode=checked.mode, has_alpha=checked.has_alpha, content_type=checked.content_type,
        orientation=checked.orientation, prepared=prepared, prepared_for=max_side)


def declared_pixels(data: bytes, *, label: str = "image",
                    declared_size: int | None = None) -> int:
    """The pixel count the file's header declares, after the same refusals as
    :func:`check_image` makes before decoding (cheap: no pixel is decoded)."""
    _check_bytes(data, label, declared_size)
    return _decode(data, label, lambda image: image.width * image.height)


# --- preparing the init image -----------------------------------------------------------------

def prepare_init_image(image: CheckedImage, *,
                       max_side: int = INIT_IMAGE_MAX_SIDE) -> PreparedImage | None:
    """New bytes for ModelsLab, or None when ``image.data`` can be sent as it is.

    None when the original is PNG or JPEG, in mode RGB, RGBA or L, no side over ``max_side``
    and no EXIF rotation pending; its size is then ``image.size``.

    Otherwise the image is converted to RGB, or RGBA when it has real transparency (a fully
    opaque alpha channel is dropped), with CMYK turned into sRGB through its ICC profile when
    it has one, 16-bit grey scaled to 8 bits and palettes expanded; the EXIF orientation is
    applied (as ``ImageOps.exif_transpose`` does) and the image is scaled down with Lanczos
    to fit ``max_side`` keeping its proportions (a large image is first reduced by a whole
    factor, by averaging). It is encoded as JPEG (quality 95) when it
    has no alpha and the original was already lossy (JPEG or lossy WebP): a photo as PNG
    would be several times larger for no gain. Everything else becomes PNG. Metadata is not
    carried over, except an RGB colour profile.
    """
    if max_side < 1:
        raise ValueError("max_side must be positive")
    if image.prepared_for == max_side:
        return image.prepared
    if _sendable_as_is(image, max_side):
        return None
    return _decode(image.data, "image",
                   lambda opened: _prepare_opened(opened, image, max_side))


def _sendable_as_is(image: CheckedImage, max_side: int) -> bool:
    return (image.format in ("PNG", "JPEG") and image.mode in _SENDABLE_MODES
            and max(image.width, image.height) <= max_side and image.orientation == 1)


def _prepare_opened(opened: Image.Image, image: CheckedImage, max_side: int) -> PreparedImage:
    target = _fit(image.width, image.height, max_side)
    if opened.format in ("JPEG", "MPO") and target != opened.size:
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers the target.
        opened.draft(None, target)
    opened.load()
    icc = opened.info.get("icc_profile")
    picture = _to_rgb_or_rgba(opened, target)
    if picture.size != target:
        picture = picture.resize(target, Image.Resampling.LANCZOS)
    method = _TRANSPOSE.get(image.orientation)
    if method is not None:
        picture = picture.transpose(method)
    lossy = image.format == "JPEG" or (image.format == "WEBP" and _webp_is_lossy(image.data))
    options: dict[str, object] = {}
    if isinstance(icc, bytes) and icc[16:20] == b"RGB ":  # not a grey or CMYK profile
        options["icc_profile"] = icc
    if picture.mode == "RGB" and lossy:
        data = _encode(picture, "JPEG", quality=_JPEG_QUALITY, **options)
        return PreparedImage(data, "image/jpeg", picture.width, picture.height, ".jpg")
    data = _encode(picture, "PNG", **options)
    return PreparedImage(data, "image/png", picture.width, picture.height, ".png")


# --- preparing the mask -------------------------------------------------------------------

def prepare_mask(mask: CheckedImage, image_size: tuple[int, int], *,
                 label: str = "mask") -> bytes:
    """ModelsLab's inpainting mask as PNG bytes: mode L, only 0 (keep) and 255 (repaint).

    ``image_size`` is the size of the init image as it will be sent (the PreparedImage's size,
    or ``CheckedImage.size`` when it is sent as it is); the mask is scaled to exactly that.

    A mask whose alpha channel is not uniform follows the transparent-PNG convention:
    transparent (alpha < 128) means "repaint", opaque means "keep". Any other mask is read
    by luminance: light (>= 128) means "repaint". The mask is scaled smoothly and then
    thresholded at 128, so edges stay where they were drawn and the result is strictly
    black and white. An all-white mask (repaint everything) is allowed; one that marks
    nothing, or whose proportions differ from the image's by more than 2%, is refused.
    """
    width, height = image_size
    if width < 1 or height < 1:
        raise ValueError("image_size must be positive")
    mask_width, mask_height = mask.display_size
    if not _same_shape((mask_width, mask_height), (width, height)):
        raise ImageRejected(
            f"The {label}'s shape ({mask_width}×{mask_height}) does not match the image "
            f"({width}×{height}); make the mask from the same image so both have the same "
            "proportions.", label=label)

    def convert(opened: Image.Image) -> bytes:
        opened.load()
        # The size to reach, as the mask is stored (before its EXIF rotation).
        stored = (height, width) if mask.orientation in (5, 6, 7, 8) else (width, height)
        paint = _paint_map(opened, stored)
        method = _TRANSPOSE.get(mask.orientation)
        if method is not None:
            paint = paint.transpose(method)
        if paint.size != (width, height):
            paint = paint.resize((width, height), Image.Resampling.BILINEAR)
        binary = paint.point(lambda value: 255 if value >= _THRESHOLD else 0)
        if binary.getextrema()[1] == 0:
            raise ImageRejected(
                f"The {label} marks nothing to repaint; paint the area to change in white.",
                label=label)
        return _encode(binary, "PNG")

    return _decode(mask.data, label, convert)


# --- running the work: its own threads, a process-wide pixel budget ------------------------

class PixelBudget:
    """A first-come first-served semaphore weighted by pixels: work asking for more than is
    free waits (and so does everything behind it); work bigger than the whole budget waits
    for all of it."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._free = total
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def free(self) -> int:
        return self._free

    async def acquire(self, pixels: int) -> int:
        """Wait for ``pixels`` (capped at the whole budget); returns what to release."""
        weight = min(max(1, pixels), self.total)
        if not self._waiters and self._free >= weight:
            self._free -= weight
            return weight
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((weight, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(weight)  # granted just as the caller was cancelled
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove((weight, waiter))
                self._wake()
            raise
        return weight

    def release(self, weight: int) -> None:
        self._free += weight
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self._free:
            weight, waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self._free -= weight
            waiter.set_result(None)


DECODE_BUDGET = PixelBudget(DECODE_BUDGET_PIXELS)
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_libc: Any = None


def _image_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool, _libc
    with _pool_lock:
        if _pool is None:
            _libc = _load_libc()
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=IMAGE_THREADS, thread_name_prefix="remixer-images")
        return _pool


def _load_libc() -> Any:
    """glibc, told to give big blocks (Pillow's image memory) back to the system when freed
    instead of keeping them in its arenas; None elsewhere."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD: 1 MB, fixed
        libc.malloc_trim  # noqa: B018  # present in glibc only
    except (OSError, AttributeError):
        return None
    return libc


def _then_trim(work: Callable[[], _T], trim: bool) -> _T:
    try:
        return work()
    finally:
        if trim and _libc is not None:
            _libc.malloc_trim(0)  # hand the decode's freed memory back at once


async def run_image_work(pixels: int, work: Callable[[], _T]) -> _T:
    """Run ``work`` on the image threads once ``pixels`` of the decode budget are free.

    The budget is held until the work has really ended, even if the caller is cancelled."""
    weight = await DECODE_BUDGET.acquire(pixels) if pixels > 0 else 0
    loop = asyncio.get_running_loop()

    def give_back(_: concurrent.futures.Future[_T]) -> None:
        if weight:
            with contextlib.suppress(RuntimeError):  # the loop is gone: so is the process
                loop.call_soon_threadsafe(DECODE_BUDGET.release, weight)

    try:
        future = _image_pool().submit(_then_trim, work, weight >= _TRIM_AFTER_PIXELS)
    except BaseException:
        if weight:
            DECODE_BUDGET.release(weight)
        raise
    future.add_done_callback(give_back)
    return await asyncio.wrap_future(future)


async def check_image_async(data: bytes, *, label: str = "image",
                            declared_size: int | None = None,
                            prepare: bool = False) -> CheckedImage:
    """:func:`check_image` on the image threads, within the decode budget."""
    pixels = await run_image_work(0, lambda: declared_pixels(data, label=label,
                                                             declared_size=declared_size))
    return await run_image_work(pixels, lambda: check_image(
        data, label=label, declared_size=declared_size, prepare=prepare))


async def prepare_init_image_async(image: CheckedImage, *,
                                   max_side: int = INIT_IMAGE_MAX_SIDE) -> PreparedImage | None:
    """:func:`prepare_init_image` on the image threads, within the decode budget (at once
    when the check already made it)."""
    if image.prepared_for == max_side or _sendable_as_is(image, max_side):
        return prepare_init_image(image, max_side=max_side)
    return await run_image_work(image.width * image.height,
                                lambda: prepare_init_image(image, max_side=max_side))


async def prepare_mask_async(mask: CheckedImage, image_size: tuple[int, int], *,
                             label: str = "mask") -> bytes:
    """:func:`prepare_mask` on the image threads, within the decode budget."""
    pixels = mask.width * mask.height + image_size[0] * image_size[1]
    return await run_image_work(pixels, lambda: prepare_mask(mask, image_size, label=label))


# --- internals ------------------------------------------------------------------------------

_T = TypeVar("_T")


def _decode(data: bytes, label: str, work: Callable[[Image.Image], _T]) -> _T:
    """Open ``data`` as PNG, JPEG or WebP, check its size before any pixel is decoded, and
    run ``work``; every Pillow failure becomes an ImageRejected naming ``label``."""
    try:
        with Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS) as opened:
            _check_dimensions(opened.width, opened.height, label)
            return work(opened)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(
            f"The {label} is too large: it declares more than {_megapixels(MAX_PIXELS)} "
            f"megapixels; Remixer takes at most {_megapixels(MAX_PIXELS)} megapixels and "
            f"{MAX_SIDE} pixels on a side.", label=label) from None
    except UnidentifiedImageError:
        raise ImageRejected(_damaged(label), label=label) from None
    except Exception as exc:  # a damaged file can make a decoder raise almost anything
        log.debug("could not decode the %s: %r", label, exc)
        raise ImageRejected(_damaged(label), label=label) from None


def _check_dimensions(width: int, height: int, label: str) -> None:
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise ImageRejected(
            f"The {label} is too large ({width}×{height}, "
            f"{width * height / 1_000_000:.1f} megapixels); Remixer takes at most "
            f"{_megapixels(MAX_PIXELS)} megapixels and {MAX_SIDE} pixels on a side. "
            "Scale it down and send it again.", label=label)
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageRejected(
            f"The {label} is too small to work with ({width}×{height}); each side must be "
            f"at least {MIN_SIDE} pixels.", label=label)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # unreadable EXIF is ignored, as viewers do
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _gray8(image: Image.Image) -> Image.Image:
    """An 8-bit grey (L) image from any mode, 16-bit grey scaled rather than clipped."""
    if image.mode in _WIDE_GRAY_MODES:
        return image.convert("I").point(lambda value: value / 256).convert("L")
    if image.mode == "CMYK":
        return _cmyk_to_rgb(image).convert("L")
    return image.convert("L")


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    icc = image.info.get("icc_profile")
    if isinstance(icc, bytes) and icc:
        try:
            converted = ImageCms.profileToProfile(
                image, ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB"),
                outputMode="RGB")
        except Exception as exc:  # a broken profile: fall back to the plain formula
            log.debug("CMYK profile not usable: %r", exc)
        else:
            if converted is not None:
                return converted
    return image.convert("RGB")


def _to_rgb_or_rgba(image: Image.Image,
                    target: tuple[int, int] | None = None) -> Image.Image:
    """RGB, or RGBA when some pixel is not fully opaque; with ``target``, first reduced by
    the largest whole factor that still covers it, with no full-size copy made."""
    if image.mode in _REDUCIBLE_MODES and "transparency" not in image.info:
        # The alpha is judged on the full image (counted, not copied), then reduced.
        opaque = image.mode not in _ALPHA_MODES or _alpha_is_opaque(image)
        small = _reduced(image, target) if target else image
        if small.mode in _ALPHA_MODES:
            return small.convert("RGB" if opaque else "RGBA")
        return small if small.mode == "RGB" else small.convert("RGB")
    if image.mode == "CMYK":
        picture = _cmyk_to_rgb(image)
    elif image.mode in _WIDE_GRAY_MODES:
        picture = _gray8(image).convert("RGB")
    elif not _has_alpha(image):
        picture = image.convert("RGB")
    else:
        rgba = image.convert("RGBA")
        picture = rgba.convert("RGB") if _alpha_is_opaque(rgba) else rgba
    return _reduced(picture, target) if target else picture


def _alpha_is_opaque(image: Image.Image) -> bool:
    """Whether every pixel of an LA or RGBA image is fully opaque, from the histogram (no
    copy of the alpha channel is made)."""
    band = image.getbands().index("A")
    counts = image.histogram()[256 * band:256 * band + 256]
    return not any(counts[:255])


def _reduced(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """``image`` reduced (by box averaging) by the largest whole factor that still leaves it
    at least ``target``; a strip at a time, so no full-size copy is made."""
    factor = min(image.width // target[0], image.height // target[1])
    if factor < 2 or image.mode not in _REDUCIBLE_MODES:
        return image
    width, height = image.size
    out = Image.new(image.mode, (-(-width // factor), -(-height // factor)))
    rows = max(1, _STRIP_ROWS // factor) * factor
    for top in range(0, height, rows):
        strip = image.crop((0, top, width, min(height, top + rows)))
        out.paste(strip.reduce(factor), (0, top // factor))
        del strip
    return out


def _paint_map(image: Image.Image, target: tuple[int, int] | None = None) -> Image.Image:
    """An L image where 255 means "repaint": inverted alpha if the alpha varies, else light.

    With ``target``, a large image is mapped a strip at a time and each strip reduced (by
    averaging) as far as still covers ``target``: no full-size copy is made."""
    alpha_varies = _alpha_varies(image)

    def paint(part: Image.Image) -> Image.Image:
        if alpha_varies:
            alpha = _alpha_channel(part)
            assert alpha is not None
            return alpha.point(lambda value: 255 - value)
        if part.mode in _ALPHA_MODES or (part.mode == "P" and "transparency" in part.info):
            part = part.convert("RGBA").convert("RGB")
        return _gray8(part)

    factor = min(image.width // target[0], image.height // target[1]) if target else 1
    if factor < 2:
        return paint(image)
    width, height = image.size
    out = Image.new("L", (-(-width // factor), -(-height // factor)))
    rows = max(1, _STRIP_ROWS // factor) * factor
    for top in range(0, height, rows):
        out.paste(paint(image.crop((0, top, width, min(height, top + rows)))).reduce(factor),
                  (0, top // factor))
    return out


def _alpha_varies(image: Image.Image) -> bool:
    """Whether the image has an alpha channel that is not one value throughout (counted
    from the histogram for LA and RGBA, without copying the channel)."""
    if image.mode in ("LA", "RGBA"):
        band = image.getbands().index("A")
        counts = image.histogram()[256 * band:256 * band + 256]
        return sum(1 for count in counts if count) > 1
    alpha = _alpha_channel(image)
    if alpha is None:
        return False
    low, high = alpha.getextrema()
    return low != high


def _alpha_channel(image: Image.Image) -> Image.Image | None:
    if image.mode in _ALPHA_MODES:
        return image.getchannel("A")
    if "transparency" in image.info and image.mode in ("P", "L", "RGB"):
        return image.convert("RGBA").getchannel("A")
    return None


def _fit(width: int, height: int, max_side: int) -> tuple[int, int]:
    longest = max(width, height)
    if longest <= max_side:
        return (width, height)
    scale = max_side / longest
    return (max(1, round(width * scale)), max(1, round(height * scale)))


def _same_shape(mask: tuple[int, int], image: tuple[int, int]) -> bool:
    """Proportions within 2%, or the image size is the mask's shape rounded to whole pixels
    (a thin image scaled down can't keep its proportions any closer)."""
    (mw, mh), (iw, ih) = mask, image
    if abs((mw * ih) / (mh * iw) - 1) <= _MASK_ASPECT_TOLERANCE:
        return True
    return abs(mw * ih / mh - iw) <= 1 or abs(mh * iw / mw - ih) <= 1


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _webp_is_lossy(data: bytes) -> bool:
    """Whether a still WebP holds a lossy (VP8) picture rather than a lossless (VP8L) one."""
    offset = 12
    while offset + 8 <= len(data):
        fourcc = data[offset:offset + 4]
        if fourcc == b"VP8 ":
            return True
        if fourcc == b"VP8L":
            return False
        (length,) = struct.unpack_from("<I", data, offset + 4)
        offset += 8 + length + (length & 1)
    return False


# --- recognising files, and the words for refusals ------------------------------------------

def _sniff(data: bytes) -> str:
    """What the first bytes say the file is: a Pillow format name or a description."""
    head = data[:64]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"heim", b"heis"):
            return "HEIC"
        return "video"
    if head.startswith(b"%PDF"):
        return "PDF"
    if head.startswith(b"8BPS"):
        return "PSD"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "ICO"
    text = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<"):
        if b"<svg" in text:
            return "SVG"
        if b"<html" in text or text.startswith(b"<!doctype html"):
            return "HTML"
    return "unknown"


def _describe_foreign(kind: str) -> str:
    return {
        "GIF": "it is a GIF file",
        "BMP": "it is a BMP file",
        "TIFF": "it is a TIFF file",
        "AVIF": "it is an AVIF file",
        "HEIC": "it is a HEIC photo",
        "video": "it is a video, not a picture",
        "PDF": "it is a PDF document",
        "PSD": "it is a Photoshop document",
        "ICO": "it is an icon file",
        "SVG": "it is an SVG drawing",
        "HTML": "it is a web page, not an image",
    }.get(kind, "it is not a PNG, JPEG or WebP file")


def _unreadable(label: str, reason: str) -> str:
    return f"The {label} is not an image Remixer can read: {reason}; send a {ACCEPTED} image."


def _damaged(label: str) -> str:
    return (f"The {label} is not an image Remixer can read: the file is damaged or incomplete; "
            "save it again and re-attach it.")


def _empty(label: str) -> str:
    return f"The {label} is empty (0 bytes); attach the file again."


def _too_many_bytes(label: str, size: int) -> str:
    shown = math.ceil(size * 10 / (1024 * 1024)) / 10
    return (f"The {label} is {shown:.1f} MB, over Remixer's limit of "
            f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MB per attachment; send a smaller file.")


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1_000_000:g}"
