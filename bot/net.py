"""The network rules, in one place: where the bot may connect, which redirects it follows,
which hosts ModelsLab's outputs may come from, and small helpers for reading bodies."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port), or None when the URL can't be read, or when aiohttp (yarl),
    which would fetch it, reads it differently from the standard library (a backslash or
    odd unicode in the host, a port out of range): it would be fetched from elsewhere."""
    try:
        parts = urlsplit(url)
        port = parts.port
        fetched = URL(url)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    found = (scheme, (parts.hostname or "").lower(), port or (443 if scheme == "https" else 80))
    if (fetched.scheme, (fetched.raw_host or "").lower(), fetched.port) != found:
        return None
    return found


async def read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, or its first ``limit + 1`` bytes when it is longer (so the caller can
    tell "too large"). One ``read(n)`` returns only what has arrived so far."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await stream.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


# --- where the bot may connect --------------------------------------------------------------
#
# Every outbound HTTP request (Discord attachments, ModelsLab's outputs, the API itself) goes
# through one session made by ``outbound_session``. Its connector checks the address each
# connection is really made to, after DNS, so a name that resolves to a private address (or
# re-resolves to one later: DNS rebinding) is refused, and so is each hop of a redirect.
# Requests that carry a body (the API's, which carry the key) never follow a redirect.

_BLOCKED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8",          # "this network"
    "100.64.0.0/10",      # carrier-grade NAT, shared address space
    "192.0.0.0/24",       # IETF protocol assignments
    "198.18.0.0/15",      # benchmarking
    "169.254.0.0/16",     # link-local, including the cloud metadata address 169.254.169.254
    "fd00:ec2::254/128",  # AWS metadata over IPv6 (also inside fc00::/7)
    "64:ff9b:1::/48",     # local-use NAT64
))
_LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost", "ip6-loopback"}


class BlockedAddress(OSError):
    """A connection to an address that is not on the public internet was refused."""


def _plain(address: ipaddress.IPv4Address | ipaddress.IPv6Address
           ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IPv4 address inside an IPv4-mapped, IPv4-compatible, 6to4 or Teredo IPv6 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]
        if address.packed[:12] == bytes(12) and int(address) > 1:  # ::a.b.c.d (deprecated)
            return ipaddress.IPv4Address(address.packed[12:])
    return address


def is_loopback(address: str) -> bool:
    """True for a loopback address (127.0.0.0/8, ::1, IPv4-mapped loopback) or name."""
    if address.lower() in _LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return ip.is_loopback or _plain(ip).is_loopback


