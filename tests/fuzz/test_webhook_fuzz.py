"""The webhook route fuzzed, against the real thing: a running engine (SQLite file, web server on
a loopback port) whose one job sits at the fake ModelsLab, processing, for an hour.

Whatever arrives (random and huge bodies, wrong content types and methods, forged paths with
``..``, ``%2e%2e``, ``%00``, double slashes, odd and percent-encoded unicode, hostile JSON on
the job's real URL, repeated and out-of-order deliveries) the answer is a 4xx, or a 200 for an
authenticated, valid body; the server stays up; a refused request changes nothing in the store
and makes the bot fetch nothing; and a job is delivered once, with its first valid result.

The tests are ``async def`` under ``@given``: pytest-asyncio runs each example on the test's
own event loop (the one the fixtures started the engine and server on), so one engine serves
every example of a test, and nothing needs a second thread or loop.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import string
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from yarl import URL

from bot.jobs.models import Job, JobStatus
from bot.web import MAX_WEBHOOK_BYTES, OUTPUT_HOST_SUFFIXES, outputs_allowed
from tests.fakes import FakeModelsLab
from tests.support.jobs import (
    Delivered,
    RecordingDelivery,
    RunningEngine,
    cdn_outputs,
    make_client,
    new_job,
)

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
TERMINAL = ("success", "failed", "error")
STATUSES = ("success", "processing", "failed", "error")
REFUSALS = {400, 404, 405, 413, 414, 422, 431}


# --- the world: one engine, one processing job, an evil server ---------------------------------

@dataclass
class World:
    r: RunningEngine
    fake: FakeModelsLab
    http: aiohttp.ClientSession
    delivery: RecordingDelivery
    evil_url: str
    evil_hits: list[str]
    errors: list[logging.LogRecord]  # everything the bot logged at ERROR or above
    job: Job = None  # type: ignore[assignment]  # processing; a refusal must leave it so
    webhook: str = ""  # its real webhook URL, secret included
    request_id: str = ""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # short falsifying examples
        printer.text(f"World(track_id={self.track_id!r}, request_id={self.request_id!r})")

    @property
    def track_id(self) -> str:
        return self.job.track_id

    @property
    def secret(self) -> str:
        return self.webhook.rsplit("/", 1)[1]

    @property
    def base(self) -> str:
        return self.r.base_url

    async def new_processing_job(self) -> None:
        job = await self.r.engine.enqueue(new_job(self.fake.cdn_url))
        deadline = time.monotonic() + 10
        while (current := await self.r.store.get(job.track_id)).status is not JobStatus.PROCESSING:
            assert time.monotonic() < deadline, "the job never reached processing"
            await asyncio.sleep(0.01)
        (submit,) = [s for s in self.fake.submits if s.body.get("track_id") == job.track_id]
        self.job, self.webhook = current, submit.body["webhook"]
        self.request_id = str(submit.response.body["id"])
        assert current.request_id == self.request_id

    def outputs(self) -> list[str]:
        """The job's real output URLs on the fake CDN (served once the fake job succeeded)."""
        return list(self.fake.job(self.request_id).future_links)

    async def assert_nothing_changed(self) -> None:
        assert await self.r.store.get(self.track_id) == self.job
        assert self.evil_hits == []
        assert self.fake.cdn_requests == []
        assert self.delivery.delivered == []
        await self.assert_up()

    async def assert_up(self) -> None:
        """The server answers, and nothing in the bot failed unexpectedly (a task that died
        on a body it had accepted would be logged here)."""
        assert [r.getMessage() for r in self.errors] == []
        async with self.http.get(self.base + "/healthz") as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ok"


@pytest.fixture
async def evil(unused_tcp_port_factory):
    """A server no output may ever be fetched from: it records every request."""
    hits: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=b"not yours", content_type="image/png")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    port = unused_tcp_port_factory()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", hits
    await runner.cleanup()


