"""Where a URL really points, where the bot may connect, and which hosts outputs come from.
Every connection made here is on loopback; refusals happen before any connection."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver
from pydantic import ValidationError

from bot.jobs.downloads import DownloadError, OutputDownloader
from bot.net import (
    BlockedAddress,
    GuardedResolver,
    OutputHosts,
    RedirectRefused,
    address_allowed,
    blocked_reason,
    origin,
    outbound_session,
)
from bot.settings import Settings, describe_settings_error


@pytest.mark.parametrize(("url", "expected"), [
    ("https://modelslab.com/api/v6/images/fetch/1", ("https", "modelslab.com", 443)),
    ("HTTPS://ModelsLab.com/", ("https", "modelslab.com", 443)),
    ("http://127.0.0.1:9000/a", ("http", "127.0.0.1", 9000)),
    # read differently by the standard library and by aiohttp: trusted by neither check
    ("https://modelslab.com\\@evil.example/api/v6/images/fetch/1", None),
    ("https://evil.example\u2100.r2.dev/x.png", None),
    ("http://modelslab.com:99999/", None),
    ("http://[::1", None),
])
def test_origin(url, expected):
    assert origin(url) == expected


# --- the address rule -------------------------------------------------------------------------

@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "::1", "10.0.0.5", "172.16.3.4", "192.168.1.1",
    "169.254.169.254", "169.254.1.1", "fd00:ec2::254", "fc00::1", "fe80::1", "100.64.0.1",
    "100.127.255.254", "0.0.0.0", "::", "224.0.0.1", "ff02::1", "240.0.0.1",
    "255.255.255.255", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
    "2002:a00:1::1", "64:ff9b:1::a00:1", "192.0.0.8", "198.18.0.1", "not an address", "",
])
def test_non_public_addresses_are_refused(address):
    assert not address_allowed(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "104.18.2.3", "2606:4700::6810:8503"])
def test_public_addresses_are_allowed(address):
    assert address_allowed(address)
    assert address_allowed(address, allow_loopback=True)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_the_test_only_allowance_adds_loopback_and_nothing_else(address):
    assert address_allowed(address, allow_loopback=True)
    assert not address_allowed("10.0.0.1", allow_loopback=True)
    assert not address_allowed("169.254.169.254", allow_loopback=True)


class StubResolver(AbstractResolver):
    """Names resolved from a table: no DNS traffic at all."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def resolve(self, host, port=0, family=socket.AF_INET):
        return [{"hostname": host, "host": ip, "port": port, "proto": 0, "flags": 0,
                 "family": socket.AF_INET6 if ":" in ip else socket.AF_INET}
                for ip in self.table[host]]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("addresses", [["10.1.2.3"], ["93.184.216.34", "169.254.169.254"],
                                       ["::ffff:192.168.0.1"]])
async def test_a_name_resolving_to_a_private_address_is_refused(addresses):
    resolver = GuardedResolver(StubResolver({"cdn.example": addresses}))
    with pytest.raises(BlockedAddress, match="not a public internet address"):
        await resolver.resolve("cdn.example", 443)


def redirect(status: int, target: str):
    return lambda request: web.Response(status=status, headers={"Location": target})


class Loopback:
    """A server on 127.0.0.1 that records what reaches it; ``answer`` shapes its replies."""

    def __init__(self, answer=None) -> None:
        self.seen: list[tuple[str, str]] = []
        self.answer = answer
        self.port = 0

    async def __aenter__(self):
        async def handle(request: web.Request) -> web.StreamResponse:
            self.seen.append((request.method, request.path))
            if self.answer is not None:
                return self.answer(request)
            return web.Response(body=b"ok")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()


async def test_a_name_that_resolves_to_loopback_is_refused_without_the_allowance():
    async with Loopback() as server, outbound_session(
            resolver=StubResolver({"cdn.example": ["127.0.0.1"]})) as session:
        with pytest.raises(aiohttp.ClientError) as caught:
            await session.get(f"http://cdn.example:{server.port}/x.png")
        assert blocked_reason(caught.value) is not None
        with pytest.raises(aiohttp.ClientError) as caught:  # a literal address: no resolver
            await session.get(f"http://127.0.0.1:{server.port}/x.png")
        assert blocked_reason(caught.value) is not None
    assert server.seen == []


async def test_the_allowance_lets_the_suites_reach_loopback():
    async with Loopback() as server, outbound_session(allow_loopback=True) as session, \
            session.get(f"http://127.0.0.1:{server.port}/x.png") as resp:
        assert resp.status == 200
    assert server.seen == [("GET", "/x.png")]


@pytest.mark.parametrize("target", [
    "http://169.254.169.254/latest/meta-data/",   # literal: checked as the socket is made
    "http://metadata.example/latest/meta-data/",  # a name: checked when it resolves
    "http://[::ffff:10.0.0.1]/",
])
async def test_each_redirect_hop_is_checked(target):
    resolver = StubResolver({"metadata.example": ["169.254.169.254"]})
    async with Loopback(redirect(302, target)) as server, outbound_session(
            allow_loopback=True, resolver=resolver) as session:
        with pytest.raises(aiohttp.ClientError) as caught:
            await session.get(f"http://127.0.0.1:{server.port}/image.png")
        assert blocked_reason(caught.value) is not None
    assert server.seen == [("GET", "/image.png")]