def address_allowed(address: str, *, allow_loopback: bool = False) -> bool:
    """May the bot connect to this IP address? Only public unicast addresses, and loopback
    when ``allow_loopback`` (the test suites' fakes); anything unreadable is refused."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    inner = _plain(ip)
    if allow_loopback and (ip.is_loopback or inner.is_loopback):
        return True
    for candidate in {ip, inner}:
        if (candidate.is_loopback or candidate.is_private or candidate.is_link_local
                or candidate.is_multicast or candidate.is_reserved or candidate.is_unspecified
                or not candidate.is_global
                or any(candidate in net for net in _BLOCKED_NETWORKS
                       if net.version == candidate.version)):
            return False
    return True


def check_address(address: str, *, allow_loopback: bool, host: str | None = None) -> None:
    if not address_allowed(address, allow_loopback=allow_loopback):
        shown = f"{host} ({address})" if host and host != address else address
        raise BlockedAddress(f"{shown} is not a public internet address; not connecting")


class GuardedResolver(AbstractResolver):
    """Resolves as ``inner`` does, then refuses the whole answer when any address in it is
    not public (so a name cannot mix a public and a private address)."""

    def __init__(self, inner: AbstractResolver | None = None, *,
                 allow_loopback: bool = False) -> None:
        self._inner = inner if inner is not None else ThreadedResolver()
        self.allow_loopback = allow_loopback

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            check_address(result["host"], allow_loopback=self.allow_loopback, host=host)
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_socket_factory(allow_loopback: bool) -> Callable[[Any], socket.socket]:
    """For the connector: checks the very address each socket is about to connect to (also
    literal-IP hosts, which never reach a resolver)."""

    def factory(addr_info: Any) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        check_address(str(sockaddr[0]), allow_loopback=allow_loopback)
        return socket.socket(family=family, type=type_, proto=proto)

    return factory


class RedirectRefused(aiohttp.ClientError):
    """A request carrying a body (the API's, with the key) was answered with a redirect; it
    was not followed."""


async def _refuse_redirect_with_body(session: aiohttp.ClientSession, context: Any,
                                     params: aiohttp.TraceRequestRedirectParams) -> None:
    if params.method.upper() not in ("GET", "HEAD"):
        raise RedirectRefused(f"{params.method} {params.url.path} was redirected; not followed")


MAX_REDIRECTS = 3


def outbound_session(*, allow_loopback: bool = False,
                     resolver: AbstractResolver | None = None,
                     **kwargs: Any) -> aiohttp.ClientSession:
    """The bot's one HTTP session for everything it fetches or sends: connections only to
    public addresses (``allow_loopback`` adds loopback, for test suites only), checked after
    DNS on every connection and so on every redirect hop; and a request with a body never
    follows a redirect."""
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(resolver, allow_loopback=allow_loopback),
        socket_factory=guarded_socket_factory(allow_loopback))
    tracing = aiohttp.TraceConfig()
    tracing.on_request_redirect.append(_refuse_redirect_with_body)
    return aiohttp.ClientSession(connector=connector, trace_configs=[tracing],
                                 trust_env=False, **kwargs)


def blocked_reason(exc: BaseException) -> BlockedAddress | None:
    """The refusal behind an aiohttp connection error, when that is what it was."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BlockedAddress):
            return current
        inner = getattr(current, "os_error", None)
        if isinstance(inner, BlockedAddress):
            return inner
        current = current.__cause__ or current.__context__
    return None


# --- which hosts ModelsLab's outputs may come from --------------------------------------------

# ModelsLab's own output hosts: its R2 buckets (by their exact names: anyone can create another
# *.r2.dev bucket), the CloudFront distribution its documentation's images are served from, and
# its own domains. An admin can change the list with MODELSLAB_OUTPUT_HOSTS.
DEFAULT_OUTPUT_HOSTS: tuple[str, ...] = (
    "pub-3626123a908346a7a8be8d9295f44e26.r2.dev",
    "pub-8b49af329fae499aa563997f5d4068a4.r2.dev",
    "d1okzptojspljx.cloudfront.net",
    "modelslab.com", "*.modelslab.com",
    "modelslab.ai", "*.modelslab.ai",
    "stablediffusionapi.com", "*.stablediffusionapi.com",
)
# Domains anyone can get a name under: a wildcard on them would accept anyone's bucket.
SHARED_HOSTING = ("r2.dev", "amazonaws.com", "cloudfront.net", "r2.cloudflarestorage.com",
                  "storage.googleapis.com", "blob.core.windows.net", "digitaloceanspaces.com",
                  "b-cdn.net", "workers.dev", "pages.dev")
_HOST_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def check_host_pattern(pattern: str) -> str:
    """One entry of the output-host list, normalised; ValueError in words when unusable.
    An exact host may name a port (``host:port``): only that port is accepted then."""
    text = pattern.strip().lower().rstrip(".")
    pinned = re.fullmatch(r"([^:*]+):(\d{1,5})", text)
    if pinned is not None:
        if not 0 < int(pinned[2]) < 65536:
            raise ValueError(f"{pattern!r} has a port out of range")
        return f"{check_host_pattern(pinned[1])}:{int(pinned[2])}"
    name = text.removeprefix("*.")
    if not name or not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
        if _is_ip(name) and text == name:
            return text
        raise ValueError(f"{pattern!r} is not a host name or a *.domain pattern")
    if text.startswith("*.") and (name.count(".") < 1 or any(
            name == shared or name.endswith("." + shared) for shared in SHARED_HOSTING)):
        raise ValueError(f"{pattern!r} would accept hosts anyone can create; "
                         f"name the exact host instead")
    return text


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class OutputHosts:
    """The hosts ModelsLab's output links may point to: exact names (``host:port`` pins a
    port) and ``*.domain`` patterns. Links must be https, on the default port unless pinned;
    on a listed loopback host (the test suites' fakes), plain http on any port unless pinned."""

    patterns: tuple[str, ...] = DEFAULT_OUTPUT_HOSTS

    @classmethod
    def parse(cls, text: str) -> OutputHosts:
        patterns = tuple(check_host_pattern(p) for p in text.split(",") if p.strip())
        if not patterns:
            raise ValueError("must name at least one host")
        return cls(patterns)

    def allows(self, url: str) -> bool:
        where = origin(url)
        if where is None:
            return False
        scheme, host, port = where
        if not host:
            return False
        pinned = f"{host}:{port}" in self.patterns
        if not pinned and not (self._matches(host) and (port == 443 or is_loopback(host))):
            return False
        # https on the internet; the suites' loopback fakes speak plain http (and only that,
        # so a link is never read as a different origin on the same host and port).
        return scheme == ("http" if is_loopback(host) else "https")

    def _matches(self, host: str) -> bool:
        if host in self.patterns:
            return True
        if not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
            return False
        return any(p.startswith("*.") and host.endswith(p[1:]) for p in self.patterns)