@pytest.fixture
async def world(tmp_path, fake, http, unused_tcp_port, evil) -> AsyncIterator[World]:
    fake.send_webhooks = False  # the tests send every webhook themselves
    fake.eta = 3600.0  # and no poll comes for an hour: only a webhook can move the job
    delivery = RecordingDelivery()
    client = make_client(http, fake.base_url, fake.api_key, fake.enterprise_key)
    async with RunningEngine(db_path=tmp_path / "bot.sqlite3", client=client, delivery=delivery,
                             session=http, port=unused_tcp_port,
                             output_hosts=cdn_outputs(fake)) as r:
        errors: list[logging.LogRecord] = []
        handler = _Collect(errors)
        logging.getLogger("bot").addHandler(handler)
        try:
            w = World(r, fake, http, delivery, *evil, errors)
            await w.new_processing_job()
            yield w
        finally:
            logging.getLogger("bot").removeHandler(handler)


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


# --- sending -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Body:
    data: bytes
    kind: str
    headers: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:  # falsifying examples stay readable
        head = self.data if len(self.data) <= 300 else self.data[:300] + b"..."
        return f"Body({self.kind!r}, {len(self.data)} bytes: {head!r}, headers={self.headers})"


async def _pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]
        await asyncio.sleep(0)


async def send(http: aiohttp.ClientSession, url: str, body: Body | bytes = b"", *,
               method: str = "POST", content_type: str | None = "application/json",
               chunked: bool = False) -> int:
    """One request with the path sent exactly as written (``encoded=True``); the status."""
    if isinstance(body, bytes):
        body = Body(body, "raw")
    headers = dict(body.headers)
    if content_type is not None:
        headers["Content-Type"] = content_type
    data: Any = _pieces(body.data, 1000) if chunked else body.data
    async with http.request(method, URL(url, encoded=True), data=data, headers=headers,
                            skip_auto_headers=["Content-Type"]) as resp:
        await resp.read()
        return resp.status


