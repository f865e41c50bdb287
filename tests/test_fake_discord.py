"""The fake Discord works with the real discord.py (no bot code): a tiny commands.Bot defined
here is pointed at it, logs in, syncs its commands, and is driven only through interactions.

One more test runs a minimal discord.py client as a subprocess, SIGKILLs it and starts another,
as the end-to-end tests will do with ``python -m bot``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import io
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
import yarl
from discord import app_commands
from discord.ext import commands

from tests.fakes import ClientRefused, FakeDiscord, InteractionRecord, png_bytes, png_for

GUILD, CHANNEL, OTHER_CHANNEL = 10, 20, 21
ALICE, BOB = 1, 2  # alice: owner and admin; bob: an ordinary member
APP = 1100

SCHEDULERS = ["DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"]


# ------------------------------------------------------------------------------------------
# A tiny bot: one slash command with an attachment, a dynamic button, two modals (action row
# and label layouts), a message context menu, a subcommand group, and a command that hands
# its interaction to the test.
# ------------------------------------------------------------------------------------------


class RemixButton(discord.ui.DynamicItem[discord.ui.Button], template=r"remix:(?P<job>[0-9]+)"):
    def __init__(self, job: int) -> None:
        super().__init__(
            discord.ui.Button(label="Remix", style=discord.ButtonStyle.primary,
                              custom_id=f"remix:{job}")
        )
        self.job = job

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: Any, /
    ) -> RemixButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        tiny(interaction).events.append(("click", self.job, interaction.user.id))
        await interaction.response.send_modal(PromptModal(self.job))


class PromptModal(discord.ui.Modal, title="Remix with a new prompt"):
    prompt: discord.ui.TextInput[Any] = discord.ui.TextInput(label="Prompt", max_length=200)

    def __init__(self, job: int) -> None:
        super().__init__(custom_id=f"prompt:{job}")
        self.job = job

    async def on_submit(self, interaction: discord.Interaction) -> None:
        tiny(interaction).events.append(("modal", self.job, self.prompt.value))
        await interaction.response.send_message(f"remixing {self.job}: {self.prompt.value}")


class RenameModal(discord.ui.Modal, title="Rename"):
    def __init__(self) -> None:
        super().__init__(custom_id="rename")
        self.name_input: discord.ui.TextInput[Any] = discord.ui.TextInput(custom_id="name")
        self.add_item(discord.ui.Label(text="New name", component=self.name_input))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        tiny(interaction).events.append(("rename", self.name_input.value))
        await interaction.response.send_message("renamed", ephemeral=True)


@app_commands.command(name="img2img", description="Remix an image")
@app_commands.describe(image="The image", prompt="What to make of it")
async def img2img(
    interaction: discord.Interaction,
    image: discord.Attachment,
    prompt: str,
    strength: app_commands.Range[float, 0.0, 1.0] = 0.5,
    scheduler: str | None = None,
) -> None:
    bot = tiny(interaction)
    data = await image.read()
    bot.events.append(("img2img", image, data, prompt, strength, scheduler))
    await interaction.response.defer(thinking=True)
    view = discord.ui.View(timeout=None)
    view.add_item(RemixButton(7))
    await interaction.followup.send(
        f"done: {prompt}", file=discord.File(io.BytesIO(data), filename="remix.png"), view=view
    )


@img2img.autocomplete("scheduler")
async def scheduler_choices(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    wanted = current.lower()
    return [app_commands.Choice(name=s, value=s) for s in SCHEDULERS if wanted in s.lower()]


@app_commands.command(name="secret", description="Answer privately")
async def secret(interaction: discord.Interaction) -> None:
    await interaction.response.send_message("only you can see this", ephemeral=True)


@app_commands.command(name="rename", description="Open the rename modal")
async def rename(interaction: discord.Interaction) -> None:
    await interaction.response.send_modal(RenameModal())


@app_commands.command(name="hold", description="Hand the interaction to the test")
async def hold(interaction: discord.Interaction) -> None:
    tiny(interaction).held.put_nowait(interaction)


config = app_commands.Group(name="config", description="Server settings")


@config.command(name="show", description="Show the settings")
async def config_show(interaction: discord.Interaction, verbose: bool = False) -> None:
    await interaction.response.send_message(f"settings (verbose={verbose})", ephemeral=True)


@app_commands.context_menu(name="Remix image")
async def remix_image(interaction: discord.Interaction, message: discord.Message) -> None:
    data = await message.attachments[0].read()
    tiny(interaction).events.append(("menu", message.id, message.content, data))
    await interaction.response.send_message(f"remixing {message.attachments[0].filename}",
                                            ephemeral=True)


class VoteView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=60)
        self.votes = 0

    @discord.ui.button(label="Up", custom_id="vote:up")
    async def up(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        self.votes += 1
        await interaction.response.edit_message(content=f"votes: {self.votes}", view=self)

    @discord.ui.button(label="Close", custom_id="vote:close")
    async def close(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.defer()
        for item in self.children:
            assert isinstance(item, (discord.ui.Button, discord.ui.Select))
            item.disabled = True
        await interaction.edit_original_response(content="closed", view=self)
        self.stop()

    @discord.ui.select(custom_id="vote:size", options=[
        discord.SelectOption(label="Small", value="512"),
        discord.SelectOption(label="Large", value="1024")])
    async def size(self, interaction: discord.Interaction, select: discord.ui.Select[Any]) -> None:
        await interaction.response.send_message(f"size {select.values[0]}", ephemeral=True)


@app_commands.command(name="vote", description="A message with buttons and a select")
async def vote(interaction: discord.Interaction) -> None:
    await interaction.response.send_message("votes: 0", view=VoteView())


class TinyBot(commands.Bot):
    def __init__(self) -> None:
        super().__init__(command_prefix="!", intents=discord.Intents(guilds=True),
                         help_command=None)
        self.events: list[tuple[Any, ...]] = []
        self.held: asyncio.Queue[discord.Interaction] = asyncio.Queue()

    async def setup_hook(self) -> None:
        self.add_dynamic_items(RemixButton)
        for command in (img2img, secret, rename, hold, vote, config, remix_image):
            self.tree.add_command(command)
        await self.tree.sync()


def tiny(interaction: discord.Interaction) -> TinyBot:
    assert isinstance(interaction.client, TinyBot)
    return interaction.client


# ------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------


@dataclass
class World:
    fake: FakeDiscord
    bot: TinyBot


@contextlib.contextmanager
def discord_pointed_at(fake: FakeDiscord) -> Iterator[None]:
    """The three redirects, exactly as the bot process will set them, restored afterwards."""
    saved = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
             discord.asset.Asset.BASE)
    discord.http.Route.BASE = f"{fake.base_url}/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    discord.asset.Asset.BASE = f"{fake.base_url}/cdn"
    try:
        yield
    finally:
        (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
         discord.asset.Asset.BASE) = saved


def populate(fake: FakeDiscord) -> None:
    fake.add_guild(guild_id=GUILD, name="Remix Club", owner_id=ALICE)
    fake.add_channel(guild_id=GUILD, channel_id=CHANNEL, name="general")
    fake.add_channel(guild_id=GUILD, channel_id=OTHER_CHANNEL, name="showcase")
    fake.add_member(guild_id=GUILD, user_id=ALICE, name="alice",
                    permissions=discord.Permissions.all().value)
    fake.add_member(guild_id=GUILD, user_id=BOB, name="bob")


@contextlib.asynccontextmanager
async def running(fake: FakeDiscord) -> AsyncIterator[TinyBot]:
    bot = TinyBot()
    runner = asyncio.create_task(bot.start(fake.token))
    try:
        await fake.wait_until_ready(timeout=10, commands=True)
        yield bot
    finally:
        await bot.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(runner, 5)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with FakeDiscord(token="test-bot-token", application_id=APP, bot_user_id=APP) as fake:
        populate(fake)
        with discord_pointed_at(fake):
            async with running(fake) as bot:
                yield World(fake, bot)
        assert fake.errors == []


async def eventually(probe: Any, within: float = 5.0) -> Any:
    """Poll ``probe()`` until it returns something truthy (for state discord.py updates)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not (result := probe()):
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)
    return result


