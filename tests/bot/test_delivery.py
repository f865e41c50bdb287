"""What members see of a result: its text, buttons and files (Discord-free parts)."""

from __future__ import annotations

import io
import os

from PIL import Image

from bot.delivery import fit_for_upload
from bot.jobs.models import Output


def output(data: bytes, name: str = "remix_abcdefgh_1.png") -> Output:
    return Output(0, name, "image/png", data, "https://cdn.example/x.png")


def test_small_outputs_are_posted_as_they_are():
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "PNG")
    assert fit_for_upload(output(buf.getvalue())) == ("remix_abcdefgh_1.png", buf.getvalue())


def test_outputs_over_the_upload_limit_are_re_encoded_to_fit():
    noise = Image.frombytes("RGB", (1024, 1024), os.urandom(1024 * 1024 * 3))
    buf = io.BytesIO()
    noise.save(buf, "PNG")  # random pixels: about 3 MB, far over a 1 MB limit
    name, data = fit_for_upload(output(buf.getvalue()), limit=1024 * 1024)
    assert name == "remix_abcdefgh_1.jpg" and len(data) <= 1024 * 1024
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.width >= 350