def to_bytes(value: Any, *, ascii_only: bool = True) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def processing_only(data: bytes) -> bool:
    """The only bodies a 200 may answer while the job must not change: status "processing"."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return False
    status = value.get("status") if isinstance(value, dict) else None
    return isinstance(status, str) and status.strip().lower() == "processing"


def terminal(value: Any) -> bool:
    status = value.get("status") if isinstance(value, dict) else None
    return isinstance(status, str) and status.strip().lower() in TERMINAL


# --- strategies --------------------------------------------------------------------------------

ODD_TEXT = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["", " ", "\x00", "\x00\x01\x02", "\ud800", "\udfff", "a\ud83dz", "🦄" * 20,
                     "\u202eevil", "\ufeff", "ｓｕｃｃｅｓｓ", "ſuccess", "SUCCESS\x00", "null",
                     "<script>alert(1)</script>", "${jndi:ldap://x}", "%s%s%n", "\r\n\r\n"]),
)
NUMBERS = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                    st.sampled_from([10**400, -(10**400), 2**63, 2**64, -(2**63) - 1, 1e308,
                                     -1, 0, 5e-324]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, ODD_TEXT)
JUNK = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(ODD_TEXT, inner, max_size=4)), max_leaves=12)
JUNK_FIELDS = st.dictionaries(
    st.sampled_from(["message", "messege", "meta", "eta", "generationTime", "retry_after",
                     "nsfw_content_detected", "future_links", "proxy_links", "fetch_result",
                     "webhook_status", "tip", "seed", "extra", "🦄", "", "__proto__"]),
    st.one_of(JUNK, NUMBERS, st.fixed_dictionaries({"seed": NUMBERS})), max_size=6)


def deep(depth: int, opener: str) -> str:
    if opener == "[":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


@st.composite
def random_bodies(draw: st.DrawFn) -> Body:
    """Anything at all (no terminal status: those would legitimately change the job)."""
    kind = draw(st.sampled_from(["empty", "binary", "text", "json", "webhookish", "huge", "deep"]))
    if kind == "empty":
        return Body(b"", kind)
    if kind == "binary":
        return Body(draw(st.binary(max_size=2048)), kind)
    if kind == "text":
        return Body(draw(st.text(max_size=400)).encode("utf-8", "surrogatepass"), kind)
    if kind == "json":
        value = draw(JUNK.filter(lambda v: not terminal(v)))
        return Body(to_bytes(value, ascii_only=draw(st.booleans())), kind)
    if kind == "webhookish":
        value = {**draw(JUNK_FIELDS),
                 "status": draw(st.one_of(st.just("processing"), JUNK).filter(
                     lambda s: not terminal({"status": s})))}
        return Body(to_bytes(value, ascii_only=draw(st.booleans())), kind)
    if kind == "huge":
        size = draw(st.sampled_from([MAX_WEBHOOK_BYTES - 1, MAX_WEBHOOK_BYTES,
                                     MAX_WEBHOOK_BYTES + 1, 100 * 1024, 200 * 1024]))
        head = b'{"status": "processing", "pad": "'
        fill = draw(st.sampled_from([b" ", b"x", b"\\u0000", b"\xf0\x9f\xa6\x84"]))
        room = size - len(head) - 2
        pad = fill * (room // len(fill)) + b" " * (room % len(fill))
        return Body(head + pad + b'"}', f"huge {'over' if size > MAX_WEBHOOK_BYTES else 'at'}")
    depth = draw(st.integers(min_value=1, max_value=30_000))
    opener = draw(st.sampled_from(["[", "{"]))
    raw = '{"status": "processing", "meta": ' + deep(depth, opener) + "}"
    return Body(raw.encode()[:MAX_WEBHOOK_BYTES], kind)


CONTENT_TYPES = st.one_of(
    st.sampled_from([None, "application/json", "application/json; charset=latin-1",
                     "text/plain", "text/html", "application/x-www-form-urlencoded",
                     "multipart/form-data; boundary=xyz", "application/octet-stream",
                     "image/png", "", "*/*", "application/json; charset=utf-16"]),
    st.text(string.printable.strip("\r\n\x0b\x0c"), max_size=60),
)
METHODS = st.one_of(st.just("POST"), st.sampled_from(
    ["GET", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "PROPFIND"]))
SEGMENT_CHARS = string.ascii_letters + string.digits + "-_.~%!$&'()*+,;=:@"
TRICKS = ["", ".", "..", "...", "%2e", "%2e%2e", "%2E%2E", "%2f", "%2F..", "%00", "%", "%zz", "%f",
          "%ff", "%c0%af", "%ed%a0%80", "%e2%80%ae", "..%2f..", "%5c", "%252e%252e", ";", "@",
          "%20", "+", "~", "%u002e"]


def segment_variants(real: str) -> st.SearchStrategy[str]:
    """A path segment meant to be ``real``, and every way of getting it wrong."""
    affix = st.one_of(st.sampled_from(TRICKS), st.text(SEGMENT_CHARS, min_size=1, max_size=4))
    return st.one_of(
        st.just(real),
        st.text(SEGMENT_CHARS, max_size=80),
        st.text(max_size=30).map(lambda s: quote(s.encode("utf-8", "surrogatepass"), safe="")),
        st.sampled_from(TRICKS),
        st.tuples(affix, affix).map(lambda a: a[0] + real + a[1]),
        st.tuples(affix).map(lambda a: real + a[0]),
        st.just(real.swapcase()),
        st.just(real[:-1]),
        st.just(real[1:]),
        st.integers(min_value=65, max_value=9000).map(lambda n: (real * (n // len(real) + 1))[:n]),
    )


PATH_SHAPES = ["/webhooks/modelslab/{t}/{s}", "//webhooks/modelslab/{t}/{s}",
               "/webhooks//modelslab/{t}/{s}", "/webhooks/modelslab//{t}/{s}",
               "/webhooks/modelslab/{t}//{s}", "/webhooks/modelslab/{t}/{s}/",
               "/webhooks/modelslab/{t}/{s}/..", "/webhooks/modelslab/{t}/x/../{s}",
               "/webhooks/modelslab/{t}/./{s}", "/webhooks/modelslab/{t}/%2e%2e/{s}",
               "/webhooks/modelslab/{t}/{s}%2f", "/webhooks/modelslab/{t}",
               "/webhooks/modelslab/{s}/{t}", "/webhooks/modelslab/{t}/{s}/{s}",
               "/webhooks/ModelsLab/{t}/{s}", "/WEBHOOKS/modelslab/{t}/{s}",
               "/webhooks/modelslab/{t}%2f{s}", "/webhooks/modelslab/{t}/{s}%00",
               "/webhooks/modelslab/../modelslab/{t}/{s}", "/healthz/../webhooks/modelslab/{t}/{s}",
               "/webhooks/modelslab/{t};x/{s}", "/webhooks/modelslab/{t}/{s};x"]


def is_real(path: str, track_id: str, secret: str) -> bool:
    """Whether the path decodes to exactly the job's route (then it *is* the real URL)."""
    path = path.split("?", 1)[0]
    return [unquote(p) for p in path.split("/")] == ["", "webhooks", "modelslab", track_id, secret]


