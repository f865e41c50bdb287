"""A local fake of the ModelsLab image API, for client, pipeline and end-to-end tests.

``FakeModelsLab`` runs two real aiohttp servers on 127.0.0.1 (any free ports):

* the API server (``base_url``): the five img2img/inpaint submit endpoints and the fetch
  routes, enforcing every documented field rule of each endpoint (and rejecting fields an
  endpoint does not take, which the real API would silently ignore);
* a CDN server (``cdn_url``, a different origin): serves the generated outputs as small PNGs
  at ``{cdn_url}/generations/{uuid}-{n}.png``, plus ``{cdn_url}/not-an-image`` (text/html)
  and any file registered with :meth:`FakeModelsLab.cdn_put`.

The rules here are written independently from the production endpoint catalogue (``bot/``),
so that the two cross-check each other. Nothing here is imported from ``bot``.

Quick use::

    async with FakeModelsLab() as fake:
        ...  # point the client at fake.base_url
        await fake.complete(fake.submits[-1].response.body["id"])
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .images import png_for

__all__ = [
    "ENDPOINTS",
    "MODEL_LIST_PATHS",
    "PONY_SCHEDULERS",
    "SCHEDULERS",
    "EndpointSpec",
    "FakeJob",
    "FakeModelsLab",
    "FieldRule",
    "RecordedRequest",
    "RecordedResponse",
    "WebhookDelivery",
    "check_body",
    "check_field",
    "default_models",
    "example_body",
]

# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------

SCHEDULERS: tuple[str, ...] = (
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "UniPCMultistepScheduler",
    "DDIMInverseScheduler",
    "DEISMultistepScheduler",
    "IPNDMScheduler",
    "KarrasVeScheduler",
    "ScoreSdeVeScheduler",
    "LCMScheduler",
)
"""Schedulers of the v6 (img2img, inpaint) and enterprise img2img endpoints."""

PONY_SCHEDULERS: tuple[str, ...] = (
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "LCMScheduler",
    "IPNDMScheduler",
)
"""The 15 schedulers the enterprise Pony img2img endpoint accepts."""

SAFETY_CHECKER_TYPES: tuple[str, ...] = ("sensitive_content_text", "blur", "pixelate", "black")

UPSCALER_MODELS: tuple[str, ...] = (
    "RealESRGAN_x4plus",
    "RealESRGAN_x4plus_anime_6B",
    "RealESRGAN_x2plus",
    "realesr-general-x4v3",
    "ultra_resolution",
)
"""Super resolution's documented ``model_id`` values."""

_INT_STRING = re.compile(r"-?\d+")
_NUMBER_STRING = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class FieldRule:
    """The rule for one body field.

    kind: "string" | "url" (http/https URL) | "int" | "number" | "choice" |
    "yesno" (the strings "yes"/"no") | "bool" (JSON true/false).
    Numbers ("int", "number") accept JSON numbers and numeric strings, never booleans.
    """

    kind: str
    required: bool = False
    nullable: bool = False
    lo: float | None = None
    hi: float | None = None
    multiple_of: int | None = None
    allowed: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class EndpointSpec:
    """One submit endpoint: its path, which key it takes, its fetch family and its fields."""

    name: str
    path: str
    key_family: str  # "standard" | "enterprise"
    fetch_family: str  # "community" | "enterprise" | "realtime" | "image_editing"
    fields: Mapping[str, FieldRule]


def _size(lo: int, hi: int) -> FieldRule:
    return FieldRule("int", lo=lo, hi=hi, multiple_of=8)


_COMMON: dict[str, FieldRule] = {
    "key": FieldRule("string", required=True),  # checked separately (HTTP 401)
    "prompt": FieldRule("string", required=True),
    "negative_prompt": FieldRule("string"),
    "init_image": FieldRule("url", required=True),
    "samples": FieldRule("int", lo=1, hi=4),
    "guidance_scale": FieldRule("number", lo=1, hi=20),
    "strength": FieldRule("number", lo=0, hi=1),
    "seed": FieldRule("int", nullable=True),
    "webhook": FieldRule("url", nullable=True),
    "track_id": FieldRule("string", nullable=True),
}

_V6: dict[str, FieldRule] = {
    **_COMMON,
    "model_id": FieldRule("string", required=True),
    "width": _size(1024, 2048),
    "height": _size(1024, 2048),
    "num_inference_steps": FieldRule("int", lo=20, hi=50),
    "scheduler": FieldRule("choice", allowed=SCHEDULERS),
    "use_karras_sigmas": FieldRule("yesno"),
    "algorithm_type": FieldRule("string"),  # the pages disagree on its values
    "clip_skip": FieldRule("int", lo=1, hi=4),
    "safety_checker": FieldRule("yesno"),
    # the generic v6 pages document it with the default "yes" (ModelsLab rewrites the prompt)
    "enhance_prompt": FieldRule("yesno"),
}

_INPAINT: dict[str, FieldRule] = {
    **{k: v for k, v in _V6.items() if k != "num_inference_steps"},
    "mask_image": FieldRule("url", required=True),
    "width": _size(512, 1024),
    "height": _size(512, 1024),
    "steps": FieldRule("int", lo=1, hi=50),
}

_ENTERPRISE: dict[str, FieldRule] = {
    **_COMMON,
    "model_id": FieldRule("string", required=True),
    "width": _size(256, 1024),
    "height": _size(256, 1024),
    "num_inference_steps": FieldRule("int", allowed=(21, 31, 41)),
    "scheduler": FieldRule("choice", allowed=SCHEDULERS),
    "use_karras_sigmas": FieldRule("yesno"),
    "safety_checker": FieldRule("yesno"),
    "safety_checker_type": FieldRule("choice", allowed=SAFETY_CHECKER_TYPES),
    "enhance_prompt": FieldRule("yesno"),
    "tomesd": FieldRule("yesno"),
    "lora_model": FieldRule("string", nullable=True),
    "lora_strength": FieldRule("number", nullable=True),
    "vae": FieldRule("string", nullable=True),
    "clip_skip": FieldRule("int", lo=1, hi=8),
}

