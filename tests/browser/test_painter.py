"""The painter page in a real browser: open the link the bot gave in Discord, paint with the
mouse and with touch, undo, invert, submit; the mask ModelsLab receives is compared pixel by
pixel with the strokes' geometry, and the result is posted in the channel."""

from __future__ import annotations

import io
import math
import os

import pytest
from PIL import Image, ImageDraw

from tests.e2e.conftest import ALICE
from tests.e2e.test_generate import ready_for, submits_with
from tests.e2e.test_paint import painter_links
from tests.e2e.test_remix import button

pytestmark = pytest.mark.asyncio(loop_scope="module")

EDGE = 1.5  # pixels this close to a stroke's edge may go either way (antialiasing)
SCREENSHOT_ENV = "PAINTER_SCREENSHOT"  # where to write docs/painter.png, when asked


def picture(size: tuple[int, int]) -> bytes:
    """A small landscape to paint on (sky, sun, hills), so the screenshot shows something."""
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(height):
        t = y / height
        draw.line([(0, y), (width, y)], fill=(int(90 + 120 * t), int(150 + 60 * t), 235))
    draw.ellipse([width * 0.68, height * 0.1, width * 0.86, height * 0.34], fill=(255, 214, 90))
    draw.polygon([(0, height), (0, height * 0.62), (width * 0.35, height * 0.45),
                  (width * 0.7, height * 0.66), (width, height * 0.55), (width, height)],
                 fill=(64, 128, 78))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


async def link_for(world, channel: int, prompt: str, size: tuple[int, int]) -> str:
    image = world.discord.add_attachment("landscape.png", picture(size), "image/png")
    ix = await world.discord.slash(ALICE, channel, "inpaint", {"image": image, "prompt": prompt})
    (link,) = painter_links(await ix.response())
    return link


async def open_painter(chromium, link: str, *, touch: bool = False):
    context = await chromium.new_context(viewport={"width": 900, "height": 1100},
                                         has_touch=touch)
    page = await context.new_page()
    await page.goto(link)
    await page.wait_for_selector("body.ready", timeout=20_000)
    return context, page


def distance_to_segment(p, a, b) -> float:
    (px, py), (ax, ay), (bx, by) = p, a, b
    dx, dy = bx - ax, by - ay
    length = dx * dx + dy * dy
    t = 0.0 if length == 0 else max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / length))
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))


def mismatches(mask: Image.Image, strokes, radius: float, *, inverted: bool) -> list:
    """Pixels whose value differs from the strokes' geometry (edges within EDGE excepted)."""
    wrong = []
    width, height = mask.size
    pixels = mask.load()
    for y in range(height):
        for x in range(width):
            d = min(distance_to_segment((x + 0.5, y + 0.5), a, b) for a, b in strokes)
            if abs(d - radius) <= EDGE:
                continue
            painted = d < radius
            want = 255 if painted != inverted else 0
            if pixels[x, y] != want:
                wrong.append((x, y, pixels[x, y]))
    return wrong