def forged_paths(w: World) -> st.SearchStrategy[str]:
    def forge(shape: str, t: str, s: str) -> str:
        path = shape.format(t=t, s=s)
        # Both segments came out right in the right shape: get the secret wrong after all.
        return path + "x" if is_real(path, w.track_id, w.secret) else path

    return st.builds(forge, st.sampled_from(PATH_SHAPES), segment_variants(w.track_id),
                     segment_variants(w.secret))


def real_paths(w: World) -> st.SearchStrategy[str]:
    """The real route, also with some characters percent-encoded and with a query string."""
    def encode_some(text: str, picks: list[bool]) -> str:
        return "".join(f"%{ord(c):02{'X' if pick else 'x'}}" if pick and i % 2 else c
                       for i, (c, pick) in enumerate(zip(text, picks, strict=False)))

    plain = f"/webhooks/modelslab/{w.track_id}/{w.secret}"
    return st.one_of(
        st.just(plain),
        st.builds(lambda a, b: f"/webhooks/modelslab/{encode_some(w.track_id, a)}/"
                  f"{encode_some(w.secret, b)}",
                  st.lists(st.booleans(), min_size=len(w.track_id), max_size=len(w.track_id)),
                  st.lists(st.booleans(), min_size=len(w.secret), max_size=len(w.secret))),
        st.text(SEGMENT_CHARS.replace("%", ""), max_size=30).map(lambda q: f"{plain}?{q}"),
    )


# --- 1. anything, anywhere --------------------------------------------------------------------

@FUZZ
@given(data=st.data())
async def test_random_requests_get_a_4xx_and_change_nothing(world: World,
                                                            data: st.DataObject) -> None:
    w = world
    real = data.draw(st.booleans(), label="to the real URL")
    path = data.draw(real_paths(w) if real else forged_paths(w), label="path")
    method = data.draw(METHODS, label="method")
    if real:
        body = data.draw(random_bodies(), label="body")
    else:  # bodies that would be obeyed (or fetched from) if the path were let through
        body = data.draw(st.one_of(random_bodies(), st.sampled_from([
            Body(to_bytes({"status": "success", "id": w.request_id, "track_id": w.track_id,
                           "output": [f"{w.evil_url}/steal.png"]}), "evil success"),
            Body(to_bytes({"status": "success", "id": w.request_id, "track_id": w.track_id,
                           "output": w.outputs()}), "good success"),
            Body(to_bytes({"status": "failed", "id": w.request_id, "message": "forged"}),
                 "forged failure"),
        ])), label="body")
    content_type = data.draw(CONTENT_TYPES, label="content type")
    chunked = data.draw(st.booleans(), label="chunked")
    event(f"{'real' if real else 'forged'} {method} {body.kind}")

    status = await send(w.http, w.base + path, body, method=method, content_type=content_type,
                        chunked=chunked)

    event(f"HTTP {status}")
    assert status < 500
    if not real:
        assert status in REFUSALS and status != 413, status
        assert status in ({400, 404, 414, 431} if method == "POST" else {400, 404, 405, 414, 431})
    elif method != "POST":
        assert status == 405
    elif len(body.data) > MAX_WEBHOOK_BYTES:
        assert status == 413
    else:
        assert status in {200, 400, 422}
        if status == 200:
            assert processing_only(body.data), body.data[:200]
        if body.kind == "huge at" or (body.kind == "deep" and len(body.data) < 2_000):
            assert status == 200, (status, body.kind)
    await w.assert_nothing_changed()


# --- 2. structurally valid, hostile JSON on the real URL --------------------------------------

FOREIGN_HOSTS = ["https://evil.example", "https://r2.dev.evil.example", "https://evilr2.dev",
                 "http://pub-1.r2.dev", "https://pub-1.r2.dev@evil.example",
                 "https://evil.example#.r2.dev", "https://evil.example?.r2.dev",
                 "https://modelslab.com.evil.example", "https://cloudfront.net.evil.example",
                 "https://evil.example%2f.cloudfront.net.", "https://169.254.169.254",
                 "http://localhost", "https://[::1]", "http://[::1", "https://evil.example:99999",
                 "http://127.0.0.1:1"]
