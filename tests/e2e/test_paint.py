"""Painting a region, end to end without a browser: the entry points (`Edit region` button and
message menu, /inpaint without a mask), the painter links' rules (bound, expiring, single use)
and the modal that replaces the page when there is no PUBLIC_BASE_URL. The page itself is
driven in a real browser in tests/browser/."""

from __future__ import annotations

import io
import re
import sqlite3
import time

import aiohttp
import pytest
import pytest_asyncio
from PIL import Image

from tests.e2e.conftest import ALICE, BOB, start_world
from tests.e2e.test_generate import buttons, ready_for, submits_with
from tests.e2e.test_remix import button

pytestmark = pytest.mark.asyncio(loop_scope="module")


def painter_links(answer: dict) -> list[str]:
    """The link buttons of an interaction's answer (or of a message)."""
    data = answer.get("data", answer)
    return [c["url"] for row in data.get("components") or [] for c in row["components"]
            if c.get("style") == 5]


def mask_png(size: tuple[int, int], box: tuple[int, int, int, int] | None,
             fill: int = 255) -> bytes:
    mask = Image.new("L", size, 0)
    if box is not None:
        mask.paste(fill, box)
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    return buf.getvalue()


class Browser:
    """A browser's view of a painter link: its own cookies, the page's nonce."""

    def __init__(self) -> None:
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.nonce: str | None = None

    async def open(self, url: str) -> tuple[int, str, dict]:
        async with self.session.get(url) as resp:
            text = await resp.text()
            match = re.search(r'name="paint-nonce" content="([^"]+)"', text)
            if match:
                self.nonce = match.group(1)
            return resp.status, text, dict(resp.headers)

    async def submit(self, url: str, mask: bytes, *, nonce: str | None = "page",
                     **fields: str) -> tuple[int, dict]:
        form = aiohttp.FormData()
        for name, value in {"prompt": "a wooden door", **fields}.items():
            form.add_field(name, value)
        form.add_field("mask", mask, filename="mask.png", content_type="image/png")
        headers = {"Origin": url.split("/paint/")[0]}
        if nonce is not None:
            headers["X-Paint-Nonce"] = self.nonce if nonce == "page" else nonce
        async with self.session.post(url, data=form, headers=headers) as resp:
            return resp.status, await resp.json()

    async def close(self) -> None:
        await self.session.close()


@pytest_asyncio.fixture(loop_scope="module")
async def browser():
    b = Browser()
    yield b
    await b.close()


def set_expiry(world, at: float) -> None:
    """Move every painter link's end (the bot's clock is the real one)."""
    db = sqlite3.connect(world.bot.env["DATABASE_PATH"])
    with db:
        db.execute("UPDATE paint_links SET expires_at = ?", (at,))
    db.close()


async def inpaint_link(world, channel: int, prompt: str, size=(512, 512), user=ALICE,
                       **options) -> str:
    ix = await world.discord.slash(user, channel, "inpaint",
                                   {"image": world.image(size=size), "prompt": prompt,
                                    **options})
    answer = await ix.response()
    assert answer["type"] == 4 and ix.ephemeral  # answered at once, privately
    (link,) = painter_links(answer)
    return link


async def test_inpaint_without_a_mask_gives_a_private_painter_link(world, browser):
    channel = world.channel()
    link = await inpaint_link(world, channel, "a blue door")
    assert link.startswith(world.bot.env["PUBLIC_BASE_URL"] + "/paint/")
    assert len(link.rsplit("/", 1)[1]) >= 40  # unguessable
    status, page, headers = await browser.open(link)
    assert status == 200
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["Referrer-Policy"] == "no-referrer"
    for name in ("Brush", "Eraser", "Brush size", "Undo", "Redo", "Clear", "Invert",
                 "Prompt", "Negative prompt", "Strength", "Samples", "Generate",
                 'aria-label="Mask"'):
        assert name in page
    assert "<script>" not in page and "https://" not in page  # nothing inline, no CDN
    async with browser.session.get(link + "/info") as resp:
        assert (await resp.json())["prompt"] == "a blue door"  # prefilled from the command


