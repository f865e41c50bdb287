"""Secrets go nowhere else, and outbound requests reach only the public internet: the real
bot process against the local fakes. Every connection here is on loopback; the refusals are
made before any connection (the address is checked first)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import pytest_asyncio
from aiohttp import web

from tests.e2e.conftest import ALICE, start_world
from tests.e2e.harness import ROOT, SETTING_PREFIXES, free_port
from tests.e2e.test_quotas import command

pytestmark = pytest.mark.asyncio(loop_scope="module")


class Elsewhere:
    """A second server on loopback standing for "another host": it records whatever reaches it."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _record(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path_qs, await request.read()))
        return web.json_response({"status": "success", "id": 1, "output": []})

    async def __aenter__(self) -> Elsewhere:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._record)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def failure_shown(ix, words: str, within: float = 30) -> str:
    shown = await ix.wait_original(lambda m: words in m["content"], timeout=within)
    return shown["content"]


# --- the ModelsLab key is never sent to another host -----------------------------------------

@pytest.mark.parametrize("status", [307, 308])
async def test_a_redirected_submit_sends_the_key_nowhere_else(world, status):
    channel = world.channel()
    async with Elsewhere() as elsewhere:
        world.modelslab.script("submit", status, {"status": "moved"},
                               headers={"Location": elsewhere.url + "/api/v6/images/img2img"})
        ix = await world.discord.slash(ALICE, channel, "img2img", {
            "image": world.image(), "prompt": f"redirected {status}"})
        text = await failure_shown(ix, "redirect")
        await asyncio.sleep(0.5)  # room for a late request, were one on its way
        assert elsewhere.requests == []  # neither the key nor the webhook URL went there
    assert "the key was not sent there" in text and "not charged" in text
    assert world.discord.messages(channel, include_ephemeral=False) == []
    assert "used **0** of" in await command(world, ALICE, channel, "quota")


# --- base URLs are https except on loopback ---------------------------------------------------

def run_bot(tmp_path, **settings: str) -> subprocess.CompletedProcess:
    """`python -m bot` with Discord pointed at a closed loopback port (nothing else is ever
    contacted: a refused setting stops it before any network)."""
    closed = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(SETTING_PREFIXES)}
    env.update({
        "DISCORD_TOKEN": "t", "MODELSLAB_API_KEY": "k",
        "DISCORD_API_BASE": f"http://127.0.0.1:{closed}/api/v10",
        "DISCORD_GATEWAY_URL": f"ws://127.0.0.1:{closed}/gateway",
        "DISCORD_CDN_BASE": f"http://127.0.0.1:{closed}/cdn",
        "WEB_HOST": "127.0.0.1", "WEB_PORT": str(free_port()),
        "DATABASE_PATH": str(tmp_path / "bot.sqlite3"), "PYTHONPATH": str(ROOT),
        **settings})
    try:
        return subprocess.run([sys.executable, "-m", "bot"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the bot started instead of refusing: {exc.stderr!r}") from None


@pytest.mark.parametrize(("name", "value"), [
    ("MODELSLAB_BASE_URL", "http://modelslab.com"),
    ("MODELSLAB_BASE_URL", "http://10.0.0.8:8000"),
    ("PUBLIC_BASE_URL", "http://remixer.example.org"),
])
async def test_a_plain_http_url_off_loopback_is_refused_at_start_up(tmp_path, name, value):
    result = run_bot(tmp_path, **{name: value})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Remixer cannot start") and name in lines[0]
    assert "https://" in lines[0] and "Traceback" not in result.stderr


# --- output links from a fetch or a submit answer are checked like a webhook's ---------------

@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def polling_world(tmp_path_factory):
    """A bot without PUBLIC_BASE_URL: every result comes from a fetch (or the submit)."""
    world, stop = await start_world(tmp_path_factory.mktemp("polling"), PUBLIC_BASE_URL="")
    yield world
    await stop()


def elsewhere_links(body: dict) -> dict:
    """The same outputs, on a host name that is not on the output-host list (it still
    resolves to the fake's CDN on loopback)."""
    output = body.get("output")
    if isinstance(output, list):
        body = {**body, "output": [u.replace("//127.0.0.1:", "//localhost:") for u in output]}
    return body


@pytest.mark.parametrize("kind", ["fetch", "submit"])
async def test_outputs_off_the_output_hosts_are_not_downloaded(polling_world, kind):
    world = polling_world
    channel = world.channel()
    world.modelslab.reset()
    if kind == "submit":
        world.modelslab.mode = "success"  # the submit's own answer carries the outputs
    world.modelslab.transform_next(kind, elsewhere_links, times=100)
    try:
        ix = await world.discord.slash(ALICE, channel, "img2img", {
            "image": world.image(), "prompt": f"outputs elsewhere via {kind}"})
        text = await failure_shown(ix, "output hosts", within=60)
    finally:
        world.modelslab.reset()
        world.modelslab.mode = "processing"
    assert "could not be made" in text and "not downloaded" in text
    assert world.modelslab.cdn_requests == []  # nothing was fetched from there
    assert world.discord.messages(channel, include_ephemeral=False) == []
    assert "used **0** of" in await command(world, ALICE, channel, "quota")


# --- downloads go only to public addresses ----------------------------------------------------

@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def public_only_world(tmp_path_factory):
    """A bot as in production: ALLOW_LOOPBACK_OUTBOUND off. The fakes are on loopback, so
    every download or API request it tries must be refused before connecting."""
    world, stop = await start_world(tmp_path_factory.mktemp("public"),
                                    ALLOW_LOOPBACK_OUTBOUND="0")
    yield world
    await stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_an_attachment_on_a_non_public_address_is_not_fetched(public_only_world, host):
    world = public_only_world
    channel = world.channel()
    image = world.image()
    image = {**image, "url": image["url"].replace("//127.0.0.1:", f"//{host}:"),
             "proxy_url": image["proxy_url"].replace("//127.0.0.1:", f"//{host}:")}
    ix = await world.discord.slash(ALICE, channel, "img2img", {
        "image": image, "prompt": f"from {host}"})
    text = await failure_shown(ix, "not on the public internet")
    assert "did not download it" in text
    assert world.modelslab.requests == []  # nothing was submitted either
    assert "used **0** of" in await command(world, ALICE, channel, "quota")
