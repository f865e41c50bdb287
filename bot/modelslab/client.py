"""The ModelsLab HTTP client: one aiohttp session, explicit timeouts, typed errors.

What is retried, and why:

- A **submit** costs money once it reaches ModelsLab, and ModelsLab has no way to look a
  request up by our ``track_id``. So the client never retries a submit. It tells the caller
  exactly how it failed, and the job layer decides:
  ``NotSent`` (the connection was never made: safe to submit again), ``RateLimited`` (ModelsLab
  refused it for the account's queue limit: safe to submit again after ``retry_after``),
  ``Rejected`` (ModelsLab said no, in words: not charged, not worth repeating) and
  ``OutcomeUnknown`` (the request may have reached the API and we cannot tell what it did:
  a timeout after sending, a dropped connection, a 5xx page; submitting again could charge
  twice, so the job waits for its webhook instead).
- A 500 or 503 is ModelsLab's documented "try again later". It is safe to submit again only
  when the answer itself proves the job was not taken (``NotAccepted``, handled like
  ``NotSent``): ModelsLab's own JSON error (``status`` "error"), whose message says to try
  again, carrying none of what an accepted job is given (no ``id``, ``fetch_result``,
  ``future_links``, ``output`` or ``eta``). Any other 5xx answer keeps the never-twice rule.
- A **fetch** is read-only and safe to repeat; the poller repeats it with backoff. The client
  makes one attempt per call so that the backoff lives in one place.

The API key is only ever sent to the configured API host: a ``fetch_result`` URL pointing
anywhere else is ignored in favour of the endpoint family's documented fetch route, and no
request (each carries the key, and a submit the webhook's secret) follows a redirect: a 307 or
308 would re-send the body to wherever it points. A redirect answer is an error in words:
``Redirected`` for a submit (not accepted at the API: not charged), ``FetchRedirected`` for a
fetch (the poller tries again later, and gives up in time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from pydantic import SecretStr

from bot.modelslab.catalogue import Endpoint, KeyKind
from bot.modelslab.responses import ApiResponse, ApiStatus, MalformedResponse, parse_response
from bot.net import RedirectRefused, origin, read_capped

if TYPE_CHECKING:
    from bot.metrics import Metrics

log = logging.getLogger(__name__)

SUBMIT_TIMEOUT = aiohttp.ClientTimeout(total=90, sock_connect=10)
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=10)
MAX_ANSWER_BYTES = 2 * 1024 * 1024
DEFAULT_RETRY_AFTER = 30.0
MODEL_LIST_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)
MAX_MODEL_LIST_BYTES = 16 * 1024 * 1024
MODEL_LIST_PATHS = {KeyKind.STANDARD: "/api/v4/dreambooth/model_list",
                    KeyKind.ENTERPRISE: "/api/v1/enterprise/get_all_models"}


class ModelsLabError(Exception):
    """Base of the client's errors; ``str()`` never contains a key."""


class TransientError(ModelsLabError):
    """No usable answer this time; the same call may work later."""


class NotSent(TransientError):
    """The request never left this machine (connection refused, DNS failure, connect timeout)."""


class NotAccepted(NotSent):
    """ModelsLab answered 500/503 "try again later" in a way that proves it did not take the
    job: as safe to send again as a request that never left."""


class OutcomeUnknown(TransientError):
    """The request may have reached ModelsLab, but no usable answer came back."""


