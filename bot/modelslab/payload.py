"""From a member's options to the exact JSON body of one endpoint.

Every rule comes from the catalogue. A value outside it is refused here, in words a Discord
member understands, so nothing out of range is ever sent. The API key and the webhook URL are
not part of the body built here: the client adds them when it sends, so the body can be stored
with the job without a secret in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from bot.errors import OptionError
from bot.modelslab.catalogue import (
    ID_OPTIONS,
    MODEL_ID_PATTERN,
    Endpoint,
    FieldRule,
    ValueKind,
    where_taken,
)


class GenerationOptions(BaseModel):
    """What a member asked for. ``None`` means "not given": the endpoint's default applies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str | None = None
    negative_prompt: str | None = None
    strength: float | None = None
    model: str | None = None
    width: int | None = None
    height: int | None = None
    samples: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None
    seed: int | None = None
    clip_skip: int | None = None
    karras: bool | None = None
    algorithm: str | None = None
    enhance_prompt: bool | None = None
    lora: str | None = None
    lora_strength: float | None = None
    vae: str | None = None
    style: str | None = None
    # super resolution
    scale: int | None = None
    upscaler: str | None = None
    face_enhance: bool | None = None

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


@dataclass(frozen=True, slots=True)
class SourceImage:
    """An image ModelsLab will download, with the size the bot measured when it checked it."""

    url: str
    width: int
    height: int


def build_payload(
    endpoint: Endpoint,
    options: GenerationOptions,
    *,
    image: SourceImage,
    default_model: str,
    safety_checker: bool = True,
    safety_checker_type: str | None = None,
    mask: SourceImage | None = None,
    track_id: str | None = None,
) -> dict[str, Any]:
    """The JSON body for ``endpoint`` (without ``key`` and ``webhook``), or OptionError."""
    problems: list[str] = []
    given = options.given()
    values: dict[str, Any] = {}

    for option, value in given.items():
        rule = endpoint.rule(option)
        if rule is None or not rule.member_option:
            problems.append(_not_here(option, endpoint))
            continue
        checked = _check(rule, value, endpoint, problems)
        if checked is not None:
            values[option] = checked

    for option, rule in endpoint.rules.items():
        if rule.required and rule.member_option and option not in given and option != "model":
            problems.append(f"the {endpoint.title} endpoint needs a {rule.label}")

    if "lora_strength" in values and "lora" not in given:
        problems.append("lora_strength needs a lora: name the LoRA it applies to")

    if endpoint.takes("mask") and mask is None:
        problems.append(f"the {endpoint.title} endpoint needs a mask image")

    if endpoint.takes("model") and "model" not in values and "model" not in given:
        values["model"] = _check(endpoint.rules["model"], default_model, endpoint, problems)

    if endpoint.takes("width") and ("width" not in given or "height" not in given):
        size = fit_size(endpoint, image.width, image.height,
                        width=values.get("width"), height=values.get("height"))
        values.setdefault("width", size[0])
        values.setdefault("height", size[1])

    if problems:
        raise OptionError(problems)

    values["image"] = image.url
    if mask is not None:
        values["mask"] = mask.url
    if endpoint.takes("safety_checker"):
        values["safety_checker"] = safety_checker
    if safety_checker_type is not None and endpoint.takes("safety_checker_type"):
        values["safety_checker_type"] = _check(endpoint.rules["safety_checker_type"],
                                               safety_checker_type, endpoint, [])

    body: dict[str, Any] = {}
    for option, rule in endpoint.rules.items():
        value = values.get(option, rule.default)
        if value is None and not rule.send_default:
            continue
        body[rule.wire] = _to_wire(endpoint, rule, value)
    for wire, value in endpoint.fixed.items():
        body[wire] = endpoint.wire_flag(value) if isinstance(value, bool) else value
    if track_id is not None:
        body["track_id"] = track_id
    return body