NOT_URLS = ["javascript:alert(1)", "file:///etc/passwd", "ftp://evil.example/x.png",
            "data:image/png;base64,iVBORw0KGgo=", "//evil.example/x.png", "/etc/passwd", "",
            "   ", "evil.example/x.png", "about:blank", "\x00https://evil.example",
            "gopher://evil.example:70/_", "ws://evil.example/x"]


@st.composite
def hostile_bodies(draw: st.DrawFn, w: World) -> tuple[Any, set[int]]:
    """A webhook-shaped body that must be refused, and the statuses allowed for it."""
    valid_status = st.sampled_from(STATUSES).flatmap(lambda s: st.sampled_from(
        [s, s.upper(), f" {s}\n", s.title(), f"\u3000{s}"]))
    good_id = st.sampled_from([w.request_id, int(w.request_id), None, ""])
    good_track = st.sampled_from([w.track_id, None, ""])
    body: dict[str, Any] = dict(draw(JUNK_FIELDS))
    poison = draw(st.sampled_from(["status", "no status", "track_id", "id", "output",
                                   "not an object"]))
    event(f"poison: {poison}")
    if poison == "not an object":
        return draw(st.one_of(st.lists(JUNK, max_size=3), SCALARS)), {400}
    if poison in ("status", "no status"):
        if poison == "status":
            body["status"] = draw(st.one_of(JUNK, ODD_TEXT).filter(
                lambda s: not (isinstance(s, str) and s.strip().lower() in STATUSES)))
        body.update(id=draw(st.one_of(good_id, JUNK)), track_id=draw(st.one_of(good_track, JUNK)))
        return body, {400}
    body["status"] = draw(valid_status)
    body["output"] = draw(st.one_of(st.just(w.outputs()), JUNK))
    if poison == "track_id":
        body["id"] = draw(good_id)
        body["track_id"] = draw(st.one_of(
            st.text(min_size=1).filter(lambda t: t != w.track_id),
            st.integers(), st.just(w.track_id + "x"), st.just(w.track_id.upper()),
            st.just(f"{w.track_id}\x00"), st.just(" " + w.track_id)))
        return body, {400}
    if poison == "id":
        body["track_id"] = draw(good_track)
        body["id"] = draw(st.one_of(
            st.integers().filter(lambda n: str(n) != w.request_id),
            st.text(string.ascii_letters + "-_ ", min_size=1).filter(lambda t: t.strip()),
            st.just(w.request_id + "0"), st.just(f"{w.request_id}.5")))
        return body, {400}
    # A success whose outputs are missing, not URLs, or not all on the job's hosts.
    body.update(id=draw(good_id), track_id=draw(good_track), status=draw(
        st.sampled_from(["success", "SUCCESS", " Success "])))
    foreign = st.builds(lambda host, path: host + path, st.sampled_from(
        [*FOREIGN_HOSTS, w.evil_url, f"{w.fake.cdn_url}@127.0.0.1:{URL(w.evil_url).port}",
         w.fake.cdn_url.replace("http://", "https://"), w.fake.cdn_url + "0"]),
        st.sampled_from(["/x.png", "/steal.png?a=b", "", "/%2e%2e/x", "/🦄.png"]))
    output = draw(st.one_of(
        st.sampled_from([None, "", [], {}, 0, True]),
        st.lists(st.sampled_from(NOT_URLS), max_size=4),
        st.builds(lambda good, bad, at: [*good[:at], bad, *good[at:]],
                  st.just(w.outputs()), foreign, st.integers(min_value=0, max_value=2)),
        st.lists(foreign, min_size=1, max_size=200),
        foreign,
    ))
    if output is None:
        body.pop("output", None)
    else:
        body["output"] = output
    return body, {400, 422}  # 400 when a junk field is unreadable (a lone surrogate...)


@FUZZ
@given(data=st.data())
async def test_hostile_json_on_the_real_url_is_refused(world: World,
                                                       data: st.DataObject) -> None:
    w = world
    body, expected = data.draw(hostile_bodies(w), label="body")
    raw = to_bytes(body, ascii_only=data.draw(st.booleans(), label="ascii"))
    if len(raw) > MAX_WEBHOOK_BYTES:
        expected = {413}
    status = await send(w.http, w.webhook, raw, chunked=data.draw(st.booleans(), label="chunked"))
    assert status in expected, (status, raw[:300])
    await w.assert_nothing_changed()