class RateLimited(ModelsLabError):
    """ModelsLab refused the request for the account's queue limit; try again after a pause."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Rejected(ModelsLabError):
    """ModelsLab answered with an error in words: bad input, a bad key, no credit..."""

    def __init__(self, response: ApiResponse) -> None:
        super().__init__(response.readable_error)
        self.response = response

    @property
    def message(self) -> str:
        return self.response.readable_error


REDIRECT_MESSAGE = ("it answered with a redirect to another address{where}; "
                    "the key was not sent there")


class Redirected(Rejected):
    """A submit was answered with a redirect, which is not followed: the request was not
    accepted at the API (nothing was made, nothing charged) and the key went nowhere else."""

    def __init__(self, message: str) -> None:
        ModelsLabError.__init__(self, message)
        self._message = message

    @property
    def message(self) -> str:
        return self._message


class FetchRedirected(OutcomeUnknown):
    """A fetch was answered with a redirect, which is not followed; the job is asked again
    later."""


class MissingKey(ModelsLabError):
    """The endpoint needs a key this bot was not given (the enterprise key)."""


class ModelsLabClient:
    """Submits generations and fetches their results. The session belongs to the caller."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: SecretStr,
        enterprise_key: SecretStr | None = None,
        submit_timeout: aiohttp.ClientTimeout = SUBMIT_TIMEOUT,
        fetch_timeout: aiohttp.ClientTimeout = FETCH_TIMEOUT,
        metrics: Metrics | None = None,
    ) -> None:
        self._session = session
        self.metrics = metrics  # when given, every submit and fetch is timed, by outcome
        self._submit_timeout = submit_timeout
        self._fetch_timeout = fetch_timeout
        self._base_url = base_url.rstrip("/")
        self._origin = origin(self._base_url)
        self._keys: dict[KeyKind, SecretStr] = {KeyKind.STANDARD: api_key}
        if enterprise_key is not None:
            self._keys[KeyKind.ENTERPRISE] = enterprise_key

    @property
    def base_url(self) -> str:
        return self._base_url

    def has_key_for(self, endpoint: Endpoint) -> bool:
        return endpoint.key in self._keys

    def _key(self, endpoint: Endpoint) -> str:
        try:
            return self._keys[endpoint.key].get_secret_value()
        except KeyError:
            raise MissingKey(
                f"the {endpoint.title} endpoint needs MODELSLAB_ENTERPRISE_API_KEY"
            ) from None

    async def submit(
        self, endpoint: Endpoint, body: Mapping[str, Any], *, webhook: str | None = None
    ) -> ApiResponse:
        """Send one generation. Returns a success or processing answer; raises otherwise."""
        payload = {"key": self._key(endpoint), **body}
        if webhook is not None:
            payload["webhook"] = webhook
        with self._timed("submit"):
            response = await self._post(self._base_url + endpoint.path, payload,
                                        self._submit_timeout, kind="submit")
            if response.status in (ApiStatus.ERROR, ApiStatus.FAILED):
                raise Rejected(response)
        return response

    async def fetch(
        self, endpoint: Endpoint, request_id: str | None, *, fetch_url: str | None = None
    ) -> ApiResponse:
        """Ask where a queued request stands. Returns processing, success, error or failed.
        Without ``request_id`` only a same-host ``fetch_url`` can be used."""
        key = self._key(endpoint)
        if fetch_url and self._origin is not None and origin(fetch_url) == self._origin:
            # The documented fetch form carries the id in the body; sent with the URL's too.
            url, body = fetch_url, {"key": key}
            if request_id is not None:
                body["request_id"] = request_id
        else:
            if fetch_url:
                log.warning("ignoring fetch_result on a foreign host %s for request %s",
                            urlsplit(fetch_url).hostname, request_id)
            if request_id is None:
                raise OutcomeUnknown("ModelsLab gave this job neither an id nor a usable "
                                     "fetch_result")
            path, extra = endpoint.fetch.build(request_id)
            url, body = self._base_url + path, {"key": key, **extra}
        with self._timed("fetch"):
            return await self._post(url, body, self._fetch_timeout, kind="fetch")

    def has_key(self, kind: KeyKind) -> bool:
        return kind in self._keys

    async def list_models(self, kind: KeyKind) -> list[dict[str, Any] | str]:
        """The raw records of ModelsLab's model list for one key (parsed by the caller).
        Raises ModelsLabError (MissingKey, TransientError...) when it cannot be read."""
        try:
            key = self._keys[kind].get_secret_value()
        except KeyError:
            raise MissingKey(f"no {kind} key") from None
        path = MODEL_LIST_PATHS[kind]
        try:
            async with self._session.post(self._base_url + path, json={"key": key},
                                          timeout=MODEL_LIST_TIMEOUT,
                                          allow_redirects=False) as resp:
                raw = await read_capped(resp.content, MAX_MODEL_LIST_BYTES)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"the model list could not be read: {_reason(exc)}") from None
        if status != 200 or len(raw) > MAX_MODEL_LIST_BYTES:
            raise TransientError(f"the model list answered HTTP {status}")
        try:
            data = json.loads(raw)
        except ValueError:
            raise TransientError("the model list is not JSON") from None
        records = _records(data)
        if records is None:
            message = data.get("message") if isinstance(data, dict) else None
            raise TransientError(f"the model list is not a list ({str(message)[:80]})")
        return records

    @contextlib.contextmanager
    def _timed(self, kind: str) -> Iterator[None]:
        started = time.monotonic()
        outcome = "unknown"  # also a cancelled request: it may have arrived
        try:
            yield
            outcome = "ok"
        except NotSent:
            outcome = "not_sent"
            raise
        except RateLimited:
            outcome = "rate_limited"
            raise
        except Rejected:
            outcome = "rejected"
            raise
        finally:
            if self.metrics is not None:
                self.metrics.observe_request(kind, outcome, time.monotonic() - started)

    async def _post(
        self, url: str, payload: Mapping[str, Any], limits: aiohttp.ClientTimeout, *,
        kind: str = "submit",
    ) -> ApiResponse:
        path = urlsplit(url).path
        started = time.monotonic()
        try:
            # The body carries the key: never re-sent anywhere, so redirects are not followed.
            async with self._session.post(url, json=payload, timeout=limits,
                                          allow_redirects=False) as resp:
                status = resp.status
                if 300 <= status < 400:
                    raise self._redirected(kind, path, resp.headers.get("Location"))
                raw = await read_capped(resp.content, MAX_ANSWER_BYTES)
                retry_header = resp.headers.get("Retry-After")
                reset_header = resp.headers.get("X-RateLimit-Reset")
        except RedirectRefused:
            raise self._redirected(kind, path, None) from None
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise NotSent(f"could not connect to ModelsLab for {path}: {_reason(exc)}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OutcomeUnknown(f"no answer from ModelsLab for {path}: {_reason(exc)}") from None
        finally:
            self.last_latency = time.monotonic() - started

        if len(raw) > MAX_ANSWER_BYTES:
            raise OutcomeUnknown(f"ModelsLab's answer for {path} is too large")
        try:
            response = parse_response(status, raw)
        except MalformedResponse as exc:
            if status == 429:
                raise RateLimited("ModelsLab is rate limiting this account",
                                  _wait_for(None, retry_header, reset_header)) from None
            log.warning("unreadable answer from ModelsLab for %s (HTTP %s): %s", path, status, exc)
            raise OutcomeUnknown(f"unreadable answer from ModelsLab (HTTP {status})") from None

        if status == 429:
            raise RateLimited(response.readable_error,
                              _wait_for(response.retry_after, retry_header, reset_header))
        if status in (500, 503) and _proves_not_accepted(response):
            raise NotAccepted(f"ModelsLab answered HTTP {status} for {path}: "
                              f"{response.readable_error}")
        if status >= 500 and response.status is not ApiStatus.ERROR:
            raise OutcomeUnknown(f"ModelsLab answered HTTP {status} for {path}")
        return response

    def _redirected(self, kind: str, path: str, location: str | None) -> ModelsLabError:
        where = urlsplit(location).netloc if location else ""
        message = REDIRECT_MESSAGE.format(where=f" ({where})" if where else "")
        log.warning("ModelsLab answered the %s for %s with a redirect to %s; not followed, "
                    "the key was not sent there", kind, path, where or "an unnamed address")
        return Redirected(message) if kind == "submit" else FetchRedirected(
            "ModelsLab " + message)


def _proves_not_accepted(response: ApiResponse) -> bool:
    """A documented "try again later" error that carries nothing an accepted job gets."""
    words = (response.message or "").lower()
    return (response.status is ApiStatus.ERROR and "try again" in words
            and response.request_id is None and response.fetch_result is None
            and not response.future_links and not response.output and response.eta is None)


def _wait_for(body_retry_after: float | None, retry_header: str | None,
              reset_header: str | None) -> float:
    """How long a 429 asks us to wait: the longest of the body's ``retry_after``, the
    ``Retry-After`` header and ``X-RateLimit-Reset`` (seconds to wait, or the epoch second
    the window resets at)."""
    waits = [w for w in (body_retry_after, _number(retry_header)) if w is not None]
    reset = _number(reset_header)
    if reset is not None:
        waits.append(max(0.0, reset - time.time()) if reset > 1_000_000_000 else reset)
    return max(waits) if waits else DEFAULT_RETRY_AFTER


def _records(data: Any) -> list[dict[str, Any] | str] | None:
    """The list of model records in a model list answer: the answer itself, or the list
    under one of the keys ModelsLab's answers use."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for name in ("data", "models", "message", "output"):
            if isinstance(data.get(name), list):
                return data[name]
    return None


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    return type(exc).__name__