def fit_size(
    endpoint: Endpoint,
    image_width: int,
    image_height: int,
    *,
    width: int | None = None,
    height: int | None = None,
) -> tuple[int, int]:
    """Width and height that keep the image's aspect ratio inside the endpoint's size range.

    A side the member gave is kept and the other follows the aspect ratio. With neither, the
    image's own size is kept when it is in range, else scaled down (or up) until it fits. Both
    sides end as multiples of the endpoint's step; an aspect ratio wider than the range allows
    is clamped.
    """
    w_rule, h_rule = endpoint.rules["width"], endpoint.rules["height"]
    aspect = image_width / image_height if image_width > 0 and image_height > 0 else 1.0
    if width is not None and height is None:
        return width, _snap(h_rule, width / aspect)
    if height is not None and width is None:
        return _snap(w_rule, height * aspect), height

    w, h = float(max(image_width, 1)), float(max(image_height, 1))
    shrink = min(1.0, w_rule.maximum / w, h_rule.maximum / h)
    w, h = w * shrink, h * shrink
    grow = max(1.0, w_rule.minimum / w, h_rule.minimum / h)
    w, h = w * grow, h * grow
    return _snap(w_rule, w), _snap(h_rule, h)


def _not_here(option: str, endpoint: Endpoint) -> str:
    """Why an option is refused on an endpoint, naming the endpoints where it does apply."""
    text = f"{option} can't be set on the {endpoint.title} endpoint"
    elsewhere = [e.title for e in where_taken(option)]
    if elsewhere:
        shown = elsewhere[0] if len(elsewhere) == 1 else \
            ", ".join(elsewhere[:-1]) + " and " + elsewhere[-1]
        text += f"; it applies on the {shown} endpoint{'s' if len(elsewhere) > 1 else ''}"
    return text


def _snap(rule: FieldRule, value: float) -> int:
    step = rule.multiple_of or 1
    low, high = int(rule.minimum), int(rule.maximum)
    snapped = math.floor(value / step + 0.5) * step  # half up: 500 -> 504, not 496
    return max(low, min(high, snapped))


def _check(rule: FieldRule, value: Any, endpoint: Endpoint, problems: list[str]) -> Any:
    """The value in canonical form, or None after recording why it is refused."""
    where = f"on the {endpoint.title} endpoint"

    def refuse(text: str) -> None:
        problems.append(text)

    if rule.kind is ValueKind.TEXT:
        text = str(value).strip()
        if not text:
            if rule.required:
                refuse(f"the {rule.label} can't be empty")
            return None
        if rule.max_length is not None and len(text) > rule.max_length:
            refuse(f"the {rule.label} is {len(text)} characters long; "
                   f"it can be at most {rule.max_length}")
            return None
        if rule.option in ID_OPTIONS and not MODEL_ID_PATTERN.match(text):
            refuse(f"{text!r} is not a {rule.label} id (letters, digits, '.', '_' and '-' "
                   f"only)")
            return None
        return text

    if rule.kind is ValueKind.CHOICE:
        allowed = rule.allowed or ()
        match = next((a for a in allowed if str(a).lower() == str(value).strip().lower()), None)
        if match is None:
            refuse(f"{value} is not a {rule.label} the {endpoint.title} endpoint accepts; "
                   f"choose one of {', '.join(map(str, allowed))}")
        return match

    if rule.kind is ValueKind.FLAG:
        if not isinstance(value, bool):
            refuse(f"{rule.label} must be true or false")
            return None
        return value

    if rule.kind in (ValueKind.INT, ValueKind.FLOAT):
        if isinstance(value, bool) or not isinstance(value, int | float):
            refuse(f"{rule.label} must be a number")
            return None
        if not math.isfinite(value):
            refuse(f"{rule.label} must be a finite number")
            return None
        if rule.kind is ValueKind.INT:
            if float(value) != int(value):
                refuse(f"{rule.label} must be a whole number")
                return None
            value = int(value)
        else:
            value = float(value)
        ok = True
        if rule.allowed is not None:
            ok = value in rule.allowed
        else:
            if rule.minimum is not None and value < rule.minimum:
                ok = False
            if rule.maximum is not None and value > rule.maximum:
                ok = False
            if rule.multiple_of and value % rule.multiple_of:
                ok = False
        if not ok:
            refuse(f"{rule.label} must be {rule.describe_rule()} {where}")
            return None
        return value

    return value  # URL fields are set by the bot, never by a member


def _to_wire(endpoint: Endpoint, rule: FieldRule, value: Any) -> Any:
    if value is None:
        return None
    if rule.kind is ValueKind.FLAG:
        return endpoint.wire_flag(bool(value))
    if rule.kind is ValueKind.INT:
        return int(value)
    if rule.kind is ValueKind.FLOAT:
        return float(value)
    return value