async def slash_img2img(world: World) -> tuple[InteractionRecord, dict[str, Any], bytes]:
    source = png_for("cat", 48)
    att = world.fake.add_attachment(filename="cat.png", data=source, content_type="image/png")
    ix = await world.fake.slash(BOB, CHANNEL, "img2img",
                                options={"prompt": "a fox", "image": att, "strength": 0.25})
    [message] = await ix.followups(n=1, timeout=5)
    return ix, message, source


# ------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------


async def test_login_gateway_and_command_sync(world: World) -> None:
    fake = world.fake
    session = fake.active_session()
    assert session is not None
    assert session.compress in ("zlib-stream", "zstd-stream")
    assert session.intents == discord.Intents(guilds=True).value
    assert session.sent_events[:2] == ["READY", "GUILD_CREATE"]
    assert fake.command_syncs and fake.command_syncs[0][:2] == ("global", None)

    cmds = fake.commands
    assert set(cmds) == {"img2img", "secret", "rename", "hold", "vote", "config", "Remix image"}
    options = {o["name"]: o for o in cmds["img2img"]["options"]}
    assert options["image"]["type"] == 11 and options["image"]["required"] is True
    assert options["strength"]["type"] == 10 and options["strength"]["max_value"] == 1.0
    assert options["scheduler"]["autocomplete"] is True
    assert cmds["Remix image"]["type"] == 3
    assert cmds["config"]["options"][0]["type"] == 1  # a subcommand

    guild = world.bot.get_guild(GUILD)
    assert guild is not None and guild.name == "Remix Club"
    assert guild.get_channel(CHANNEL) is not None
    assert guild.me.id == APP

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{fake.base_url}/api/v10/users/@me",
                            headers={"Authorization": f"Bot {fake.token}"}) as resp:
            assert resp.headers["Content-Type"] == "application/json"
            assert (await resp.json())["id"] == str(APP)
        async with http.get(f"{fake.base_url}/api/v10/nothing/here") as resp:
            assert resp.status == 404
            assert (await resp.json())["code"] == 0
    assert any(c.path == "/nothing/here" and c.status == 404 for c in fake.rest_log)