_ENTERPRISE_PONY: dict[str, FieldRule] = {
    **_ENTERPRISE,
    "scheduler": FieldRule("choice", allowed=PONY_SCHEDULERS),
}

_ENTERPRISE_INPAINT: dict[str, FieldRule] = {
    **_ENTERPRISE,
    "mask_image": FieldRule("url", required=True),
}

_REALTIME: dict[str, FieldRule] = {
    **{k: v for k, v in _COMMON.items() if k != "guidance_scale"},  # not documented there
    "width": _size(256, 1024),
    "height": _size(256, 1024),
    "safety_checker": FieldRule("bool"),
    "base64": FieldRule("bool"),
    "instant_response": FieldRule("bool"),
    "enhance_prompt": FieldRule("bool"),
    "enhance_style": FieldRule("string"),
}

_SUPER_RESOLUTION: dict[str, FieldRule] = {
    "key": FieldRule("string", required=True),
    "init_image": FieldRule("url", required=True),
    "scale": FieldRule("number", lo=1, hi=4),
    "model_id": FieldRule("choice", allowed=UPSCALER_MODELS),
    "face_enhance": FieldRule("bool"),
    "webhook": FieldRule("url", nullable=True),
    "track_id": FieldRule("string", nullable=True),
}

ENDPOINTS: dict[str, EndpointSpec] = {
    spec.name: spec
    for spec in (
        EndpointSpec("v6", "/api/v6/images/img2img", "standard", "community", _V6),
        EndpointSpec("inpaint", "/api/v6/images/inpaint", "standard", "community", _INPAINT),
        EndpointSpec(
            "enterprise", "/api/v1/enterprise/img2img", "enterprise", "enterprise", _ENTERPRISE
        ),
        EndpointSpec(
            "enterprise_pony",
            "/api/v1/enterprise/pony/img2img",
            "enterprise",
            "enterprise",
            _ENTERPRISE_PONY,
        ),
        EndpointSpec(
            "realtime",
            "/api/v1/enterprise/realtime/img2img",
            "enterprise",
            "realtime",
            _REALTIME,
        ),
        EndpointSpec(
            "enterprise_inpaint",
            "/api/v1/enterprise/inpaint",
            "enterprise",
            "enterprise",
            _ENTERPRISE_INPAINT,
        ),
        EndpointSpec(
            "super_resolution",
            "/api/v6/image_editing/super_resolution",
            "standard",
            "image_editing",
            _SUPER_RESOLUTION,
        ),
    )
}
"""The submit endpoints by name ("v6", "inpaint", "enterprise", "enterprise_pony",
"realtime", "enterprise_inpaint", "super_resolution")."""

MODEL_LIST_PATHS = {
    "/api/v4/dreambooth/model_list": "standard",
    "/api/v1/enterprise/get_all_models": "enterprise",
}
"""The model list routes and the key each takes."""

_SUBMIT_PATHS = {spec.path: spec.name for spec in ENDPOINTS.values()}

# (regex, fetch family, id comes from the path?)
_FETCH_ROUTES: tuple[tuple[re.Pattern[str], str, bool], ...] = (
    (re.compile(r"/api/v6/images/fetch/(?P<id>[^/]+)"), "community", True),
    (re.compile(r"/api/v6/images/fetch"), "community", False),
    (re.compile(r"/api/v1/enterprise/realtime/fetch/(?P<id>[^/]+)"), "realtime", True),
    (re.compile(r"/api/v1/enterprise/fetch/(?P<id>[^/]+)"), "enterprise", True),
    (re.compile(r"/api/v1/enterprise/fetch"), "enterprise", False),
    (re.compile(r"/api/v6/image_editing/fetch/(?P<id>[^/]+)"), "image_editing", True),
)

_FETCH_RESULT_PATHS = {
    "community": "/api/v6/images/fetch/{id}",
    "enterprise": "/api/v1/enterprise/fetch/{id}",
    "realtime": "/api/v1/enterprise/realtime/fetch/{id}",
    "image_editing": "/api/v6/image_editing/fetch/{id}",
}


