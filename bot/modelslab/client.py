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


class ModelsLabError(Exception):
    """Base of the client's errors; ``str()`` never contains a key."""


class TransientError(ModelsLabError):
    """No usable answer this time; the same call may work later."""


class NotSent(TransientError):
    """The request never left this machine (connection refused, DNS failure, connect timeout)."""


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
        self, endpoint: Endpoint, request_id: str, *, fetch_url: str | None = None
    ) -> ApiResponse:
        """Ask where a queued request stands. Returns processing, success, error or failed."""
        key = self._key(endpoint)
        if fetch_url and self._origin is not None and origin(fetch_url) == self._origin:
            url, body = fetch_url, {"key": key}
        else:
            if fetch_url:
                log.warning("ignoring fetch_result on a foreign host %s for request %s",
                            urlsplit(fetch_url).hostname, request_id)
            path, extra = endpoint.fetch.build(request_id)
            url, body = self._base_url + path, {"key": key, **extra}
        with self._timed("fetch"):
            return await self._post(url, body, self._fetch_timeout, kind="fetch")

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
                                  _number(retry_header) or DEFAULT_RETRY_AFTER) from None
            log.warning("unreadable answer from ModelsLab for %s (HTTP %s): %s", path, status, exc)
            raise OutcomeUnknown(f"unreadable answer from ModelsLab (HTTP {status})") from None

        if status == 429:
            retry_after = response.retry_after or _number(retry_header) or DEFAULT_RETRY_AFTER
            raise RateLimited(response.readable_error, retry_after)
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


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    return type(exc).__name__