async def test_slash_attachment_defer_and_followup_file(world: World) -> None:
    fake = world.fake
    ix, message, source = await slash_img2img(world)

    event = next(e for e in world.bot.events if e[0] == "img2img")
    _, attachment, data, prompt, strength, scheduler = event
    assert isinstance(attachment, discord.Attachment)
    assert (attachment.filename, attachment.width, attachment.height) == ("cat.png", 48, 48)
    assert data == source
    assert (prompt, strength, scheduler) == ("a fox", 0.25, None)

    assert (await ix.response())["type"] == 5
    assert ix.deferred and not ix.ephemeral
    sent = ix.payload  # INTERACTION_CREATE as Discord builds it
    assert sent["type"] == 2 and sent["version"] == 1 and sent["context"] == 0
    assert sent["id"] == str(ix.id) and sent["application_id"] == str(APP)
    assert sent["guild_id"] == str(GUILD) and sent["channel"]["id"] == str(CHANNEL)
    assert sent["member"]["user"]["id"] == str(BOB) and sent["member"]["permissions"].isdigit()
    assert sent["attachment_size_limit"] == fake.attachment_size_limit
    assert sent["entitlements"] == [] and sent["authorizing_integration_owners"] == {
        "0": str(GUILD)}
    [image_option] = [o for o in sent["data"]["options"] if o["name"] == "image"]
    assert image_option["value"] in sent["data"]["resolved"]["attachments"]
    assert ix.response_latency is not None and 0 <= ix.response_latency < 3
    # The first followup after a public defer replaces the placeholder, as Discord does.
    assert ix.original is message
    assert not message["flags"] & 128 and not message["flags"] & 64
    assert message["content"] == "done: a fox"
    assert message["author"]["id"] == str(APP)
    [file] = message["files"]
    assert file["filename"] == "remix.png" and file["data"] == source and not file["spoiler"]
    assert message["attachments"][0]["content_type"] == "image/png"
    assert message["components"][0]["components"][0]["custom_id"] == "remix:7"
    assert fake.messages(CHANNEL) == [message]

    # Files the bot uploaded are served at their attachment URL (a later remix downloads them).
    async with aiohttp.ClientSession() as http, http.get(message["attachments"][0]["url"]) as r:
        assert r.status == 200 and await r.read() == source
    callback = next(c for c in fake.rest_log if c.path.endswith("/callback"))
    assert callback.query.get("with_response") == "1"