async def test_a_request_with_a_body_never_follows_a_redirect():
    async with Loopback() as elsewhere:
        moved = redirect(307, f"http://127.0.0.1:{elsewhere.port}/stolen")
        async with Loopback(moved) as api, outbound_session(allow_loopback=True) as session:
            with pytest.raises(RedirectRefused):
                await session.post(f"http://127.0.0.1:{api.port}/api", json={"key": "secret"})
    assert elsewhere.seen == []


# --- the output-host rule ---------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "https://pub-3626123a908346a7a8be8d9295f44e26.r2.dev/generations/a-0.png",
    "https://pub-8b49af329fae499aa563997f5d4068a4.r2.dev/generations/b-0.png",
    "https://cdn2.stablediffusionapi.com/generations/a-0.png",
    "https://assets.modelslab.com/generations/a.png",
    "https://modelslab.com/x.png",
])
def test_modelslab_own_hosts_are_output_hosts(url):
    assert OutputHosts().allows(url)


@pytest.mark.parametrize("url", [
    "https://pub-0123456789abcdef0123456789abcdef.r2.dev/anyone-can-make-this.png",
    "https://attacker.s3.amazonaws.com/x.png",
    "https://d111111abcdef8.cloudfront.net/x.png",
    "https://evilmodelslab.com/x.png",
    "https://modelslab.com.evil.example/x.png",
    "http://assets.modelslab.com/x.png",          # not https
    "https://assets.modelslab.com:8443/x.png",    # not the default port
    "https://modelslab.com\\@evil.example/x.png",  # read differently by aiohttp
    "http://127.0.0.1:9000/x.png",                # loopback only when listed
    "ftp://modelslab.com/x.png",
])
def test_other_hosts_are_not_output_hosts(url):
    assert not OutputHosts().allows(url)


def test_a_pinned_port_accepts_that_port_only():
    hosts = OutputHosts.parse("127.0.0.1:5000, cdn.example.org:8443")
    assert hosts.allows("http://127.0.0.1:5000/generations/a.png")
    assert not hosts.allows("http://127.0.0.1:5001/steal.png")  # another server on loopback
    assert hosts.allows("https://cdn.example.org:8443/a.png")
    assert not hosts.allows("http://cdn.example.org:8443/a.png")
    assert not hosts.allows("https://cdn.example.org/a.png")


def test_listed_loopback_hosts_are_output_hosts_over_http():
    hosts = OutputHosts.parse("127.0.0.1, localhost")
    assert hosts.allows("http://127.0.0.1:9000/generations/a.png")
    assert hosts.allows("http://localhost:9000/generations/a.png")
    assert not hosts.allows("http://10.0.0.1:9000/generations/a.png")


@pytest.mark.parametrize("patterns", ["*.r2.dev", "*.amazonaws.com", "*.s3.amazonaws.com",
                                      "*.cloudfront.net", "*", "*.com", "bad host", ""])
def test_an_output_host_list_that_would_accept_anyone_is_refused(patterns):
    with pytest.raises(ValueError):
        OutputHosts.parse(patterns)


# --- the URL settings ------------------------------------------------------------------------

def settings(**env: str) -> Settings:
    return Settings(_env_file=None, discord_token="t", modelslab_api_key="k", **env)


@pytest.mark.parametrize(("field", "value"), [
    ("modelslab_base_url", "http://modelslab.com"),
    ("modelslab_base_url", "http://10.0.0.8"),
    ("public_base_url", "http://remixer.example.org"),
])
def test_plain_http_off_loopback_is_refused(field, value):
    with pytest.raises(ValidationError) as caught:
        settings(**{field: value})
    line = describe_settings_error(caught.value)
    assert field.upper() in line and "https://" in line and "\n" not in line


@pytest.mark.parametrize("value", ["https://modelslab.com", "http://127.0.0.1:9000",
                                   "http://localhost:8080", "http://[::1]:8080"])
def test_https_or_loopback_base_urls_are_accepted(value):
    assert settings(modelslab_base_url=value, public_base_url=value).public_base_url == value


def test_the_output_hosts_setting_and_the_loopback_allowance():
    s = settings()
    assert s.output_hosts == OutputHosts() and s.allow_loopback_outbound is False
    s = settings(modelslab_output_hosts="cdn.example.org, *.assets.example.org")
    assert s.output_hosts.allows("https://a.assets.example.org/x.png")
    with pytest.raises(ValidationError, match="anyone can create"):
        settings(modelslab_output_hosts="*.r2.dev")


# --- the downloader uses both rules -----------------------------------------------------------

async def test_an_output_off_the_output_hosts_is_refused_before_any_request(fake, http):
    url = fake.cdn_put("out.png", b"never read")
    with pytest.raises(DownloadError, match="not on one of ModelsLab's output hosts"):
        await OutputDownloader(http).download_all("track-id-1234", (url,))
    assert fake.cdn_requests == []


async def test_an_output_on_a_non_public_address_is_refused_at_once(fake):
    url = fake.cdn_put("out.png", b"never read")
    async with outbound_session() as session:  # as in production: no loopback allowance
        downloader = OutputDownloader(session, output_hosts=OutputHosts(("127.0.0.1",)))
        with pytest.raises(DownloadError, match="not on the public internet"):
            await downloader.download("track-id-1234", 0, url)
    assert fake.cdn_requests == []
