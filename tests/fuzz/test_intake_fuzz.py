"""Attachment intake fuzzed: whatever bytes a member attaches, ``bot.images`` either accepts a
whole, decodable image of the size it reports, or refuses it with an ImageRejected whose words
name the attachment. Nothing else ever escapes (no Pillow error, no crash).

Generated with hypothesis: random bytes behind real and fake magic numbers, valid PNG / JPEG /
WebP files in every mode a member's tools produce (1, L, LA, P with and without transparency,
RGB, RGBA, CMYK JPEG, 16-bit PNG) at random and extreme sizes, then truncated or with bytes
flipped; animated PNG / WebP / GIF; and headers that declare huge sizes (bombs).
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

from bot.images import (
    MAX_PIXELS,
    MAX_SIDE,
    MAX_UPLOAD_BYTES,
    MIN_SIDE,
    CheckedImage,
    ImageRejected,
    PreparedImage,
    check_image,
    prepare_init_image,
    prepare_mask,
)

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LABELS = st.sampled_from(["image", "mask", "reference photo", "init image"])
# Pillow warns (and carries on) about the broken EXIF blocks and APNG chunks made here.
pytestmark = [pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning"),
              pytest.mark.filterwarnings("ignore:Invalid APNG:UserWarning")]
FORMATS = {"PNG": ("image/png", ".png"), "JPEG": ("image/jpeg", ".jpg"),
           "WEBP": ("image/webp", ".webp")}


# --- the properties -----------------------------------------------------------------------------

def checked_or_refused(data: bytes, label: str, *,
                       declared_size: int | None = None) -> CheckedImage | None:
    """``check_image``'s only two outcomes: a CheckedImage true to the file, or a refusal in
    words naming ``label``. Any other exception fails the test by propagating."""
    try:
        checked = check_image(data, label=label, declared_size=declared_size)
    except ImageRejected as exc:
        assert_clear_refusal(exc, label)
        event("refused: " + str(exc).removeprefix(f"The {label} ")[:24])
        return None
    event(f"accepted {checked.format} {checked.mode}")
    assert isinstance(checked, CheckedImage)
    assert checked.data == data
    assert checked.format in FORMATS
    assert checked.content_type == FORMATS[checked.format][0]
    assert checked.filename_suffix == FORMATS[checked.format][1]
    assert MIN_SIDE <= checked.width <= MAX_SIDE and MIN_SIDE <= checked.height <= MAX_SIDE
    assert checked.width * checked.height <= MAX_PIXELS
    assert len(data) <= MAX_UPLOAD_BYTES
    assert checked.orientation in range(1, 9)
    # Independently of bot.images: Pillow opens it as one of the three formats, it decodes
    # completely, it is a still image, and its size is the one reported.
    with Image.open(io.BytesIO(data)) as image:
        assert image.format in ("PNG", "JPEG", "MPO", "WEBP")
        assert image.size == checked.size
        assert image.format == "MPO" or getattr(image, "n_frames", 1) == 1
        image.load()
        assert image.mode == checked.mode
    return checked


def assert_clear_refusal(exc: ImageRejected, label: str) -> None:
    message = str(exc)
    assert exc.label == label
    assert message.startswith(f"The {label} ") or message.startswith(f"The {label}'s "), message
    assert message.endswith("."), message
    assert "Traceback" not in message and "PIL" not in message and "Error" not in message
    assert 20 < len(message) < 400


def assert_prepared_ok(checked: CheckedImage, max_side: int) -> tuple[int, int]:
    """``prepare_init_image``: None only for a PNG/JPEG in a sendable mode, upright and within
    ``max_side``; otherwise PNG or JPEG bytes decoding to RGB/RGBA within ``max_side`` with
    the proportions the member sees. Returns the size that will be sent."""
    prepared = prepare_init_image(checked, max_side=max_side)
    if prepared is None:
        assert checked.format in ("PNG", "JPEG")
        assert checked.mode in ("RGB", "RGBA", "L")
        assert max(checked.size) <= max_side and checked.orientation == 1
        return checked.size
    assert isinstance(prepared, PreparedImage)
    assert prepared.content_type in ("image/png", "image/jpeg")
    assert prepared.filename_suffix == {"image/png": ".png",
                                        "image/jpeg": ".jpg"}[prepared.content_type]
    with Image.open(io.BytesIO(prepared.data)) as out:
        out.load()
        assert out.format == {"image/png": "PNG", "image/jpeg": "JPEG"}[prepared.content_type]
        assert out.mode in ("RGB", "RGBA", "L")
        assert out.size == prepared.size
    assert 1 <= max(prepared.size) <= max_side
    shown_w, shown_h = checked.display_size
    if max(shown_w, shown_h) <= max_side:
        assert prepared.size == (shown_w, shown_h)
    else:  # scaled down keeping its proportions, to the pixel
        scale = max_side / max(shown_w, shown_h)
        assert abs(prepared.width - shown_w * scale) <= 1
        assert abs(prepared.height - shown_h * scale) <= 1
    return prepared.size


def assert_mask_ok(mask: CheckedImage, image_size: tuple[int, int]) -> None:
    """``prepare_mask``: a PNG, mode L, strictly 0/255, exactly ``image_size``; or a refusal
    in words naming the mask."""
    try:
        data = prepare_mask(mask, image_size, label="mask")
    except ImageRejected as exc:
        assert_clear_refusal(exc, "mask")
        return
    with Image.open(io.BytesIO(data)) as out:
        out.load()
        assert out.format == "PNG" and out.mode == "L"
        assert out.size == image_size
        values = {value for value, count in enumerate(out.histogram()) if count}
    assert values <= {0, 255} and 255 in values


# --- making images --------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    fmt: str
    mode: str  # the mode drawn in (the file's own mode may differ: WebP has no L)
    size: tuple[int, int]
    seed: int
    options: tuple[tuple[str, object], ...] = ()


# Which modes each format is saved from.
MODES = {
    "PNG": ["1", "L", "L+trns", "LA", "P", "P+trns", "RGB", "RGB+trns", "RGBA", "I;16"],
    "JPEG": ["1", "L", "RGB", "CMYK"],
    "WEBP": ["L", "RGB", "RGBA", "LA", "P"],
}

SIDES = st.one_of(
    st.integers(min_value=MIN_SIDE, max_value=400),
    st.sampled_from([1, 2, 17, MIN_SIDE - 1, MIN_SIDE, MIN_SIDE + 1, 127, 128, 2047, 2048, 2049,
                     5000, MAX_SIDE, MAX_SIDE + 1]),
)


@st.composite
def sizes(draw: st.DrawFn) -> tuple[int, int]:
    """Tiny, ordinary and extreme sizes; at most ~0.7 megapixels so the suite stays fast."""
    width, height = draw(SIDES), draw(SIDES)
    while width * height > 700_000:
        if width > height:
            width = draw(st.integers(min_value=1, max_value=80))
        else:
            height = draw(st.integers(min_value=1, max_value=80))
    return width, height


@st.composite
def specs(draw: st.DrawFn, *, max_side: int | None = None, min_side: int = 1) -> Spec:
    fmt = draw(st.sampled_from(sorted(MODES)))
    mode = draw(st.sampled_from(MODES[fmt]))
    size = draw(sizes())
    if max_side is not None:
        size = (min(size[0], max_side), min(size[1], max_side))
    size = (max(size[0], min_side), max(size[1], min_side))
    if fmt == "WEBP":
        size = (min(size[0], 16383), min(size[1], 16383))
    options: dict[str, object] = {}
    if fmt == "JPEG":
        options["quality"] = draw(st.integers(min_value=1, max_value=100))
        options["progressive"] = draw(st.booleans())
    elif fmt == "WEBP":
        options["lossless"] = draw(st.booleans())
    elif fmt == "PNG":
        options["compress_level"] = 1
    orientation = draw(st.one_of(st.just(None), st.integers(min_value=0, max_value=10),
                                 st.just(65535)))
    if orientation is not None:
        options["orientation"] = orientation
    if fmt != "PNG" and draw(st.booleans()):
        options["icc"] = draw(st.sampled_from(["srgb", "junk"]))
    return Spec(fmt, mode, size, draw(st.integers(min_value=0, max_value=2**32 - 1)),
                tuple(sorted(options.items())))


def picture(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    """Blocks of random colour (and alpha): compressible, unlike noise."""
    rng = random.Random(seed)
    base = mode.split("+")[0]
    cells = (max(1, size[0] // 8 + 1), max(1, size[1] // 8 + 1))
    small_mode = {"1": "L", "I;16": "L", "P": "RGB"}.get(base, base)
    raw = rng.randbytes(cells[0] * cells[1] * Image.getmodebands(small_mode))
    image = Image.frombytes(small_mode, cells, raw).resize(size, Image.Resampling.NEAREST)
    if base == "1":
        return image.convert("1")
    if base == "I;16":
        return image.convert("I").point(lambda v: v * 257).convert("I;16")
    if base == "P":
        return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return image


def encode(spec: Spec) -> bytes:
    options = dict(spec.options)
    image = picture(spec.mode, spec.size, spec.seed)
    save: dict[str, object] = {}
    if spec.fmt == "JPEG":
        save.update(quality=options.get("quality", 90),
                    progressive=options.get("progressive", False))
    elif spec.fmt == "WEBP":
        save.update(lossless=options.get("lossless", False))
    elif spec.fmt == "PNG":
        save.update(compress_level=options.get("compress_level", 1))
    if spec.mode.endswith("+trns"):
        save["transparency"] = (0 if image.mode in ("P", "L")
                                else image.getpixel((0, 0))[:3])
    if "orientation" in options:
        exif = Image.Exif()
        exif[0x0112] = options["orientation"]
        save["exif"] = exif.tobytes()
    icc = options.get("icc")
    if icc == "srgb":
        save["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    elif icc == "junk":
        save["icc_profile"] = random.Random(spec.seed).randbytes(200)
    buffer = io.BytesIO()
    image.save(buffer, format=spec.fmt, **save)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def too_large(size: tuple[int, int]) -> bool:
    width, height = size
    return width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS


def within_limits(size: tuple[int, int]) -> bool:
    return not too_large(size) and min(size) >= MIN_SIDE


# --- random bytes ---------------------------------------------------------------------------

MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
         b"RIFF\x00\x10\x00\x00WEBPVP8 ", b"RIFF\xff\xff\xff\xffWEBPVP8L", b"RIFF\x00\x00\x00\x00"
         b"WEBPVP8X", b"GIF89a", b"BM", b"II*\x00", b"\x00\x00\x00\x18ftypheic", b"%PDF-1.7",
         b"<svg ", b"<!doctype html>", b"\xef\xbb\xbf<html>", b"8BPS", b"\x00\x00\x01\x00"]


@FUZZ
@given(magic=st.sampled_from(MAGIC), tail=st.binary(max_size=4096), label=LABELS,
       declared=st.one_of(st.none(), st.just("exact"),
                          st.integers(min_value=-5, max_value=2 * MAX_UPLOAD_BYTES)))
def test_random_bytes_are_refused_in_words(
        magic: bytes, tail: bytes, label: str, declared: int | str | None) -> None:
    # An attachment named "cat.png" and declared "image/png" reaches check_image as its bytes
    # and the size Discord reports: the name and the declared type play no part, so they are
    # not generated. The bytes start with a real or fake magic number, to reach the decoders.
    data = magic + tail
    declared_size = len(data) if declared == "exact" else declared
    assert not isinstance(declared_size, str)
    checked = checked_or_refused(data, label, declared_size=declared_size)
    if checked is not None:  # astronomically unlikely, but then it must be a real image
        assert_prepared_ok(checked, 2048)


# --- valid images, every mode and size ------------------------------------------------------

@FUZZ
@given(spec=specs(), label=LABELS, max_side=st.sampled_from([64, 512, 2048]))
@example(Spec("PNG", "L", (1, 5000), 1), "image", 2048)
@example(Spec("PNG", "RGB", (5000, 1), 2), "mask", 2048)
@example(Spec("PNG", "P+trns", (64, 5000), 3), "image", 2048)
@example(Spec("JPEG", "CMYK", (5000, 64), 4, (("progressive", False), ("quality", 90))),
         "image", 2048)
@example(Spec("WEBP", "RGBA", (MAX_SIDE, 64), 5, (("lossless", True),)), "mask", 2048)
@example(Spec("PNG", "I;16", (MAX_SIDE + 1, 64), 6), "image", 2048)
@example(Spec("PNG", "1", (64, 64), 7, (("orientation", 6),)), "mask", 64)
def test_images_in_any_mode_and_size_are_accepted_within_the_limits(
        spec: Spec, label: str, max_side: int) -> None:
    data = encode(spec)
    checked = checked_or_refused(data, label)
    if checked is None:
        # A whole, still image is refused only for its size.
        assert not within_limits(spec.size), (spec, len(data))
        return
    assert within_limits(spec.size) and checked.size == spec.size
    sent_size = assert_prepared_ok(checked, max_side)
    # The same file as a mask, for the image as it will be sent (and as it is shown).
    assert_mask_ok(checked, sent_size)
    assert_mask_ok(checked, checked.display_size)


@FUZZ
@given(spec=specs(max_side=600, min_side=MIN_SIDE), image=sizes(), label=LABELS)
def test_any_accepted_mask_becomes_a_strict_binary_png_of_the_image_size(
        spec: Spec, image: tuple[int, int], label: str) -> None:
    checked = checked_or_refused(encode(spec), label)
    assume(checked is not None)
    assert checked is not None
    assert_mask_ok(checked, image)  # of any shape: refused in words when it does not fit
    shown_w, shown_h = checked.display_size
    for scale in (0.5, 1.0, 1.7):
        assert_mask_ok(checked, (max(1, round(shown_w * scale)), max(1, round(shown_h * scale))))


def refusal_words(data: bytes, label: str, *words: str) -> None:
    try:
        check_image(data, label=label)
    except ImageRejected as exc:
        assert_clear_refusal(exc, label)
        for word in words:
            assert word in str(exc), (word, str(exc))
    else:
        raise AssertionError(f"accepted, expected a refusal with {words}")


# --- damaged files ----------------------------------------------------------------------------

@FUZZ
@given(spec=specs(max_side=400, min_side=MIN_SIDE), label=LABELS, data=st.data())
def test_truncated_and_damaged_files_are_refused_or_still_whole(
        spec: Spec, label: str, data: st.DataObject) -> None:
    original = encode(spec)
    how = data.draw(st.sampled_from(["truncate", "flip", "splice", "zero-run"]))
    damaged = bytearray(original)
    if how == "truncate":
        damaged = damaged[:data.draw(st.integers(min_value=0, max_value=len(original) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
            at = data.draw(st.integers(min_value=0, max_value=len(damaged) - 1))
            damaged[at] ^= data.draw(st.integers(min_value=1, max_value=255))
    elif how == "splice":
        at = data.draw(st.integers(min_value=0, max_value=len(damaged)))
        damaged[at:at] = data.draw(st.binary(min_size=1, max_size=64))
    else:
        at = data.draw(st.integers(min_value=0, max_value=len(damaged) - 1))
        damaged[at:at + data.draw(st.integers(min_value=1, max_value=64))] = b"\x00" * 64
    checked = checked_or_refused(bytes(damaged), label)
    if checked is not None:  # JPEG carries no checksums: flipped bits can still decode
        assert_prepared_ok(checked, 2048)
        assert_mask_ok(checked, checked.display_size)


# --- junk metadata ---------------------------------------------------------------------------

PNG_CHUNKS = [b"iCCP", b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"sBIT", b"gAMA", b"cHRM", b"pHYs",
              b"tRNS", b"PLTE", b"acTL", b"fcTL", b"fdAT", b"IDAT", b"IEND", b"IHDR", b"sRGB",
              b"bKGD", b"tIME", b"caBX", b"zzZZ"]
EXIF_ROTATED = (b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01"
                b"\x00\x06\x00\x00")


@FUZZ
@given(spec=specs(max_side=300, min_side=MIN_SIDE), kind=st.sampled_from(PNG_CHUNKS),
       payload=st.one_of(st.binary(max_size=64), st.sampled_from(
           [b"x\x00\x00" + zlib.compress(b"junk"), b"\x00" * 13, b"\x00\x00\x00\x02" * 5,
            EXIF_ROTATED, EXIF_ROTATED[6:]])),
       where=st.integers(min_value=0, max_value=3), good_crc=st.booleans(), label=LABELS)
def test_junk_metadata_never_escapes_as_an_error(spec: Spec, kind: bytes, payload: bytes,
                                                  where: int, good_crc: bool,
                                                  label: str) -> None:
    """Extra PNG chunks (colour profiles, EXIF, text, animation control, a second IHDR...) and
    JPEG/WebP APPn segments full of junk: accepted as a whole image, or refused in words."""
    data = encode(spec)
    if spec.fmt == "PNG":
        chunk = png_chunk(kind, payload)
        if not good_crc:
            chunk = chunk[:-4] + b"\x00\x00\x00\x00"
        at = [33, 33, len(data) - 12, len(data)][where]  # after IHDR, before or after IEND
    else:  # an APPn segment right after the JPEG's SOI (a WebP then stops being one)
        chunk = b"\xff" + bytes([0xE0 + where * 4]) + struct.pack(">H", len(payload) + 2) + payload
        at = 2
    checked = checked_or_refused(data[:at] + chunk + data[at:], label)
    if checked is not None:
        assert_prepared_ok(checked, 512)
        assert_mask_ok(checked, checked.display_size)


# --- animations ------------------------------------------------------------------------------

@settings(FUZZ, max_examples=40)
@given(fmt=st.sampled_from(["PNG", "WEBP", "GIF"]), frames=st.integers(min_value=2, max_value=4),
       size=st.tuples(st.integers(min_value=64, max_value=200),
                      st.integers(min_value=64, max_value=200)),
       seed=st.integers(min_value=0, max_value=2**32 - 1), label=LABELS)
def test_animated_images_are_refused_as_animated(fmt: str, frames: int, size: tuple[int, int],
                                                 seed: int, label: str) -> None:
    pictures = [picture("RGB", size, seed + n) for n in range(frames)]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format=fmt, save_all=True, append_images=pictures[1:],
                     duration=100, loop=0)
    if fmt == "GIF":
        refusal_words(buffer.getvalue(), label, "GIF", "PNG, JPEG or WebP")
    else:
        refusal_words(buffer.getvalue(), label, "animated")


# --- bombs: headers declaring huge sizes -----------------------------------------------------

def png_declaring(width: int, height: int, colour_type: int, payload: bytes) -> bytes:
    bit_depth = 8
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(payload, 9)) + png_chunk(b"IEND", b""))


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real 64x64 JPEG whose frame header (SOF) is rewritten to ``width`` x ``height``."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    at = 2
    while at < len(data):
        marker, length = data[at + 1], struct.unpack(">H", data[at + 2:at + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[at + 5:at + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        at += 2 + length
    raise AssertionError("no SOF marker")


def webp_declaring(width: int, height: int) -> bytes:
    """An extended WebP (VP8X) whose canvas is rewritten to ``width`` x ``height``."""
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 1
    Image.new("RGB", (64, 64), "red").save(buffer, format="WEBP", exif=exif.tobytes())
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"VP8X"
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


HUGE = st.one_of(st.integers(min_value=1, max_value=2**31 - 1),
                 st.sampled_from([MAX_SIDE, MAX_SIDE + 1, 50_000, 65_535, 2**31 - 1]))


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
@FUZZ
@given(width=HUGE, height=HUGE, colour_type=st.sampled_from([0, 2, 4, 6]),
       payload=st.sampled_from([b"", b"\x00" * 1024, b"\x00" * 65536]), label=LABELS)
def test_png_bombs_are_refused(width: int, height: int, colour_type: int, payload: bytes,
                               label: str) -> None:
    """A few hundred bytes declaring up to 2³¹-1 pixels a side (with Pillow's own bomb check
    turned into an error, which must still come out as the same refusal)."""
    data = png_declaring(width, height, colour_type, payload)
    if too_large((width, height)):
        refusal_words(data, label, "too large")
    else:
        checked_or_refused(data, label)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
@settings(FUZZ, max_examples=60)
@given(width=st.integers(min_value=1, max_value=65535),
       height=st.integers(min_value=1, max_value=65535), label=LABELS)
def test_jpeg_headers_declaring_huge_sizes_are_refused(width: int, height: int,
                                                       label: str) -> None:
    data = jpeg_declaring(width, height)
    if too_large((width, height)):
        refusal_words(data, label, "too large")
    else:
        checked_or_refused(data, label)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
@settings(FUZZ, max_examples=60)
@given(width=st.integers(min_value=1, max_value=2**24), height=st.integers(min_value=1,
                                                                           max_value=2**24),
       label=LABELS)
def test_webp_canvases_declaring_huge_sizes_are_refused(width: int, height: int,
                                                        label: str) -> None:
    checked = checked_or_refused(webp_declaring(width, height), label)
    if checked is not None:
        assert within_limits((width, height)) and checked.size == (width, height)