async def test_ephemeral_response(world: World) -> None:
    ix = await world.fake.slash(BOB, CHANNEL, "secret")
    body = await ix.response()
    assert body["type"] == 4 and body["data"]["flags"] & 64
    assert ix.ephemeral
    assert ix.original is not None and ix.original["flags"] & 64
    assert world.fake.messages(CHANNEL, include_ephemeral=False) == []


async def test_button_click_and_modal_round_trip(world: World) -> None:
    fake = world.fake
    _, message, _ = await slash_img2img(world)
    click = await fake.click(ALICE, message, "remix:7")
    await click.response()
    assert ("click", 7, ALICE) in world.bot.events
    modal = click.modal
    assert modal is not None and modal["custom_id"] == "prompt:7"
    assert modal["title"] == "Remix with a new prompt"

    submit = await fake.submit_modal(ALICE, CHANNEL, "prompt:7", values={"Prompt": "a wolf"})
    body = await submit.response()
    assert body["type"] == 4 and not submit.ephemeral
    assert ("modal", 7, "a wolf") in world.bot.events
    assert submit.payload["message"]["id"] == message["id"]  # opened from that button
    reply = await fake.wait_for_message(CHANNEL, lambda m: m["content"].startswith("remixing"))
    assert reply["content"] == "remixing 7: a wolf"

    with pytest.raises(ClientRefused):
        await fake.click(ALICE, message, "remix:8")


async def test_label_modal_round_trip(world: World) -> None:
    ix = await world.fake.slash(ALICE, CHANNEL, "rename")
    await ix.response()
    assert ix.modal is not None and ix.modal["components"][0]["type"] == 18
    submit = await world.fake.submit_modal(ALICE, CHANNEL, "rename", values={"New name": "Foxes"})
    await submit.response()
    assert submit.ephemeral
    assert ("rename", "Foxes") in world.bot.events


async def test_message_context_menu(world: World) -> None:
    fake = world.fake
    source = png_bytes(32, 16)
    att = fake.add_attachment("dog.png", source)
    posted = fake.post_user_message(CHANNEL, BOB, "look at this", attachments=[att])
    assert posted["attachments"][0]["id"] != att["id"]

    ix = await fake.message_command(ALICE, CHANNEL, "Remix image", posted)
    body = await ix.response()
    assert body["type"] == 4 and ix.ephemeral
    assert ("menu", int(posted["id"]), "look at this", source) in world.bot.events
    assert ix.payload["data"]["target_id"] == posted["id"]


async def test_autocomplete_and_subcommands(world: World) -> None:
    fake = world.fake
    ix = await fake.autocomplete(BOB, CHANNEL, "img2img",
                                 options={"prompt": "x", "scheduler": "euler"},
                                 focused="scheduler")
    assert ix.choices is not None
    assert [c["value"] for c in ix.choices] == SCHEDULERS[1:]

    one = await fake.slash(BOB, CHANNEL, "config show", options={"verbose": True})
    two = await fake.slash(BOB, CHANNEL, "config", options={"show": {}})
    assert (await one.response())["data"]["content"] == "settings (verbose=True)"
    assert (await two.response())["data"]["content"] == "settings (verbose=False)"

    with pytest.raises(ClientRefused):  # the client enforces max_value...
        await fake.slash(BOB, CHANNEL, "img2img",
                         options={"prompt": "x", "image": fake.add_attachment("a.png", png_bytes()),
                                  "strength": 2.0})
    with pytest.raises(ClientRefused):  # ...and required options
        await fake.slash(BOB, CHANNEL, "img2img", options={"prompt": "x"})