async def test_a_painted_mask_runs_an_inpaint_job_posted_in_the_channel(world, browser):
    channel = world.channel()
    link = await inpaint_link(world, channel, "a round window", seed=4242)
    await browser.open(link)
    status, answer = await browser.submit(link, mask_png((512, 512), (100, 100, 300, 260)),
                                          prompt="a round window", samples="1")
    assert status == 200 and answer["queued"] and answer["channel_url"].endswith(f"/{channel}")
    message = await world.discord.wait_for_message(channel, ready_for(ALICE, "a round window"),
                                                   timeout=20)
    assert f"<@{ALICE}>" in message["content"]
    (sent,) = submits_with(world, "a round window")
    assert sent.path == "/api/v6/images/inpaint"
    assert sent.body["seed"] == 4242  # the command's other options are kept
    mask = Image.open(io.BytesIO(world.discord.file_at(sent.body["mask_image"])))
    assert mask.size == (512, 512) and mask.mode == "L"
    assert mask.getpixel((200, 180)) == 255 and mask.getpixel((50, 50)) == 0

    # used: the link says so, and a second submission changes nothing
    status, page, _ = await browser.open(link)
    assert status == 410 and "already used" in page
    before = len(world.modelslab.submits)
    status, answer = await browser.submit(link, mask_png((512, 512), (0, 0, 50, 50)))
    assert status == 410 and "already used" in answer["error"]
    assert len(world.modelslab.submits) == before


async def test_forged_foreign_and_expired_links_are_refused_in_words(world, browser):
    base = world.bot.env["PUBLIC_BASE_URL"]
    status, page, _ = await browser.open(base + "/paint/" + "A" * 43)
    assert status == 404 and "This painter link is not valid." in page

    channel = world.channel()
    link = await inpaint_link(world, channel, "a tiled roof")
    await browser.open(link)
    stranger = Browser()
    try:
        status, page, _ = await stranger.open(link)  # someone else who got hold of the link
        assert status == 410 and "another browser" in page
        status, answer = await stranger.submit(link, mask_png((512, 512), (0, 0, 99, 99)),
                                               nonce="guess")
        assert status == 403
    finally:
        await stranger.close()
    # the member's own browser still has it
    status, _, _ = await browser.open(link)
    assert status == 200

    # Within a minute of the end, the page still opens but submitting is closed: the mask
    # could no longer be uploaded through the member's private reply in time.
    set_expiry(world, time.time() + 30)
    status, _, _ = await browser.open(link)
    assert status == 200
    status, answer = await browser.submit(link, mask_png((512, 512), (0, 0, 99, 99)))
    assert status == 410 and "expired" in answer["error"]

    set_expiry(world, 1)
    status, page, _ = await browser.open(link)
    assert status == 410 and ("This painter link has expired; ask for a new one with "
                              "Edit region.") in page
    status, answer = await browser.submit(link, mask_png((512, 512), (0, 0, 99, 99)))
    assert status == 410 and "expired" in answer["error"]
    assert not submits_with(world, "a tiled roof")


async def test_bad_uploads_are_refused_and_change_nothing(world, browser):
    channel = world.channel()
    link = await inpaint_link(world, channel, "a brick chimney")
    await browser.open(link)
    cases = [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * (11 * 1024 * 1024), 413, "too large"),
        (b"this is not an image", 400, "mask"),
        (mask_png((512, 512), None), 400, "Nothing is painted"),
        (mask_png((512, 512), (0, 0, 512, 512)), 400, "covers the whole image"),
    ]
    for data, code, words in cases:
        status, answer = await browser.submit(link, data, prompt="a brick chimney")
        assert status == code and words in answer["error"], (code, answer)
    status, answer = await browser.submit(link, mask_png((512, 512), (0, 0, 99, 99)),
                                          nonce=None, prompt="a brick chimney")
    assert status == 403
    assert not submits_with(world, "a brick chimney")
    # the link was not used up by any of that
    status, answer = await browser.submit(link, mask_png((512, 512), (200, 0, 300, 99)),
                                          prompt="a brick chimney")
    assert status == 200
    await world.discord.wait_for_message(channel, ready_for(ALICE, "a brick chimney"),
                                         timeout=20)


async def test_edit_region_on_an_inpainted_result_starts_from_its_mask(world, browser):
    channel = world.channel()
    link = await inpaint_link(world, channel, "a green shutter")
    await browser.open(link)
    first_mask = mask_png((512, 512), (10, 300, 200, 500))
    assert (await browser.submit(link, first_mask, prompt="a green shutter"))[0] == 200
    result = await world.discord.wait_for_message(channel, ready_for(ALICE, "a green shutter"),
                                                  timeout=20)
    assert "Edit region" in buttons(result)

    click = await world.discord.click(BOB, result, button(result, "Edit region"))
    answer = await click.response()
    assert click.ephemeral and "last mask" in answer["data"]["content"]
    (link,) = painter_links(answer)
    await browser.open(link)
    async with browser.session.get(link + "/info") as resp:
        info = await resp.json()
    assert info["prompt"] == "a green shutter" and info["has_mask"]
    async with browser.session.get(link + "/mask") as resp:
        assert resp.status == 200
        loaded = Image.open(io.BytesIO(await resp.read())).convert("L")
    assert loaded.getpixel((100, 400)) == 255 and loaded.getpixel((300, 100)) == 0

    status, _ = await browser.submit(link, mask_png((512, 512), (10, 300, 250, 500)),
                                     prompt="a red shutter")
    assert status == 200
    second = await world.discord.wait_for_message(channel, ready_for(BOB, "a red shutter"),
                                                  timeout=20)
    # an edit of that result: the source image is the result, named in the line under it
    (sent,) = submits_with(world, "a red shutter")
    assert world.discord.file_at(sent.body["init_image"]) == result["files"][0]["data"]
    first_job = re.search(r"job `([0-9a-zA-Z_-]{8})`", result["content"]).group(1)
    assert f"remix of `{first_job}`" in second["content"]