@FUZZ
@given(fields=JUNK_FIELDS, status=st.sampled_from(["processing", "PROCESSING", " processing "]),
       ascii_only=st.booleans(), chunked=st.booleans())
async def test_processing_webhooks_with_junk_fields_are_taken_and_change_nothing(
        world: World, fields: dict[str, Any], status: str, ascii_only: bool,
        chunked: bool) -> None:
    w = world
    body = {**fields, "status": status, "id": w.request_id, "track_id": w.track_id}
    raw = to_bytes(body, ascii_only=ascii_only)
    answer = await send(w.http, w.webhook, raw, chunked=chunked)
    assert answer in {200, 400}, answer  # 400: a field no one can store (e.g. a lone surrogate)
    await asyncio.sleep(0)  # let the engine look at it
    await w.assert_nothing_changed()


# --- 3. the output-host check agrees with the downloader ---------------------------------------

URL_PARTS = st.sampled_from([
    *"ab.:@/\\?#%[]\t \x00-_~", "%2e", "%2f", "%40", "%5c", "。", "．", "℀", "ß", "İ", "\u200b",
    "\u00ad", ":443", ":0", ":65536", ":-1", "xn--", "127.0.0.1", "evil.example"])


@settings(FUZZ, max_examples=3000)
@given(scheme=st.sampled_from(["https", "http", "HTTPS", "hTTp"]),
       before=st.lists(URL_PARTS, max_size=8).map("".join),
       host=st.sampled_from([*OUTPUT_HOST_SUFFIXES, "127.0.0.1:5"]),
       after=st.lists(URL_PARTS, max_size=6).map("".join))
def test_an_allowed_output_is_fetched_from_where_it_was_allowed(scheme: str, before: str,
                                                                host: str, after: str) -> None:
    """Any URL the webhook lets through is one aiohttp reads the same way: same scheme, host
    and port (so it can't be fetched from elsewhere, and it can be fetched at all)."""
    url = f"{scheme}://{before}{host}{after}/x.png"
    if not outputs_allowed([url]):
        return
    fetched = URL(url)  # raises if aiohttp could not even request it
    origin = (fetched.scheme, fetched.raw_host, fetched.port)
    assert (
        origin[0] == "https" and origin[2] == 443 and any(
            origin[1] == s or (origin[1] or "").endswith("." + s) for s in OUTPUT_HOST_SUFFIXES)
    ), (url, origin)


# --- 4. repeated and out-of-order deliveries ---------------------------------------------------

DELIVERY_EVENTS = st.sampled_from(["processing", "success", "failed", "error", "refused"])


def has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def storable_seed(seed: Any) -> bool:
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    return isinstance(seed, bool) or not isinstance(seed, int) or -(2**63) <= seed < 2**63


@settings(FUZZ, max_examples=30)
@given(before=st.lists(DELIVERY_EVENTS, max_size=4),
       first=st.sampled_from(TERMINAL),
       after=st.lists(DELIVERY_EVENTS, max_size=5),
       late=st.lists(st.sampled_from([*TERMINAL, "processing"]), max_size=3),
       string_id=st.booleans(),
       messages=st.lists(st.text(max_size=300), min_size=14, max_size=14),
       seeds=st.lists(NUMBERS, min_size=14, max_size=14))