async def test_expired_token_and_late_answer(world: World) -> None:
    fake, bot = world.fake, world.bot

    # A token expired by hand: the followup fails the way discord.py raises it.
    ix = await fake.slash(BOB, CHANNEL, "hold")
    interaction = await asyncio.wait_for(bot.held.get(), 5)
    await interaction.response.defer(ephemeral=True)
    assert ix.ephemeral
    fake.expire(ix)
    with pytest.raises(discord.HTTPException) as caught:
        await interaction.followup.send("too late")
    assert caught.value.status == 401 and caught.value.code == 50027

    # Tokens expire 15 minutes after the interaction, on the fake clock.
    ix2 = await fake.slash(BOB, CHANNEL, "hold")
    interaction2 = await asyncio.wait_for(bot.held.get(), 5)
    await interaction2.response.defer()
    await interaction2.edit_original_response(content="working")
    assert ix2.original is not None and ix2.original["content"] == "working"
    fake.advance(15 * 60)
    with pytest.raises(discord.HTTPException) as caught:
        await interaction2.edit_original_response(content="done")
    assert caught.value.status == 401

    # The first answer must come within 3 s.
    await fake.slash(BOB, CHANNEL, "hold")
    interaction3 = await asyncio.wait_for(bot.held.get(), 5)
    fake.advance(3.5)
    with pytest.raises(discord.NotFound) as late:
        await interaction3.response.send_message("hello")
    assert late.value.code == 10062


async def test_send_denied_then_server_errors(world: World) -> None:
    fake, bot = world.fake, world.bot
    channel = bot.get_channel(CHANNEL)
    assert isinstance(channel, discord.TextChannel)

    fake.deny(CHANNEL, "send")
    with pytest.raises(discord.Forbidden) as caught:
        await channel.send("hello")
    assert caught.value.code == 50013
    ix = await fake.slash(BOB, CHANNEL, "secret")  # interaction answers still work
    await ix.response()
    assert not int(ix.payload["app_permissions"]) & discord.Permissions(send_messages=True).value
    fake.allow(CHANNEL, "send")

    fake.fail_next("POST", rf"/channels/{CHANNEL}/messages$", 500)
    sent = await channel.send("after a 500")
    fake.fail_next("POST", rf"/channels/{CHANNEL}/messages$", 429, retry_after=0.05)
    sent2 = await channel.send("after a 429")
    statuses = [c.status for c in fake.rest_log
                if c.method == "POST" and c.path == f"/channels/{CHANNEL}/messages"]
    assert statuses == [403, 500, 200, 429, 200]
    assert [m["content"] for m in fake.messages(CHANNEL, include_ephemeral=False)] == [
        "after a 500", "after a 429"]
    assert sent.id < sent2.id


async def test_bot_reconnects_in_the_same_process() -> None:
    async with FakeDiscord() as fake:
        populate(fake)
        with discord_pointed_at(fake):
            async with running(fake):
                pass
            await fake.wait_disconnected(5)
            before = len(fake.sessions)
            async with running(fake):
                session = await fake.wait_until_ready(5, after=before)
                assert session.index == before + 1
                ix = await fake.slash(BOB, CHANNEL, "secret")
                assert (await ix.response())["type"] == 4
        assert fake.errors == []