def _label(name: str) -> str:
    return name.replace("_", " ")


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _as_int(value: Any) -> int | None:
    """The integer a JSON value stands for (number or numeric string), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str) and _INT_STRING.fullmatch(value):
        return int(value)
    return None


def _as_number(value: Any) -> float | None:
    """The finite number a JSON value stands for (number or numeric string), or None."""
    if isinstance(value, bool):
        return None
    numeric_string = isinstance(value, str) and _NUMBER_STRING.fullmatch(value)
    if not (isinstance(value, int | float) or numeric_string):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _is_http_url(value: str) -> bool:
    if not value or any(ch.isspace() for ch in value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def check_field(name: str, rule: FieldRule, value: Any) -> list[str]:
    """Sentences describing what is wrong with ``value`` for field ``name`` (empty if fine)."""
    label = _label(name)
    if value is None:
        if rule.nullable:
            return []
        if rule.required:
            return [f"The {label} field is required."]
        return [f"The {label} field must not be null."]
    kind = rule.kind
    if kind in ("string", "url", "choice"):
        if not isinstance(value, str):
            return [f"The {label} field must be a string."]
        if rule.required and not value.strip():
            return [f"The {label} field is required."]
        if kind == "url" and not _is_http_url(value):
            return [f"The {label} field must be a valid http or https URL."]
        if kind == "choice" and value not in (rule.allowed or ()):
            return [f"The selected {label} is invalid."]
        return []
    if kind == "yesno":
        if value not in ("yes", "no") or not isinstance(value, str):
            return [f'The {label} field must be the string "yes" or "no".']
        return []
    if kind == "bool":
        if not isinstance(value, bool):
            return [f"The {label} field must be a JSON boolean (true or false)."]
        return []
    if kind in ("int", "number"):
        number: float | None
        if kind == "int":
            number = _as_int(value)
            if number is None:
                return [f"The {label} field must be an integer."]
        else:
            number = _as_number(value)
            if number is None:
                return [f"The {label} field must be a number."]
        problems = []
        if rule.allowed is not None and number not in rule.allowed:
            choices = ", ".join(_fmt(a) for a in rule.allowed)
            problems.append(f"The selected {label} is invalid (allowed: {choices}).")
        if rule.lo is not None and rule.hi is not None and not rule.lo <= number <= rule.hi:
            problems.append(
                f"The {label} field must be between {_fmt(rule.lo)} and {_fmt(rule.hi)}."
            )
        if rule.multiple_of and int(number) % rule.multiple_of:
            problems.append(f"The {label} field must be a multiple of {rule.multiple_of}.")
        return problems
    raise ValueError(f"unknown rule kind {kind!r}")


def check_body(endpoint: str, body: Mapping[str, Any]) -> dict[str, list[str]]:
    """Field errors of a submit ``body`` for ``endpoint`` (the key itself is not checked).

    Lists every bad field: unknown fields, missing required fields and rule breaks.
    """
    spec = ENDPOINTS[endpoint]
    errors: dict[str, list[str]] = {}
    for name, rule in spec.fields.items():
        if name == "key":
            continue
        if name not in body:
            if rule.required:
                errors[name] = [f"The {_label(name)} field is required."]
            continue
        problems = check_field(name, rule, body[name])
        if problems:
            errors[name] = problems
    for name in body:
        if name not in spec.fields:
            errors[name] = [
                f"The {_label(name)} field is not accepted by the {spec.name} endpoint."
            ]
    return errors


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass
class RecordedResponse:
    """What the fake answered: HTTP status, body (parsed JSON, else text), content type, bytes."""

    status: int
    body: Any
    content_type: str
    raw: bytes


@dataclass
class RecordedRequest:
    """One request seen by the API or the CDN server.

    kind: "submit" | "fetch" | "other" on the API server, "cdn" on the CDN server.
    endpoint: the submit endpoint name (for fetches: the endpoint of the job found), or None.
    body: the parsed JSON body, or None when it was not JSON; raw: the bytes as received.
    accepted: submits: a job was created; fetches: the request was well formed (even if the
    id was not found). errors: field -> sentences for refused requests (for scripted answers:
    what the fake's own rules would have said). scripted: a canned answer was served.
    hung: seconds the answer was held back by hang_next(). job_id: the job created or fetched.
    """

    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    raw: bytes
    body: Any
    kind: str
    endpoint: str | None = None
    accepted: bool = False
    errors: dict[str, list[str]] = field(default_factory=dict)
    response: RecordedResponse | None = None
    scripted: bool = False
    transformed: bool = False
    hung: float = 0.0
    job_id: int | None = None
    answer_lost: bool = False  # handled, but an error page was sent instead (lose_answer_next)
    time: float = field(default_factory=time.monotonic)


@dataclass
class WebhookDelivery:
    """One webhook POST attempt: the body sent, the receiver's HTTP status (None on error)."""

    url: str
    body: dict[str, Any]
    status: int | None
    error: str | None = None


@dataclass
class FakeJob:
    """A generation job created by an accepted submit.

    state: "processing" | "success" | "failed". future_links: the output URLs promised at
    submit time; outputs: the same URLs once the job succeeded (empty before and on failure).
    created/finished: time.monotonic() values. fail_with: a failure armed by fail_next_with().
    """

    id: int
    endpoint: str
    body: dict[str, Any]
    track_id: Any
    webhook: str | None
    seed: int
    samples: int
    future_links: list[str]
    meta: dict[str, Any]
    state: str = "processing"
    outputs: list[str] = field(default_factory=list)
    nsfw: bool = False
    message: str | None = None
    created: float = field(default_factory=time.monotonic)
    finished: float | None = None
    fail_with: str | None = None
    webhook_bodies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def family(self) -> str:
        """The fetch family of the job's endpoint: "community", "enterprise" or "realtime"."""
        return ENDPOINTS[self.endpoint].fetch_family


@dataclass
class _Script:
    status: int
    data: bytes
    content_type: str
    times: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Transform:
    fn: Callable[[Any], Any]
    times: int


class _Answer(Exception):
    """Raised inside request handling to answer at once with a JSON error."""

    def __init__(self, status: int, body: dict[str, Any], errors: dict[str, list[str]]):
        super().__init__(status)
        self.status = status
        self.body = body
        self.errors = errors


def _json_bytes(body: Any) -> bytes:
    return json.dumps(body).encode("utf-8")


def _shown(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


PROCESSING_MESSEGE = "Try to fetch request after given estimated time"
PROCESSING_TIP = (
    "Your image is processing in background, you can get this image using fetch API: "
    "here is link for fetch api : https://docs.modelslab.com"
)

# --------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------


class FakeModelsLab:
    """A fake ModelsLab API server plus a fake CDN, both on 127.0.0.1.

    Knobs (plain attributes, settable at any time):
    mode ("processing" | "success"), eta, auto_complete_after, queue_limit, retry_after,
    send_webhooks, webhook_repeats, webhook_id_as_string, webhook_timeout, output_404s, nsfw,
    generation_time.
    """

    MODES = ("processing", "success")

    def __init__(
        self,
        api_key: str = "test-key",
        enterprise_key: str = "test-enterprise-key",
        *,
        host: str = "127.0.0.1",
        first_id: int = 1001,
        rng_seed: int = 1234,
    ) -> None:
        self.api_key = api_key
        self.enterprise_key = enterprise_key
        self.host = host

        # behaviour knobs
        self._mode = "processing"
        self.eta: float = 1.0
        self.auto_complete_after: float | None = None
        self.queue_limit: int | None = None
        self.retry_after: int = 30
        self.send_webhooks: bool = True
        self.webhook_repeats: int = 1
        self.webhook_id_as_string: bool = True
        self.webhook_timeout: float = 5.0
        self.output_404s: int = 0
        self.nsfw: bool = False
        self.generation_time: float = 1.23
        self.image_size: int = 64
        self.image_noise: bool = False  # outputs of random pixels (they don't compress)
        # what the model list routes answer (model ids, in order); edit freely
        self.models: list[str] = default_models("")
        self.enterprise_models: list[str] = default_models("enterprise-")
        # LoRA records, listed after the models on both routes (model_category "lora")
        self.loras: list[str] = ["more_details", "add-detail-xl", "epi-noise-offset"]

        # recordings
        self.requests: list[RecordedRequest] = []
        self.cdn_requests: list[RecordedRequest] = []
        self.jobs: dict[str, FakeJob] = {}
        self.peak_processing = 0
        """The most jobs processing at once (counted as each job is created)."""
        self.webhook_results: list[int | None] = []
        self.webhook_deliveries: list[WebhookDelivery] = []

        # internals
        self._next_id = first_id
        self._rng = random.Random(rng_seed)
        self._scripts: dict[str, deque[_Script]] = {
            "submit": deque(), "fetch": deque(), "models": deque()
        }
        self._transforms: dict[str, deque[_Transform]] = {
            "submit": deque(), "fetch": deque(), "models": deque()
        }
        self._hangs: dict[str, deque[float]] = {
            "submit": deque(), "fetch": deque(), "cdn": deque(), "models": deque()
        }
        self._fail_next: deque[str] = deque()
        self._lost_answers: dict[str, int] = {"submit": 0, "fetch": 0}
        self._lost_status = 504
        self._outputs: dict[str, tuple[str, int]] = {}  # CDN file name -> (job key, index)
        self._cdn_404s: dict[str, int] = {}
        self._cdn_files: dict[str, tuple[bytes, str]] = {}
        self._png_cache: dict[str, bytes] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing: asyncio.Event | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._api_runner: web.AppRunner | None = None
        self._cdn_runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._cdn_url: str | None = None

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> FakeModelsLab:
        """Bind the API server and the CDN server on free ports of ``host``."""
        if self._api_runner is not None:
            raise RuntimeError("FakeModelsLab already started")
        self._closing = asyncio.Event()
        api = web.Application(client_max_size=64 * 1024 * 1024)
        api.router.add_route("*", "/{tail:.*}", self._handle_api)
        cdn = web.Application()
        cdn.router.add_route("*", "/{tail:.*}", self._handle_cdn)
        self._api_runner, api_port = await self._serve(api)
        self._cdn_runner, cdn_port = await self._serve(cdn)
        self._base_url = f"http://{self.host}:{api_port}"
        self._cdn_url = f"http://{self.host}:{cdn_port}"
        self._session = aiohttp.ClientSession()
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def _serve(self, app: web.Application) -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        return runner, int(runner.addresses[0][1])

    async def close(self) -> None:
        """Stop both servers. Pending background webhook deliveries are cancelled
        (call :meth:`drain` first to wait for them). Held-back (hung) answers are released."""
        if self._closing is not None:
            self._closing.set()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        for runner in (self._api_runner, self._cdn_runner):
            if runner is not None:
                await runner.cleanup()
        self._api_runner = self._cdn_runner = None

    async def __aenter__(self) -> FakeModelsLab:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: the API host."""
        if self._base_url is None:
            raise RuntimeError("FakeModelsLab not started")
        return self._base_url

    @property
    def cdn_url(self) -> str:
        """``http://127.0.0.1:CDNPORT``: where outputs are served (a different origin)."""
        if self._cdn_url is None:
            raise RuntimeError("FakeModelsLab not started")
        return self._cdn_url

    def url_for(self, endpoint: str) -> str:
        """Full URL of a submit endpoint by name, e.g. ``url_for("inpaint")``."""
        return self.base_url + ENDPOINTS[endpoint].path

    def key_for(self, endpoint: str) -> str:
        """The key an endpoint takes ("v6"/"inpaint": api_key, the others: enterprise_key)."""
        return self._key_of_family(ENDPOINTS[endpoint].key_family)

    def _key_of_family(self, key_family: str) -> str:
        return self.api_key if key_family == "standard" else self.enterprise_key

    # ---------------------------------------------------------------- knobs and control

    @property
    def mode(self) -> str:
        """The answer mode: "processing" (default: submits are queued) or "success"."""
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, not {value!r}")
        self._mode = value

    def fail_next_with(self, message: str, *, times: int = 1) -> None:
        """The next ``times`` accepted submits make jobs that end "failed" with ``message``.

        In "processing" mode the submit is queued as usual and the job fails when it completes
        (auto_complete_after or complete() without ``fail``): fetches then answer
        ``{"status":"failed",...}`` and a failure webhook is sent. In "success" mode the submit
        itself answers HTTP 200 ``{"status":"error","message":message}`` with no id (how the
        real API reports a failed generation); no webhook is sent for that job.
        """
        for _ in range(times):
            self._fail_next.append(message)

    def script(
        self,
        kind: str,
        status: int,
        body: dict[str, Any] | list[Any] | str | bytes,
        *,
        content_type: str = "application/json",
        times: int = 1,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Queue a canned answer: the next ``times`` requests of ``kind`` ("submit"/"fetch")
        get exactly this status, body and Content-Type (and any extra ``headers``, e.g. a
        redirect's Location) instead of the normal behaviour.

        dict/list bodies are JSON-encoded; str is sent as UTF-8; bytes are sent as they are
        (e.g. malformed JSON). Scripted requests are recorded (``scripted=True``), create no job
        and are neither submits nor rejections.
        """
        self._check_kind(kind)
        if times < 1:
            raise ValueError("times must be >= 1")
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode("utf-8")
        else:
            data = _json_bytes(body)
        self._scripts[kind].append(_Script(status, data, content_type, times, dict(headers or {})))

    def transform_next(self, kind: str, fn: Callable[[Any], Any], *, times: int = 1) -> None:
        """The next ``times`` normal JSON answers of ``kind`` are passed through ``fn`` (which
        returns the body to send) after the normal behaviour ran (jobs are still created).

        E.g. ``fake.transform_next("fetch", lambda b: {**b, "proxy_links": ""})`` or
        ``lambda b: {**b, "id": str(b["id"])}``.
        """
        self._check_kind(kind)
        self._transforms[kind].append(_Transform(fn, times))

    def hang_next(self, kind: str, seconds: float) -> None:
        """The next request of ``kind`` ("submit", "fetch" or "cdn") waits ``seconds`` before
        it is handled (for client timeout tests). close() releases waiting requests."""
        if kind not in self._hangs:
            raise ValueError(f"kind must be one of {tuple(self._hangs)}, not {kind!r}")
        self._hangs[kind].append(seconds)

    def lose_answer_next(self, kind: str, *, times: int = 1, status: int = 504) -> None:
        """The next ``times`` requests of ``kind`` are handled as usual (a submit makes its
        job, which runs and later sends its webhook), but the answer is lost on the way: the
        caller gets an HTML error page with ``status`` instead (a gateway timing out)."""
        self._check_kind(kind)
        self._lost_answers[kind] += times
        self._lost_status = status

    def reset(self, *, jobs: bool = False) -> None:
        """Clear recordings (requests, cdn_requests, webhook results) and every queued script,
        transform, hang and armed failure. Jobs are kept unless ``jobs=True``. Knobs are kept."""
        self.requests.clear()
        self.cdn_requests.clear()
        self.webhook_results.clear()
        self.webhook_deliveries.clear()
        for queue in (*self._scripts.values(), *self._transforms.values(), *self._hangs.values()):
            queue.clear()
        self._fail_next.clear()
        self._lost_answers = {"submit": 0, "fetch": 0}
        if jobs:
            self.jobs.clear()
            self._outputs.clear()
            self._cdn_404s.clear()

    def cdn_put(self, name: str, data: bytes, content_type: str = "image/png") -> str:
        """Serve ``data`` at ``{cdn_url}/files/{name}`` (e.g. an init image); returns the URL."""
        self._cdn_files[name] = (data, content_type)
        return f"{self.cdn_url}/files/{name}"

    async def complete(
        self, request_id: int | str, *, fail: str | None = None, nsfw: bool | None = None
    ) -> list[dict[str, Any]]:
        """Finish a processing job now: success with ``samples`` outputs, or "failed" with
        ``fail`` (or the message armed by fail_next_with). ``nsfw`` overrides ``self.nsfw``.

        Sends the webhook (``webhook_repeats`` times) if the job has one and send_webhooks is
        on, waits for the deliveries, and returns the bodies posted (one per attempt).
        Raises KeyError for an unknown id, ValueError if the job is not processing.
        """
        job = self.job(request_id)
        self._finish(job, fail=fail, nsfw=nsfw)
        return await self._deliver_webhooks(job)

    async def drain(self) -> None:
        """Wait until background webhook deliveries (auto-completed jobs, "success" mode) end."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ---------------------------------------------------------------- views

    def job(self, request_id: int | str) -> FakeJob:
        """The job with this id (int or string form); KeyError if there is none."""
        return self.jobs[str(request_id)]

    @property
    def submits(self) -> list[RecordedRequest]:
        """Accepted submit requests (each created a job), in order."""
        return [r for r in self.requests if r.kind == "submit" and r.accepted]

    @property
    def rejections(self) -> list[RecordedRequest]:
        """Submit requests the fake's rules refused (bad JSON 400, bad key 401, field errors,
        queue full 429, wrong method 405), in order. Scripted answers are not included."""
        return [
            r
            for r in self.requests
            if r.kind == "submit" and not r.accepted and not r.scripted and r.response
        ]

    @property
    def model_list_calls(self) -> list[RecordedRequest]:
        """Every request to a model list route, in order."""
        return [r for r in self.requests if r.kind == "models"]

    @property
    def fetches(self) -> list[RecordedRequest]:
        """Every fetch request, in order."""
        return [r for r in self.requests if r.kind == "fetch"]

    @property
    def processing_jobs(self) -> list[FakeJob]:
        """Jobs still processing."""
        return [j for j in self.jobs.values() if j.state == "processing"]

    def cdn_key_leaks(self) -> list[RecordedRequest]:
        """CDN requests carrying either API key anywhere (path, query, headers or body)."""
        keys = [k for k in (self.api_key, self.enterprise_key) if k]
        leaks = []
        for rec in self.cdn_requests:
            blob = " ".join([rec.path, rec.query, *rec.headers.values(), rec.raw.decode("latin-1")])
            if any(k in blob for k in keys):
                leaks.append(rec)
        return leaks

    # ---------------------------------------------------------------- answer bodies

    def processing_body(self, job: FakeJob) -> dict[str, Any]:
        """The submit answer for a queued job."""
        return {
            "status": "processing",
            "tip": PROCESSING_TIP,
            "eta": float(self.eta),
            "messege": PROCESSING_MESSEGE,
            "fetch_result": self.fetch_result_url(job),
            "id": job.id,
            "output": [],
            "future_links": list(job.future_links),
            "meta": dict(job.meta),
            "track_id": job.track_id,
        }

    def success_body(self, job: FakeJob) -> dict[str, Any]:
        """The submit/fetch answer for a job that succeeded."""
        return {
            "status": "success",
            "generationTime": self.generation_time,
            "id": job.id,
            "output": list(job.outputs),
            "proxy_links": list(job.outputs),
            "nsfw_content_detected": job.nsfw,
            "meta": dict(job.meta),
            "webhook_status": "",
            "tip": "",
            "track_id": job.track_id,
        }

    def fetch_body(self, job: FakeJob) -> dict[str, Any]:
        """The fetch answer for a job in its current state."""
        if job.state == "processing":
            return {
                "status": "processing",
                "id": job.id,
                "output": "",
                "eta": float(self.eta),
                "messege": PROCESSING_MESSEGE,
            }
        if job.state == "success":
            return self.success_body(job)
        return {"status": "failed", "id": job.id, "message": job.message}

    def webhook_body(self, job: FakeJob) -> dict[str, Any]:
        """The webhook body for a finished job (id as a string if webhook_id_as_string)."""
        job_id: int | str = str(job.id) if self.webhook_id_as_string else job.id
        if job.state == "success":
            return {
                "status": "success",
                "id": job_id,
                "output": list(job.outputs),
                "generationTime": self.generation_time,
                "track_id": job.track_id,
                "meta": dict(job.meta),
                "nsfw_content_detected": job.nsfw,
            }
        return {"status": "failed", "id": job_id, "message": job.message, "track_id": job.track_id}

    def fetch_result_url(self, job: FakeJob) -> str:
        """The ``fetch_result`` URL of a job (POST it with ``{"key": ...}``)."""
        return self.base_url + _FETCH_RESULT_PATHS[job.family].format(id=job.id)

    # ---------------------------------------------------------------- API server

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        kind, endpoint, family, path_id = self._route(request.path)
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers=CIMultiDict(request.headers),
            raw=raw,
            body=self._parse(raw)[0],
            kind=kind,
            endpoint=endpoint,
        )
        self.requests.append(rec)

        hangs = self._hangs.get(kind)
        if hangs:
            rec.hung = hangs.popleft()
            await self._hold(rec.hung)

        scripts = self._scripts.get(kind)
        if scripts:
            entry = scripts[0]
            entry.times -= 1
            if entry.times <= 0:
                scripts.popleft()
            rec.scripted = True
            if kind == "submit" and endpoint is not None:
                rec.errors = self._would_refuse(request, raw, endpoint)
            return self._send(rec, entry.status, entry.data, entry.content_type, entry.headers)

        try:
            if kind == "submit" and endpoint is not None:
                status, body = self._submit(rec, request, raw, endpoint)
            elif kind == "fetch" and family is not None:
                status, body = self._fetch(rec, request, raw, family, path_id)
            elif kind == "models":
                status, body = self._model_list(rec, request, raw)
            else:
                status, body = 404, {"status": "error", "message": "Not found"}
        except _Answer as answer:
            rec.errors = answer.errors
            status, body = answer.status, answer.body

        transforms = self._transforms.get(kind)
        if transforms:
            entry_t = transforms[0]
            entry_t.times -= 1
            if entry_t.times <= 0:
                transforms.popleft()
            body = entry_t.fn(body)
            rec.transformed = True
        if self._lost_answers.get(kind):
            self._lost_answers[kind] -= 1
            rec.answer_lost = True
            return self._send(rec, self._lost_status,
                              b"<html><body>504 Gateway Time-out</body></html>", "text/html")
        return self._send(rec, status, _json_bytes(body), "application/json")

    def _send(
        self,
        rec: RecordedRequest,
        status: int,
        data: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        rec.response = RecordedResponse(status, _shown(data), content_type, data)
        return web.Response(
            status=status, body=data, headers={**(headers or {}), "Content-Type": content_type}
        )

    def _model_list(
        self, rec: RecordedRequest, request: web.Request, raw: bytes
    ) -> tuple[int, Any]:
        """The documented model lists: v4 answers a JSON list of model records; enterprise
        answers ``{"status": "success", "message": [records]}``."""
        family = MODEL_LIST_PATHS[request.path]
        body = self._read_json_object(request, raw)
        self._check_key(body, family)
        extra = [name for name in body if name != "key"]
        if extra:
            errors = {name: [f"The {_label(name)} field is not accepted."] for name in extra}
            raise _Answer(200, {"status": "error", "message": errors}, errors)
        rec.accepted = True
        if family == "standard":
            return 200, [
                {
                    "model_id": model_id,
                    "status": "model_ready",
                    "created_at": "2024-01-01T00:00:00.000000Z",
                    "instance_prompt": None,
                    "api_calls": str(1000 + n),
                    "model_category": category,
                    "model_name": model_id.replace("-", " ").title(),
                    "is_nsfw": "0",
                    "featured": "no",
                    "description": "",
                    "screenshots": "",
                }
                for n, (model_id, category) in enumerate(
                    [(m, "stable_diffusion_xl") for m in self.models]
                    + [(m, "lora") for m in self.loras]
                )
            ]
        return 200, {
            "status": "success",
            "message": [
                {"model_id": model_id, "model_category": category,
                 "loaded_at": "2024-01-01 00:00:00"}
                for model_id, category in [(m, "stable_diffusion") for m in
                                           self.enterprise_models]
                + [(m, "lora") for m in self.loras]
            ],
        }

    @staticmethod
    def _route(path: str) -> tuple[str, str | None, str | None, str | None]:
        """(kind, submit endpoint, fetch family, id from the path) for an API path."""
        if path in _SUBMIT_PATHS:
            return "submit", _SUBMIT_PATHS[path], None, None
        if path in MODEL_LIST_PATHS:
            return "models", None, None, None
        for pattern, family, has_id in _FETCH_ROUTES:
            match = pattern.fullmatch(path)
            if match:
                return "fetch", None, family, match.group("id") if has_id else None
        return "other", None, None, None

    @staticmethod
    def _parse(raw: bytes) -> tuple[Any, str | None]:
        """(parsed JSON, None) or (None, problem)."""
        if not raw.strip():
            return None, "The request body is empty; a JSON object is required."
        try:
            return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant), None
        except (UnicodeDecodeError, ValueError):
            return None, "The request body is not valid JSON."

    def _read_json_object(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        """Method, Content-Type and JSON-object checks shared by every API route."""
        if request.method != "POST":
            message = f"The {request.method} method is not supported for this route; use POST."
            raise _Answer(405, {"status": "error", "message": message}, {"method": [message]})
        if request.content_type != "application/json":
            message = "The request body must be JSON (Content-Type: application/json)."
            raise _Answer(400, {"status": "error", "message": message}, {"body": [message]})
        body, problem = self._parse(raw)
        if problem is None and not isinstance(body, dict):
            problem = "The request body must be a JSON object."
        if problem is not None:
            raise _Answer(400, {"status": "error", "message": problem}, {"body": [problem]})
        assert isinstance(body, dict)
        return body

    def _check_key(self, body: dict[str, Any], key_family: str) -> None:
        expected = self._key_of_family(key_family)
        key = body.get("key")
        if key == expected and isinstance(key, str):
            return
        if "key" not in body or key in (None, ""):
            detail = "The key field is required."
        elif key in (self.api_key, self.enterprise_key):
            wanted = "the standard API key" if key_family == "standard" else "the enterprise key"
            detail = f"Invalid API key: this route takes {wanted}."
        else:
            detail = "Invalid API key."
        raise _Answer(401, {"status": "error", "message": "Invalid API key"}, {"key": [detail]})

    def _would_refuse(
        self, request: web.Request, raw: bytes, endpoint: str
    ) -> dict[str, list[str]]:
        """What the fake's own rules would say about a submit (used for scripted answers)."""
        try:
            body = self._read_json_object(request, raw)
            self._check_key(body, ENDPOINTS[endpoint].key_family)
        except _Answer as answer:
            return answer.errors
        return check_body(endpoint, body)

    def _submit(
        self, rec: RecordedRequest, request: web.Request, raw: bytes, endpoint: str
    ) -> tuple[int, dict[str, Any]]:
        spec = ENDPOINTS[endpoint]
        body = self._read_json_object(request, raw)
        self._check_key(body, spec.key_family)
        self._auto_complete_due()
        if self.queue_limit is not None and len(self.processing_jobs) >= self.queue_limit:
            message = f"Rate limit exceeded. Maximum {self.queue_limit} queued requests allowed."
            raise _Answer(
                429,
                {"status": "error", "message": message, "retry_after": self.retry_after},
                {},
            )
        errors = check_body(endpoint, body)
        if errors:
            raise _Answer(200, {"status": "error", "message": errors}, errors)

        job = self._new_job(endpoint, body)
        rec.accepted = True
        rec.job_id = job.id
        if self.mode == "processing":
            return 200, self.processing_body(job)
        if job.fail_with is not None:
            self._finish(job)
            return 200, {"status": "error", "message": job.message}
        self._finish(job)
        self._spawn(self._deliver_webhooks(job))
        return 200, self.success_body(job)

    def _new_job(self, endpoint: str, body: dict[str, Any]) -> FakeJob:
        job_id = self._next_id
        self._next_id += 1
        seed = _as_int(body.get("seed"))
        if seed is None:
            seed = self._rng.randrange(0, 2**32)
        samples = _as_int(body.get("samples", 1)) or 1
        name = uuid.UUID(int=self._rng.getrandbits(128), version=4)
        files = [f"{name}-{n}.png" for n in range(samples)]
        meta = {k: v for k, v in body.items() if k != "key"}
        meta["seed"] = seed
        job = FakeJob(
            id=job_id,
            endpoint=endpoint,
            body=dict(body),
            track_id=body.get("track_id"),
            webhook=body.get("webhook"),
            seed=seed,
            samples=samples,
            future_links=[f"{self.cdn_url}/generations/{f}" for f in files],
            meta=meta,
            fail_with=self._fail_next.popleft() if self._fail_next else None,
        )
        self.jobs[str(job_id)] = job
        self.peak_processing = max(self.peak_processing, len(self.processing_jobs))
        for n, file_name in enumerate(files):
            self._outputs[file_name] = (str(job_id), n)
        return job

    def _fetch(
        self,
        rec: RecordedRequest,
        request: web.Request,
        raw: bytes,
        family: str,
        path_id: str | None,
    ) -> tuple[int, dict[str, Any]]:
        body = self._read_json_object(request, raw)
        self._check_key(
            body, "standard" if family in ("community", "image_editing") else "enterprise"
        )
        errors: dict[str, list[str]] = {}
        for name in body:
            if name not in ("key", "request_id"):
                errors[name] = [f"The {_label(name)} field is not accepted by this fetch route."]
        request_id: Any = path_id
        if path_id is None:
            if body.get("request_id") in (None, ""):
                errors["request_id"] = ["The request id field is required."]
            else:
                request_id = body["request_id"]
                if _as_int(request_id) is None:
                    errors["request_id"] = ["The request id field must be an integer."]
        elif "request_id" in body and str(body["request_id"]) != path_id:
            errors["request_id"] = ["The request id field does not match the id in the URL."]
        if errors:
            raise _Answer(200, {"status": "error", "message": errors}, errors)
        rec.accepted = True
        self._auto_complete_due()
        job_id = _as_int(request_id)
        job = self.jobs.get(str(job_id)) if job_id is not None else None
        if job is None or job.family != family:
            return 200, {"status": "error", "message": "Request not found"}
        rec.endpoint = job.endpoint
        rec.job_id = job.id
        return 200, self.fetch_body(job)

    # ---------------------------------------------------------------- CDN server

    async def _handle_cdn(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers=CIMultiDict(request.headers),
            raw=raw,
            body=None,
            kind="cdn",
        )
        self.cdn_requests.append(rec)
        if self._hangs["cdn"]:
            rec.hung = self._hangs["cdn"].popleft()
            await self._hold(rec.hung)
        status, data, content_type = self._cdn_answer(request)
        rec.response = RecordedResponse(status, None, content_type, data)
        return web.Response(status=status, body=data, headers={"Content-Type": content_type})

    def _cdn_answer(self, request: web.Request) -> tuple[int, bytes, str]:
        not_found = (404, b"404 Not Found", "text/plain")
        if request.method not in ("GET", "HEAD"):
            return 405, b"405 Method Not Allowed", "text/plain"
        path = request.path
        if path == "/not-an-image":
            page = b"<!DOCTYPE html><html><body><h1>Not an image</h1></body></html>"
            return 200, page, "text/html"
        if path.startswith("/files/"):
            stored = self._cdn_files.get(path.removeprefix("/files/"))
            return (200, *stored) if stored else not_found
        if path.startswith("/generations/"):
            file_name = path.removeprefix("/generations/")
            where = self._outputs.get(file_name)
            if where is None:
                return not_found
            job = self.jobs.get(where[0])
            if job is None or job.state != "success":
                return not_found
            if self._cdn_404s.get(file_name, 0) < self.output_404s:
                self._cdn_404s[file_name] = self._cdn_404s.get(file_name, 0) + 1
                return not_found
            if file_name not in self._png_cache:
                self._png_cache[file_name] = (
                    _noise_png(file_name, self.image_size) if self.image_noise
                    else png_for(file_name, self.image_size))
            return 200, self._png_cache[file_name], "image/png"
        return not_found

    # ---------------------------------------------------------------- jobs and webhooks

    def _finish(self, job: FakeJob, *, fail: str | None = None, nsfw: bool | None = None) -> None:
        if job.state != "processing":
            raise ValueError(f"job {job.id} is already {job.state}")
        message = fail if fail is not None else job.fail_with
        job.finished = time.monotonic()
        if message is not None:
            job.state = "failed"
            job.message = message
        else:
            job.state = "success"
            job.outputs = list(job.future_links)
            job.nsfw = self.nsfw if nsfw is None else nsfw

    async def _deliver_webhooks(self, job: FakeJob) -> list[dict[str, Any]]:
        if not (self.send_webhooks and job.webhook and self._session is not None):
            return []
        body = self.webhook_body(job)
        data = _json_bytes(body)
        sent: list[dict[str, Any]] = []
        for _ in range(self.webhook_repeats):
            status: int | None = None
            error: str | None = None
            try:
                async with self._session.post(
                    job.webhook,
                    data=data,
                    headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=self.webhook_timeout),
                ) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                error = repr(exc)
            self.webhook_results.append(status)
            self.webhook_deliveries.append(WebhookDelivery(job.webhook, dict(body), status, error))
            job.webhook_bodies.append(dict(body))
            sent.append(dict(body))
        return sent

    def _auto_complete_due(self) -> None:
        """Complete processing jobs older than auto_complete_after (webhooks in background)."""
        if self.auto_complete_after is None:
            return
        now = time.monotonic()
        for job in self.processing_jobs:
            if now - job.created >= self.auto_complete_after:
                self._finish(job)
                self._spawn(self._deliver_webhooks(job))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self._auto_complete_due()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hold(self, seconds: float) -> None:
        assert self._closing is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    def _check_kind(self, kind: str) -> None:
        if kind not in ("submit", "fetch", "models"):
            raise ValueError(f'kind must be "submit", "fetch" or "models", not {kind!r}')


def default_models(prefix: str, count: int = 500) -> list[str]:
    """``count`` model ids: a few well-known ones, then ``{prefix}community-model-NNN``."""
    known = ["pony_realism", "anything-v5", "realistic-vision-v51", "dreamshaper-8",
             "juggernaut-xl-v9", "ponyxl-v6"]
    names = [prefix + name for name in known]
    names += [f"{prefix}community-model-{n:03d}" for n in range(count - len(names))]
    return names


def example_body(
    endpoint: str, fake: FakeModelsLab | None = None, **overrides: Any
) -> dict[str, Any]:
    """A minimal valid submit body for ``endpoint`` (handy in tests); ``overrides`` replace or
    add fields. With ``fake``, the right key is filled in."""
    body: dict[str, Any] = {
        "key": fake.key_for(endpoint) if fake is not None else "",
        "prompt": "a red fox in the snow",
        "init_image": "https://example.com/in.png",
    }
    if endpoint == "super_resolution":
        body.pop("prompt")
        body["model_id"] = "RealESRGAN_x4plus"
    elif endpoint != "realtime":
        body["model_id"] = "pony_realism"
    if endpoint in ("inpaint", "enterprise_inpaint"):
        body["mask_image"] = "https://example.com/mask.png"
    body.update(overrides)
    return body


def _noise_png(seed: str, size: int) -> bytes:
    """A ``size`` x ``size`` PNG of random pixels (deterministic per ``seed``): about three
    bytes a pixel, since noise does not compress."""
    import io

    from PIL import Image

    data = random.Random(seed).randbytes(size * size * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (size, size), data).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