async def test_repeated_and_out_of_order_webhooks_deliver_the_first_result_once(
        world: World, before: list[str], first: str, after: list[str], late: list[str],
        string_id: bool, messages: list[str], seeds: list[Any]) -> None:
    """``before`` holds no result (processing or refused ones), ``first`` is the first result
    sent, ``after`` arrive while it is handled, ``late`` after it was delivered. A result
    that could not be stored (a lone surrogate in its message, a seed beyond 64 bits) must
    be refused with a 400, and then it counts as no result."""
    w = world
    before = [e for e in before if e not in TERMINAL]
    await w.new_processing_job()
    await w.fake.complete(w.request_id)  # its outputs are on the CDN from now on
    delivered_before = len(w.delivery.delivered)
    cdn_before = len(w.fake.cdn_requests)

    def body(kind: str, n: int) -> dict[str, Any]:
        ident: Any = w.request_id if string_id else int(w.request_id)
        if kind == "processing":
            return {"status": "processing", "id": ident, "eta": 5, "track_id": w.track_id}
        if kind == "success":
            return {"status": "success", "id": ident, "track_id": w.track_id,
                    "output": w.outputs(), "meta": {"seed": seeds[n]}}
        if kind == "refused":
            return {"status": "success", "id": ident, "track_id": w.track_id,
                    "output": [f"{w.evil_url}/steal-{n}.png"]}
        return {"status": kind, "id": ident, "track_id": w.track_id,
                "message": f"failure number {n}: {messages[n]}"}

    def storable(kind: str, n: int) -> bool:
        if kind == "success":
            return storable_seed(seeds[n])
        return kind not in ("failed", "error") or not has_surrogate(messages[n])

    sequence = [*before, first, *after]
    winner: tuple[str, str] | None = None  # the first result taken: kind, words expected
    for n, kind in enumerate(sequence):
        status = await send(w.http, w.webhook, to_bytes(body(kind, n)))
        if kind == "refused":
            assert status == 422, (n, kind, status)
        elif storable(kind, n):
            assert status == 200, (n, kind, status)
            if kind in TERMINAL and winner is None:
                winner = (kind, f"failure number {n}: {messages[n]}".strip())
                seed = seeds[n] if kind == "success" else None
        else:
            assert status == 400, (n, kind, status)
    if winner is None:  # every result was refused as unstorable: the job still waits
        event("every result refused")
        await asyncio.sleep(0.15)
        assert (await w.r.store.get(w.track_id)).status is JobStatus.PROCESSING
        assert w.delivery.for_job(w.track_id) == [] and w.evil_hits == []
        assert await send(w.http, w.webhook, to_bytes({"status": "failed",
                                                       "message": "the last word"})) == 200
        winner, seed = ("failed", "the last word"), None

    deadline = time.monotonic() + 10
    while (job := await w.r.store.get(w.track_id)).status is not JobStatus.DELIVERED:
        assert time.monotonic() < deadline, f"not delivered: {job.status}"
        await asyncio.sleep(0.01)
    for n, kind in enumerate(late, start=len(sequence)):
        assert await send(w.http, w.webhook, to_bytes(body(kind, n))) in (200, 400)
    await asyncio.sleep(0.15)  # room for a second delivery, if one were coming

    mine = w.delivery.for_job(w.track_id)
    assert len(mine) == 1 and len(w.delivery.delivered) == delivered_before + 1
    (item,) = mine
    final = await w.r.store.get(w.track_id)
    assert final == job  # nothing after the delivery changed it
    assert final.status is JobStatus.DELIVERED
    fetched = len(w.fake.cdn_requests) - cdn_before
    kind, words = winner
    if kind == "success":
        assert item.job.status is JobStatus.SUCCEEDED and item.job.error is None
        if isinstance(seed, int) and not isinstance(seed, bool):
            assert item.job.seed == seed
        assert len(item.outputs) == len(w.outputs()) == fetched  # each fetched exactly once
    else:
        assert item.job.status is JobStatus.FAILED and item.outputs == []
        # the API's own words, with runs of white space folded (they are shown in Discord)
        assert " ".join(words.split()) in item.job.error
        assert fetched == 0
    assert w.evil_hits == []
    await w.assert_up()


async def race(w: World, results: list[str]) -> tuple[Delivered, int]:
    """Send ``results`` for a fresh job all at once; its one delivery, and how many images
    were fetched for it."""
    await w.new_processing_job()
    await w.fake.complete(w.request_id)
    before, cdn_before = len(w.delivery.delivered), len(w.fake.cdn_requests)
    bodies = [to_bytes({"status": kind, "id": w.request_id, "track_id": w.track_id,
                        "output": w.outputs(), "message": f"racing failure {n}"})
              for n, kind in enumerate(results)]
    statuses = await asyncio.gather(*(send(w.http, w.webhook, b) for b in bodies))
    assert set(statuses) == {200}
    deadline = time.monotonic() + 10
    while (await w.r.store.get(w.track_id)).status is not JobStatus.DELIVERED:
        assert time.monotonic() < deadline, "never delivered"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.15)  # room for a second delivery, if one were coming
    mine = w.delivery.for_job(w.track_id)
    assert len(mine) == 1 and len(w.delivery.delivered) == before + 1
    assert w.evil_hits == []
    await w.assert_up()
    return mine[0], len(w.fake.cdn_requests) - cdn_before


