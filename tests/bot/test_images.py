"""Attachments as members send them: what is accepted, refused in words, and how it is prepared."""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import zlib
from collections.abc import Callable

import pytest
from PIL import Image, ImageDraw, ImageFile, ImageOps

from bot import images
from bot.errors import UserFacingError
from bot.images import (
    MAX_PIXELS,
    MAX_SIDE,
    MAX_UPLOAD_BYTES,
    CheckedImage,
    ImageRejected,
    PixelBudget,
    PreparedImage,
    check_declared_size,
    check_image,
    check_image_async,
    prepare_init_image,
    prepare_init_image_async,
    prepare_mask,
)

# --- making images in memory ------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def quadrants(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """Four solid colours, so any rotation or flip is visible."""
    width, height = size
    image = Image.new("RGB", size, (255, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rectangle((width // 2, 0, width, height // 2), fill=(0, 255, 0))
    draw.rectangle((0, height // 2, width // 2, height), fill=(0, 0, 255))
    draw.rectangle((width // 2, height // 2, width, height), fill=(255, 255, 0))
    return image


def with_orientation(image: Image.Image, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, fmt, exif=exif.tobytes())


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring ``width`` x ``height`` with a few bytes of pixels: a cheap bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + png_chunk(b"IEND", b""))


def sixteen_bit_png() -> bytes:
    image = Image.new("I;16", (64, 64), 40000)
    return encode(image, "PNG")


def palette(transparent: bool) -> bytes:
    image = Image.new("P", (64, 64), 1)
    image.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    ImageDraw.Draw(image).rectangle((0, 0, 31, 63), fill=0)
    return encode(image, "PNG", **({"transparency": 0} if transparent else {}))


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (64, 64), colour) for colour in ("red", "blue", "green")]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)


def mpo() -> bytes:
    views = [Image.new("RGB", (64, 64), colour) for colour in ("red", "blue")]
    return encode(views[0], "MPO", save_all=True, append_images=views[1:])


def rgba_half_transparent(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """Left half transparent, right half opaque black."""
    image = Image.new("RGBA", size, (0, 0, 0, 255))
    ImageDraw.Draw(image).rectangle((0, 0, size[0] // 2 - 1, size[1]), fill=(0, 0, 0, 0))
    return image


def left_white(size: tuple[int, int] = (64, 64), mode: str = "L") -> Image.Image:
    image = Image.new(mode, size, 0)
    ImageDraw.Draw(image).rectangle((0, 0, size[0] // 2 - 1, size[1]), fill="white")
    return image


# --- accepted: every format and mode a member may send ---------------------------------------

ACCEPTED: list[tuple[str, Callable[[], bytes], str, str, bool]] = [
    # id, bytes, format, mode, has_alpha
    ("rgb-png", lambda: encode(Image.new("RGB", (64, 64), "red"), "PNG"), "PNG", "RGB", False),
    ("rgba-png", lambda: encode(rgba_half_transparent(), "PNG"), "PNG", "RGBA", True),
    ("l-png", lambda: encode(Image.new("L", (64, 64), 90), "PNG"), "PNG", "L", False),
    ("la-png", lambda: encode(Image.new("LA", (64, 64), (90, 10)), "PNG"), "PNG", "LA", True),
    ("p-png", lambda: palette(False), "PNG", "P", False),
    ("p-transparent-png", lambda: palette(True), "PNG", "P", True),
    ("rgb-trns-png", lambda: encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG",
                                    transparency=(1, 2, 3)), "PNG", "RGB", True),
    ("16bit-png", sixteen_bit_png, "PNG", "I;16", False),
    ("1bit-png", lambda: encode(left_white(mode="1"), "PNG"), "PNG", "1", False),
    ("rgb-jpeg", lambda: encode(Image.new("RGB", (64, 64), "red"), "JPEG"), "JPEG", "RGB",
     False),
    ("l-jpeg", lambda: encode(Image.new("L", (64, 64), 90), "JPEG"), "JPEG", "L", False),
    ("cmyk-jpeg", lambda: encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG"), "JPEG",
     "CMYK", False),
    ("progressive-jpeg", lambda: encode(quadrants(), "JPEG", progressive=True), "JPEG", "RGB",
     False),
    ("mpo-camera-jpeg", mpo, "JPEG", "RGB", False),
    ("lossy-webp", lambda: encode(quadrants(), "WEBP", quality=80), "WEBP", "RGB", False),
    ("lossless-rgba-webp", lambda: encode(rgba_half_transparent(), "WEBP", lossless=True),
     "WEBP", "RGBA", True),
    ("one-frame-apng", lambda: encode(Image.new("RGB", (64, 64), "red"), "PNG", save_all=True),
     "PNG", "RGB", False),
    ("thin-64x8192", lambda: encode(Image.new("L", (64, MAX_SIDE), 10), "PNG"), "PNG", "L",
     False),
    ("exactly-max-pixels-side", lambda: png_ok(MAX_SIDE, 64), "PNG", "L", False),
]


def png_ok(width: int, height: int) -> bytes:
    return encode(Image.new("L", (width, height), 10), "PNG")


@pytest.mark.parametrize(("data", "fmt", "mode", "has_alpha"),
                         [pytest.param(*case[1:], id=case[0]) for case in ACCEPTED])
def test_accepted(data: Callable[[], bytes], fmt: str, mode: str, has_alpha: bool) -> None:
    raw = data()
    checked = check_image(raw, label="image", declared_size=len(raw))
    assert checked.data == raw
    assert (checked.format, checked.mode, checked.has_alpha) == (fmt, mode, has_alpha)
    assert checked.content_type == {"PNG": "image/png", "JPEG": "image/jpeg",
                                    "WEBP": "image/webp"}[fmt]
    assert checked.size == decode(raw).size
    assert checked.orientation == 1


def test_exif_orientation_is_recorded() -> None:
    checked = check_image(with_orientation(quadrants((96, 64)), "JPEG", 6))
    assert checked.size == (96, 64)
    assert checked.orientation == 6
    assert checked.display_size == (64, 96)


# --- refused, in words that name the attachment ------------------------------------------------

def truncated(fmt: str) -> bytes:
    noise = Image.effect_noise((128, 128), 64).convert("RGB")
    data = encode(noise, fmt)
    return data[: len(data) // 2]


def corrupt_png() -> bytes:
    data = bytearray(encode(Image.effect_noise((64, 64), 64), "PNG"))
    data[60:80] = b"\x00" * 20  # inside IDAT: the CRC no longer matches
    return bytes(data)


REFUSED: list[tuple[str, Callable[[], bytes], list[str]]] = [
    # id, bytes, words the refusal must contain
    ("random-bytes", lambda: bytes(range(256)) * 8, ["not an image Remixer can read",
                                                     "PNG, JPEG or WebP"]),
    ("empty", lambda: b"", ["empty"]),
    ("truncated-png", lambda: truncated("PNG"), ["damaged or incomplete"]),
    ("truncated-jpeg", lambda: truncated("JPEG"), ["damaged or incomplete"]),
    ("corrupt-png", corrupt_png, ["damaged or incomplete"]),
    ("png-signature-only", lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
     ["damaged or incomplete"]),
    ("jpeg-magic-garbage", lambda: b"\xff\xd8\xff\xe0" + bytes(range(200)),
     ["damaged or incomplete"]),
    ("gif", lambda: encode(Image.new("RGB", (64, 64), "red"), "GIF"), ["GIF", "PNG, JPEG or WebP"]),
    ("bmp", lambda: encode(Image.new("RGB", (64, 64), "red"), "BMP"), ["BMP", "PNG, JPEG or WebP"]),
    ("tiff", lambda: encode(Image.new("RGB", (64, 64), "red"), "TIFF"),
     ["TIFF", "PNG, JPEG or WebP"]),
    ("svg", lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>',
     ["SVG", "PNG, JPEG or WebP"]),
    ("html-page", lambda: b"<!DOCTYPE html><html><body>Not found</body></html>",
     ["web page", "PNG, JPEG or WebP"]),
    ("heic", lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
     ["HEIC", "PNG, JPEG or WebP"]),
    ("animated-png", lambda: animated("PNG"), ["animated images can't be used",
                                              "send a still PNG, JPEG or WebP"]),
    ("animated-webp", lambda: animated("WEBP"), ["animated images can't be used"]),
    ("bomb-50000x50000", lambda: png_header_only(50_000, 50_000), ["too large"]),
    ("7000x7000-over-max-pixels", lambda: png_header_only(7000, 7000),
     ["too large", "7000×7000", "40 megapixels"]),
    ("side-over-max", lambda: png_header_only(MAX_SIDE + 1, 100), ["too large", "8192"]),
    ("too-small", lambda: encode(Image.new("RGB", (63, 200), "red"), "PNG"),
     ["too small to work with", "63×200", "64"]),
    ("too-many-bytes", lambda: encode(Image.new("RGB", (64, 64)), "PNG")
     + b"\x00" * MAX_UPLOAD_BYTES, ["MB", "10 MB"]),
]


@pytest.mark.parametrize("label", ["mask", "reference photo"])
@pytest.mark.parametrize(("data", "words"), [pytest.param(*case[1:], id=case[0])
                                             for case in REFUSED])
def test_refused(data: Callable[[], bytes], words: list[str], label: str) -> None:
    with pytest.raises(ImageRejected) as caught:
        check_image(data(), label=label)
    message = str(caught.value)
    assert message.startswith(f"The {label} ")
    assert message.endswith(".")
    for word in words:
        assert word in message
    assert caught.value.label == label
    assert isinstance(caught.value, UserFacingError)


class Decoded(Exception):
    pass


def test_bomb_is_refused_before_decoding_even_without_pillows_limit(monkeypatch) -> None:
    def no_decoding(self):
        raise Decoded

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageRejected, match=r"The image is too large \(50000×50000"):
        check_image(png_header_only(50_000, 50_000))
    # The same patch does stop a normal image: the bomb really was refused before decoding.
    with pytest.raises(ImageRejected, match="damaged"):
        check_image(png_ok(64, 64))


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_warning_becomes_a_refusal(monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64)  # a 100x100 image now warns
    with pytest.raises(ImageRejected, match="The image is too large"):
        check_image(encode(Image.new("RGB", (100, 100)), "PNG"))


def test_limits_are_the_stated_ones() -> None:
    assert MAX_UPLOAD_BYTES == 10 * 1024 * 1024
    assert MAX_PIXELS == 40_000_000
    assert MAX_SIDE == 8192


def test_declared_size_is_refused_before_download() -> None:
    check_declared_size(MAX_UPLOAD_BYTES, "image")
    with pytest.raises(ImageRejected) as caught:
        check_declared_size(MAX_UPLOAD_BYTES + 1, "mask")
    assert str(caught.value) == ("The mask is 10.1 MB, over Remixer's limit of 10 MB per "
                                 "attachment; send a smaller file.")
    with pytest.raises(ImageRejected, match="The image is empty"):
        check_declared_size(0, "image")
    small = encode(Image.new("RGB", (64, 64)), "PNG")
    with pytest.raises(ImageRejected, match=r"The image is 20\.0 MB"):
        check_image(small, declared_size=20 * 1024 * 1024)


def test_refusal_reads_as_the_brief_says() -> None:
    with pytest.raises(ImageRejected) as caught:
        check_image(b"GIF89a" + b"\x00" * 64, label="mask")
    assert str(caught.value) == ("The mask is not an image Remixer can read: it is a GIF file; "
                                 "send a PNG, JPEG or WebP image.")
    with pytest.raises(ImageRejected) as caught:
        check_image(animated("WEBP"), label="image")
    assert str(caught.value) == ("The image is animated: animated images can't be used; "
                                 "send a still PNG, JPEG or WebP.")


# --- prepare_init_image -----------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    pytest.param(lambda: encode(quadrants(), "PNG"), id="rgb-png"),
    pytest.param(lambda: encode(rgba_half_transparent(), "PNG"), id="rgba-png"),
    pytest.param(lambda: encode(Image.new("L", (64, 64), 9), "PNG"), id="l-png"),
    pytest.param(lambda: encode(quadrants(), "JPEG"), id="rgb-jpeg"),
    pytest.param(lambda: encode(Image.new("RGB", (2048, 64)), "PNG"), id="exactly-max-side"),
    pytest.param(lambda: with_orientation(quadrants(), "JPEG", 1), id="orientation-1"),
    pytest.param(lambda: encode(quadrants(), "PNG", transparency=(255, 0, 0)), id="rgb-trns-png"),
])
def test_sent_as_it_is(raw: Callable[[], bytes]) -> None:
    assert prepare_init_image(check_image(raw())) is None


CONVERTED: list[tuple[str, Callable[[], bytes], str, str]] = [
    # id, bytes, content type, decoded mode
    ("cmyk-jpeg", lambda: encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG"),
     "image/jpeg", "RGB"),
    ("16bit-png", sixteen_bit_png, "image/png", "RGB"),
    ("1bit-png", lambda: encode(left_white(mode="1"), "PNG"), "image/png", "RGB"),
    ("p-png", lambda: palette(False), "image/png", "RGB"),
    ("p-transparent-png", lambda: palette(True), "image/png", "RGBA"),
    ("la-png", lambda: encode(Image.new("LA", (64, 64), (90, 10)), "PNG"), "image/png", "RGBA"),
    ("opaque-la-png", lambda: encode(Image.new("LA", (64, 64), (90, 255)), "PNG"), "image/png",
     "RGB"),
    ("lossy-webp", lambda: encode(quadrants(), "WEBP", quality=80), "image/jpeg", "RGB"),
    ("lossless-webp", lambda: encode(quadrants(), "WEBP", lossless=True), "image/png", "RGB"),
    ("rgba-webp", lambda: encode(rgba_half_transparent(), "WEBP", lossless=True), "image/png",
     "RGBA"),
    ("big-rgb-trns-png", lambda: encode(left_white((3000, 100), mode="RGB"), "PNG",
                                        transparency=(0, 0, 0)), "image/png", "RGBA"),
]


@pytest.mark.parametrize(("raw", "content_type", "mode"),
                         [pytest.param(*case[1:], id=case[0]) for case in CONVERTED])
def test_converted(raw: Callable[[], bytes], content_type: str, mode: str) -> None:
    checked = check_image(raw())
    prepared = prepare_init_image(checked)
    assert isinstance(prepared, PreparedImage)
    assert prepared.content_type == content_type
    assert prepared.filename_suffix == {"image/png": ".png", "image/jpeg": ".jpg"}[content_type]
    out = decode(prepared.data)
    assert out.format == {"image/png": "PNG", "image/jpeg": "JPEG"}[content_type]
    assert out.mode == mode
    assert out.size == prepared.size
    if max(checked.size) <= 2048:
        assert prepared.size == checked.size
    else:
        assert max(prepared.size) == 2048


def test_cmyk_becomes_rgb_with_the_right_colour() -> None:
    checked = check_image(encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG"))
    out = decode(prepare_init_image(checked).data)
    red, green, blue = out.getpixel((32, 32))
    assert red > 200 and green < 60 and blue < 60


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    out = decode(prepare_init_image(check_image(sixteen_bit_png())).data)
    assert out.getpixel((0, 0)) == (156, 156, 156)  # 40000 / 256


def test_large_image_is_scaled_down_keeping_proportions() -> None:
    raw = encode(quadrants((4000, 3000)), "PNG", compress_level=1)
    prepared = prepare_init_image(check_image(raw))
    assert prepared is not None
    assert (prepared.width, prepared.height) == (2048, 1536)
    assert prepared.content_type == "image/png"
    out = decode(prepared.data)
    assert out.size == (2048, 1536)
    assert out.getpixel((10, 10)) == (255, 0, 0)
    assert out.getpixel((2040, 1530)) == (255, 255, 0)


def test_large_photo_stays_jpeg_and_thin_image_keeps_its_shape() -> None:
    prepared = prepare_init_image(check_image(encode(quadrants((6000, 3000)), "JPEG")))
    assert (prepared.content_type, prepared.size) == ("image/jpeg", (2048, 1024))
    assert decode(prepared.data).size == (2048, 1024)
    thin = prepare_init_image(check_image(png_ok(64, MAX_SIDE)))
    assert thin.size == (16, 2048)
    assert prepare_init_image(check_image(png_ok(300, 200)), max_side=100).size == (100, 67)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    raw = with_orientation(quadrants((96, 64)), "PNG", orientation)
    checked = check_image(raw)
    assert checked.orientation == orientation
    prepared = prepare_init_image(checked)
    assert prepared is not None
    expected = ImageOps.exif_transpose(decode(raw))
    out = decode(prepared.data)
    assert out.size == prepared.size == expected.size == checked.display_size
    assert out.tobytes() == expected.convert("RGB").tobytes()


def test_exif_rotated_jpeg_comes_out_rotated() -> None:
    raw = with_orientation(quadrants((96, 64)), "JPEG", 6)  # shown turned 90° clockwise
    prepared = prepare_init_image(check_image(raw))
    assert prepared is not None and prepared.content_type == "image/jpeg"
    out = decode(prepared.data)
    assert out.size == (64, 96)
    # Stored top-left red goes to the top-right; stored bottom-left blue to the top-left.
    assert _near(out.getpixel((60, 4)), (255, 0, 0))
    assert _near(out.getpixel((4, 4)), (0, 0, 255))
    assert _near(out.getpixel((60, 92)), (0, 255, 0))


def _near(pixel: tuple[int, ...], colour: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 40 for a, b in zip(pixel, colour, strict=True))


# --- prepare_mask ---------------------------------------------------------------------------


def binary_values(data: bytes) -> tuple[Image.Image, set[int]]:
    image = decode(data)
    histogram = image.histogram()
    return image, {value for value, count in enumerate(histogram) if count}


MASKS: list[tuple[str, Callable[[], bytes]]] = [
    ("transparent-rgba-png", lambda: encode(rgba_half_transparent(), "PNG")),
    ("transparent-la-png", lambda: encode(rgba_half_transparent().convert("LA"), "PNG")),
    ("transparent-p-png", lambda: palette(True)),
    ("transparent-webp", lambda: encode(rgba_half_transparent(), "WEBP", lossless=True)),
    ("grey-png", lambda: encode(left_white(), "PNG")),
    ("rgb-png", lambda: encode(left_white(mode="RGB"), "PNG")),
    ("opaque-rgba-png", lambda: encode(left_white().convert("RGBA"), "PNG")),
    ("1bit-png", lambda: encode(left_white(mode="1"), "PNG")),
    ("16bit-png", lambda: encode(left_white().convert("I").point(lambda v: v * 257)
                                 .convert("I;16"), "PNG")),
    ("jpeg", lambda: encode(left_white(), "JPEG", quality=95)),
    ("cmyk-jpeg", lambda: encode(left_white(mode="RGB").convert("CMYK"), "JPEG", quality=95)),
]


@pytest.mark.parametrize("raw", [pytest.param(case[1], id=case[0]) for case in MASKS])
@pytest.mark.parametrize("image_size", [(64, 64), (200, 200), (48, 48)])
def test_mask_left_half_repainted(raw: Callable[[], bytes], image_size: tuple[int, int]) -> None:
    out, values = binary_values(prepare_mask(check_image(raw(), label="mask"), image_size))
    assert out.format == "PNG" and out.mode == "L"
    assert out.size == image_size
    assert values == {0, 255}
    width, height = image_size
    assert out.getpixel((2, height // 2)) == 255  # left: repaint
    assert out.getpixel((width - 3, height // 2)) == 0  # right: keep


def test_transparent_pixels_are_painted_whatever_their_colour() -> None:
    mask = Image.new("RGBA", (64, 64), (255, 255, 255, 255))  # opaque white: keep
    ImageDraw.Draw(mask).rectangle((0, 0, 15, 63), fill=(0, 0, 0, 0))  # transparent: repaint
    out, _ = binary_values(prepare_mask(check_image(encode(mask, "PNG")), (64, 64)))
    assert out.getpixel((5, 5)) == 255
    assert out.getpixel((40, 5)) == 0


def test_grey_mask_is_thresholded_at_128() -> None:
    mask = Image.new("L", (64, 64), 127)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=128)
    out, values = binary_values(prepare_mask(check_image(encode(mask, "PNG")), (64, 64)))
    assert values == {0, 255}
    assert out.getpixel((0, 0)) == 255 and out.getpixel((63, 0)) == 0


def test_smooth_mask_resized_stays_strictly_binary() -> None:
    gradient = Image.linear_gradient("L").resize((100, 100))
    out, values = binary_values(prepare_mask(check_image(encode(gradient, "PNG")), (257, 257)))
    assert out.size == (257, 257)
    assert values == {0, 255}
    assert out.getpixel((5, 5)) == 0 and out.getpixel((5, 250)) == 255


def test_large_mask_is_scaled_down_to_the_image() -> None:
    mask = encode(left_white((4000, 3000)), "PNG", compress_level=1)
    out, values = binary_values(prepare_mask(check_image(mask), (2048, 1536)))
    assert out.size == (2048, 1536)
    assert values == {0, 255}


def test_all_white_mask_repaints_everything() -> None:
    _, values = binary_values(
        prepare_mask(check_image(encode(Image.new("L", (64, 64), 255), "PNG")), (64, 64)))
    assert values == {255}


@pytest.mark.parametrize("mask", [
    pytest.param(lambda: Image.new("L", (64, 64), 0), id="black"),
    pytest.param(lambda: Image.new("RGBA", (64, 64), (0, 0, 0, 255)), id="opaque-black-rgba"),
    pytest.param(lambda: Image.new("L", (64, 64), 127), id="dark-grey"),
])
def test_mask_marking_nothing_is_refused(mask: Callable[[], Image.Image]) -> None:
    with pytest.raises(ImageRejected) as caught:
        prepare_mask(check_image(encode(mask(), "PNG"), label="mask"), (64, 64), label="mask")
    assert str(caught.value) == ("The mask marks nothing to repaint; paint the area to change "
                                 "in white.")


@pytest.mark.parametrize(("mask_size", "image_size", "ok"), [
    ((100, 100), (200, 100), False),
    ((100, 64), (64, 100), False),
    ((100, 100), (103, 100), False),
    ((101, 100), (100, 100), True),
    ((4000, 3000), (2048, 1536), True),
    ((65, 8192), (16, 2048), True),  # rounding of a thin image's width
])
def test_mask_shape_must_match(mask_size: tuple[int, int], image_size: tuple[int, int],
                               ok: bool) -> None:
    checked = check_image(encode(Image.new("1", mask_size, 1), "PNG"), label="mask")
    if ok:
        assert decode(prepare_mask(checked, image_size)).size == image_size
        return
    with pytest.raises(ImageRejected) as caught:
        prepare_mask(checked, image_size, label="mask")
    width, height = mask_size
    iw, ih = image_size
    assert str(caught.value).startswith(
        f"The mask's shape ({width}×{height}) does not match the image ({iw}×{ih})")


def test_rotated_mask_is_read_as_shown() -> None:
    stored = left_white((100, 64))  # white on the left as stored
    raw = with_orientation(stored, "PNG", 6)  # shown turned clockwise: white at the top
    checked = check_image(raw, label="mask")
    out, _ = binary_values(prepare_mask(checked, (64, 100)))
    assert out.size == (64, 100)
    assert out.getpixel((32, 5)) == 255 and out.getpixel((32, 95)) == 0


def test_checked_image_is_frozen() -> None:
    checked = check_image(encode(Image.new("RGB", (64, 64)), "PNG"))
    assert isinstance(checked, CheckedImage)
    with pytest.raises(AttributeError):
        checked.width = 1  # type: ignore[misc]


# --- decoding once, within memory -------------------------------------------------------------


def one_clear_pixel(size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGBA", size, (30, 120, 200, 255))
    image.putpixel((size[0] // 2, size[1] // 2), (0, 0, 0, 254))
    return image


@pytest.mark.parametrize("make", [
    pytest.param(lambda: encode(Image.new("RGBA", (5000, 3000), (1, 2, 3, 255)), "PNG"),
                 id="big-opaque-rgba-png"),
    pytest.param(lambda: encode(one_clear_pixel((4500, 2300)), "PNG"), id="one-clear-pixel"),
    pytest.param(lambda: encode(quadrants((4800, 3600)), "JPEG", quality=90), id="big-jpeg"),
    pytest.param(lambda: with_orientation(quadrants((3000, 2000)), "JPEG", 6),
                 id="rotated-jpeg"),
    pytest.param(lambda: encode(Image.new("LA", (4200, 4200), (90, 255)), "PNG"),
                 id="grey-alpha"),
    pytest.param(lambda: encode(quadrants((2500, 2100)), "WEBP", quality=80), id="webp"),
    pytest.param(lambda: encode(Image.new("P", (3000, 3000), 7), "PNG"), id="palette"),
    pytest.param(lambda: encode(quadrants((800, 600)), "PNG"), id="small-sendable"),
])
def test_checking_and_preparing_in_one_decode_gives_the_same_image(make) -> None:
    data = make()
    checked = check_image(data, label="image", prepare=True)
    alone = prepare_init_image(check_image(data, label="image"))
    assert checked.prepared_for == 2048
    assert prepare_init_image(checked) == alone  # the kept result, made by the same code
    assert checked.prepared == alone
    if alone is not None:
        assert max(alone.size) == 2048
        assert decode(alone.data).size == alone.size


def test_a_single_translucent_pixel_keeps_the_alpha_after_reducing() -> None:
    prepared = prepare_init_image(check_image(encode(one_clear_pixel((6000, 3000)), "PNG")))
    assert prepared is not None and decode(prepared.data).mode == "RGBA"
    opaque = prepare_init_image(check_image(encode(
        Image.new("RGBA", (6000, 3000), (9, 9, 9, 255)), "PNG")))
    assert opaque is not None and decode(opaque.data).mode == "RGB"


async def test_image_work_runs_on_its_own_threads_not_the_default_executor() -> None:
    checked = await check_image_async(encode(quadrants((3000, 2000)), "PNG"), prepare=True)
    assert checked.prepared is not None
    assert await prepare_init_image_async(checked) is checked.prepared
    names = await images.run_image_work(10, lambda: threading.current_thread().name)
    assert names.startswith("remixer-images")
    assert images.DECODE_BUDGET.free == images.DECODE_BUDGET.total


async def test_work_beyond_the_pixel_budget_waits_its_turn() -> None:
    budget = PixelBudget(100)
    first = await budget.acquire(60)
    second = asyncio.create_task(budget.acquire(60))
    small = asyncio.create_task(budget.acquire(10))  # first come, first served
    huge = asyncio.create_task(budget.acquire(1_000))  # more than all: waits for all
    await asyncio.sleep(0.01)
    assert not second.done() and not small.done() and not huge.done()
    budget.release(first)
    weight = await asyncio.wait_for(second, 1)
    assert weight == 60 and await asyncio.wait_for(small, 1) == 10
    assert not huge.done()
    budget.release(60)
    budget.release(10)
    assert await asyncio.wait_for(huge, 1) == 100
    budget.release(100)
    assert budget.free == 100


async def test_a_cancelled_wait_gives_nothing_away() -> None:
    budget = PixelBudget(100)
    held = await budget.acquire(100)
    waiting = asyncio.create_task(budget.acquire(50))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    budget.release(held)
    assert budget.free == 100


async def test_the_budget_is_held_until_cancelled_work_really_ends() -> None:
    release = threading.Event()
    task = asyncio.create_task(images.run_image_work(
        images.DECODE_BUDGET_PIXELS, lambda: release.wait(10)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert images.DECODE_BUDGET.free == 0  # the thread still decodes: the pixels are in use
    release.set()
    for _ in range(200):
        if images.DECODE_BUDGET.free == images.DECODE_BUDGET.total:
            break
        await asyncio.sleep(0.01)
    assert images.DECODE_BUDGET.free == images.DECODE_BUDGET.total


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_a_large_mask_reduced_in_strips_keeps_its_edges(mode: str) -> None:
    if mode == "RGBA":  # transparent = repaint
        drawn = Image.new("RGBA", (6000, 4000), (0, 0, 0, 255))
        ImageDraw.Draw(drawn).rectangle((0, 0, 2999, 3999), fill=(0, 0, 0, 0))
    else:  # white = repaint
        drawn = Image.new("L", (6000, 4000), 0)
        ImageDraw.Draw(drawn).rectangle((0, 0, 2999, 3999), fill=255)
    out, values = binary_values(prepare_mask(check_image(encode(drawn, "PNG"), label="mask"),
                                             (1500, 1000)))
    assert out.size == (1500, 1000) and values <= {0, 255}
    assert out.getpixel((745, 500)) == 255 and out.getpixel((755, 500)) == 0
    assert out.getpixel((10, 10)) == 255 and out.getpixel((1490, 990)) == 0
