"""A local fake of Discord (REST API v10 and the gateway), for end-to-end tests of the bot.

``FakeDiscord`` runs one real aiohttp server on 127.0.0.1 (a free port). An unmodified
discord.py client is pointed at it by three class attributes (see :meth:`FakeDiscord.bot_env`):

* ``discord.http.Route.BASE = f"{fake.base_url}/api/v10"`` (a ``str``): every REST call,
  including interaction callbacks and webhook followups;
* ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)`` (a
  ``yarl.URL``; discord.py calls ``.with_query(...)`` on it): the websocket;
* ``discord.asset.Asset.BASE = f"{fake.base_url}/cdn"`` (a ``str``): avatars and icons.

Attachment URLs are absolute URLs on this server, so downloads need no redirect.

The fake is then driven only through what a member does in the Discord client: slash commands,
autocomplete, button clicks, modal submissions, message context menus and ordinary messages.
It answers the bot as Discord does (full message objects, interaction tokens that expire,
the 3 s window for the first answer, the placeholder that a public ``defer()`` leaves and the
first followup replaces, signed attachment URLs that expire) and records everything.

Nothing here imports discord.py: it is a fake of Discord, not of the library.

Quick use::

    async with FakeDiscord() as fake:
        fake.add_guild(guild_id=10, name="Remix Club", owner_id=1)
        fake.add_channel(guild_id=10, channel_id=20, name="general")
        fake.add_member(guild_id=10, user_id=1, name="alice")
        ...  # start the bot with env=fake.bot_env()
        await fake.wait_until_ready(commands=True)
        ix = await fake.slash(1, 20, "img2img", options={"prompt": "a fox"})
        await ix.response()
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import enum
import hashlib
import hmac
import io
import json
import logging
import mimetypes
import re
import secrets
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, WSMsgType, web

from .images import png_bytes

try:  # Optional: discord.py asks for zstd-stream when `zstandard` is importable.
    import zstandard  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    zstandard = None

__all__ = [
    "ALL_PERMISSIONS",
    "DEFAULT_BOT_PERMISSIONS",
    "DEFAULT_EVERYONE_PERMISSIONS",
    "ClientRefused",
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeMember",
    "GatewaySession",
    "Intent",
    "InteractionRecord",
    "MessageFlag",
    "Permission",
    "RestCall",
]

log = logging.getLogger(__name__)

API_PREFIX = "/api/v10"
NONCE_WINDOW = 300.0  # seconds: how long Discord remembers an enforced nonce
DISCORD_EPOCH_MS = 1420070400000


class Permission(enum.IntFlag):
    """Discord permission bits (the ones a bot test is likely to care about)."""

    CREATE_INSTANT_INVITE = 1 << 0
    KICK_MEMBERS = 1 << 1
    BAN_MEMBERS = 1 << 2
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_AUDIT_LOG = 1 << 7
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    SEND_TTS_MESSAGES = 1 << 12
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    CONNECT = 1 << 20
    SPEAK = 1 << 21
    CHANGE_NICKNAME = 1 << 26
    MANAGE_ROLES = 1 << 28
    USE_APPLICATION_COMMANDS = 1 << 31
    SEND_MESSAGES_IN_THREADS = 1 << 38
    MODERATE_MEMBERS = 1 << 40


ALL_PERMISSIONS = 8866461766385663
"""Every permission (the value of ``discord.Permissions.all()`` in discord.py 2.7)."""

DEFAULT_EVERYONE_PERMISSIONS = int(
    Permission.CREATE_INSTANT_INVITE
    | Permission.ADD_REACTIONS
    | Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.READ_MESSAGE_HISTORY
    | Permission.USE_EXTERNAL_EMOJIS
    | Permission.CONNECT
    | Permission.SPEAK
    | Permission.CHANGE_NICKNAME
    | Permission.USE_APPLICATION_COMMANDS
    | Permission.SEND_MESSAGES_IN_THREADS
)
"""What the @everyone role of a new guild may do (roughly Discord's default)."""

DEFAULT_BOT_PERMISSIONS = int(
    Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.READ_MESSAGE_HISTORY
    | Permission.ADD_REACTIONS
    | Permission.USE_EXTERNAL_EMOJIS
    | Permission.USE_APPLICATION_COMMANDS
    | Permission.SEND_MESSAGES_IN_THREADS
)
"""The permissions of the bot's managed role unless ``bot_permissions`` says otherwise."""

# Lacking SEND_MESSAGES in a channel implicitly removes these too (Discord's rule).
_NEEDS_SEND = int(
    Permission.SEND_TTS_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.MENTION_EVERYONE
)

DENIABLE: dict[str, int] = {
    "send": int(Permission.SEND_MESSAGES),
    "attach": int(Permission.ATTACH_FILES),
    "embed": int(Permission.EMBED_LINKS),
    "view": int(Permission.VIEW_CHANNEL),
    "history": int(Permission.READ_MESSAGE_HISTORY),
    "react": int(Permission.ADD_REACTIONS),
}
"""Names accepted by :meth:`FakeDiscord.deny` and :meth:`FakeDiscord.allow`."""


class Intent(enum.IntFlag):
    """Gateway intents the fake looks at."""

    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_PRESENCES = 1 << 8
    GUILD_MESSAGES = 1 << 9
    MESSAGE_CONTENT = 1 << 15


PRIVILEGED_INTENTS = int(Intent.GUILD_MEMBERS | Intent.GUILD_PRESENCES | Intent.MESSAGE_CONTENT)


class MessageFlag(enum.IntFlag):
    """Message flags the fake sets or honours."""

    SUPPRESS_EMBEDS = 1 << 2
    EPHEMERAL = 1 << 6
    LOADING = 1 << 7
    SUPPRESS_NOTIFICATIONS = 1 << 12
    IS_COMPONENTS_V2 = 1 << 15


_SETTABLE_FLAGS = int(
    MessageFlag.SUPPRESS_EMBEDS | MessageFlag.SUPPRESS_NOTIFICATIONS | MessageFlag.IS_COMPONENTS_V2
)

# Interaction types and callback types.
IX_PING, IX_COMMAND, IX_COMPONENT, IX_AUTOCOMPLETE, IX_MODAL_SUBMIT = 1, 2, 3, 4, 5
CB_MESSAGE, CB_DEFERRED, CB_DEFERRED_UPDATE, CB_UPDATE, CB_AUTOCOMPLETE, CB_MODAL = 4, 5, 6, 7, 8, 9

# Message types.
MT_DEFAULT, MT_REPLY, MT_CHAT_INPUT, MT_CONTEXT_MENU = 0, 19, 20, 23

_PRIVATE_KEYS = frozenset({"files", "deleted"})
# A hidden guild holding the rooms members use in their direct messages with the bot (see
# FakeDiscord.dm_channel); never announced to a bot, and interactions from it carry no guild.
_DM_ROOMS = 0
_SELECT_TYPES = frozenset({3, 5, 6, 7, 8})
_COMMAND_NAME = re.compile(r"^[-_'\w]{1,32}$")


class ClientRefused(Exception):
    """The official Discord client would not let a member do this (unknown command, missing
    required option, a choice not offered, a disabled button...). Pass ``client_checks=False``
    to send the payload anyway, as a modified client could."""


class DiscordError(Exception):
    """An error answer of the fake API: status, Discord JSON error code, message."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        errors: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors:
            body["errors"] = self.errors
        return body


def _form_error(path: Iterable[str | int], code: str, message: str) -> DiscordError:
    """A 400 50035 "Invalid Form Body" with Discord's nested ``errors`` shape."""
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for key in reversed(list(path)):
        errors = {str(key): errors}
    return DiscordError(400, 50035, "Invalid Form Body", errors=errors)


def _missing_permissions() -> DiscordError:
    return DiscordError(403, 50013, "Missing Permissions")


def _missing_access() -> DiscordError:
    return DiscordError(403, 50001, "Missing Access")


def _unknown_message() -> DiscordError:
    return DiscordError(404, 10008, "Unknown Message")


# ------------------------------------------------------------------------------------------
# Records
# ------------------------------------------------------------------------------------------


@dataclass
class RestCall:
    """One REST request the fake received.

    ``path`` is relative to ``/api/v10`` for API calls (``api`` True), else the full path
    (CDN downloads). ``json`` is the JSON body, or the ``payload_json`` of a multipart body;
    ``files`` summarises multipart uploads: ``{"field", "filename", "size", "content_type"}``.
    ``time`` is the fake clock (:meth:`FakeDiscord.now`).
    """

    method: str
    path: str
    query: dict[str, str]
    time: float
    api: bool
    json: Any = None
    files: list[dict[str, Any]] = field(default_factory=list)
    status: int = 0
    response: Any = None


@dataclass
class _Upload:
    index: int
    field: str
    filename: str
    data: bytes
    content_type: str


@dataclass
class _Request:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    params: dict[str, str]
    json: Any
    uploads: dict[int, _Upload]


@dataclass
class _StoredFile:
    filename: str
    data: bytes
    content_type: str


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    times: int
    retry_after: float | None
    global_: bool
    body: Any


@dataclass
class FakeUser:
    """A Discord user known to the fake."""

    id: int
    name: str
    bot: bool = False
    global_name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The user object as Discord sends it."""
        data: dict[str, Any] = {
            "id": str(self.id),
            "username": self.name,
            "global_name": self.global_name,
            "discriminator": "0001" if self.bot else "0",
            "avatar": None,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
            "collectibles": None,
            "primary_guild": None,
        }
        if self.bot:
            data["bot"] = True
        return data


@dataclass
class FakeRole:
    """A guild role."""

    id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False
    bot_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.managed,
            "mentionable": False,
            "flags": 0,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": str(self.bot_id)}
        return data


@dataclass
class FakeChannel:
    """A guild text channel and its messages (ephemeral ones included, flagged 64)."""

    id: int
    guild_id: int
    name: str
    nsfw: bool = False
    type: int = 0
    position: int = 0
    topic: str | None = None
    # target id -> (type 0 role / 1 member, allow, deny)
    overwrites: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    last_message_id: int | None = None

    def to_dict(self, *, with_guild_id: bool = True) -> dict[str, Any]:
        """The channel object as Discord sends it."""
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [
                {"id": str(target), "type": kind, "allow": str(allow), "deny": str(deny)}
                for target, (kind, allow, deny) in self.overwrites.items()
            ],
            "nsfw": self.nsfw,
            "topic": self.topic,
            "parent_id": None,
            "last_message_id": None if self.last_message_id is None else str(self.last_message_id),
            "rate_limit_per_user": 0,
            "flags": 0,
        }
        if with_guild_id:
            data["guild_id"] = str(self.guild_id)
        return data


@dataclass
class FakeMember:
    """A guild member. ``permissions`` is what was asked for with :meth:`FakeDiscord.add_member`
    (granted through a role of its own); the @everyone role adds its permissions on top."""

    guild_id: int
    user: FakeUser
    role_ids: list[int]
    joined_at: str
    permissions: int | None = None
    nick: str | None = None

    @property
    def id(self) -> int:
        return self.user.id

    def to_dict(self, *, with_user: bool = True) -> dict[str, Any]:
        """The guild member object as Discord sends it (without ``permissions``)."""
        data: dict[str, Any] = {
            "roles": [str(r) for r in self.role_ids],
            "joined_at": self.joined_at,
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
            "unusual_dm_activity_until": None,
        }
        if with_user:
            data["user"] = self.user.to_dict()
        return data


@dataclass
class FakeGuild:
    """A guild: roles (the @everyone role has the guild's id), channels and members."""

    id: int
    name: str
    owner_id: int
    joined_at: str
    roles: dict[int, FakeRole] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    preferred_locale: str = "en-US"
    bot_role_id: int | None = None

    def base_dict(self) -> dict[str, Any]:
        """The guild object of ``GET /guilds/{id}`` (no channels or members)."""
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "icon_hash": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "widget_enabled": False,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [r.to_dict() for r in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "max_members": 500000,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": self.preferred_locale,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "nsfw_level": 0,
            "nsfw": False,
            "premium_progress_bar_enabled": False,
        }

    def create_dict(self) -> dict[str, Any]:
        """The GUILD_CREATE payload: with channels, every member and ``member_count``."""
        data = self.base_dict()
        data.update(
            joined_at=self.joined_at,
            large=False,
            unavailable=False,
            lazy=True,
            member_count=len(self.members),
            members=[m.to_dict() for m in self.members.values()],
            channels=[c.to_dict(with_guild_id=False) for c in self.channels.values()],
            threads=[],
            presences=[],
            voice_states=[],
            stage_instances=[],
            guild_scheduled_events=[],
            soundboard_sounds=[],
        )
        return data


@dataclass
class _Sharded:
    """Just enough of a session for ``FakeDiscord.serves`` before its IDENTIFY is stored."""

    identify: dict[str, Any] | None


@dataclass
class GatewaySession:
    """One websocket connection of the bot to the fake gateway."""

    index: int
    ws: web.WebSocketResponse
    compress: str | None
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    session_id: str | None = None
    seq: int = 0
    identify: dict[str, Any] | None = None
    intents: int = 0
    ready: bool = False
    resumed: bool = False
    closed: bool = False
    close_code: int | None = None
    heartbeats: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    sent_events: list[str] = field(default_factory=list)
    presence: dict[str, Any] | None = None
    _compressor: Any = None

    def send(self, payload: dict[str, Any]) -> asyncio.Future[float]:
        """Queue a payload; the future resolves (monotonic time) once it is written."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((payload, future))
        return future

    def send_op(self, op: int, data: Any) -> asyncio.Future[float]:
        return self.send({"t": None, "s": None, "op": op, "d": data})

    def dispatch(self, event: str, data: Any) -> asyncio.Future[float]:
        """Queue a DISPATCH (op 0) with the next sequence number."""
        self.seq += 1
        self.sent_events.append(event)
        return self.send({"t": event, "s": self.seq, "op": 0, "d": data})

    def has(self, intent: int) -> bool:
        return bool(self.intents & intent)

    def encode(self, payload: dict[str, Any]) -> str | bytes:
        text = json.dumps(payload, separators=(",", ":"))
        if self.compress == "zlib-stream":
            if self._compressor is None:
                self._compressor = zlib.compressobj()
            raw = text.encode("utf-8")
            return self._compressor.compress(raw) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        if self.compress == "zstd-stream" and zstandard is not None:
            if self._compressor is None:
                self._compressor = zstandard.ZstdCompressor().compressobj()
            raw = text.encode("utf-8")
            flush = zstandard.COMPRESSOBJ_FLUSH_BLOCK
            return self._compressor.compress(raw) + self._compressor.flush(flush)
        return text  # plain text frames are always accepted


# ------------------------------------------------------------------------------------------
# Interaction record
# ------------------------------------------------------------------------------------------


class InteractionRecord:
    """One interaction the fake sent (INTERACTION_CREATE) and what the bot did with it.

    ``responses`` holds the callback bodies (``{"type", "data"}``, plus ``"files"`` when the
    callback was multipart) in arrival order: the first one is the answer; later ones were
    refused by the fake (400 40060 "already acknowledged") and are kept for inspection.
    """

    def __init__(
        self,
        fake: FakeDiscord,
        *,
        interaction_id: int,
        token: str,
        type: int,
        user_id: int,
        channel_id: int,
        guild_id: int,
        payload: dict[str, Any],
        name: str | None,
        command_type: int | None,
        source_message_id: int | None,
    ) -> None:
        self._fake = fake
        self.id = interaction_id
        self.token = token
        self.type = type
        self.user_id = user_id
        self.channel_id = channel_id
        self.guild_id = guild_id
        self.payload = payload
        self.name = name
        self.command_type = command_type
        self.source_message_id = source_message_id
        self.created_at: float = fake.now()
        self.sent_at: float | None = None  # monotonic, when INTERACTION_CREATE was written
        self.responses: list[dict[str, Any]] = []
        self.response_times: list[float] = []  # monotonic, per callback POST
        self.acknowledged = False
        self.answer_index: int | None = None
        self.original_id: int | None = None
        self.followup_ids: list[int] = []
        self.placeholder_pending = False
        self.expired_manually = False
        self.refusals: list[tuple[str, str, int, int]] = []  # (method, path, status, code)

    def __repr__(self) -> str:
        return (
            f"<InteractionRecord id={self.id} type={self.type} name={self.name!r} "
            f"responses={[r.get('type') for r in self.responses]}>"
        )

    # -- answer ------------------------------------------------------------------------------

    @property
    def answer(self) -> dict[str, Any] | None:
        """The callback body the fake accepted (normally ``responses[0]``), or None."""
        return None if self.answer_index is None else self.responses[self.answer_index]

    @property
    def response_type(self) -> int | None:
        """The callback type of the accepted answer (4, 5, 6, 7, 8 or 9), or None."""
        answer = self.answer
        return None if answer is None else answer.get("type")

    async def response(self, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The first callback body, waiting for it up to ``timeout`` seconds. A body the fake
        refused (too late, invalid...) carries ``"refused"``: the error JSON it got."""
        return await self._fake._wait(
            lambda: self.responses[0] if self.responses else None,
            timeout,
            f"a callback for interaction {self.name or self.id}",
        )

    @property
    def response_latency(self) -> float | None:
        """Seconds from INTERACTION_CREATE written to the first callback POST received."""
        if self.sent_at is None or not self.response_times:
            return None
        return self.response_times[0] - self.sent_at

    @property
    def modal(self) -> dict[str, Any] | None:
        """The modal (callback ``data``) if the bot answered with one (type 9)."""
        answer = self.answer
        if answer is not None and answer.get("type") == CB_MODAL:
            return answer.get("data")
        return None

    @property
    def choices(self) -> list[dict[str, Any]] | None:
        """The autocomplete choices the bot answered (type 8), or None."""
        answer = self.answer
        if answer is not None and answer.get("type") == CB_AUTOCOMPLETE:
            return list((answer.get("data") or {}).get("choices") or [])
        return None

    @property
    def deferred(self) -> bool:
        """True if the answer was a defer (type 5 or 6)."""
        return self.response_type in (CB_DEFERRED, CB_DEFERRED_UPDATE)

    @property
    def ephemeral(self) -> bool:
        """True if the answer (message or deferred message) carried flags 64."""
        answer = self.answer
        if answer is None or answer.get("type") not in (CB_MESSAGE, CB_DEFERRED):
            return False
        data = answer.get("data") or {}
        return bool(int(data.get("flags") or 0) & MessageFlag.EPHEMERAL)

    # -- messages ----------------------------------------------------------------------------

    @property
    def original(self) -> dict[str, Any] | None:
        """The message shown for the answer: the type 4 message, the placeholder of a defer
        (replaced by the first followup or an @original edit), or the message a component
        was on after a type 6/7 answer. Live: edits show up here."""
        if self.original_id is None:
            return None
        return self._fake._messages.get(self.original_id)

    @property
    def followup_messages(self) -> list[dict[str, Any]]:
        """Messages created through the interaction webhook, now (live dicts)."""
        return [self._fake._messages[i] for i in self.followup_ids]

    async def followups(self, n: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:  # noqa: ASYNC109
        """Wait until at least ``n`` followups exist; return them all. After a public (or
        ephemeral) defer, the first followup is the placeholder message it replaced."""
        return await self._fake._wait(
            lambda: self.followup_messages if len(self.followup_ids) >= n else None,
            timeout,
            f"{n} followup(s) of interaction {self.name or self.id}",
        )

    async def wait_original(
        self,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Wait until the original message exists (and satisfies ``predicate``)."""

        def probe() -> dict[str, Any] | None:
            message = self.original
            if message is None or (predicate is not None and not predicate(message)):
                return None
            return message

        return await self._fake._wait(probe, timeout, f"the original of {self.name or self.id}")

    # -- token -------------------------------------------------------------------------------

    @property
    def expired(self) -> bool:
        """True once the token no longer works (15 minutes, or :meth:`FakeDiscord.expire`)."""
        return (
            self.expired_manually
            or self._fake.now() - self.created_at >= self._fake.token_lifetime
        )


# ------------------------------------------------------------------------------------------
# The fake
# ------------------------------------------------------------------------------------------


_Handler = Callable[[_Request], Any]


class FakeDiscord:
    """A local Discord: REST API v10, gateway and CDN on one aiohttp server.

    ``bot_permissions`` are the permissions of the bot's managed role in every guild
    (``deny`` removes some per channel). ``privileged_intents`` are the privileged intents
    enabled for the application in the developer portal (IDENTIFY asking for others is
    closed with 4014, as Discord does). ``response_deadline`` is Discord's 3 s window for the
    first answer, ``token_lifetime`` its 15 minutes for followups, both on the fake clock.
    ``human_delay``: :meth:`click` and :meth:`submit_modal` wait until the message (or modal)
    is at least that many real seconds old, as a member would; discord.py stores a View or
    Modal only after the HTTP answer that carried it returned, so an instant click can beat it.
    """

    def __init__(
        self,
        token: str = "test-bot-token",
        application_id: int = 1100,
        bot_user_id: int = 1100,
        *,
        bot_name: str = "Remixer",
        host: str = "127.0.0.1",
        bot_permissions: int = DEFAULT_BOT_PERMISSIONS,
        privileged_intents: int = 0,
        app_owner_id: int = 1,
        response_deadline: float = 3.0,
        token_lifetime: float = 15 * 60.0,
        attachment_size_limit: int = 10 * 1024 * 1024,
        attachment_url_ttl: float = 24 * 3600.0,
        heartbeat_interval_ms: int = 41250,
        human_delay: float = 0.25,
    ) -> None:
        self.token = token
        self.application_id = application_id
        self.bot_user_id = bot_user_id
        self.host = host
        self.bot_permissions = bot_permissions
        self.privileged_intents = privileged_intents
        self.app_owner_id = app_owner_id
        self.response_deadline = response_deadline
        self.token_lifetime = token_lifetime
        self.attachment_size_limit = attachment_size_limit
        self.attachment_url_ttl = attachment_url_ttl
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.human_delay = human_delay

        self.bot_user = FakeUser(bot_user_id, bot_name, bot=True)
        self.rest_log: list[RestCall] = []
        """Every HTTP request, in arrival order."""
        self.command_syncs: list[tuple[str, int | None, float]] = []
        """Command syncs: ``("global", None, time)`` or ``("guild", guild_id, time)``."""
        self.interactions: list[InteractionRecord] = []
        """Every interaction sent, oldest first."""
        self.sessions: list[GatewaySession] = []
        """Every gateway connection, oldest first."""
        self.recommended_shards = 1
        """What ``GET /gateway/bot`` advises (``shards``)."""
        self.errors: list[BaseException] = []
        """Exceptions raised inside the fake itself (bugs): a test may assert it is empty."""
        self.deleted_messages: list[dict[str, Any]] = []
        """Messages deleted (by the bot), with ``"deleted": True``."""
        self.logins = 0
        """How many times a client logged in (``GET /users/@me``)."""

        self._users: dict[int, FakeUser] = {bot_user_id: self.bot_user}
        self._guilds: dict[int, FakeGuild] = {}
        self._channels: dict[int, FakeChannel] = {}
        self._dm_channels: dict[int, int] = {}  # DM channel id -> the member's user id
        self.direct_messages: dict[int, list[dict[str, Any]]] = {}  # user id -> messages
        self.closed_dms: set[int] = set()  # users who accept no direct messages
        self._messages: dict[int, dict[str, Any]] = {}
        self._history: dict[int, list[dict[str, Any]]] = {}
        self._touched: dict[int, float] = {}  # message id -> monotonic time of last change
        self._files: dict[int, _StoredFile] = {}
        self._global_commands: dict[tuple[str, int], dict[str, Any]] = {}
        self._guild_commands: dict[int, dict[tuple[str, int], dict[str, Any]]] = {}
        self._command_ids: dict[tuple[int | None, str, int], int] = {}
        self._by_id: dict[int, InteractionRecord] = {}
        self._by_token: dict[str, InteractionRecord] = {}
        self._failures: list[_Failure] = []
        self._holds: list[tuple[str, re.Pattern[str], float]] = []
        self._lost_answers: list[list[Any]] = []  # [method, pattern, status, times, took_effect]
        self._nonces: dict[tuple[int, int, str], tuple[float, int]] = {}
        self.nonce_window = NONCE_WINDOW
        self._offset = 0.0
        self._last_id = 0
        self._url_secret = secrets.token_bytes(16)
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._routes = self._route_table()
        # Realism for load tests, off by default: every API request waits ``latency`` seconds
        # before it is answered, and with ``rate_limits`` Discord's limits apply (see
        # :meth:`_rate_limit`). ``rate_limited`` counts the 429s they provoked.
        self.latency = 0.0
        self.rate_limits = False
        self.global_limit = 50  # requests per second per bot; interactions are exempt
        self.route_limit = (5, 5.0)  # requests per route and major parameter, per seconds
        self.rate_limited = 0
        self._global_window: tuple[float, int] = (0.0, 0)
        self._buckets: dict[str, tuple[float, int]] = {}
        self._hangs: list[tuple[str, re.Pattern[str]]] = []
        self._released = asyncio.Event()

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> FakeDiscord:
        """Bind the server on a free port of ``host``."""
        if self._runner is not None:
            raise RuntimeError("FakeDiscord already started")
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        self._runner = runner
        self._base_url = f"http://{self.host}:{int(runner.addresses[0][1])}"
        return self

    async def close(self) -> None:
        """Close every gateway connection (code 1001) and stop the server."""
        self.release()
        for session in self.sessions:
            if not session.closed:
                session.queue.put_nowait(("close", 1001, "fake closing"))
        for session in self.sessions:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.ws.close(code=1001), 2)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        if self._base_url is None:
            raise RuntimeError("FakeDiscord not started")
        return self._base_url

    @property
    def api_base(self) -> str:
        """``http://127.0.0.1:PORT/api/v10``: the value for ``discord.http.Route.BASE``."""
        return f"{self.base_url}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        """``ws://127.0.0.1:PORT/gateway``: give ``yarl.URL(gateway_url)`` to
        ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY``."""
        return self.base_url.replace("http://", "ws://", 1) + "/gateway"

    @property
    def cdn_base(self) -> str:
        """``http://127.0.0.1:PORT/cdn``: the value for ``discord.asset.Asset.BASE``."""
        return f"{self.base_url}/cdn"

    def bot_env(self) -> dict[str, str]:
        """Environment settings for the bot process: API base, gateway, CDN base, token."""
        return {
            "DISCORD_API_BASE": self.api_base,
            "DISCORD_GATEWAY_URL": self.gateway_url,
            "DISCORD_CDN_BASE": self.cdn_base,
            "DISCORD_TOKEN": self.token,
        }

    # ---------------------------------------------------------------- clock and ids

    def now(self) -> float:
        """The fake clock: wall-clock seconds plus everything :meth:`advance` added."""
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the fake clock forward (token expiry, the 3 s window, attachment URLs)."""
        self._offset += seconds
        self._notify()

    def _iso(self, at: float | None = None) -> str:
        return datetime.fromtimestamp(self.now() if at is None else at, UTC).isoformat()

    def _snowflake(self) -> int:
        ms = int(self.now() * 1000) - DISCORD_EPOCH_MS
        value = max(ms << 22, self._last_id + 1)
        self._last_id = value
        return value

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self, probe: Callable[[], Any], timeout: float, what: str) -> Any:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = probe()
            if result is not None:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                tail = ", ".join(f"{c.method} {c.path} {c.status}" for c in self.rest_log[-8:])
                raise TimeoutError(
                    f"FakeDiscord: timed out after {timeout}s waiting for {what}. "
                    f"Last REST calls: [{tail}]. Fake errors: {self.errors!r}"
                )
            event = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- world

    def user(self, user_id: int) -> FakeUser:
        """A known user (created with a placeholder name if unknown)."""
        found = self._users.get(user_id)
        if found is None:
            found = self._users[user_id] = FakeUser(user_id, f"user{user_id}")
        return found

    def add_guild(
        self,
        guild_id: int,
        name: str,
        owner_id: int,
        *,
        everyone_permissions: int = DEFAULT_EVERYONE_PERMISSIONS,
        locale: str = "en-US",
    ) -> FakeGuild:
        """A guild with an @everyone role (id == guild id), the bot as a member with its
        managed role, and the owner as a member. After the bot connected: GUILD_CREATE."""
        if guild_id in self._guilds:
            raise ValueError(f"guild {guild_id} exists")
        guild = FakeGuild(guild_id, name, owner_id, self._iso(), preferred_locale=locale)
        guild.roles[guild_id] = FakeRole(guild_id, "@everyone", everyone_permissions)
        role_id = self._snowflake()
        guild.roles[role_id] = FakeRole(
            role_id, self.bot_user.name, self.bot_permissions, position=1, managed=True,
            bot_id=self.bot_user_id,
        )
        guild.bot_role_id = role_id
        guild.members[self.bot_user_id] = FakeMember(
            guild_id, self.bot_user, [role_id], self._iso()
        )
        self._guilds[guild_id] = guild
        if owner_id not in guild.members:
            owner = self.user(owner_id)
            guild.members[owner_id] = FakeMember(guild_id, owner, [], self._iso())
        for session in self._ready_sessions(guild_id):
            if session.has(Intent.GUILDS):
                session.dispatch("GUILD_CREATE", guild.create_dict())
        self._notify()
        return guild

    def remove_guild(self, guild_id: int) -> None:
        """The bot leaves (is removed from) a guild: GUILD_DELETE."""
        self._guilds.pop(guild_id)
        for session in self._ready_sessions(guild_id):
            if session.has(Intent.GUILDS):
                session.dispatch("GUILD_DELETE", {"id": str(guild_id)})

    def add_channel(
        self,
        guild_id: int,
        channel_id: int,
        name: str,
        nsfw: bool = False,
        *,
        topic: str | None = None,
    ) -> FakeChannel:
        """A text channel. After the bot connected: CHANNEL_CREATE."""
        guild = self._guilds[guild_id]
        channel = FakeChannel(
            channel_id, guild_id, name, nsfw=nsfw, position=len(guild.channels), topic=topic
        )
        guild.channels[channel_id] = channel
        self._channels[channel_id] = channel
        for session in self._ready_sessions(guild_id):
            if session.has(Intent.GUILDS):
                session.dispatch("CHANNEL_CREATE", channel.to_dict())
        self._notify()
        return channel

    def add_member(
        self,
        guild_id: int,
        user_id: int,
        name: str,
        permissions: int | None = None,
        *,
        nick: str | None = None,
    ) -> FakeMember:
        """A member. ``permissions`` (e.g. ``discord.Permissions.all().value``) are granted
        through a role of their own, on top of @everyone's; None: @everyone's only.
        After the bot connected, with the GUILD_MEMBERS intent: GUILD_MEMBER_ADD."""
        guild = self._guilds[guild_id]
        user = self.user(user_id)
        user.name = name
        roles: list[int] = []
        if permissions is not None:
            role_id = self._snowflake()
            guild.roles[role_id] = FakeRole(role_id, f"{name}-role", permissions, position=1)
            roles.append(role_id)
        member = FakeMember(guild_id, user, roles, self._iso(), permissions, nick)
        guild.members[user_id] = member
        for session in self._ready_sessions(guild_id):
            if session.has(Intent.GUILDS):
                for role_id in roles:
                    role = guild.roles[role_id].to_dict()
                    session.dispatch("GUILD_ROLE_CREATE", {"guild_id": str(guild_id), "role": role})
            if session.has(Intent.GUILD_MEMBERS):
                added = {**member.to_dict(), "guild_id": str(guild_id)}
                session.dispatch("GUILD_MEMBER_ADD", added)
        self._notify()
        return member

    def guild(self, guild_id: int) -> FakeGuild:
        return self._guilds[guild_id]

    def channel(self, channel_id: int) -> FakeChannel:
        return self._channels[channel_id]

    def permissions_for(self, guild_id: int, user_id: int, channel_id: int | None = None) -> int:
        """A member's computed permissions (Discord's algorithm, channel overwrites included)."""
        guild = self._guilds[guild_id]
        if user_id == guild.owner_id:
            return ALL_PERMISSIONS
        member = guild.members[user_id]
        perms = guild.roles[guild.id].permissions
        for role_id in member.role_ids:
            perms |= guild.roles[role_id].permissions
        if perms & Permission.ADMINISTRATOR:
            return ALL_PERMISSIONS
        if channel_id is None:
            return perms
        overwrites = self._channels[channel_id].overwrites
        if guild.id in overwrites:
            _, allow, deny = overwrites[guild.id]
            perms = (perms & ~deny) | allow
        allow = deny = 0
        for role_id in member.role_ids:
            if role_id in overwrites:
                allow |= overwrites[role_id][1]
                deny |= overwrites[role_id][2]
        perms = (perms & ~deny) | allow
        if user_id in overwrites and overwrites[user_id][0] == 1:
            _, allow, deny = overwrites[user_id]
            perms = (perms & ~deny) | allow
        if not perms & Permission.VIEW_CHANNEL:
            return 0
        if not perms & Permission.SEND_MESSAGES:
            perms &= ~_NEEDS_SEND
        return perms

    def deny(self, channel_id: int, action: str | int) -> None:
        """Deny the bot a permission in a channel, through a member overwrite (discord.py sees
        it in CHANNEL_UPDATE and ``app_permissions``). ``action``: "send" (its POSTs to
        /channels/{id}/messages get 403 50013), "attach", "embed", "view" (403 50001),
        "history", "react", or a permission bitfield."""
        bits = DENIABLE[action] if isinstance(action, str) else int(action)
        self._set_bot_overwrite(channel_id, deny_bits=bits)

    def allow(self, channel_id: int, action: str | int) -> None:
        """Undo :meth:`deny`."""
        bits = DENIABLE[action] if isinstance(action, str) else int(action)
        self._set_bot_overwrite(channel_id, allow_bits=bits)

    def _set_bot_overwrite(
        self, channel_id: int, *, deny_bits: int = 0, allow_bits: int = 0
    ) -> None:
        channel = self._channels[channel_id]
        _, _, deny = channel.overwrites.get(self.bot_user_id, (1, 0, 0))
        deny = (deny | deny_bits) & ~allow_bits
        if deny:
            channel.overwrites[self.bot_user_id] = (1, 0, deny)
        else:
            channel.overwrites.pop(self.bot_user_id, None)
        for session in self._ready_sessions(channel.guild_id):
            if session.has(Intent.GUILDS):
                session.dispatch("CHANNEL_UPDATE", channel.to_dict())
        self._notify()

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int,
        times: int = 1,
        retry_after: float | None = None,
        *,
        global_: bool = False,
        body: Any = None,
    ) -> None:
        """Answer the next ``times`` requests matching ``method`` ("*" for any) and
        ``path_regex`` (``re.search`` on the path relative to /api/v10, e.g.
        ``r"/channels/\\d+/messages$"``) with ``status``. A 429 carries a ``Via`` header and
        ``{"retry_after", "global"}`` as discord.py needs to retry; 5xx carry a JSON error."""
        self._failures.append(
            _Failure(method.upper(), re.compile(path_regex), status, times, retry_after,
                     global_, body)
        )

    def clear_failures(self) -> None:
        """Forget failures and holds not yet used: Discord is healthy again."""
        self._failures.clear()
        self._holds.clear()
        self._lost_answers.clear()

    def hold_next(self, method: str, path_regex: str, seconds: float) -> None:
        """The next matching request takes effect (a message is posted), but its answer is
        held back ``seconds``: time for a test to kill the bot mid-request."""
        self._holds.append((method.upper(), re.compile(path_regex), seconds))

    def lose_answer_next(self, method: str, path_regex: str, status: int = 500,
                         times: int = 1) -> None:
        """The next matching request that succeeds takes effect (a message is posted), but
        its answer is ``status`` instead, as when Discord fails after writing; the following
        ``times - 1`` matching requests answer ``status`` without taking effect (a client's
        retries of the same request)."""
        self._lost_answers.append([method.upper(), re.compile(path_regex), status, times, False])

    def hang(self, method: str, path_regex: str) -> None:
        """Every matching request from now on is never answered (nor takes effect) until
        :meth:`release`: a Discord that hangs on one kind of call while others still work."""
        self._hangs.append((method.upper(), re.compile(path_regex)))

    def release(self) -> None:
        """Hung requests go ahead; nothing hangs any more."""
        self._hangs.clear()
        self._released.set()

    def _rate_limit(self, method: str, path: str) -> tuple[dict[str, str], tuple[int, Any]
                                                            | None]:
        """Discord's limits, simplified: 50 requests a second per bot (interaction callbacks
        and interaction webhooks exempt), and per route and major parameter (channel,
        guild, webhook token) ``route_limit`` requests per window, announced in the
        ``X-RateLimit-*`` headers as Discord does. Returns the headers and, when a limit is
        exceeded, the 429 answer."""
        now = time.monotonic()
        if path.startswith("/interactions/"):
            return {}, None
        exempt = path.startswith(f"/webhooks/{self.application_id}/")
        if not exempt:
            start, used = self._global_window
            if now - start >= 1.0:
                start, used = now, 0
            if used >= self.global_limit:
                self.rate_limited += 1
                retry = max(0.001, start + 1.0 - now)
                return {"Via": "1.1 google", "X-RateLimit-Global": "true",
                        "X-RateLimit-Scope": "global", "Retry-After": "1"}, (
                    429, {"message": "You are being rate limited.", "retry_after": retry,
                          "global": True})
            self._global_window = (start, used + 1)
        major = re.match(r"/(channels|guilds|webhooks/\d+)/([^/]+)", path)
        route = re.sub(r"/\d+", "/{id}", path if major is None else path[major.end():])
        key = f"{method} {major.group(0) if major else ''} {route}"
        bucket_id = hashlib.sha1(f"{method} {route}".encode()).hexdigest()[:16]
        limit, per = self.route_limit
        start, used = self._buckets.get(key, (0.0, 0))
        if now - start >= per:
            start, used = now, 0
        reset_after = max(0.001, start + per - now)
        headers = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Bucket": bucket_id,
                   "X-RateLimit-Reset-After": f"{reset_after:.3f}",
                   "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}"}
        if used >= limit:
            self.rate_limited += 1
            headers.update({"Via": "1.1 google", "X-RateLimit-Remaining": "0",
                            "X-RateLimit-Scope": "user",
                            "Retry-After": str(max(1, int(reset_after + 0.999)))})
            return headers, (429, {"message": "You are being rate limited.",
                                   "retry_after": reset_after, "global": False})
        self._buckets[key] = (start, used + 1)
        headers["X-RateLimit-Remaining"] = str(limit - used - 1)
        return headers, None

    def expire(self, ix: InteractionRecord) -> None:
        """The interaction token stops working: webhook calls get 401 50027."""
        ix.expired_manually = True
        self._notify()

    def add_attachment(
        self, filename: str, data: bytes, content_type: str | None = None
    ) -> dict[str, Any]:
        """A file a member attaches to a slash command option. Returns the Discord attachment
        dict (id, filename, size, url, proxy_url, content_type, width/height for images);
        the fake serves the bytes at ``url`` and ``proxy_url``."""
        upload = _Upload(0, "files[0]", filename, data, content_type or "")
        attachment, _ = self._store_upload(None, upload, filename, None, ephemeral=True)
        return attachment

    def file_at(self, url: str) -> bytes:
        """The bytes the fake serves at an attachment URL (no HTTP, no expiry check)."""
        match = re.search(r"/(?:ephemeral-)?attachments/\d+/(\d+)/", url)
        if match is None or int(match.group(1)) not in self._files:
            raise KeyError(url)
        return self._files[int(match.group(1))].data

    # ---------------------------------------------------------------- inspection

    @property
    def commands(self) -> dict[str, dict[str, Any]]:
        """Registered application commands by name (global, then guild ones over them)."""
        result = {name: cmd for (name, _), cmd in self._global_commands.items()}
        for commands in self._guild_commands.values():
            result.update({name: cmd for (name, _), cmd in commands.items()})
        return result

    @property
    def global_commands(self) -> list[dict[str, Any]]:
        return list(self._global_commands.values())

    def guild_commands(self, guild_id: int) -> list[dict[str, Any]]:
        return list(self._guild_commands.get(guild_id, {}).values())

    def messages(
        self, channel_id: int, *, include_ephemeral: bool = True
    ) -> list[dict[str, Any]]:
        """The channel's messages, oldest first (live dicts, with ``files``). Deleted
        messages are gone (see ``deleted_messages``)."""
        items = self._channels[channel_id].messages
        if include_ephemeral:
            return list(items)
        return [m for m in items if not m["flags"] & MessageFlag.EPHEMERAL]

    def message(self, message_id: int | str) -> dict[str, Any]:
        """A message by id (live dict)."""
        return self._messages[int(message_id)]

    def message_history(self, message_id: int | str) -> list[dict[str, Any]]:
        """Every version of a message (public JSON snapshots), creation first."""
        return list(self._history.get(int(message_id), []))

    async def wait_for_message(
        self,
        channel_id: int,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """The first message of the channel (oldest first) matching ``predicate``."""

        def probe() -> dict[str, Any] | None:
            for message in self._channels[channel_id].messages:
                if predicate is None or predicate(message):
                    return message
            return None

        return await self._wait(probe, timeout, f"a message in channel {channel_id}")

    def _ready_sessions(self, guild_id: int | None = None) -> list[GatewaySession]:
        """Open sessions that got READY; with ``guild_id``, only those whose shard serves
        that guild (``(guild_id >> 22) % shard_count == shard_id``, as Discord routes)."""
        return [s for s in self.sessions if s.ready and not s.closed
                and (guild_id is None or self.serves(s, guild_id))]

    @staticmethod
    def serves(session: GatewaySession, guild_id: int) -> bool:
        """Whether the session's shard (from its IDENTIFY) receives the guild's events."""
        shard = (session.identify or {}).get("shard")
        if not shard:
            return True
        shard_id, count = int(shard[0]), int(shard[1])
        return (guild_id >> 22) % max(count, 1) == shard_id

    def session_for_guild(self, guild_id: int) -> GatewaySession | None:
        """The newest ready session whose shard serves the guild."""
        ready = self._ready_sessions(guild_id)
        return ready[-1] if ready else None

    def active_session(self) -> GatewaySession | None:
        """The newest open gateway session that got READY (or RESUMED)."""
        ready = self._ready_sessions()
        return ready[-1] if ready else None

    async def wait_until_ready(
        self,
        timeout: float = 20.0,  # noqa: ASYNC109
        *,
        commands: bool = False,
        after: int | None = None,
    ) -> GatewaySession:
        """Wait until the bot IDENTIFYed and READY + every GUILD_CREATE were written to it.
        ``commands``: also until at least one command sync happened (ever: a restarted bot
        that skips an unchanged sync does not hang this). ``after``: only a session whose
        ``index`` is greater (pass ``len(fake.sessions)`` before starting a new process)."""

        def probe() -> GatewaySession | None:
            for session in reversed(self._ready_sessions()):
                if after is not None and session.index <= after:
                    continue
                if commands and not self.command_syncs:
                    return None
                return session
            return None

        codes = ", ".join(str(s.close_code) for s in self.sessions if s.close_code is not None)
        return await self._wait(probe, timeout, f"a ready bot (close codes so far: [{codes}])")

    async def wait_disconnected(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until no gateway connection is open."""
        await self._wait(
            lambda: True if all(s.closed for s in self.sessions) else None,
            timeout,
            "every gateway connection to close",
        )

    async def drop_gateway(self, code: int = 4000) -> None:
        """Close every open gateway connection with ``code`` (discord.py resumes after 4000)."""
        for session in self.sessions:
            if not session.closed:
                session.queue.put_nowait(("close", code, "dropped by the test"))

    def send_event(self, event: str, data: Any) -> None:
        """Dispatch a raw gateway event to the active session."""
        session = self.active_session()
        if session is None:
            raise RuntimeError("no bot is connected to the fake gateway")
        session.dispatch(event, data)

    # ---------------------------------------------------------------- gateway

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        compress = request.query.get("compress")
        session = GatewaySession(len(self.sessions) + 1, ws, compress)
        self.sessions.append(session)
        writer = asyncio.create_task(self._gateway_writer(session))
        try:
            if request.query.get("v") not in (None, "10"):
                session.close_code = 4012
                await ws.close(code=4012, message=b"Invalid API version")
                return ws
            if request.query.get("encoding", "json") != "json":
                session.close_code = 4002
                await ws.close(code=4002, message=b"Decode error")
                return ws
            session.send_op(10, {"heartbeat_interval": self.heartbeat_interval_ms,
                                 "_trace": ["fake-gateway"]})
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        payload = json.loads(msg.data)
                    except ValueError:
                        await self._gateway_close(session, 4002, "Decode error")
                        break
                    session.received.append(payload)
                    await self._gateway_op(session, payload)
                elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        except Exception as exc:  # pragma: no cover - bug in the fake
            self.errors.append(exc)
            log.exception("fake gateway failed")
        finally:
            session.closed = True
            if session.close_code is None:
                session.close_code = ws.close_code
            session.queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, 2)
            while not session.queue.empty():
                item = session.queue.get_nowait()
                if isinstance(item, tuple) and isinstance(item[1], asyncio.Future):
                    item[1].cancel()  # never written
            self._notify()
        return ws

    async def _gateway_writer(self, session: GatewaySession) -> None:
        while True:
            item = await session.queue.get()
            if item is None:
                return
            if item[0] == "close":
                _, code, reason = item
                session.close_code = code
                session.closed = True
                with contextlib.suppress(Exception):
                    await session.ws.close(code=code, message=reason.encode())
                self._notify()
                return
            payload, future = item
            if session.ws.closed:
                future.cancel()  # never written
                continue
            data = session.encode(payload)
            try:
                if isinstance(data, bytes):
                    await session.ws.send_bytes(data)
                else:
                    await session.ws.send_str(data)
            except Exception:
                future.cancel()  # never written
                continue
            if not future.done():
                future.set_result(time.monotonic())

    async def _gateway_close(self, session: GatewaySession, code: int, reason: str) -> None:
        session.queue.put_nowait(("close", code, reason))

    async def _gateway_op(self, session: GatewaySession, payload: dict[str, Any]) -> None:
        op = payload.get("op")
        data = payload.get("d")
        if op == 1:  # heartbeat
            session.heartbeats += 1
            session.send_op(11, None)
        elif op == 2:
            await self._identify(session, data or {})
        elif op == 3:
            session.presence = data
        elif op == 6:
            await self._resume(session, data or {})
        elif op == 8:
            self._member_chunk(session, data or {})
        elif op == 4:
            pass  # voice state update: nothing to do
        else:
            await self._gateway_close(session, 4001, "Unknown opcode")

    async def _identify(self, session: GatewaySession, data: dict[str, Any]) -> None:
        if session.identify is not None:
            await self._gateway_close(session, 4005, "Already authenticated")
            return
        if data.get("token") != self.token:
            await self._gateway_close(session, 4004, "Authentication failed")
            return
        intents = data.get("intents")
        if not isinstance(intents, int) or intents < 0:
            await self._gateway_close(session, 4013, "Invalid intent(s)")
            return
        if intents & PRIVILEGED_INTENTS & ~self.privileged_intents:
            await self._gateway_close(session, 4014, "Disallowed intent(s)")
            return
        session.identify = data
        session.intents = intents
        session.session_id = secrets.token_hex(16)
        session.presence = data.get("presence")
        ready = {
            "v": 10,
            "user": {**self.bot_user.to_dict(), "verified": True, "mfa_enabled": False,
                     "email": None, "bio": ""},
            "user_settings": {},
            "guilds": [{"id": str(g), "unavailable": True} for g in self._guilds
                       if g != _DM_ROOMS and self.serves(_Sharded(data), g)],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": self._app_flags()},
            "private_channels": [],
            "presences": [],
            "relationships": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["us-east"],
            "auth": {},
            "_trace": ["fake-gateway"],
        }
        if "shard" in data:
            ready["shard"] = data["shard"]
        last = session.dispatch("READY", ready)
        if intents & Intent.GUILDS:
            for guild in self._guilds.values():
                if guild.id == _DM_ROOMS or not self.serves(session, guild.id):
                    continue
                last = session.dispatch("GUILD_CREATE", guild.create_dict())
        self._spawn(self._mark_ready(session, last))

    async def _mark_ready(self, session: GatewaySession, last: asyncio.Future[float]) -> None:
        with contextlib.suppress(Exception):
            await last
        if not session.closed:
            session.ready = True
        self._notify()

    async def _resume(self, session: GatewaySession, data: dict[str, Any]) -> None:
        previous = next(
            (s for s in reversed(self.sessions) if s is not session and s.session_id
             and s.session_id == data.get("session_id")),
            None,
        )
        if previous is None or data.get("token") != self.token:
            session.send_op(9, False)
            return
        session.session_id = previous.session_id
        session.identify = previous.identify
        session.intents = previous.intents
        session.seq = max(previous.seq, int(data.get("seq") or 0))
        session.resumed = True
        last = session.dispatch("RESUMED", {"_trace": ["fake-gateway"]})
        self._spawn(self._mark_ready(session, last))

    def _member_chunk(self, session: GatewaySession, data: dict[str, Any]) -> None:
        guild = self._guilds.get(int(data.get("guild_id") or 0))
        if guild is None:
            return
        members = list(guild.members.values())
        if data.get("user_ids"):
            wanted = {int(u) for u in data["user_ids"]}
            members = [m for m in members if m.id in wanted]
        chunk: dict[str, Any] = {
            "guild_id": str(guild.id),
            "members": [m.to_dict() for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        session.dispatch("GUILD_MEMBERS_CHUNK", chunk)

    def _app_flags(self) -> int:
        flags = 1 << 23  # APPLICATION_COMMAND_BADGE
        if self.privileged_intents & Intent.GUILD_PRESENCES:
            flags |= 1 << 12
        if self.privileged_intents & Intent.GUILD_MEMBERS:
            flags |= 1 << 14
        if self.privileged_intents & Intent.MESSAGE_CONTENT:
            flags |= 1 << 18
        return flags

    def _dispatch_message_event(self, event: str, message: dict[str, Any]) -> None:
        """MESSAGE_CREATE/UPDATE to sessions with GUILD_MESSAGES (content per intents)."""
        if message["flags"] & MessageFlag.EPHEMERAL:
            return
        channel = self._channels[int(message["channel_id"])]
        public = self._public(message)
        public["guild_id"] = str(channel.guild_id)
        author_id = int(message["author"]["id"])
        member = self._guilds[channel.guild_id].members.get(author_id)
        if member is not None:
            public["member"] = member.to_dict(with_user=False)
        for session in self._ready_sessions(channel.guild_id):
            if not session.has(Intent.GUILD_MESSAGES):
                continue
            data = public
            mentioned = any(int(m["id"]) == self.bot_user_id for m in message["mentions"])
            if not (session.has(Intent.MESSAGE_CONTENT) or author_id == self.bot_user_id
                    or mentioned):
                data = {**public, "content": "", "embeds": [], "attachments": [],
                        "components": []}
            session.dispatch(event, data)

    # ---------------------------------------------------------------- HTTP plumbing

    def _route_table(self) -> list[tuple[str, re.Pattern[str], _Handler]]:
        app = r"(?P<app>\d+)"
        tok = r"(?P<token>[^/]+)"
        cid = r"(?P<cid>\d+)"
        mid = r"(?P<mid>\d+)"
        gid = r"(?P<gid>\d+)"
        table: list[tuple[str, str, _Handler]] = [
            ("GET", r"/users/@me", self._r_get_me),
            ("GET", r"/users/(?P<uid>\d+)", self._r_get_user),
            ("POST", r"/users/@me/channels", self._r_open_dm),
            ("POST", r"/attachments/refresh-urls", self._r_refresh_urls),
            ("GET", r"/oauth2/applications/@me", self._r_get_app),
            ("GET", r"/applications/@me", self._r_get_app),
            ("GET", r"/gateway", self._r_gateway),
            ("GET", r"/gateway/bot", self._r_gateway_bot),
            ("GET", rf"/applications/{app}/commands", self._r_get_commands),
            ("PUT", rf"/applications/{app}/commands", self._r_put_commands),
            ("GET", rf"/applications/{app}/guilds/{gid}/commands", self._r_get_commands),
            ("PUT", rf"/applications/{app}/guilds/{gid}/commands", self._r_put_commands),
            ("POST", rf"/interactions/(?P<iid>\d+)/{tok}/callback", self._r_callback),
            ("GET", rf"/webhooks/{app}/{tok}/messages/(?P<mid>@original|\d+)", self._r_wh_get),
            ("PATCH", rf"/webhooks/{app}/{tok}/messages/(?P<mid>@original|\d+)", self._r_wh_edit),
            ("DELETE", rf"/webhooks/{app}/{tok}/messages/(?P<mid>@original|\d+)",
             self._r_wh_delete),
            ("POST", rf"/webhooks/{app}/{tok}", self._r_wh_execute),
            ("GET", rf"/channels/{cid}", self._r_get_channel),
            ("GET", rf"/channels/{cid}/messages", self._r_list_messages),
            ("POST", rf"/channels/{cid}/messages", self._r_create_message),
            ("GET", rf"/channels/{cid}/messages/{mid}", self._r_get_message),
            ("PATCH", rf"/channels/{cid}/messages/{mid}", self._r_edit_message),
            ("DELETE", rf"/channels/{cid}/messages/{mid}", self._r_delete_message),
            ("POST", rf"/channels/{cid}/typing", self._r_typing),
            ("PUT", rf"/channels/{cid}/messages/{mid}/reactions/(?P<emoji>[^/]+)/@me",
             self._r_react),
            ("DELETE", rf"/channels/{cid}/messages/{mid}/reactions/(?P<emoji>[^/]+)/@me",
             self._r_react),
            ("GET", rf"/guilds/{gid}", self._r_get_guild),
            ("GET", rf"/guilds/{gid}/channels", self._r_guild_channels),
            ("GET", rf"/guilds/{gid}/members/(?P<uid>\d+)", self._r_get_member),
        ]
        return [(m, re.compile(p), h) for m, p, h in table]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        full_path = request.path
        api = full_path.startswith(API_PREFIX + "/")
        path = full_path[len(API_PREFIX):] if api else full_path
        call = RestCall(request.method, path, dict(request.query), self.now(), api)
        self.rest_log.append(call)
        headers: dict[str, str] = {}
        try:
            body_json: Any = None
            uploads: dict[int, _Upload] = {}
            if api:
                body_json, uploads = await self._read_body(request)
                call.json = body_json
                call.files = [
                    {"field": u.field, "filename": u.filename, "size": len(u.data),
                     "content_type": u.content_type}
                    for u in uploads.values()
                ]
            if api and self.latency:
                await asyncio.sleep(self.latency)
            if api and any(m in ("*", request.method) and p.search(path)
                           for m, p in self._hangs):
                await self._released.wait()
            limited = None
            if api and self.rate_limits:
                headers, limited = self._rate_limit(request.method, path)
            lost = self._lost_answer(request.method, path) if limited is None else None
            failure = (self._take_failure(request.method, path)
                       if lost is None and limited is None else None)
            if limited is not None:
                status, body = limited
            elif lost is not None and lost[4]:
                status, body = lost[2], {"message": f"{lost[2]}: injected failure", "code": 0}
            elif failure is not None:
                status, body, headers = failure
            elif not api:
                return self._serve_static(request, call)
            else:
                req = _Request(request.method, path, request.query, request.headers, {},
                               body_json, uploads)
                status, body = await self._route(req)
                if lost is not None and 200 <= status < 300:
                    lost[4] = True  # it took effect; the client hears a failure
                    status, body = lost[2], {"message": f"{lost[2]}: injected failure",
                                             "code": 0}
        except DiscordError as exc:
            status, body, headers = exc.status, exc.body(), exc.headers
        except Exception as exc:
            self.errors.append(exc)
            log.exception("FakeDiscord failed on %s %s", request.method, full_path)
            status, body = 500, {"message": "500: Internal Server Error", "code": 0}
        call.status = status
        call.response = body
        self._notify()
        return _json_response(status, body, headers)

    async def _read_body(self, request: web.Request) -> tuple[Any, dict[int, _Upload]]:
        ctype = request.content_type
        if ctype.startswith("multipart/"):
            payload: Any = None
            uploads: dict[int, _Upload] = {}
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, BodyPartReader):
                    continue
                name = part.name or ""
                data = await part.read(decode=False)
                if name == "payload_json":
                    payload = json.loads(bytes(data).decode("utf-8"))
                    continue
                match = re.fullmatch(r"files\[(\d+)\]|file(\d*)", name)
                if match is None:
                    continue
                index_text = match.group(1) or match.group(2)
                index = int(index_text) if index_text else len(uploads)
                part_type = part.headers.get("Content-Type", "")
                uploads[index] = _Upload(
                    index, name, part.filename or f"file{index}", bytes(data), part_type
                )
            return payload, uploads
        raw = await request.read()
        if not raw:
            return None, {}
        if ctype == "application/json":
            try:
                return json.loads(raw), {}
            except ValueError as exc:
                raise DiscordError(400, 50109, "The request body contains invalid JSON.") from exc
        return None, {}

    def _lost_answer(self, method: str, path: str) -> list[Any] | None:
        for lost in self._lost_answers:
            if lost[0] not in ("*", method) or not lost[1].search(path):
                continue
            if not lost[4]:
                return lost
            if lost[3] > 1:
                lost[3] -= 1
                return lost
            self._lost_answers.remove(lost)
        return None

    def _check_nonce(self, channel_id: int, author_id: int,
                     payload: dict[str, Any]) -> dict[str, Any] | None:
        """Discord's ``nonce`` + ``enforce_nonce``: the same nonce from the same author in the
        same channel within a few minutes returns the message already created."""
        nonce = payload.get("nonce")
        if nonce is None:
            return None
        if not isinstance(nonce, str | int) or len(str(nonce)) > 25:
            raise _form_error(["nonce"], "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        if not payload.get("enforce_nonce"):
            return None
        seen = self._nonces.get((channel_id, author_id, str(nonce)))
        if seen is not None and time.monotonic() - seen[0] <= self.nonce_window:
            return self._messages.get(seen[1])
        return None

    def _remember_nonce(self, channel_id: int, author_id: int, payload: dict[str, Any],
                        message: dict[str, Any]) -> None:
        if payload.get("nonce") is not None and payload.get("enforce_nonce"):
            self._nonces[(channel_id, author_id, str(payload["nonce"]))] = (
                time.monotonic(), int(message["id"]))

    def _take_failure(self, method: str, path: str) -> tuple[int, Any, dict[str, str]] | None:
        for failure in self._failures:
            if failure.method not in ("*", method) or not failure.pattern.search(path):
                continue
            failure.times -= 1
            if failure.times <= 0:
                self._failures.remove(failure)
            if failure.status == 429:
                retry = 0.05 if failure.retry_after is None else failure.retry_after
                body = failure.body or {
                    "message": "You are being rate limited.",
                    "retry_after": retry,
                    "global": failure.global_,
                }
                headers = {
                    "Via": "1.1 google",
                    "Retry-After": str(max(1, int(retry + 0.999))),
                    "X-RateLimit-Scope": "global" if failure.global_ else "user",
                }
                if failure.global_:
                    headers["X-RateLimit-Global"] = "true"
                return 429, body, headers
            body = failure.body
            if body is None:
                body = {"message": f"{failure.status}: injected failure", "code": 0}
            return failure.status, body, {}
        return None

    async def _route(self, req: _Request) -> tuple[int, Any]:
        method_mismatch = False
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(req.path)
            if match is None:
                continue
            if method != req.method:
                method_mismatch = True
                continue
            req.params = match.groupdict()
            if not req.path.startswith(("/interactions/", "/webhooks/")):
                self._check_auth(req)
            result = handler(req)
            if asyncio.iscoroutine(result):
                result = await result
            for hold in self._holds:
                if hold[0] in ("*", req.method) and hold[1].search(req.path):
                    self._holds.remove(hold)
                    await asyncio.sleep(hold[2])
                    break
            return result
        if method_mismatch:
            raise DiscordError(405, 0, "405: Method Not Allowed")
        raise DiscordError(404, 0, "404: Not Found")

    def _check_auth(self, req: _Request) -> None:
        if req.headers.get("Authorization") != f"Bot {self.token}":
            raise DiscordError(401, 0, "401: Unauthorized")

    # ---------------------------------------------------------------- CDN

    def _digest(self, aid: str, expires: int, issued: int) -> str:
        text = f"{aid}|{expires:x}|{issued:x}".encode()
        return hmac.new(self._url_secret, text, hashlib.sha256).hexdigest()

    def _sign(self, path: str) -> str:
        """``path`` (``/cdn/...`` or ``/media/...``) as a signed URL valid for
        ``attachment_url_ttl`` seconds of the fake clock, like Discord's ``ex/is/hm``."""
        aid = path.rstrip("/").split("/")[-2]
        issued = int(self.now())
        expires = issued + int(self.attachment_url_ttl)
        digest = self._digest(aid, expires, issued)
        return f"{self.base_url}{path}?ex={expires:x}&is={issued:x}&hm={digest}&"

    def _attachment_paths(self, channel_id: int | None, aid: int, filename: str) -> tuple[str, str]:
        quoted = quote(filename)
        if channel_id is None:
            tail = f"ephemeral-attachments/{self.application_id}/{aid}/{quoted}"
        else:
            tail = f"attachments/{channel_id}/{aid}/{quoted}"
        return f"/cdn/{tail}", f"/media/{tail}"

    def _serve_static(self, request: web.Request, call: RestCall) -> web.StreamResponse:
        path = request.path
        match = re.fullmatch(
            r"/(?:cdn|media)/(?:ephemeral-)?attachments/\d+/(?P<aid>\d+)/(?P<name>[^/]+)", path
        )
        if match is not None:
            stored = self._files.get(int(match["aid"]))
            ok = stored is not None and stored.filename == match["name"]
            if ok:
                ok = self._check_signature(request, match["aid"])
            if not ok or stored is None:
                call.status = 404
                return web.Response(
                    status=404, body=b"This content is no longer available.",
                    headers={"Content-Type": "text/plain"},
                )
            call.status = 200
            return web.Response(
                status=200, body=stored.data, headers={"Content-Type": stored.content_type}
            )
        if re.fullmatch(r"/cdn/(avatars|embed/avatars|icons|app-icons|banners)/.+", path):
            call.status = 200
            return web.Response(
                status=200, body=png_bytes(16, 16), headers={"Content-Type": "image/png"}
            )
        call.status = 404
        call.response = {"message": "404: Not Found", "code": 0}
        return _json_response(404, call.response, {})

    def _check_signature(self, request: web.Request, aid: str) -> bool:
        try:
            expires = int(request.query["ex"], 16)
            issued = int(request.query["is"], 16)
            given = request.query["hm"]
        except (KeyError, ValueError):
            return False
        wanted = self._digest(aid, expires, issued)
        return hmac.compare_digest(wanted, given) and self.now() <= expires

    def _store_upload(
        self,
        channel_id: int | None,
        upload: _Upload,
        filename: str,
        description: str | None,
        *,
        ephemeral: bool,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        aid = self._snowflake()
        content_type, width, height = _sniff(upload.data, filename, upload.content_type)
        cdn_path, media_path = self._attachment_paths(channel_id, aid, filename)
        self._files[aid] = _StoredFile(filename, upload.data, content_type)
        attachment: dict[str, Any] = {
            "id": str(aid),
            "filename": filename,
            "size": len(upload.data),
            "url": self._sign(cdn_path),
            "proxy_url": self._sign(media_path),
            "content_type": content_type,
        }
        if width is not None:
            attachment["width"] = width
            attachment["height"] = height
        if description:
            attachment["description"] = description
        if ephemeral and channel_id is not None:
            attachment["ephemeral"] = True
        file_entry = {
            "id": str(aid),
            "filename": filename,
            "data": upload.data,
            "content_type": content_type,
            "spoiler": filename.startswith("SPOILER_"),
            "url": attachment["url"],
        }
        return attachment, file_entry

    def _resign(self, attachment: dict[str, Any]) -> dict[str, Any]:
        """A copy whose URLs are freshly signed (Discord re-signs on every read)."""
        match = re.search(r"(/cdn/[^?]+)", attachment.get("url", ""))
        if match is None:
            return dict(attachment)
        cdn_path = match.group(1)
        media_path = "/media/" + cdn_path.removeprefix("/cdn/")
        return {**attachment, "url": self._sign(cdn_path), "proxy_url": self._sign(media_path)}

    # ---------------------------------------------------------------- messages

    def _public(self, message: dict[str, Any]) -> dict[str, Any]:
        """The message as Discord returns it (no private keys, fresh attachment URLs)."""
        data = {k: copy.deepcopy(v) for k, v in message.items() if k not in _PRIVATE_KEYS}
        data["attachments"] = [self._resign(a) for a in message.get("attachments", [])]
        return data

    def _validate_message(
        self,
        payload: dict[str, Any],
        uploads: Mapping[int, _Upload],
        *,
        prefix: tuple[str, ...] = (),
    ) -> None:
        content = payload.get("content")
        if content is not None:
            if not isinstance(content, str):
                raise _form_error([*prefix, "content"], "BASE_TYPE_STRING", "Must be a string.")
            if len(content) > 2000:
                raise _form_error([*prefix, "content"], "BASE_TYPE_MAX_LENGTH",
                                  "Must be 2000 or fewer in length.")
        embeds = payload.get("embeds")
        if embeds is not None:
            if len(embeds) > 10:
                raise _form_error([*prefix, "embeds"], "BASE_TYPE_MAX_LENGTH",
                                  "Must be 10 or fewer in length.")
            total = 0
            for index, embed in enumerate(embeds):
                total += _check_embed(embed, [*prefix, "embeds", index])
            if total > 6000:
                raise _form_error([*prefix, "embeds"], "MAX_EMBED_SIZE_EXCEEDED",
                                  "Embed size exceeds maximum size of 6000")
        flags = int(payload.get("flags") or 0)
        components = payload.get("components")
        if components:
            _check_components(components, bool(flags & MessageFlag.IS_COMPONENTS_V2),
                              [*prefix, "components"])
        if flags & MessageFlag.IS_COMPONENTS_V2 and (content or embeds):
            raise _form_error([*prefix, "content"],
                              "MESSAGE_CANNOT_USE_LEGACY_FIELDS_WITH_COMPONENTS_V2",
                              "The 'content' and 'embeds' fields cannot be used when using "
                              "MessageFlags.IS_COMPONENTS_V2")
        if len(uploads) > 10:
            raise _form_error([*prefix, "files"], "BASE_TYPE_MAX_LENGTH",
                              "Must be 10 or fewer in length.")
        for upload in uploads.values():
            if len(upload.data) > self.attachment_size_limit:
                raise DiscordError(413, 40005, "Request entity too large")

    def _build_attachments(
        self,
        channel_id: int,
        payload: dict[str, Any],
        uploads: Mapping[int, _Upload],
        existing: dict[str, Any] | None,
        *,
        ephemeral: bool,
        prefix: tuple[str, ...] = (),
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        """New (attachments, files) for a message, or None to leave them as they are."""
        listed = payload.get("attachments")
        if listed is None and not uploads:
            return None
        old: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        if existing is not None:
            old = {a["id"]: (a, f) for a, f in zip(existing["attachments"], existing["files"],
                                                   strict=True)}
        attachments: list[dict[str, Any]] = []
        files: list[dict[str, Any]] = []
        used: set[int] = set()
        if listed is None:
            for attachment, file_entry in old.values():
                attachments.append(attachment)
                files.append(file_entry)
            listed = [{"id": index} for index in sorted(uploads)]
        for position, entry in enumerate(listed):
            key = str(entry.get("id"))
            if key in old:
                attachment, file_entry = old[key]
                attachments.append(attachment)
                files.append(file_entry)
                continue
            if key.isdigit() and int(key) in uploads and int(key) not in used:
                upload = uploads[int(key)]
                used.add(int(key))
                name = entry.get("filename") or upload.filename
                attachment, file_entry = self._store_upload(
                    channel_id, upload, name, entry.get("description"), ephemeral=ephemeral
                )
                attachments.append(attachment)
                files.append(file_entry)
                continue
            raise _form_error([*prefix, "attachments", position, "id"], "ATTACHMENT_NOT_FOUND",
                              "Unknown attachment")
        for index in sorted(set(uploads) - used):
            upload = uploads[index]
            attachment, file_entry = self._store_upload(
                channel_id, upload, upload.filename, None, ephemeral=ephemeral
            )
            attachments.append(attachment)
            files.append(file_entry)
        return attachments, files

    def _mentions(
        self,
        guild: FakeGuild,
        content: str,
        allowed: dict[str, Any] | None,
        replied_to: int | None = None,
    ) -> list[dict[str, Any]]:
        ids = [int(x) for x in re.findall(r"<@!?(\d+)>", content)]
        everyone_users = allowed is None or "users" in (allowed.get("parse") or [])
        listed = {int(u) for u in (allowed or {}).get("users") or []}
        replied = allowed is None or bool(allowed.get("replied_user", False))
        chosen: list[int] = []
        for uid in ids:
            if uid in self._users and (everyone_users or uid in listed) and uid not in chosen:
                chosen.append(uid)
        if replied_to is not None and replied and replied_to not in chosen:
            chosen.append(replied_to)
        result = []
        for uid in chosen:
            entry = self._users[uid].to_dict()
            member = guild.members.get(uid)
            if member is not None:
                entry["member"] = member.to_dict(with_user=False)
            result.append(entry)
        return result

    def _new_message(
        self,
        channel: FakeChannel,
        author: FakeUser,
        payload: dict[str, Any],
        uploads: Mapping[int, _Upload],
        *,
        message_type: int = MT_DEFAULT,
        ephemeral: bool = False,
        loading: bool = False,
        interaction: InteractionRecord | None = None,
        followup_of: int | None = None,
        prefix: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        self._validate_message(payload, uploads, prefix=prefix)
        flags = int(payload.get("flags") or 0) & _SETTABLE_FLAGS
        if ephemeral:
            flags |= MessageFlag.EPHEMERAL
        if loading:
            flags |= MessageFlag.LOADING
        built = self._build_attachments(channel.id, payload, uploads, None, ephemeral=ephemeral,
                                        prefix=prefix)
        attachments, files = built if built is not None else ([], [])
        content = payload.get("content") or ""
        embeds = [_normalise_embed(e) for e in payload.get("embeds") or []]
        components = _number_components(payload.get("components") or [])
        if not loading and not (content or embeds or attachments or components
                                or payload.get("sticker_ids") or payload.get("poll")):
            raise DiscordError(400, 50006, "Cannot send an empty message")
        guild = self._guilds[channel.guild_id]
        mid = self._snowflake()
        message: dict[str, Any] = {
            "id": str(mid),
            "type": message_type,
            "content": content,
            "channel_id": str(channel.id),
            "author": author.to_dict(),
            "attachments": attachments,
            "embeds": embeds,
            "mentions": [],
            "mention_roles": [],
            "mention_everyone": False,
            "pinned": False,
            "tts": bool(payload.get("tts")),
            "timestamp": self._iso(),
            "edited_timestamp": None,
            "flags": flags,
            "components": components,
            "files": files,
            "deleted": False,
        }
        reference = payload.get("message_reference")
        replied_to: int | None = None
        if reference and reference.get("message_id"):
            target = self._messages.get(int(reference["message_id"]))
            same_channel = target is not None and target["channel_id"] == str(channel.id)
            if target is not None and not target["deleted"] and same_channel:
                message["type"] = MT_REPLY
                message["message_reference"] = {
                    "type": 0,
                    "message_id": target["id"],
                    "channel_id": target["channel_id"],
                    "guild_id": str(channel.guild_id),
                }
                message["referenced_message"] = self._public(target)
                replied_to = int(target["author"]["id"])
            elif reference.get("fail_if_not_exists", True):
                raise _form_error([*prefix, "message_reference"],
                                  "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                                  "Unknown message")
        message["mentions"] = self._mentions(guild, content, payload.get("allowed_mentions"),
                                             replied_to)
        message["mention_everyone"] = "@everyone" in content and (
            payload.get("allowed_mentions") is None
            or "everyone" in (payload["allowed_mentions"].get("parse") or [])
        )
        if payload.get("nonce") is not None:
            message["nonce"] = payload["nonce"]
        if interaction is not None:
            message["webhook_id"] = str(self.application_id)
            message["application_id"] = str(self.application_id)
            user = self._users[interaction.user_id].to_dict()
            metadata: dict[str, Any] = {
                "id": str(interaction.id),
                "type": interaction.type,
                "user": user,
                "authorizing_integration_owners": dict(
                    interaction.payload.get("authorizing_integration_owners")
                    or {"0": str(interaction.guild_id)}),
            }
            if interaction.type == IX_COMMAND and interaction.name:
                metadata["name"] = interaction.name
                metadata["command_type"] = interaction.command_type or 1
            if followup_of is not None:
                metadata["original_response_message_id"] = str(followup_of)
            if interaction.source_message_id is not None:
                metadata["interacted_message_id"] = str(interaction.source_message_id)
            message["interaction_metadata"] = metadata
            if interaction.type == IX_COMMAND and interaction.name:
                member = guild.members.get(interaction.user_id)
                message["interaction"] = {
                    "id": str(interaction.id),
                    "type": interaction.type,
                    "name": interaction.name,
                    "user": user,
                    **({"member": member.to_dict(with_user=False)} if member else {}),
                }
        channel.messages.append(message)
        channel.last_message_id = mid
        self._messages[mid] = message
        self._history[mid] = [self._public(message)]
        self._touched[mid] = time.monotonic()
        self._dispatch_message_event("MESSAGE_CREATE", message)
        self._notify()
        return message

    def _edit_message(
        self,
        message: dict[str, Any],
        payload: dict[str, Any],
        uploads: Mapping[int, _Upload],
        *,
        prefix: tuple[str, ...] = (),
        keep_flags: bool = False,
    ) -> dict[str, Any]:
        self._validate_message(payload, uploads, prefix=prefix)
        channel = self._channels[int(message["channel_id"])]
        updated = dict(message)
        if "content" in payload:
            updated["content"] = payload["content"] or ""
        if "embeds" in payload:
            updated["embeds"] = [_normalise_embed(e) for e in payload["embeds"] or []]
        if "components" in payload:
            updated["components"] = _number_components(payload["components"] or [])
        if payload.get("flags") is not None and not keep_flags:
            wanted = int(payload["flags"])
            updated["flags"] = (message["flags"] & ~MessageFlag.SUPPRESS_EMBEDS) | (
                wanted & MessageFlag.SUPPRESS_EMBEDS
            )
        built = self._build_attachments(
            channel.id, payload, uploads, message,
            ephemeral=bool(message["flags"] & MessageFlag.EPHEMERAL), prefix=prefix,
        )
        if built is not None:
            updated["attachments"], updated["files"] = built
        was_loading = bool(message["flags"] & MessageFlag.LOADING)
        updated["flags"] = updated["flags"] & ~MessageFlag.LOADING
        if not (updated["content"] or updated["embeds"] or updated["attachments"]
                or updated["components"]):
            raise DiscordError(400, 50006, "Cannot send an empty message")
        if "content" in payload or "allowed_mentions" in payload:
            guild = self._guilds[channel.guild_id]
            updated["mentions"] = self._mentions(guild, updated["content"],
                                                 payload.get("allowed_mentions"))
        if not was_loading:
            updated["edited_timestamp"] = self._iso()
        message.clear()
        message.update(updated)
        self._touched[int(message["id"])] = time.monotonic()
        self._history.setdefault(int(message["id"]), []).append(self._public(message))
        self._dispatch_message_event("MESSAGE_UPDATE", message)
        self._notify()
        return message

    def _delete_message(self, message: dict[str, Any]) -> None:
        channel = self._channels[int(message["channel_id"])]
        with contextlib.suppress(ValueError):
            channel.messages.remove(message)
        message["deleted"] = True
        self.deleted_messages.append(message)
        if not message["flags"] & MessageFlag.EPHEMERAL:
            for session in self._ready_sessions(channel.guild_id):
                if session.has(Intent.GUILD_MESSAGES):
                    session.dispatch("MESSAGE_DELETE", {
                        "id": message["id"], "channel_id": message["channel_id"],
                        "guild_id": str(channel.guild_id),
                    })
        self._notify()

    def post_user_message(
        self,
        channel_id: int,
        user_id: int,
        content: str = "",
        attachments: Iterable[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        """A member's ordinary message in a channel (attachments: dicts from
        :meth:`add_attachment` or from other messages; each is re-uploaded with a new id).
        With the GUILD_MESSAGES intent the bot gets MESSAGE_CREATE (content only with
        MESSAGE_CONTENT or a mention, as Discord does)."""
        channel = self._channels[channel_id]
        guild = self._guilds[channel.guild_id]
        if user_id not in guild.members:
            raise ClientRefused(f"user {user_id} is not a member of guild {guild.id}")
        uploads: dict[int, _Upload] = {}
        for index, attachment in enumerate(attachments):
            data = self.file_at(attachment["url"])
            uploads[index] = _Upload(index, f"files[{index}]", attachment["filename"], data,
                                     attachment.get("content_type") or "")
        return self._new_message(channel, self._users[user_id], {"content": content}, uploads)

    # ---------------------------------------------------------------- REST: identity

    def _r_get_me(self, req: _Request) -> tuple[int, Any]:
        self.logins += 1
        return 200, {**self.bot_user.to_dict(), "verified": True, "mfa_enabled": False,
                     "locale": "en-US", "email": None, "bio": ""}

    def _r_get_user(self, req: _Request) -> tuple[int, Any]:
        user = self._users.get(int(req.params["uid"]))
        if user is None:
            raise DiscordError(404, 10013, "Unknown User")
        return 200, user.to_dict()

    def _r_get_app(self, req: _Request) -> tuple[int, Any]:
        return 200, {
            "id": str(self.application_id),
            "name": self.bot_user.name,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "hook": True,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "owner": self.user(self.app_owner_id).to_dict(),
            "team": None,
            "flags": self._app_flags(),
            "tags": [],
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "role_connections_verification_url": None,
            "approximate_guild_count": len(self._guilds),
            "integration_types_config": {"0": {}},
            "bot": self.bot_user.to_dict(),
        }

    def _r_gateway(self, req: _Request) -> tuple[int, Any]:
        return 200, {"url": self.gateway_url}

    def _r_gateway_bot(self, req: _Request) -> tuple[int, Any]:
        return 200, {
            "url": self.gateway_url,
            "shards": self.recommended_shards,
            "session_start_limit": {"total": 1000, "remaining": 999,
                                    "reset_after": 14400000, "max_concurrency": 1},
        }

    # ---------------------------------------------------------------- REST: commands

    def _check_app(self, req: _Request) -> None:
        if int(req.params["app"]) != self.application_id:
            raise _missing_access()

    def _r_get_commands(self, req: _Request) -> tuple[int, Any]:
        self._check_app(req)
        if req.params.get("gid"):
            gid = int(req.params["gid"])
            if gid not in self._guilds:
                raise _missing_access()
            return 200, copy.deepcopy(self.guild_commands(gid))
        return 200, copy.deepcopy(self.global_commands)

    def _r_put_commands(self, req: _Request) -> tuple[int, Any]:
        self._check_app(req)
        gid = int(req.params["gid"]) if req.params.get("gid") else None
        if gid is not None and gid not in self._guilds:
            raise _missing_access()
        body = req.json
        if not isinstance(body, list):
            raise _form_error([], "BASE_TYPE_ARRAY", "Must be an array.")
        _check_command_list(body)
        stored: dict[tuple[str, int], dict[str, Any]] = {}
        for cmd in body:
            kind = int(cmd.get("type") or 1)
            key = (gid, cmd["name"], kind)
            cid = self._command_ids.get(key)
            if cid is None:
                cid = self._command_ids[key] = self._snowflake()
            dmp = cmd.get("default_member_permissions")
            entry: dict[str, Any] = {
                "id": str(cid),
                "application_id": str(self.application_id),
                "version": str(self._snowflake()),
                "type": kind,
                "name": cmd["name"],
                "name_localizations": cmd.get("name_localizations"),
                "description": cmd.get("description") or "",
                "description_localizations": cmd.get("description_localizations"),
                "default_member_permissions": None if dmp is None else str(dmp),
                "dm_permission": cmd.get("dm_permission", True),
                "contexts": cmd.get("contexts"),
                "integration_types": cmd.get("integration_types") or [0],
                "nsfw": bool(cmd.get("nsfw", False)),
            }
            if cmd.get("options"):
                entry["options"] = copy.deepcopy(cmd["options"])
            if gid is not None:
                entry["guild_id"] = str(gid)
            stored[(cmd["name"], kind)] = entry
        if gid is None:
            self._global_commands = stored
            self.command_syncs.append(("global", None, self.now()))
        else:
            self._guild_commands[gid] = stored
            self.command_syncs.append(("guild", gid, self.now()))
        self._notify()
        return 200, copy.deepcopy(list(stored.values()))

    # ---------------------------------------------------------------- REST: interactions

    def _r_callback(self, req: _Request) -> tuple[int, Any]:
        rec = self._by_id.get(int(req.params["iid"]))
        if rec is None or rec.token != req.params["token"]:
            raise DiscordError(404, 10062, "Unknown interaction")
        body = req.json if isinstance(req.json, dict) else {}
        recorded = dict(body)
        if req.uploads:
            recorded["files"] = [
                {"filename": u.filename, "data": u.data, "content_type": u.content_type,
                 "spoiler": u.filename.startswith("SPOILER_")}
                for u in req.uploads.values()
            ]
        rec.responses.append(recorded)
        rec.response_times.append(time.monotonic())
        try:
            result = self._accept_callback(rec, body, req)
        except DiscordError as exc:
            recorded["refused"] = exc.body()
            rec.refusals.append(("POST", req.path, exc.status, exc.code))
            self._notify()
            raise
        rec.answer_index = len(rec.responses) - 1
        self._notify()
        return result

    def _accept_callback(
        self, rec: InteractionRecord, body: dict[str, Any], req: _Request
    ) -> tuple[int, Any]:
        if rec.acknowledged:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        if self.now() - rec.created_at > self.response_deadline:
            raise DiscordError(404, 10062, "Unknown interaction")
        kind = body.get("type")
        data = body.get("data") or {}
        allowed = {
            IX_PING: {1},
            IX_COMMAND: {CB_MESSAGE, CB_DEFERRED, CB_MODAL},
            IX_COMPONENT: {CB_MESSAGE, CB_DEFERRED, CB_DEFERRED_UPDATE, CB_UPDATE, CB_MODAL},
            IX_AUTOCOMPLETE: {CB_AUTOCOMPLETE},
            # discord.py's defer() in a modal's on_submit sends 6 (closes the modal quietly);
            # 7 needs the message the modal was opened from.
            IX_MODAL_SUBMIT: {CB_MESSAGE, CB_DEFERRED, CB_DEFERRED_UPDATE}
            | ({CB_UPDATE} if rec.source_message_id is not None else set()),
        }[rec.type]
        if kind not in allowed:
            raise _form_error(["type"], "INTERACTION_RESPONSE_TYPE_INVALID",
                              f"Interaction response type {kind} is invalid here")
        channel = self._channels[rec.channel_id]
        message: dict[str, Any] | None = None
        if kind == CB_MESSAGE:
            ephemeral = bool(int(data.get("flags") or 0) & MessageFlag.EPHEMERAL)
            message = self._new_message(
                channel, self.bot_user, data, req.uploads, ephemeral=ephemeral,
                message_type=self._response_message_type(rec), interaction=rec, prefix=("data",),
            )
            rec.original_id = int(message["id"])
        elif kind == CB_DEFERRED:
            ephemeral = bool(int(data.get("flags") or 0) & MessageFlag.EPHEMERAL)
            message = self._new_message(
                channel, self.bot_user, {}, {}, ephemeral=ephemeral, loading=True,
                message_type=self._response_message_type(rec), interaction=rec,
            )
            rec.original_id = int(message["id"])
            rec.placeholder_pending = True
        elif kind == CB_DEFERRED_UPDATE:
            rec.original_id = rec.source_message_id
        elif kind == CB_UPDATE:
            source = self._messages.get(rec.source_message_id or 0)
            if source is None or source["deleted"]:
                raise _unknown_message()
            message = self._edit_message(source, data, req.uploads, prefix=("data",),
                                         keep_flags=True)
            rec.original_id = rec.source_message_id
        elif kind == CB_AUTOCOMPLETE:
            _check_choices(data)
        elif kind == CB_MODAL:
            _check_modal(data)
            data["components"] = _number_components(data.get("components") or [])
        rec.acknowledged = True
        if req.query.get("with_response") not in ("1", "true", "True"):
            return 204, None
        info: dict[str, Any] = {"id": str(rec.id), "type": rec.type}
        if message is not None:
            info["response_message_id"] = message["id"]
            info["response_message_loading"] = kind == CB_DEFERRED
            info["response_message_ephemeral"] = bool(message["flags"] & MessageFlag.EPHEMERAL)
        resource: dict[str, Any] = {"type": kind}
        if message is not None:
            resource["message"] = self._public(message)
        return 200, {"interaction": info, "resource": resource}

    @staticmethod
    def _response_message_type(rec: InteractionRecord) -> int:
        if rec.type == IX_COMMAND:
            return MT_CHAT_INPUT if (rec.command_type or 1) == 1 else MT_CONTEXT_MENU
        return MT_DEFAULT

    def _webhook_record(self, req: _Request) -> InteractionRecord:
        if int(req.params["app"]) != self.application_id:
            raise DiscordError(404, 10015, "Unknown Webhook")
        rec = self._by_token.get(req.params["token"])
        if rec is None or rec.expired:
            if rec is not None:
                rec.refusals.append((req.method, req.path, 401, 50027))
            raise DiscordError(401, 50027, "Invalid Webhook Token")
        if not rec.acknowledged or rec.response_type in (CB_AUTOCOMPLETE, CB_MODAL):
            rec.refusals.append((req.method, req.path, 404, 10015))
            raise DiscordError(404, 10015, "Unknown Webhook")
        channel = self._channels.get(rec.channel_id)
        if channel is not None and channel.guild_id not in self._guilds:
            rec.refusals.append((req.method, req.path, 404, 10003))
            raise DiscordError(404, 10003, "Unknown Channel")  # the bot left the server
        return rec

    def _webhook_message(self, rec: InteractionRecord, mid: str) -> dict[str, Any]:
        if mid == "@original":
            message_id = rec.original_id
        else:
            message_id = int(mid)
            if message_id != rec.original_id and message_id not in rec.followup_ids:
                raise _unknown_message()
        message = self._messages.get(message_id or 0)
        if message is None or message["deleted"]:
            raise _unknown_message()
        return message

    def _r_wh_get(self, req: _Request) -> tuple[int, Any]:
        rec = self._webhook_record(req)
        return 200, self._public(self._webhook_message(rec, req.params["mid"]))

    def _r_wh_edit(self, req: _Request) -> tuple[int, Any]:
        rec = self._webhook_record(req)
        message = self._webhook_message(rec, req.params["mid"])
        payload = req.json if isinstance(req.json, dict) else {}
        self._edit_message(message, payload, req.uploads)
        if int(message["id"]) == rec.original_id:
            rec.placeholder_pending = False
        return 200, self._public(message)

    def _r_wh_delete(self, req: _Request) -> tuple[int, Any]:
        rec = self._webhook_record(req)
        message = self._webhook_message(rec, req.params["mid"])
        self._delete_message(message)
        if int(message["id"]) == rec.original_id:
            rec.placeholder_pending = False
        return 204, None

    def _r_wh_execute(self, req: _Request) -> tuple[int, Any]:
        rec = self._webhook_record(req)
        payload = req.json if isinstance(req.json, dict) else {}
        if rec.placeholder_pending and rec.original_id is not None:
            placeholder = self._messages[rec.original_id]
            message = self._edit_message(placeholder, payload, req.uploads, keep_flags=True)
            rec.placeholder_pending = False
        else:
            ephemeral = bool(int(payload.get("flags") or 0) & MessageFlag.EPHEMERAL)
            message = self._new_message(
                self._channels[rec.channel_id], self.bot_user, payload, req.uploads,
                ephemeral=ephemeral, interaction=rec, followup_of=rec.original_id,
            )
        rec.followup_ids.append(int(message["id"]))
        self._notify()
        if req.query.get("wait") in ("1", "true", "True"):
            return 200, self._public(message)
        return 204, None

    # ---------------------------------------------------------------- REST: channels, guilds

    def _channel_for(self, req: _Request) -> FakeChannel:
        channel = self._channels.get(int(req.params["cid"]))
        if channel is None or channel.guild_id not in self._guilds:
            raise DiscordError(404, 10003, "Unknown Channel")
        return channel

    def _bot_perms(self, channel: FakeChannel) -> int:
        return self.permissions_for(channel.guild_id, self.bot_user_id, channel.id)

    def _r_get_channel(self, req: _Request) -> tuple[int, Any]:
        channel = self._channel_for(req)
        if not self._bot_perms(channel) & Permission.VIEW_CHANNEL:
            raise _missing_access()
        return 200, channel.to_dict()

    def _r_list_messages(self, req: _Request) -> tuple[int, Any]:
        channel = self._channel_for(req)
        perms = self._bot_perms(channel)
        if not perms & Permission.VIEW_CHANNEL:
            raise _missing_access()
        if not perms & Permission.READ_MESSAGE_HISTORY:
            return 200, []
        limit = max(1, min(100, int(req.query.get("limit", "50"))))
        items = [m for m in channel.messages if not m["flags"] & MessageFlag.EPHEMERAL]
        if "before" in req.query:
            items = [m for m in items if int(m["id"]) < int(req.query["before"])]
            items = items[-limit:]
        elif "after" in req.query:
            items = [m for m in items if int(m["id"]) > int(req.query["after"])][:limit]
        elif "around" in req.query:
            pivot = int(req.query["around"])
            older = [m for m in items if int(m["id"]) < pivot][-(limit // 2):]
            newer = [m for m in items if int(m["id"]) >= pivot][: limit - len(older)]
            items = older + newer
        else:
            items = items[-limit:]
        return 200, [self._public(m) for m in reversed(items)]

    def _r_refresh_urls(self, req: _Request) -> tuple[int, Any]:
        """Discord's refresh of expired attachment URLs: the same files, freshly signed."""
        payload = req.json if isinstance(req.json, dict) else {}
        urls = payload.get("attachment_urls")
        if not isinstance(urls, list) or not 1 <= len(urls) <= 50:
            raise _form_error(["attachment_urls"], "BASE_TYPE_BAD_LENGTH",
                              "Must be between 1 and 50 in length.")
        refreshed = []
        for url in urls:
            match = re.search(r"(/cdn/[^?]+)", str(url))
            refreshed.append({"original": url,
                              "refreshed": self._sign(match.group(1)) if match else url})
        return 200, {"refreshed_urls": refreshed}

    def _r_open_dm(self, req: _Request) -> tuple[int, Any]:
        payload = req.json if isinstance(req.json, dict) else {}
        user = self._users.get(int(payload.get("recipient_id") or 0))
        if user is None:
            raise DiscordError(400, 50033, "Invalid Recipient(s)")
        dm_id = next((c for c, u in self._dm_channels.items() if u == user.id), None)
        if dm_id is None:
            dm_id = self._snowflake()
            self._dm_channels[dm_id] = user.id
        return 200, {"id": str(dm_id), "type": 1, "last_message_id": None,
                     "recipients": [user.to_dict()]}

    def _dm_message(self, req: _Request, user_id: int) -> tuple[int, Any]:
        """A direct message to a member: recorded in ``direct_messages[user_id]``."""
        if user_id in self.closed_dms:
            raise DiscordError(403, 50007, "Cannot send messages to this user")
        payload = req.json if isinstance(req.json, dict) else {}
        channel_id = int(req.params["cid"])
        self._validate_message(payload, req.uploads)
        existing = self._check_nonce(channel_id, self.bot_user_id, payload)
        if existing is not None:
            return 200, self._public(existing)
        built = self._build_attachments(channel_id, payload, req.uploads, None, ephemeral=False)
        attachments, files = built if built is not None else ([], [])
        message = {"id": str(self._snowflake()), "type": MT_DEFAULT,
                   "content": payload.get("content") or "", "channel_id": str(channel_id),
                   "author": self.bot_user.to_dict(), "attachments": attachments,
                   "embeds": [], "mentions": [], "mention_roles": [],
                   "mention_everyone": False, "pinned": False, "tts": False,
                   "timestamp": self._iso(), "edited_timestamp": None, "flags": 0,
                   "components": [], "files": files, "deleted": False}
        if payload.get("nonce") is not None:
            message["nonce"] = payload["nonce"]
        self._messages[int(message["id"])] = message
        self._remember_nonce(channel_id, self.bot_user_id, payload, message)
        self.direct_messages.setdefault(user_id, []).append(message)
        self._notify()
        return 200, self._public(message)

    def _r_create_message(self, req: _Request) -> tuple[int, Any]:
        dm_user = self._dm_channels.get(int(req.params["cid"]))
        if dm_user is not None:
            return self._dm_message(req, dm_user)
        channel = self._channel_for(req)
        perms = self._bot_perms(channel)
        if not perms & Permission.VIEW_CHANNEL:
            raise _missing_access()
        if not perms & Permission.SEND_MESSAGES:
            raise _missing_permissions()
        if req.uploads and not perms & Permission.ATTACH_FILES:
            raise _missing_permissions()
        payload = req.json if isinstance(req.json, dict) else {}
        if payload.get("flags") and int(payload["flags"]) & MessageFlag.EPHEMERAL:
            raise _form_error(["flags"], "MESSAGE_FLAGS_INVALID", "Invalid flags")
        existing = self._check_nonce(channel.id, self.bot_user_id, payload)
        if existing is not None:
            return 200, self._public(existing)
        message = self._new_message(channel, self.bot_user, payload, req.uploads)
        self._remember_nonce(channel.id, self.bot_user_id, payload, message)
        return 200, self._public(message)

    def _channel_message(self, req: _Request) -> tuple[FakeChannel, dict[str, Any]]:
        channel = self._channel_for(req)
        if not self._bot_perms(channel) & Permission.VIEW_CHANNEL:
            raise _missing_access()
        message = self._messages.get(int(req.params["mid"]))
        if (message is None or message["deleted"] or message["channel_id"] != str(channel.id)
                or message["flags"] & MessageFlag.EPHEMERAL):
            raise _unknown_message()
        return channel, message

    def _r_get_message(self, req: _Request) -> tuple[int, Any]:
        channel, message = self._channel_message(req)
        if not self._bot_perms(channel) & Permission.READ_MESSAGE_HISTORY:
            raise _missing_access()
        return 200, self._public(message)

    def _r_edit_message(self, req: _Request) -> tuple[int, Any]:
        _, message = self._channel_message(req)
        if int(message["author"]["id"]) != self.bot_user_id:
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        payload = req.json if isinstance(req.json, dict) else {}
        self._edit_message(message, payload, req.uploads)
        return 200, self._public(message)

    def _r_delete_message(self, req: _Request) -> tuple[int, Any]:
        channel, message = self._channel_message(req)
        own = int(message["author"]["id"]) == self.bot_user_id
        if not own and not self._bot_perms(channel) & Permission.MANAGE_MESSAGES:
            raise _missing_permissions()
        self._delete_message(message)
        return 204, None

    def _r_typing(self, req: _Request) -> tuple[int, Any]:
        channel = self._channel_for(req)
        if not self._bot_perms(channel) & Permission.SEND_MESSAGES:
            raise _missing_permissions()
        return 204, None

    def _r_react(self, req: _Request) -> tuple[int, Any]:
        channel, message = self._channel_message(req)
        if req.method == "PUT" and not self._bot_perms(channel) & Permission.ADD_REACTIONS:
            raise _missing_permissions()
        reactions = message.setdefault("reactions", [])
        emoji = req.params["emoji"]
        found = next((r for r in reactions if r["emoji"]["name"] == emoji), None)
        if req.method == "PUT" and found is None:
            reactions.append({"count": 1, "me": True, "emoji": {"id": None, "name": emoji},
                              "burst_colors": [], "count_details": {"burst": 0, "normal": 1},
                              "me_burst": False, "burst_me": False, "burst_count": 0})
        elif req.method == "DELETE" and found is not None:
            reactions.remove(found)
        self._notify()
        return 204, None

    def _guild_for(self, req: _Request) -> FakeGuild:
        guild = self._guilds.get(int(req.params["gid"]))
        if guild is None:
            raise DiscordError(404, 10004, "Unknown Guild")
        return guild

    def _r_get_guild(self, req: _Request) -> tuple[int, Any]:
        guild = self._guild_for(req)
        data = guild.base_dict()
        if req.query.get("with_counts") in ("1", "true", "True"):
            data["approximate_member_count"] = len(guild.members)
            data["approximate_presence_count"] = 0
        return 200, data

    def _r_guild_channels(self, req: _Request) -> tuple[int, Any]:
        guild = self._guild_for(req)
        return 200, [c.to_dict() for c in guild.channels.values()]

    def _r_get_member(self, req: _Request) -> tuple[int, Any]:
        guild = self._guild_for(req)
        member = guild.members.get(int(req.params["uid"]))
        if member is None:
            raise DiscordError(404, 10007, "Unknown Member")
        return 200, member.to_dict()

    # ---------------------------------------------------------------- interactions (members)

    def _find_command(self, name: str, kind: int, guild_id: int) -> dict[str, Any]:
        cmd = self._guild_commands.get(guild_id, {}).get((name, kind))
        if cmd is None:
            cmd = self._global_commands.get((name, kind))
        if cmd is None:
            known = sorted(n for n, k in (*self._global_commands,
                                           *self._guild_commands.get(guild_id, {})) if k == kind)
            raise ClientRefused(f"no command {name!r} of type {kind} is registered "
                                f"(registered: {known})")
        return cmd

    def _check_visible(self, cmd: dict[str, Any], guild: FakeGuild, channel: FakeChannel,
                       user_id: int) -> None:
        if user_id not in guild.members:
            raise ClientRefused(f"user {user_id} is not a member of guild {guild.id}")
        perms = self.permissions_for(guild.id, user_id, channel.id)
        if not perms & Permission.USE_APPLICATION_COMMANDS:
            raise ClientRefused(f"user {user_id} may not use application commands here")
        required = cmd.get("default_member_permissions")
        if required is not None and not perms & Permission.ADMINISTRATOR:
            need = int(required)
            if need == 0 or perms & need != need:
                raise ClientRefused(f"{cmd['name']!r} is hidden from user {user_id} "
                                    f"(default_member_permissions={need})")
        contexts = cmd.get("contexts")
        if contexts is not None and 0 not in contexts:
            raise ClientRefused(f"{cmd['name']!r} is not available in guilds")
        if cmd.get("nsfw") and not channel.nsfw:
            raise ClientRefused(f"{cmd['name']!r} is age-restricted and #{channel.name} is not")

    def _member_payload(
        self, guild: FakeGuild, user_id: int, channel: FakeChannel
    ) -> dict[str, Any]:
        member = guild.members.get(user_id)
        if member is None:
            raise ClientRefused(f"user {user_id} is not a member of guild {guild.id}")
        return {**member.to_dict(),
                "permissions": str(self.permissions_for(guild.id, user_id, channel.id))}

    async def _send_interaction(
        self,
        kind: int,
        user_id: int,
        channel_id: int,
        data: dict[str, Any],
        *,
        message: dict[str, Any] | None = None,
        name: str | None = None,
        command_type: int | None = None,
        source_message_id: int | None = None,
        integration_owners: Mapping[str, str] | None = None,
    ) -> InteractionRecord:
        channel = self._channels[channel_id]
        session = self.session_for_guild(channel.guild_id)
        if session is None:
            raise RuntimeError("no bot is connected to the fake gateway (wait_until_ready first)")
        guild = self._guilds[channel.guild_id]
        member = self._member_payload(guild, user_id, channel)
        iid = self._snowflake()
        raw = f"interaction:{iid}:{secrets.token_urlsafe(48)}".encode()
        token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        channel_data = channel.to_dict()
        channel_data["permissions"] = member["permissions"]
        payload: dict[str, Any] = {
            "id": str(iid),
            "application_id": str(self.application_id),
            "type": kind,
            "data": data,
            "guild": {"id": str(guild.id), "locale": guild.preferred_locale, "features": []},
            "guild_id": str(guild.id),
            "guild_locale": guild.preferred_locale,
            "channel": channel_data,
            "channel_id": str(channel.id),
            "member": member,
            "token": token,
            "version": 1,
            "app_permissions": str(self._bot_perms(channel)),
            "locale": "en-US",
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": str(guild.id)},
            "context": 0,
            "attachment_size_limit": self.attachment_size_limit,
        }
        if message is not None:
            payload["message"] = self._public(message)
        if integration_owners is not None:
            payload["authorizing_integration_owners"] = dict(integration_owners)
        if guild.id == _DM_ROOMS:  # from a direct message: no guild, no member, context 1
            user = self._users[user_id].to_dict()
            for key in ("guild", "guild_id", "guild_locale", "member"):
                payload.pop(key)
            payload["user"] = user
            payload["channel"] = {"id": str(channel.id), "type": 1, "flags": 0,
                                  "last_message_id": None, "recipients": [user]}
            payload["context"] = 1
            if integration_owners is None:
                payload["authorizing_integration_owners"] = {"0": "0"}
        rec = InteractionRecord(
            self, interaction_id=iid, token=token, type=kind, user_id=user_id,
            channel_id=channel.id, guild_id=None if guild.id == _DM_ROOMS else guild.id,
            payload=payload, name=name,
            command_type=command_type, source_message_id=source_message_id,
        )
        self.interactions.append(rec)
        self._by_id[iid] = rec
        self._by_token[token] = rec
        written = session.dispatch("INTERACTION_CREATE", payload)
        await asyncio.wait({written})
        if written.cancelled():
            raise ConnectionError("the gateway connection closed before INTERACTION_CREATE "
                                  "was written")
        rec.sent_at = written.result()
        self._notify()
        return rec

    def _command_data(
        self,
        name: str,
        options: Mapping[str, Any] | None,
        channel_id: int,
        user_id: int,
        *,
        focused: str | None,
        client_checks: bool,
    ) -> tuple[dict[str, Any], str]:
        parts = name.split()
        channel = self._channels[channel_id]
        guild = self._guilds[channel.guild_id]
        cmd = self._find_command(parts[0], 1, guild.id)
        if client_checks:
            self._check_visible(cmd, guild, channel, user_id)
        resolved: dict[str, dict[str, Any]] = {}
        given: Mapping[str, Any] = dict(options or {})
        schema = cmd.get("options") or []
        path = [parts[0]]
        top: list[dict[str, Any]] = []
        holder = top
        remaining = parts[1:]
        while True:
            subs = {o["name"]: o for o in schema if o.get("type") in (1, 2)}
            if not subs:
                break
            if remaining:
                sub_name = remaining.pop(0)
            else:
                nested = [k for k, v in given.items() if k in subs and isinstance(v, Mapping)]
                if len(nested) != 1:
                    raise ClientRefused(f"/{' '.join(path)} needs a subcommand: {sorted(subs)}")
                sub_name = nested[0]
                given = given[sub_name]
            if sub_name not in subs:
                raise ClientRefused(f"/{' '.join(path)} has no subcommand {sub_name!r}")
            sub = subs[sub_name]
            entry: dict[str, Any] = {"type": sub["type"], "name": sub_name, "options": []}
            holder.append(entry)
            holder = entry["options"]
            schema = sub.get("options") or []
            path.append(sub_name)
        if remaining:
            raise ClientRefused(f"/{' '.join(path)} has no subcommand {remaining[0]!r}")
        holder.extend(self._build_options(schema, given, resolved, guild, channel,
                                          focused=focused, client_checks=client_checks,
                                          where="/" + " ".join(path)))
        data: dict[str, Any] = {"id": cmd["id"], "name": cmd["name"], "type": 1}
        if top:
            data["options"] = top
        if resolved:
            data["resolved"] = resolved
        if cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]
        return data, " ".join(path)

    def _build_options(
        self,
        schema: list[dict[str, Any]],
        given: Mapping[str, Any],
        resolved: dict[str, dict[str, Any]],
        guild: FakeGuild,
        channel: FakeChannel,
        *,
        focused: str | None,
        client_checks: bool,
        where: str,
    ) -> list[dict[str, Any]]:
        by_name = {o["name"]: o for o in schema}
        for key in given:
            if key not in by_name:
                raise ClientRefused(f"{where} has no option {key!r} (options: {sorted(by_name)})")
        if focused is not None and focused not in by_name:
            raise ClientRefused(f"{where} has no option {focused!r} to focus")
        out: list[dict[str, Any]] = []
        for option in schema:
            oname = option["name"]
            if oname == focused:
                out.append({"type": option["type"], "name": oname,
                            "value": str(given.get(oname, "")), "focused": True})
                continue
            if oname not in given:
                if client_checks and option.get("required") and focused is None:
                    raise ClientRefused(f"{where}: required option {oname!r} is missing")
                continue
            value = self._option_value(option, given[oname], resolved, guild, channel,
                                       client_checks=client_checks and focused is None,
                                       where=where)
            out.append({"type": option["type"], "name": oname, "value": value})
        return out

    def _option_value(
        self,
        option: dict[str, Any],
        value: Any,
        resolved: dict[str, dict[str, Any]],
        guild: FakeGuild,
        channel: FakeChannel,
        *,
        client_checks: bool,
        where: str,
    ) -> Any:
        kind = option["type"]
        label = f"{where} option {option['name']!r}"
        if kind == 3:
            if not isinstance(value, str):
                raise TypeError(f"{label} takes a string, not {value!r}")
            if client_checks:
                if "min_length" in option and len(value) < option["min_length"]:
                    raise ClientRefused(f"{label}: shorter than {option['min_length']}")
                if "max_length" in option and len(value) > option["max_length"]:
                    raise ClientRefused(f"{label}: longer than {option['max_length']}")
        elif kind == 4:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{label} takes an integer, not {value!r}")
        elif kind == 10:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{label} takes a number, not {value!r}")
        elif kind == 5:
            if not isinstance(value, bool):
                raise TypeError(f"{label} takes a boolean, not {value!r}")
        elif kind in (6, 9):
            if kind == 9 and isinstance(value, int) and value in guild.roles:
                resolved.setdefault("roles", {})[str(value)] = guild.roles[value].to_dict()
                return str(value)
            if isinstance(value, bool) or not isinstance(value, int) or value not in self._users:
                raise TypeError(f"{label} takes a known user id, not {value!r}")
            resolved.setdefault("users", {})[str(value)] = self._users[value].to_dict()
            member = guild.members.get(value)
            if member is not None:
                resolved.setdefault("members", {})[str(value)] = {
                    **member.to_dict(with_user=False),
                    "permissions": str(self.permissions_for(guild.id, value, channel.id)),
                }
            return str(value)
        elif kind == 7:
            target = self._channels.get(value) if isinstance(value, int) else None
            if target is None:
                raise TypeError(f"{label} takes a known channel id, not {value!r}")
            types = option.get("channel_types")
            if client_checks and types and target.type not in types:
                raise ClientRefused(f"{label}: channel type {target.type} not in {types}")
            resolved.setdefault("channels", {})[str(value)] = {
                "id": str(target.id), "name": target.name, "type": target.type,
                "permissions": str(self._bot_perms(target)), "guild_id": str(target.guild_id),
                "nsfw": target.nsfw, "parent_id": None, "flags": 0,
            }
            return str(value)
        elif kind == 8:
            if not isinstance(value, int) or value not in guild.roles:
                raise TypeError(f"{label} takes a role id of the guild, not {value!r}")
            resolved.setdefault("roles", {})[str(value)] = guild.roles[value].to_dict()
            return str(value)
        elif kind == 11:
            if not isinstance(value, Mapping) or "id" not in value:
                raise TypeError(f"{label} takes an attachment dict (add_attachment), not {value!r}")
            key = str(value["id"])
            public = {k: v for k, v in value.items() if k not in _PRIVATE_KEYS}
            resolved.setdefault("attachments", {})[key] = self._resign(public)
            return key
        else:
            raise TypeError(f"{label}: option type {kind} is not supported by the fake")
        if client_checks:
            choices = option.get("choices")
            if choices and value not in [c["value"] for c in choices]:
                raise ClientRefused(f"{label}: {value!r} is not one of the choices")
            if kind in (4, 10):
                if "min_value" in option and value < option["min_value"]:
                    raise ClientRefused(f"{label}: {value} < min_value {option['min_value']}")
                if "max_value" in option and value > option["max_value"]:
                    raise ClientRefused(f"{label}: {value} > max_value {option['max_value']}")
        return value

    async def slash(
        self,
        user_id: int,
        channel_id: int,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        client_checks: bool = True,
        user_install: bool = False,
    ) -> InteractionRecord:
        """A member runs a slash command. ``name`` may name a subcommand ("config show", or
        "config group sub"); or pass ``options={"show": {...}}``. Option values: str, int,
        float, bool, user/channel/role ids, and attachment dicts (from :meth:`add_attachment`
        or a message), which go into ``data.resolved.attachments`` with value == key.
        ``client_checks``: refuse (:class:`ClientRefused`) what the official client would
        (missing required option, choices, min/max, hidden or age-restricted commands);
        False sends the payload anyway, to test the bot's own validation."""
        data, path = self._command_data(name, options, channel_id, user_id, focused=None,
                                        client_checks=client_checks)
        if user_install:  # through the member's own install of the app, not the server's
            if client_checks and 1 not in (self._find_command(
                    name.split()[0], 1, self._channels[channel_id].guild_id
            ).get("integration_types") or [0]):
                raise ClientRefused(f"{name!r} cannot be used as a user-installed app")
            return await self._send_interaction(
                IX_COMMAND, user_id, channel_id, data, name=path, command_type=1,
                integration_owners={"1": str(user_id)})
        return await self._send_interaction(IX_COMMAND, user_id, channel_id, data, name=path,
                                            command_type=1)

    # ---------------------------------------------------------------- direct messages

    def dm_channel(self, user_id: int) -> int:
        """The member's direct-message channel with the bot (created if needed). The bot's
        messages to it land in ``direct_messages``; the member can also use commands
        (:meth:`dm_slash`) and buttons there: those interactions carry no guild, as
        Discord sends them from a DM."""
        dm_id = next((c for c, u in self._dm_channels.items() if u == user_id), None)
        if dm_id is None:
            dm_id = self._snowflake()
            self._dm_channels[dm_id] = user_id
        if dm_id not in self._channels:
            rooms = self._guilds.get(_DM_ROOMS)
            if rooms is None:
                rooms = FakeGuild(_DM_ROOMS, "direct messages", self.bot_user_id, self._iso())
                rooms.roles[_DM_ROOMS] = FakeRole(_DM_ROOMS, "@everyone",
                                                  DEFAULT_EVERYONE_PERMISSIONS)
                self._guilds[_DM_ROOMS] = rooms
            rooms.members.setdefault(user_id, FakeMember(_DM_ROOMS, self.user(user_id), [],
                                                         self._iso()))
            channel = FakeChannel(dm_id, _DM_ROOMS, f"dm-{user_id}", type=1)
            rooms.channels[dm_id] = channel
            self._channels[dm_id] = channel
        return dm_id

    async def dm_slash(
        self,
        user_id: int,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        client_checks: bool = True,
        user_install: bool = False,
    ) -> InteractionRecord:
        """A member runs a global command in their DM with the bot. ``client_checks``:
        refused (:class:`ClientRefused`) when the command's ``contexts`` leave out bot DMs
        (1), as the official client hides it; False sends it anyway."""
        dm_id = self.dm_channel(user_id)
        cmd = self._find_command(name.split()[0], 1, _DM_ROOMS)
        if client_checks:
            contexts = cmd.get("contexts")
            if contexts is not None and 1 not in contexts:
                raise ClientRefused(f"{cmd['name']!r} is not available in direct messages")
            if user_install and 1 not in (cmd.get("integration_types") or [0]):
                raise ClientRefused(f"{cmd['name']!r} cannot be used as a user-installed app")
        data, path = self._command_data(name, options, dm_id, user_id, focused=None,
                                        client_checks=False)
        return await self._send_interaction(
            IX_COMMAND, user_id, dm_id, data, name=path, command_type=1,
            integration_owners={"1": str(user_id)} if user_install else None)

    def forward_to_dm(self, user_id: int, message: dict[str, Any] | int | str) -> dict[str, Any]:
        """A copy of a message (content, attachments, buttons) in the member's DM with the
        bot, as a result delivered by direct message would be; :meth:`click` works on it."""
        source = self._live_message(message)
        dm_id = self.dm_channel(user_id)
        mid = self._snowflake()
        forwarded = copy.deepcopy(source)
        for key in ("interaction_metadata", "interaction", "webhook_id", "application_id"):
            forwarded.pop(key, None)
        forwarded.update(id=str(mid), channel_id=str(dm_id), flags=0)
        self._channels[dm_id].messages.append(forwarded)
        self._messages[mid] = forwarded
        self._history[mid] = [self._public(forwarded)]
        self._touched[mid] = time.monotonic()
        self._notify()
        return forwarded

    async def autocomplete(
        self,
        user_id: int,
        channel_id: int,
        name: str,
        options: Mapping[str, Any] | None = None,
        focused: str = "",
        *,
        wait: bool = True,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> InteractionRecord:
        """A member types into option ``focused`` (its text is ``options[focused]``, default
        ""): an interaction of type 4. With ``wait`` (default) it returns once the bot
        answered; the choices are ``ix.choices``."""
        data, path = self._command_data(name, options, channel_id, user_id, focused=focused,
                                        client_checks=False)
        rec = await self._send_interaction(IX_AUTOCOMPLETE, user_id, channel_id, data,
                                           name=path, command_type=1)
        if wait:
            await rec.response(timeout)
        return rec

    async def message_command(
        self,
        user_id: int,
        channel_id: int,
        name: str,
        target_message: dict[str, Any] | int | str,
        *,
        client_checks: bool = True,
    ) -> InteractionRecord:
        """A member uses a message context menu ("Apps" > ``name``) on a message of the
        channel: type 2, data.type 3 with ``target_id`` and ``resolved.messages``."""
        target = self._live_message(target_message)
        channel = self._channels[channel_id]
        guild = self._guilds[channel.guild_id]
        cmd = self._find_command(name, 3, guild.id)
        if client_checks:
            self._check_visible(cmd, guild, channel, user_id)
        data: dict[str, Any] = {
            "id": cmd["id"],
            "name": cmd["name"],
            "type": 3,
            "target_id": target["id"],
            "resolved": {"messages": {target["id"]: self._public(target)}},
        }
        if cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]
        return await self._send_interaction(IX_COMMAND, user_id, channel_id, data, name=name,
                                            command_type=3)

    async def user_command(
        self,
        user_id: int,
        channel_id: int,
        name: str,
        target_user_id: int,
        *,
        client_checks: bool = True,
    ) -> InteractionRecord:
        """A member uses a user context menu on ``target_user_id``: data.type 2."""
        channel = self._channels[channel_id]
        guild = self._guilds[channel.guild_id]
        cmd = self._find_command(name, 2, guild.id)
        if client_checks:
            self._check_visible(cmd, guild, channel, user_id)
        resolved: dict[str, Any] = {"users": {str(target_user_id):
                                              self.user(target_user_id).to_dict()}}
        member = guild.members.get(target_user_id)
        if member is not None:
            resolved["members"] = {str(target_user_id): {
                **member.to_dict(with_user=False),
                "permissions": str(self.permissions_for(guild.id, target_user_id, channel.id)),
            }}
        data: dict[str, Any] = {"id": cmd["id"], "name": cmd["name"], "type": 2,
                                "target_id": str(target_user_id), "resolved": resolved}
        if cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]
        return await self._send_interaction(IX_COMMAND, user_id, channel_id, data, name=name,
                                            command_type=2)

    async def _like_a_human(self, since: float | None) -> None:
        if since is not None:
            delay = self.human_delay - (time.monotonic() - since)
            if delay > 0:
                await asyncio.sleep(delay)

    def _live_message(self, message: dict[str, Any] | int | str) -> dict[str, Any]:
        mid = int(message["id"]) if isinstance(message, Mapping) else int(message)
        found = self._messages.get(mid)
        if found is None or found["deleted"]:
            raise ClientRefused(f"message {mid} does not exist (any more)")
        return found

    async def click(
        self,
        user_id: int,
        message: dict[str, Any] | int | str,
        custom_id: str,
        *,
        values: Iterable[str] | None = None,
        client_checks: bool = True,
    ) -> InteractionRecord:
        """A member clicks a button (or picks ``values`` in a select) on a message: type 3.
        The message is looked up by id, so the payload carries its current state. Wait for
        the message to exist before clicking: discord.py stores a View only after the HTTP
        answer that carried it returned."""
        await self._like_a_human(self._touched.get(int(self._live_message(message)["id"])))
        live = self._live_message(message)
        component = next((c for c in _walk_components(live.get("components") or [])
                          if c.get("custom_id") == custom_id), None)
        if component is None:
            have = [c.get("custom_id") for c in _walk_components(live.get("components") or [])
                    if c.get("custom_id")]
            raise ClientRefused(f"message {live['id']} has no component {custom_id!r} ({have})")
        if client_checks:
            if component.get("disabled"):
                raise ClientRefused(f"component {custom_id!r} is disabled")
            if live["flags"] & MessageFlag.EPHEMERAL:
                owner = (live.get("interaction_metadata") or {}).get("user", {}).get("id")
                if owner is not None and int(owner) != user_id:
                    raise ClientRefused("an ephemeral message is seen only by its user")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component["type"]}
        if component.get("id") is not None:
            data["id"] = component["id"]
        if component["type"] in _SELECT_TYPES:
            chosen = list(values or [])
            if client_checks:
                low = component.get("min_values", 1)
                high = component.get("max_values", 1)
                if not low <= len(chosen) <= high:
                    raise ClientRefused(f"select {custom_id!r} takes {low}..{high} values")
                if component["type"] == 3:
                    offered = [o["value"] for o in component.get("options") or []]
                    if any(v not in offered for v in chosen):
                        raise ClientRefused(f"select {custom_id!r} offers only {offered}")
            data["values"] = chosen
        return await self._send_interaction(
            IX_COMPONENT, user_id, int(live["channel_id"]), data, message=live,
            name=custom_id, source_message_id=int(live["id"]),
        )

    async def submit_modal(
        self,
        user_id: int,
        channel_id: int,
        custom_id: str,
        values: Mapping[str, Any] | None = None,
        message: dict[str, Any] | int | str | None = None,
        *,
        client_checks: bool = True,
    ) -> InteractionRecord:
        """A member submits the modal the bot last showed them with ``custom_id``: type 5.
        ``values`` by input custom_id or by the label the member sees (str for text inputs,
        list for selects, bool for a checkbox); inputs left out keep their default value.
        The components mirror the modal's layout, as Discord sends them and discord.py 2.7
        parses them: action rows (type 1) of text inputs (type 4, ``custom_id``/``value``),
        or labels (type 18) with one ``component``. If the modal was opened from a message
        component, ``message`` defaults to that message."""
        shown = next(
            (ix for ix in reversed(self.interactions)
             if ix.user_id == user_id and ix.modal is not None
             and ix.modal.get("custom_id") == custom_id),
            None,
        )
        if shown is None or shown.modal is None or shown.answer_index is None:
            raise ClientRefused(f"no modal {custom_id!r} was shown to user {user_id}")
        await self._like_a_human(shown.response_times[shown.answer_index])
        given = dict(values or {})
        # Files given to a file upload (type 19) arrive as ids, with the attachments resolved.
        uploaded = {str(v["id"]): v for value in given.values() if isinstance(value, list)
                    for v in value if isinstance(v, Mapping) and "filename" in v}
        components = [_submitted(c, given, client_checks) for c in shown.modal["components"]]
        components = [c for c in components if c is not None]
        if given:
            raise ClientRefused(f"modal {custom_id!r} has no inputs {sorted(given)}")
        data: dict[str, Any] = {"custom_id": custom_id, "components": components}
        if uploaded:
            data["resolved"] = {"attachments": uploaded}
        source = message
        if source is None and shown.source_message_id is not None:
            source = shown.source_message_id
        live = self._live_message(source) if source is not None else None
        return await self._send_interaction(
            IX_MODAL_SUBMIT, user_id, channel_id, data, message=live, name=custom_id,
            source_message_id=None if live is None else int(live["id"]),
        )


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


def _json_response(status: int, body: Any, headers: Mapping[str, str]) -> web.Response:
    if status == 204 or body is None:
        return web.Response(status=204 if body is None else status, headers=dict(headers))
    data = json.dumps(body).encode("utf-8")
    # Exactly "application/json": discord.py compares the header verbatim.
    return web.Response(status=status, body=data,
                        headers={**headers, "Content-Type": "application/json"})


_PIL_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp",
              "BMP": "image/bmp"}


def _sniff(data: bytes, filename: str, declared: str) -> tuple[str, int | None, int | None]:
    """(content_type, width, height). A declared type wins (discord.py declares none: it
    sends application/octet-stream); else Pillow's format, else the file extension. Width and
    height whenever Pillow can read the bytes."""
    sniffed, width, height = "", None, None
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            sniffed = _PIL_TYPES.get(image.format or "", "")
            width, height = int(image.width), int(image.height)
    except Exception:
        pass
    if declared and declared != "application/octet-stream":
        return declared, width, height
    if sniffed:
        return sniffed, width, height
    guessed = mimetypes.guess_type(filename)[0]
    if guessed and guessed.startswith("text/"):
        guessed += "; charset=utf-8"
    return guessed or "application/octet-stream", width, height


def _normalise_embed(embed: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(embed)
    data.setdefault("type", "rich")
    data.setdefault("content_scan_version", 0)
    return data


def _check_embed(embed: Any, path: list[str | int]) -> int:
    if not isinstance(embed, dict):
        raise _form_error(path, "MODEL_TYPE_CONVERT",
                          "Only dictionaries may be used in a ModelType")
    limits = {"title": 256, "description": 4096}
    total = 0
    for key, limit in limits.items():
        text = embed.get(key) or ""
        if len(text) > limit:
            raise _form_error([*path, key], "BASE_TYPE_MAX_LENGTH",
                              f"Must be {limit} or fewer in length.")
        total += len(text)
    fields = embed.get("fields") or []
    if len(fields) > 25:
        raise _form_error([*path, "fields"], "BASE_TYPE_MAX_LENGTH",
                          "Must be 25 or fewer in length.")
    for index, item in enumerate(fields):
        name, value = item.get("name") or "", item.get("value") or ""
        if not name or len(name) > 256:
            raise _form_error([*path, "fields", index, "name"], "BASE_TYPE_BAD_LENGTH",
                              "Must be between 1 and 256 in length.")
        if not value or len(value) > 1024:
            raise _form_error([*path, "fields", index, "value"], "BASE_TYPE_BAD_LENGTH",
                              "Must be between 1 and 1024 in length.")
        total += len(name) + len(value)
    footer = (embed.get("footer") or {}).get("text") or ""
    author = (embed.get("author") or {}).get("name") or ""
    if len(footer) > 2048:
        raise _form_error([*path, "footer", "text"], "BASE_TYPE_MAX_LENGTH",
                          "Must be 2048 or fewer in length.")
    if len(author) > 256:
        raise _form_error([*path, "author", "name"], "BASE_TYPE_MAX_LENGTH",
                          "Must be 256 or fewer in length.")
    return total + len(footer) + len(author)


def _walk_components(components: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for component in components:
        yield component
        yield from _walk_components(component.get("components") or [])
        for key in ("accessory", "component"):
            if isinstance(component.get(key), dict):
                yield from _walk_components([component[key]])


def _number_components(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy with an ``id`` on every component, as Discord assigns them."""
    result = copy.deepcopy(components)
    used = {c["id"] for c in _walk_components(result) if isinstance(c.get("id"), int)}
    counter = 0
    for component in _walk_components(result):
        if component.get("id") is None:
            counter += 1
            while counter in used:
                counter += 1
            component["id"] = counter
            used.add(counter)
    return result


def _check_components(components: list[dict[str, Any]], v2: bool, path: list[str | int]) -> None:
    if not v2:
        if len(components) > 5:
            raise _form_error(path, "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
        for index, row in enumerate(components):
            if row.get("type") != 1:
                raise _form_error([*path, index, "type"], "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                                  "Top-level components must be action rows "
                                  "(or set IS_COMPONENTS_V2)")
            children = row.get("components") or []
            if not 1 <= len(children) <= 5:
                raise _form_error([*path, index, "components"], "BASE_TYPE_BAD_LENGTH",
                                  "Must be between 1 and 5 in length.")
            if any(c.get("type") in _SELECT_TYPES for c in children) and len(children) > 1:
                raise _form_error([*path, index, "components"], "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                                  "The specified component exceeds the maximum width")
    elif sum(1 for _ in _walk_components(components)) > 40:
        raise _form_error(path, "BASE_TYPE_MAX_LENGTH", "Must be 40 or fewer in length.")
    seen: set[str] = set()
    for component in _walk_components(components):
        kind = component.get("type")
        custom_id = component.get("custom_id")
        if kind == 2:
            style = component.get("style")
            if style == 5:
                if not component.get("url") or custom_id:
                    raise _form_error(path, "BUTTON_COMPONENT_INVALID_URL",
                                      "Link buttons need a url and no custom_id")
                continue
            if style == 6:
                continue
            if style not in (1, 2, 3, 4):
                raise _form_error(path, "BUTTON_COMPONENT_INVALID_STYLE", "Invalid button style")
            if len(component.get("label") or "") > 80:
                raise _form_error(path, "BASE_TYPE_MAX_LENGTH", "Must be 80 or fewer in length.")
        if kind in (2, *_SELECT_TYPES):
            if not custom_id or len(custom_id) > 100:
                raise _form_error(path, "BASE_TYPE_BAD_LENGTH",
                                  "custom_id must be between 1 and 100 in length.")
            if custom_id in seen:
                raise _form_error(path, "COMPONENT_CUSTOM_ID_DUPLICATED",
                                  "Component custom id cannot be duplicated")
            seen.add(custom_id)
        if kind == 3 and not 1 <= len(component.get("options") or []) <= 25:
            raise _form_error(path, "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 25 in length.")


def _check_choices(data: dict[str, Any]) -> None:
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise _form_error(["data", "choices"], "BASE_TYPE_REQUIRED", "This field is required")
    if len(choices) > 25:
        raise _form_error(["data", "choices"], "BASE_TYPE_MAX_LENGTH",
                          "Must be 25 or fewer in length.")
    for index, choice in enumerate(choices):
        name = choice.get("name") or ""
        if not 1 <= len(name) <= 100:
            raise _form_error(["data", "choices", index, "name"], "BASE_TYPE_BAD_LENGTH",
                              "Must be between 1 and 100 in length.")
        value = choice.get("value")
        if isinstance(value, str) and len(value) > 100:
            raise _form_error(["data", "choices", index, "value"], "BASE_TYPE_MAX_LENGTH",
                              "Must be 100 or fewer in length.")


_MODAL_FIELD_TYPES = frozenset({3, 4, 5, 6, 7, 8, 19, 21, 22, 23})


def _check_modal(data: dict[str, Any]) -> None:
    custom_id = data.get("custom_id") or ""
    if not 1 <= len(custom_id) <= 100:
        raise _form_error(["data", "custom_id"], "BASE_TYPE_BAD_LENGTH",
                          "Must be between 1 and 100 in length.")
    title = data.get("title") or ""
    if not 1 <= len(title) <= 45:
        raise _form_error(["data", "title"], "BASE_TYPE_BAD_LENGTH",
                          "Must be between 1 and 45 in length.")
    components = data.get("components") or []
    if not 1 <= len(components) <= 5:
        raise _form_error(["data", "components"], "BASE_TYPE_BAD_LENGTH",
                          "Must be between 1 and 5 in length.")
    seen: set[str] = set()
    for index, top in enumerate(components):
        path: list[str | int] = ["data", "components", index]
        kind = top.get("type")
        if kind == 1:
            inner = top.get("components") or []
            if len(inner) != 1 or inner[0].get("type") not in _MODAL_FIELD_TYPES:
                raise _form_error([*path, "components"], "BASE_TYPE_BAD_LENGTH",
                                  "An action row in a modal holds exactly one input")
            fields = inner
            if inner[0].get("type") == 4 and not 1 <= len(inner[0].get("label") or "") <= 45:
                raise _form_error([*path, "components", 0, "label"], "BASE_TYPE_BAD_LENGTH",
                                  "Must be between 1 and 45 in length.")
        elif kind == 18:
            if not 1 <= len(top.get("label") or "") <= 45:
                raise _form_error([*path, "label"], "BASE_TYPE_BAD_LENGTH",
                                  "Must be between 1 and 45 in length.")
            inner_component = top.get("component") or {}
            if inner_component.get("type") not in _MODAL_FIELD_TYPES:
                raise _form_error([*path, "component"], "UNION_TYPE_CHOICES",
                                  "A label holds one input component")
            fields = [inner_component]
        elif kind == 10:
            continue
        else:
            raise _form_error([*path, "type"], "UNION_TYPE_CHOICES",
                              f"Component type {kind} is not allowed in a modal")
        for item in fields:
            cid = item.get("custom_id") or ""
            if not 1 <= len(cid) <= 100:
                raise _form_error(path, "BASE_TYPE_BAD_LENGTH",
                                  "custom_id must be between 1 and 100 in length.")
            if cid in seen:
                raise _form_error(path, "COMPONENT_CUSTOM_ID_DUPLICATED",
                                  "Component custom id cannot be duplicated")
            seen.add(cid)
            if item.get("type") == 4:
                if item.get("max_length") is not None and not 1 <= item["max_length"] <= 4000:
                    raise _form_error(path, "BASE_TYPE_BAD_INT", "max_length out of range")
                if len(item.get("value") or "") > 4000:
                    raise _form_error(path, "BASE_TYPE_MAX_LENGTH", "value too long")
                if len(item.get("value") or "") > (item.get("max_length") or 4000):
                    raise _form_error(path, "BASE_TYPE_MAX_LENGTH",
                                      "value is longer than the input's max_length")
                if len(item.get("placeholder") or "") > 100:
                    raise _form_error(path, "BASE_TYPE_MAX_LENGTH",
                                      "placeholder must be 100 or fewer in length.")


def _submitted_field(
    item: dict[str, Any], given: dict[str, Any], checks: bool, label: str | None = None
) -> dict[str, Any]:
    cid = item.get("custom_id") or ""
    kind = item.get("type")
    out: dict[str, Any] = {"type": kind, "id": item.get("id"), "custom_id": cid}
    # A member knows an input by its label; discord.py's default custom_ids are random.
    label = label or item.get("label")
    key = cid if cid in given or label is None or label not in given else label
    if kind == 4:
        value = given.pop(key, item.get("value") or "")
        if not isinstance(value, str):
            raise TypeError(f"text input {cid!r} takes a string, not {value!r}")
        if checks:
            if item.get("required", True) and not value:
                raise ClientRefused(f"text input {cid!r} is required")
            low, high = item.get("min_length"), item.get("max_length")
            if value and low is not None and len(value) < low:
                raise ClientRefused(f"text input {cid!r}: shorter than {low}")
            if high is not None and len(value) > high:
                raise ClientRefused(f"text input {cid!r}: longer than {high}")
        out["value"] = value
    elif kind == 23:  # checkbox
        out["value"] = bool(given.pop(key, False))
    elif kind == 21:  # radio group
        out["value"] = given.pop(key, None)
    else:  # selects, checkbox groups, file uploads
        chosen = given.pop(key, [])
        out["values"] = [str(v["id"]) if isinstance(v, Mapping) else str(v) for v in chosen]
    return out


def _submitted(top: dict[str, Any], given: dict[str, Any], checks: bool) -> dict[str, Any] | None:
    kind = top.get("type")
    if kind == 1:
        return {"type": 1, "id": top.get("id"),
                "components": [_submitted_field(c, given, checks) for c in top["components"]]}
    if kind == 18:
        return {"type": 18, "id": top.get("id"),
                "component": _submitted_field(top["component"], given, checks, top.get("label"))}
    if kind == 10:
        return {"type": 10, "id": top.get("id")}
    return None


def _check_command_list(commands: list[Any]) -> None:
    counts = {1: 0, 2: 0, 3: 0}
    seen: set[tuple[str, int]] = set()
    for index, cmd in enumerate(commands):
        if not isinstance(cmd, dict):
            raise _form_error([index], "MODEL_TYPE_CONVERT", "Must be an object")
        kind = int(cmd.get("type") or 1)
        name = cmd.get("name") or ""
        counts[kind] = counts.get(kind, 0) + 1
        if (name, kind) in seen:
            raise _form_error([index, "name"], "APPLICATION_COMMANDS_DUPLICATE_NAME",
                              f"Application command names must be unique: {name}")
        seen.add((name, kind))
        if kind == 1:
            if not _COMMAND_NAME.match(name) or name != name.lower():
                raise _form_error([index, "name"], "APPLICATION_COMMAND_INVALID_NAME",
                                  f"Command name is invalid: {name!r}")
            description = cmd.get("description") or ""
            if not 1 <= len(description) <= 100:
                raise _form_error([index, "description"], "BASE_TYPE_BAD_LENGTH",
                                  "Must be between 1 and 100 in length.")
            _check_option_list(cmd.get("options") or [], [index, "options"], depth=0)
        else:
            if not 1 <= len(name) <= 32:
                raise _form_error([index, "name"], "BASE_TYPE_BAD_LENGTH",
                                  "Must be between 1 and 32 in length.")
            if cmd.get("description"):
                raise _form_error([index, "description"],
                                  "APPLICATION_COMMAND_CONTEXT_MENU_DESCRIPTION",
                                  "Context menu commands cannot have a description")
            if cmd.get("options"):
                raise _form_error([index, "options"], "APPLICATION_COMMAND_CONTEXT_MENU_OPTIONS",
                                  "Context menu commands cannot have options")
    if counts[1] > 100:
        raise _form_error([], "APPLICATION_COMMANDS_TOO_MANY", "Too many chat input commands")
    if counts.get(2, 0) > 15 or counts.get(3, 0) > 15:
        raise _form_error([], "APPLICATION_COMMANDS_TOO_MANY", "Too many context menu commands")


def _check_option_list(options: list[dict[str, Any]], path: list[str | int], depth: int) -> None:
    if len(options) > 25:
        raise _form_error(path, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    kinds = {o.get("type") for o in options}
    if kinds & {1, 2} and kinds - {1, 2}:
        raise _form_error(path, "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
                          "Subcommands and options cannot be mixed")
    names: set[str] = set()
    optional_seen = False
    for index, option in enumerate(options):
        here = [*path, index]
        name = option.get("name") or ""
        kind = option.get("type")
        if not _COMMAND_NAME.match(name) or name != name.lower():
            raise _form_error([*here, "name"], "APPLICATION_COMMAND_INVALID_NAME",
                              f"Option name is invalid: {name!r}")
        if name in names:
            raise _form_error([*here, "name"], "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS",
                              f"Option name {name!r} is already used")
        names.add(name)
        if not 1 <= len(option.get("description") or "") <= 100:
            raise _form_error([*here, "description"], "BASE_TYPE_BAD_LENGTH",
                              "Must be between 1 and 100 in length.")
        if kind in (1, 2):
            if (kind == 2 and depth > 0) or (kind == 1 and depth > 1):
                raise _form_error([*here, "type"], "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
                                  "Subcommands nest at most one group deep")
            _check_option_list(option.get("options") or [], [*here, "options"], depth + 1)
            continue
        if option.get("required"):
            if optional_seen:
                raise _form_error([*here, "required"],
                                  "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                                  "Required options must be placed before non-required options")
        else:
            optional_seen = True
        choices = option.get("choices") or []
        if len(choices) > 25:
            raise _form_error([*here, "choices"], "BASE_TYPE_MAX_LENGTH",
                              "Must be 25 or fewer in length.")
        if choices and option.get("autocomplete"):
            raise _form_error([*here, "autocomplete"],
                              "APPLICATION_COMMAND_OPTION_CHOICES_AUTOCOMPLETE",
                              "Autocomplete cannot be set with choices")
