"""Parsing every shape ModelsLab answers with, from submits, fetches and webhooks.

Always branch on the body's ``status``, not the HTTP code: a failed generation usually comes
back as HTTP 200 with ``status: "error"``. The API is loose about types (ids as integers or
strings, ``output`` as a list or ``""``, ``proxy_links`` in three shapes, ``messege`` for
``message``), so every field is read defensively and normalised here, once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ApiStatus(StrEnum):
    SUCCESS = "success"
    PROCESSING = "processing"
    ERROR = "error"
    FAILED = "failed"


class MalformedResponse(ValueError):
    """The answer is not one of the documented shapes (not JSON, no status, an HTML page...)."""


class ApiResponse(BaseModel):
    """One answer from ModelsLab, normalised."""

    model_config = ConfigDict(frozen=True)

    http_status: int
    status: ApiStatus
    request_id: str | None = None
    output: tuple[str, ...] = ()
    future_links: tuple[str, ...] = ()
    proxy_links: tuple[str, ...] = ()
    eta: float | None = None
    fetch_result: str | None = None
    message: str | None = None
    field_errors: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    nsfw: bool = False
    seed: int | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    generation_time: float | None = None
    track_id: str | None = None
    retry_after: float | None = None

    @property
    def ended(self) -> bool:
        return self.status is not ApiStatus.PROCESSING

    @property
    def succeeded(self) -> bool:
        return self.status is ApiStatus.SUCCESS

    @property
    def readable_error(self) -> str:
        """The API's own words for a failure, fit to show a member."""
        return self.message or f"ModelsLab answered '{self.status}' without saying why"


def parse_response(http_status: int, body: bytes | str | Mapping[str, Any]) -> ApiResponse:
    """Normalise one answer; MalformedResponse when it is not a documented shape."""
    data = _load(body)
    raw_status = data.get("status")
    if isinstance(raw_status, str) and raw_status.strip().lower() in ApiStatus._value2member_map_:
        status = ApiStatus(raw_status.strip().lower())
    elif raw_status is None and http_status == 429:
        status = ApiStatus.ERROR
    else:
        raise MalformedResponse(f"unknown status {str(raw_status)[:40]!r}")

    message, field_errors = _message(data.get("message", data.get("messege")))
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    output = _urls(data.get("output"))
    return ApiResponse(
        http_status=http_status,
        status=status,
        request_id=_request_id(data.get("id")),
        output=output,
        future_links=_urls(data.get("future_links")),
        proxy_links=_urls(data.get("proxy_links")),
        eta=_number(data.get("eta")),
        fetch_result=_text(data.get("fetch_result")),
        message=message,
        field_errors=field_errors,
        nsfw=_nsfw(data.get("nsfw_content_detected")),
        seed=_integer(meta.get("seed")),
        meta=meta,
        generation_time=_number(data.get("generationTime")),
        track_id=_text(data.get("track_id")),
        retry_after=_number(data.get("retry_after")),
    )


def _load(body: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(body, Mapping):
        return body
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(body)
    except ValueError:
        raise MalformedResponse(f"not JSON: {body[:80]!r}") from None
    if not isinstance(data, dict):
        raise MalformedResponse(f"not a JSON object: {type(data).__name__}")
    return data


def _message(raw: Any) -> tuple[str | None, dict[str, tuple[str, ...]]]:
    """A string message, or an object of field errors such as {"init_image": ["..."]}."""
    if raw is None or raw == "":
        return None, {}
    if isinstance(raw, str):
        return raw.strip(), {}
    if isinstance(raw, Mapping):
        errors: dict[str, tuple[str, ...]] = {}
        for field, value in raw.items():
            items = value if isinstance(value, list) else [value]
            errors[str(field)] = tuple(str(item) for item in items if item not in (None, ""))
        text = "; ".join(
            f"{field}: {' '.join(msgs)}" if msgs else str(field) for field, msgs in errors.items()
        )
        return text or None, errors
    if isinstance(raw, list):
        return "; ".join(str(item) for item in raw) or None, {}
    return str(raw), {}


def _urls(raw: Any) -> tuple[str, ...]:
    """URLs from a list, a single string, "" or an object of URLs (proxy_links' shapes)."""
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif isinstance(raw, list):
        items = raw
    elif isinstance(raw, Mapping):
        items = []
        for value in raw.values():
            items.extend(value if isinstance(value, list) else [value])
    else:
        return ()
    return tuple(
        item.strip() for item in items
        if isinstance(item, str) and item.strip().lower().startswith(("https://", "http://"))
    )


def _request_id(raw: Any) -> str | None:
    if isinstance(raw, bool) or raw is None:
        return None
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    if isinstance(raw, str) and raw.strip():
        return raw.strip()
    return None


def _number(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _integer(raw: Any) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        return int(raw.strip())
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    return None


def _text(raw: Any) -> str | None:
    if isinstance(raw, str) and raw:
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    return None


def _nsfw(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        return raw.strip().lower() in ("true", "yes", "1")
    if isinstance(raw, int | float):
        return raw != 0
    if isinstance(raw, list):
        return any(_nsfw(item) for item in raw)
    return False