CLIENT_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import discord, yarl
    from discord import app_commands

    discord.http.Route.BASE = os.environ["DISCORD_API_BASE"]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["DISCORD_GATEWAY_URL"])
    discord.asset.Asset.BASE = os.environ["DISCORD_CDN_BASE"]

    class Client(discord.Client):
        def __init__(self):
            super().__init__(intents=discord.Intents(guilds=True))
            self.tree = app_commands.CommandTree(self)

        async def setup_hook(self):
            @self.tree.command(name="ping", description="pid")
            async def ping(interaction: discord.Interaction) -> None:
                await interaction.response.send_message(f"pong {os.getpid()}")
            if sys.argv[1] == "sync":
                await self.tree.sync()

    Client().run(os.environ["DISCORD_TOKEN"], log_handler=None)
    """
)


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


async def test_subprocess_killed_and_restarted(tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    async with FakeDiscord() as fake:
        populate(fake)
        env = {**os.environ, **fake.bot_env()}

        @contextlib.asynccontextmanager
        async def client_process(mode: str) -> AsyncIterator[asyncio.subprocess.Process]:
            log_path = tmp_path / f"client-{mode}.log"
            with log_path.open("wb") as log:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, str(script), mode, env=env, preexec_fn=_die_with_parent,
                    stdout=log, stderr=log,
                )
                try:
                    yield process
                except BaseException:
                    print(log_path.read_text(errors="replace"))
                    raise
                finally:
                    if process.returncode is None:
                        process.send_signal(signal.SIGKILL)  # its own pid, as a crash would
                    await process.wait()

        async with client_process("sync") as first:
            await fake.wait_until_ready(15, commands=True)
            ix = await fake.slash(BOB, CHANNEL, "ping")
            assert (await ix.response())["data"]["content"] == f"pong {first.pid}"
        await fake.wait_disconnected(5)

        before = len(fake.sessions)
        async with client_process("nosync") as second:  # unchanged commands: no sync
            await fake.wait_until_ready(15, commands=True, after=before)
            ix = await fake.slash(BOB, CHANNEL, "ping")
            assert (await ix.response())["data"]["content"] == f"pong {second.pid}"
        assert len(fake.command_syncs) == 1
        assert fake.errors == []


async def test_component_update_deferred_update_and_select(world: World) -> None:
    fake = world.fake
    ix = await fake.slash(BOB, CHANNEL, "vote")
    message = await ix.wait_original()
    assert message["type"] == 20 and message["interaction_metadata"]["name"] == "vote"

    up = await fake.click(ALICE, message, "vote:up")
    assert (await up.response())["type"] == 7
    assert fake.message(message["id"])["content"] == "votes: 1"
    assert up.original is fake.message(message["id"])

    pick = await fake.click(BOB, message, "vote:size", values=["1024"])
    assert (await pick.response())["data"]["content"] == "size 1024" and pick.ephemeral
    with pytest.raises(ClientRefused):
        await fake.click(BOB, message, "vote:size", values=["2048"])

    close = await fake.click(ALICE, message, "vote:close")
    assert (await close.response())["type"] == 6
    closed = await close.wait_original(lambda m: m["content"] == "closed")
    buttons = [c for row in closed["components"] for c in row["components"]]
    assert all(b.get("disabled") for b in buttons)
    assert [v["content"] for v in fake.message_history(message["id"])] == [
        "votes: 0", "votes: 1", "closed"]
    with pytest.raises(ClientRefused):  # the client does not let anyone click a disabled button
        await fake.click(ALICE, message, "vote:up")


async def test_followup_rules_after_defer(world: World) -> None:
    fake, bot = world.fake, world.bot
    ix = await fake.slash(BOB, CHANNEL, "hold")
    interaction = await asyncio.wait_for(bot.held.get(), 5)
    with pytest.raises(discord.NotFound) as early:  # no webhook before the first answer
        await interaction.followup.send("too early")
    assert early.value.code == 10015

    await interaction.response.defer()  # public "thinking"
    assert ix.original is not None and ix.original["flags"] & 128  # loading placeholder
    first = await interaction.followup.send("refused", ephemeral=True, wait=True)
    second = await interaction.followup.send("just for you", ephemeral=True, wait=True)
    # The placeholder became the first followup and stayed public, whatever its flags said.
    assert first.id == ix.original_id and not first.flags.ephemeral
    assert not ix.original["flags"] & (64 | 128)
    assert second.flags.ephemeral and second.id != first.id
    assert [m["id"] for m in await ix.followups(2)] == [str(first.id), str(second.id)]

    # A second answer is refused by Discord (discord.py itself refuses first, so go raw).
    callback = f"{fake.base_url}/api/v10/interactions/{ix.id}/{ix.token}/callback"
    async with aiohttp.ClientSession() as http, http.post(callback, json={"type": 5}) as resp:
        assert resp.status == 400 and (await resp.json())["code"] == 40060
    assert ix.responses[-1]["refused"]["code"] == 40060 and ix.response_type == 5


async def test_channel_messages_files_replies_and_edits(world: World) -> None:
    fake, bot = world.fake, world.bot
    channel = bot.get_channel(CHANNEL)
    assert isinstance(channel, discord.TextChannel)
    posted = fake.post_user_message(CHANNEL, BOB, "make it blue <@1100>")
    user_message = await channel.fetch_message(int(posted["id"]))
    assert user_message.author.id == BOB

    sent = await user_message.reply(
        "here", files=[discord.File(io.BytesIO(b"a" * 10), "notes.txt"),
                       discord.File(io.BytesIO(png_bytes()), "out.png", spoiler=True)])
    stored = fake.message(sent.id)
    assert stored["type"] == 19 and stored["referenced_message"]["id"] == posted["id"]
    assert [u["id"] for u in stored["mentions"]] == [str(BOB)]
    assert [f["spoiler"] for f in stored["files"]] == [False, True]
    assert stored["files"][1]["filename"] == "SPOILER_out.png"
    assert sent.attachments[1].content_type == "image/png" and sent.attachments[1].width == 64

    edited = await sent.edit(content="here, v2", attachments=[sent.attachments[1]])
    assert [a.filename for a in edited.attachments] == ["SPOILER_out.png"]
    assert fake.message(sent.id)["edited_timestamp"] is not None
    assert [f["filename"] for f in fake.message(sent.id)["files"]] == ["SPOILER_out.png"]
    history = [m.id async for m in channel.history(limit=10)]
    assert history == [sent.id, user_message.id]

    with pytest.raises(discord.HTTPException) as empty:
        await channel.send(content="")
    assert empty.value.code == 50006
    big = discord.File(io.BytesIO(b"x" * (fake.attachment_size_limit + 1)), "big.bin")
    with pytest.raises(discord.HTTPException) as too_big:
        await channel.send(file=big)
    assert too_big.value.status == 413
    with pytest.raises(discord.Forbidden):
        await user_message.edit(content="not mine")
    await sent.delete()
    assert [m["id"] for m in fake.messages(CHANNEL)] == [posted["id"]]
    with pytest.raises(discord.NotFound):
        await channel.fetch_message(sent.id)


async def test_attachment_urls_expire_and_are_resigned(world: World) -> None:
    fake, bot = world.fake, world.bot
    att = fake.add_attachment("cat.png", png_for("cat"))
    posted = fake.post_user_message(CHANNEL, BOB, "", attachments=[att])
    old_url = posted["attachments"][0]["url"]
    fake.advance(25 * 3600)
    async with aiohttp.ClientSession() as http:
        async with http.get(old_url) as resp:
            assert resp.status == 404
        channel = bot.get_channel(CHANNEL)
        assert isinstance(channel, discord.TextChannel)
        fresh = await channel.fetch_message(int(posted["id"]))
        assert fresh.attachments[0].url != old_url
        assert await fresh.attachments[0].read() == png_for("cat")


async def test_world_changes_after_ready(world: World) -> None:
    fake, bot = world.fake, world.bot
    fake.add_guild(guild_id=30, name="Second", owner_id=BOB)
    fake.add_channel(guild_id=30, channel_id=31, name="art", nsfw=True)
    channel = await eventually(lambda: bot.get_channel(31))
    assert isinstance(channel, discord.TextChannel) and channel.nsfw
    assert channel.guild.name == "Second"
    ix = await fake.slash(BOB, 31, "secret")  # the owner of the new guild
    assert (await ix.response())["type"] == 4
    with pytest.raises(ClientRefused):
        await fake.slash(ALICE, 31, "secret")  # not a member there


async def test_gateway_resume_and_refusals() -> None:
    async with FakeDiscord() as fake:
        populate(fake)
        with discord_pointed_at(fake):
            async with running(fake):
                first = fake.active_session()
                assert first is not None
                old_session_id = first.session_id
                await fake.drop_gateway(4000)
                resumed = await fake.wait_until_ready(5, after=first.index)
                assert resumed.resumed and resumed.session_id == old_session_id
                ix = await fake.slash(BOB, CHANNEL, "secret")
                assert (await ix.response())["type"] == 4

            bad = TinyBot()
            with pytest.raises(discord.LoginFailure):
                await bad.start("wrong-token")
            await bad.close()

            greedy = commands.Bot(command_prefix="!", intents=discord.Intents.all())
            with pytest.raises(discord.PrivilegedIntentsRequired):
                await asyncio.wait_for(greedy.start(fake.token), 10)
            await greedy.close()
            assert fake.sessions[-1].close_code == 4014
        assert fake.errors == []