async def test_paint_with_mouse_and_touch_undo_invert_and_generate(world, chromium):
    channel = world.channel()
    prompt = "a stained glass window"
    size = (512, 384)
    link = await link_for(world, channel, prompt, size)
    context, page = await open_painter(chromium, link, touch=True)
    try:
        await page.get_by_label("Brush size").fill("30")
        box = await page.get_by_role("img", name="Mask").bounding_box()
        scale = size[0] / box["width"]

        def screen(fx: float, fy: float) -> tuple[float, float]:
            return box["x"] + fx * box["width"], box["y"] + fy * box["height"]

        def image_point(point: tuple[float, float]) -> tuple[float, float]:
            return (point[0] - box["x"]) * scale, (point[1] - box["y"]) * scale

        async def mouse_stroke(start, end):
            await page.mouse.move(*start)
            await page.mouse.down()
            await page.mouse.move(*end, steps=12)
            await page.mouse.up()

        # stroke A, with the mouse
        a = (screen(0.15, 0.25), screen(0.6, 0.35))
        await mouse_stroke(*a)
        # stroke C, with the mouse, then taken back
        await mouse_stroke(screen(0.2, 0.8), screen(0.8, 0.85))
        await page.get_by_role("button", name="Undo").click()
        # stroke B, with a finger
        b = (screen(0.7, 0.2), screen(0.75, 0.7))
        cdp = await context.new_cdp_session(page)
        steps = 12
        await cdp.send("Input.dispatchTouchEvent", {
            "type": "touchStart", "touchPoints": [{"x": b[0][0], "y": b[0][1]}]})
        for i in range(1, steps + 1):
            x = b[0][0] + (b[1][0] - b[0][0]) * i / steps
            y = b[0][1] + (b[1][1] - b[0][1]) * i / steps
            await cdp.send("Input.dispatchTouchEvent", {
                "type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
        await cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})

        if os.environ.get(SCREENSHOT_ENV):
            await page.screenshot(path=os.environ[SCREENSHOT_ENV], full_page=True)
        await page.get_by_role("button", name="Invert").click()

        assert await page.get_by_label("Prompt", exact=True).input_value() == prompt
        await page.get_by_role("button", name="Generate").click()
        status = page.get_by_role("status")
        await status.filter(has_text="Queued").wait_for(timeout=20_000)
        back = status.get_by_role("link", name="Back to the channel")
        assert (await back.get_attribute("href")).endswith(f"/{channel}")
    finally:
        await context.close()

    message = await world.discord.wait_for_message(channel, ready_for(ALICE, prompt), timeout=30)
    assert f"<@{ALICE}>" in message["content"] and message["files"]
    (sent,) = submits_with(world, prompt)
    mask = Image.open(io.BytesIO(world.discord.file_at(sent.body["mask_image"])))
    assert mask.size == size and mask.mode == "L"
    strokes = [tuple(image_point(p) for p in a), tuple(image_point(p) for p in b)]
    wrong = mismatches(mask, strokes, 15 * scale, inverted=True)
    assert not wrong, f"{len(wrong)} pixels differ, e.g. {wrong[:5]}"