async def test_edit_region_message_menu(world, browser):
    channel = world.channel()
    image = world.image("street.png", size=(640, 480))
    posted = world.discord.post_user_message(channel, BOB, "fix the sign", attachments=[image])
    ix = await world.discord.message_command(ALICE, channel, "Edit region", posted)
    answer = await ix.response()
    assert ix.ephemeral
    (link,) = painter_links(answer)
    await browser.open(link)
    async with browser.session.get(link + "/image") as resp:
        assert await resp.read() == world.discord.file_at(image["url"])

    words = await world.discord.message_command(
        ALICE, channel, "Edit region", world.discord.post_user_message(channel, BOB, "hi"))
    assert "no image" in (await words.response())["data"]["content"]


# --- without PUBLIC_BASE_URL: a modal with a file upload ----------------------------------


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world_without_web(tmp_path_factory):
    world, stop = await start_world(tmp_path_factory.mktemp("noweb"), PUBLIC_BASE_URL="")
    yield world
    await stop()


async def test_without_a_public_server_a_modal_takes_the_mask(world_without_web):
    world = world_without_web
    channel = world.channel()
    ix = await world.discord.slash(ALICE, channel, "inpaint",
                                   {"image": world.image(size=(512, 512)),
                                    "prompt": "a stone arch"})
    await ix.response()
    assert ix.modal is not None
    kinds = [c.get("component", {}).get("type") for c in ix.modal["components"]]
    assert 19 in kinds  # a file upload
    mask = world.discord.add_attachment("mask.png", mask_png((256, 256), (64, 64, 192, 192)),
                                        "image/png")
    submit = await world.discord.submit_modal(ALICE, channel, ix.modal["custom_id"],
                                              {"Mask": [mask]})
    await submit.response()
    await world.discord.wait_for_message(channel, ready_for(ALICE, "a stone arch"), timeout=30)
    (sent,) = submits_with(world, "a stone arch")
    sent_mask = Image.open(io.BytesIO(world.discord.file_at(sent.body["mask_image"])))
    assert sent_mask.size == (512, 512)
    assert sent_mask.getpixel((256, 256)) == 255 and sent_mask.getpixel((10, 10)) == 0


async def test_edit_region_on_a_result_with_several_images_links_each(world, browser):
    channel = world.channel()
    await world.discord.slash(ALICE, channel, "img2img", {
        "image": world.image(), "prompt": "two teapots", "samples": 2})
    result = await world.discord.wait_for_message(channel, ready_for(ALICE, "two teapots"),
                                                  timeout=20)
    click = await world.discord.click(ALICE, result, button(result, "Edit region"))
    links = painter_links(await click.response())
    assert len(links) == 2
    for link, file in zip(links, result["files"], strict=True):
        assert (await browser.open(link))[0] == 200
        async with browser.session.get(link + "/image") as resp:
            assert await resp.read() == file["data"]


async def test_the_painter_shares_the_members_cooldown(world, browser):
    """A member out of turns is refused on the page in words, and nothing is sent; a page
    refused for another reason gives the turn back."""
    from tests.e2e.test_quotas import command

    channel = world.channel()
    await command(world, ALICE, channel, "config cooldown", {"burst": 1, "seconds": 600})
    try:
        first = await inpaint_link(world, channel, "a copper kettle")
        second = await inpaint_link(world, channel, "a tin kettle")
        await browser.open(first)
        # refused for an empty mask: the turn is not spent
        status, answer = await browser.submit(first, mask_png((512, 512), None),
                                              prompt="a copper kettle")
        assert status == 400 and "Nothing is painted" in answer["error"]
        status, answer = await browser.submit(first, mask_png((512, 512), (0, 0, 99, 99)),
                                              prompt="a copper kettle")
        assert status == 200 and answer["queued"]
        other = Browser()
        try:
            await other.open(second)
            status, answer = await other.submit(second, mask_png((512, 512), (0, 0, 99, 99)),
                                                prompt="a tin kettle")
        finally:
            await other.close()
        assert status == 400 and "going a bit fast" in answer["error"]
        assert "<t:" not in answer["error"]  # a time in words on a web page
        assert not submits_with(world, "a tin kettle")
    finally:
        await command(world, ALICE, channel, "config cooldown", {"burst": 0, "seconds": 0})