RACES = st.lists(st.sampled_from(TERMINAL), min_size=2, max_size=5)


@settings(FUZZ, max_examples=15)
@given(results=RACES)
async def test_simultaneous_results_deliver_once(world: World, results: list[str]) -> None:
    """Results racing each other (sent at the same time): one of them is delivered, once, and
    it is one that was sent; a success is only ever delivered with its images."""
    item, _ = await race(world, results)
    if item.job.status is JobStatus.SUCCEEDED:
        assert "success" in results and len(item.outputs) == len(world.outputs())
    else:
        assert item.job.error and "racing failure" in item.job.error
        assert {"failed", "error"} & set(results)


@settings(FUZZ, max_examples=10, phases=[Phase.generate])
@given(results=RACES.filter(lambda r: "success" in r and {"failed", "error"} & set(r)))
async def test_a_taken_success_is_never_overturned_by_a_racing_failure(
        world: World, results: list[str]) -> None:
    item, fetched = await race(world, results)
    if fetched:  # the success was taken first (its images were fetched): it must stand
        assert item.job.status is JobStatus.SUCCEEDED, "a success was overturned by a failure"


# --- 5. the bodies that once got a 500 (kept as plain regressions) ----------------------------

def _regressions(w: World) -> list[tuple[str, bytes, dict[str, str], int]]:
    ok = {"status": "processing", "id": w.request_id, "track_id": w.track_id}
    success = {"status": "success", "id": w.request_id, "track_id": w.track_id}
    return [
        ("nested 20 000 deep", ('{"status": "processing", "meta": ' + deep(20_000, "[")
                                + "}").encode(), {}, 400),
        ("objects nested deep", ('{"status": "processing", "meta": ' + deep(5_000, "{")
                                 + "}").encode(), {}, 400),
        ("eta beyond a float", to_bytes({**ok, "eta": 10**400}), {}, 400),
        ("generationTime beyond a float", to_bytes({**ok, "generationTime": -(10**309)}), {},
         400),
        ("retry_after beyond a float", to_bytes({**ok, "retry_after": 10**400}), {}, 400),
        ("an output urlsplit refuses", to_bytes({**success, "output": ["http://[::1"]}), {}, 422),
        ("an output NFKC turns into a path",
         to_bytes({**success, "output": ["https://evil.example℀.r2.dev/x.png"]}), {}, 422),
        ("an output aiohttp can't request",
         to_bytes({**success, "output": ["https://evil.example\\.r2.dev/x.png"]}), {}, 422),
        ("an output on port 0", to_bytes({**success, "output": ["https://pub.r2.dev:0/x"]}), {},
         422),
        ("a lone surrogate in a failure", b'{"status": "failed", "message": "\\ud800"}', {}, 400),
        ("a seed SQLite can't hold", to_bytes({**success, "output": w.outputs(),
                                               "meta": {"seed": 2**64}}), {}, 400),
        ("gzip bomb", gzip.compress(b" " * (20 * 1024 * 1024)),
         {"Content-Encoding": "gzip"}, 413),
    ]


async def test_bodies_that_once_broke_the_route(world: World) -> None:
    w = world
    for name, raw, headers, expected in _regressions(w):
        for chunked in (False, True):
            status = await send(w.http, w.webhook, Body(raw, name, tuple(headers.items())),
                                chunked=chunked)
            assert status == expected, (name, chunked, status)
            await w.assert_nothing_changed()


async def test_a_valid_body_in_many_small_pieces_is_read_whole(world: World) -> None:
    """A body sent chunked (or arriving in several packets) is read to its end, not cut at the
    first packet and then refused as malformed."""
    w = world
    padded = to_bytes({"status": "failed", "id": w.request_id, "track_id": w.track_id,
                       "message": "out of memory", "pad": " " * 60_000})
    assert len(padded) <= MAX_WEBHOOK_BYTES
    assert await send(w.http, w.webhook, padded, chunked=True) == 200
    deadline = time.monotonic() + 10
    while not w.delivery.for_job(w.track_id):
        assert time.monotonic() < deadline, "never delivered"
        await asyncio.sleep(0.01)
    (item,) = w.delivery.for_job(w.track_id)
    assert item.job.status is JobStatus.FAILED and "out of memory" in item.job.error