async def test_edit_region_loads_the_last_mask_and_refuses_an_empty_one(world, chromium):
    channel = world.channel()
    prompt = "a copper weathervane"
    size = (400, 400)
    link = await link_for(world, channel, prompt, size)
    context, page = await open_painter(chromium, link)
    try:
        box = await page.get_by_role("img", name="Mask").bounding_box()
        start = (box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
        await page.mouse.move(*start)
        await page.mouse.down()
        await page.mouse.move(box["x"] + box["width"] * 0.7, start[1], steps=8)
        await page.mouse.up()
        await page.get_by_role("button", name="Generate").click()
        await page.get_by_role("status").filter(has_text="Queued").wait_for(timeout=20_000)
    finally:
        await context.close()
    result = await world.discord.wait_for_message(channel, ready_for(ALICE, prompt), timeout=30)
    (first,) = submits_with(world, prompt)
    first_mask = world.discord.file_at(first.body["mask_image"])

    click = await world.discord.click(ALICE, result, button(result, "Edit region"))
    (link,) = painter_links(await click.response())
    context, page = await open_painter(chromium, link)
    try:
        assert await page.get_by_label("Prompt", exact=True).input_value() == prompt
        # Clear leaves nothing painted: refused on the page, nothing sent
        await page.get_by_role("button", name="Clear").click()
        before = len(world.modelslab.submits)
        await page.get_by_role("button", name="Generate").click()
        await page.get_by_role("status").filter(
            has_text="Nothing is painted").wait_for(timeout=10_000)
        assert len(world.modelslab.submits) == before
        # Undo brings the last mask back, Redo clears again, Undo once more
        await page.get_by_role("button", name="Undo").click()
        await page.get_by_role("button", name="Redo").click()
        await page.get_by_role("button", name="Undo").click()
        await page.get_by_label("Prompt", exact=True).fill("a silver weathervane")
        await page.get_by_role("button", name="Generate").click()
        await page.get_by_role("status").filter(has_text="Queued").wait_for(timeout=20_000)
    finally:
        await context.close()
    await world.discord.wait_for_message(channel, ready_for(ALICE, "a silver weathervane"),
                                         timeout=30)
    (second,) = submits_with(world, "a silver weathervane")
    again = Image.open(io.BytesIO(world.discord.file_at(second.body["mask_image"])))
    # the result (the new source image) may have another size: the last mask was scaled to it
    before = Image.open(io.BytesIO(first_mask)).resize(again.size, Image.Resampling.BILINEAR)
    assert sum(again.histogram()[255:]) > 0
    width, height = again.size
    for y in range(height):
        for x in range(width):
            want = 255 if before.getpixel((x, y)) >= 128 else 0
            if again.getpixel((x, y)) != want:  # only where the scaled edge falls
                around = {again.getpixel((min(max(x + i, 0), width - 1),
                                          min(max(y + j, 0), height - 1)))
                          for i in (-1, 0, 1) for j in (-1, 0, 1)}
                assert around == {0, 255}, (x, y)



async def test_zoom_and_pan_keep_strokes_where_they_are_drawn(world, chromium):
    channel = world.channel()
    prompt = "a hot air balloon"
    size = (480, 480)
    link = await link_for(world, channel, prompt, size)
    context, page = await open_painter(chromium, link)
    try:
        stage = await page.locator("#stage").bounding_box()
        middle = (stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2)
        await page.get_by_role("button", name="Zoom in").click()
        await page.mouse.move(middle[0] + 40, middle[1] - 30)
        await page.mouse.wheel(0, -240)  # zoom in further around the pointer
        await page.get_by_role("button", name="Pan").click()
        await page.mouse.move(*middle)
        await page.mouse.down()
        await page.mouse.move(middle[0] - 60, middle[1] + 25, steps=6)  # moves, paints nothing
        await page.mouse.up()
        await page.get_by_role("button", name="Brush").click()
        await page.get_by_label("Brush size").fill("24")

        box = await page.get_by_role("img", name="Mask").bounding_box()
        scale = size[0] / box["width"]
        assert scale < 0.9  # zoomed in: one image pixel is more than one screen pixel
        start, end = (middle[0] - 120, middle[1] - 40), (middle[0] + 90, middle[1] + 60)
        await page.mouse.move(*start)
        await page.mouse.down()
        await page.mouse.move(*end, steps=10)
        await page.mouse.up()
        await page.get_by_role("button", name="Generate").click()
        await page.get_by_role("status").filter(has_text="Queued").wait_for(timeout=20_000)
    finally:
        await context.close()
    await world.discord.wait_for_message(channel, ready_for(ALICE, prompt), timeout=30)
    (sent,) = submits_with(world, prompt)
    mask = Image.open(io.BytesIO(world.discord.file_at(sent.body["mask_image"])))

    def image_point(point):
        return (point[0] - box["x"]) * scale, (point[1] - box["y"]) * scale

    wrong = mismatches(mask, [(image_point(start), image_point(end))], 12 * scale,
                       inverted=False)
    assert not wrong, f"{len(wrong)} pixels differ, e.g. {wrong[:5]}"


async def test_on_a_phone_two_fingers_zoom_without_painting(world, chromium):
    channel = world.channel()
    link = await link_for(world, channel, "a paper kite", (640, 480))
    context = await chromium.new_context(viewport={"width": 390, "height": 844},
                                         has_touch=True, is_mobile=True,
                                         device_scale_factor=2)
    page = await context.new_page()
    try:
        await page.goto(link)
        await page.wait_for_selector("body.ready", timeout=20_000)
        # everything fits the phone's width: no sideways scrolling
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        before = await page.get_by_role("img", name="Mask").bounding_box()
        assert before["width"] <= 390
        cx, cy = before["x"] + before["width"] / 2, before["y"] + before["height"] / 2
        cdp = await context.new_cdp_session(page)

        def fingers(spread: float) -> list[dict]:
            return [{"x": cx - spread, "y": cy, "id": 0}, {"x": cx + spread, "y": cy, "id": 1}]

        await cdp.send("Input.dispatchTouchEvent", {"type": "touchStart",
                                                    "touchPoints": fingers(30)})
        for step in range(1, 11):
            await cdp.send("Input.dispatchTouchEvent", {"type": "touchMove",
                                                        "touchPoints": fingers(30 + 8 * step)})
        await cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        after = await page.get_by_role("img", name="Mask").bounding_box()
        assert after["width"] > before["width"] * 1.5  # zoomed in
        before_submits = len(world.modelslab.submits)
        await page.get_by_role("button", name="Generate").click()
        await page.get_by_role("status").filter(
            has_text="Nothing is painted").wait_for(timeout=10_000)  # the pinch painted nothing
        assert len(world.modelslab.submits) == before_submits
    finally:
        await context.close()
