"""The ModelsLab endpoints the bot speaks, declared once.

Everything that needs an endpoint rule (slash-command choices, validation, payload building,
fetching, the docs) reads it from here. Rules marked "inferred" are not stated by ModelsLab's
documentation; they are the bot's conservative reading of it, kept here so there is one place
to correct them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class Operation(StrEnum):
    IMG2IMG = "img2img"
    INPAINT = "inpaint"
    UPSCALE = "upscale"


class KeyKind(StrEnum):
    """Which API key an endpoint takes."""

    STANDARD = "standard"
    ENTERPRISE = "enterprise"


class FlagWire(StrEnum):
    """How an endpoint spells a boolean on the wire."""

    YES_NO = "yes_no"  # the strings "yes" / "no"
    JSON_BOOL = "json_bool"  # JSON true / false


class ValueKind(StrEnum):
    INT = "int"
    FLOAT = "float"
    TEXT = "text"
    URL = "url"
    FLAG = "flag"
    CHOICE = "choice"


@dataclass(frozen=True, slots=True)
class FieldRule:
    """One body field of one endpoint.

    ``option`` is the bot's name for the value (the slash-command option, e.g. ``steps``);
    ``wire`` is the JSON field ModelsLab reads (e.g. ``num_inference_steps``).
    ``default`` is what the bot sends when the member gives nothing; ``None`` with
    ``send_default`` False means the field is left out and ModelsLab's own default applies.
    """

    option: str
    wire: str
    kind: ValueKind
    label: str
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    multiple_of: int | None = None
    allowed: tuple[Any, ...] | None = None
    default: Any = None
    send_default: bool = True
    max_length: int | None = None
    member_option: bool = True  # False: set by the bot itself, never by a member

    def describe_rule(self) -> str:
        """The rule in words, for refusals and docs: 'a multiple of 8 from 1024 to 2048'."""
        if self.allowed is not None:
            return _words(self.allowed)
        if self.minimum is not None and self.maximum is not None:
            low, high = _num(self.minimum), _num(self.maximum)
            if self.multiple_of:
                return f"a multiple of {self.multiple_of} from {low} to {high}"
            if self.kind is ValueKind.INT:
                return f"a whole number from {low} to {high}"
            return f"between {low} and {high}"
        if self.max_length is not None:
            return f"at most {self.max_length} characters"
        return "set"


@dataclass(frozen=True, slots=True)
class FetchRoute:
    """Where a queued result is fetched when ModelsLab's ``fetch_result`` cannot be used."""

    path: str  # may contain "{id}"
    id_in_body: bool  # True: the id travels as ``request_id`` in the body

    def build(self, request_id: str) -> tuple[str, dict[str, str]]:
        if self.id_in_body:
            return self.path, {"request_id": request_id}
        return self.path.format(id=request_id), {}


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # the choice name members and settings use: v6, enterprise, ...
    title: str  # how messages name it: "the enterprise Pony endpoint"
    operation: Operation
    path: str
    key: KeyKind
    flag_wire: FlagWire
    fetch: FetchRoute
    rules: Mapping[str, FieldRule] = field(default_factory=dict)  # by option name
    # Fields the bot always sends with a fixed value (wire name -> value, booleans in
    # bot terms; the flag wire type is applied when the payload is built).
    fixed: Mapping[str, Any] = field(default_factory=dict)
    # The value of the command's `endpoint` option that picks this endpoint (unique per
    # operation); empty: the same as ``name``.
    choice: str = ""

    @property
    def choice_name(self) -> str:
        return self.choice or self.name

    def rule(self, option: str) -> FieldRule | None:
        return self.rules.get(option)

    def takes(self, option: str) -> bool:
        return option in self.rules

    @property
    def schedulers(self) -> tuple[str, ...]:
        rule = self.rules.get("scheduler")
        return tuple(rule.allowed or ()) if rule else ()

    def wire_flag(self, value: bool) -> bool | str:
        if self.flag_wire is FlagWire.JSON_BOOL:
            return bool(value)
        return "yes" if value else "no"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _words(values: tuple[Any, ...]) -> str:
    shown = [_num(v) if isinstance(v, int | float) else str(v) for v in values]
    if len(shown) == 1:
        return shown[0]
    return ", ".join(shown[:-1]) + " or " + shown[-1]


# --- shared vocabulary -------------------------------------------------------------------

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

# The enterprise Pony endpoint documents only these 15.
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

SAFETY_CHECKER_TYPES: tuple[str, ...] = ("sensitive_content_text", "blur", "pixelate", "black")

# `algorithm_type` of the v6 pages: the generic page documents "none" and "dpmsolver+++", the
# Pony page's example sends "sde-dpmsolver++". The pages disagree; all three are accepted.
ALGORITHMS: tuple[str, ...] = ("none", "dpmsolver+++", "sde-dpmsolver++")

# `enhance_style` of the realtime endpoint. The documentation's list is long; these are the
# names it shows (correct them here and every check, choice and doc follows).
STYLES: tuple[str, ...] = (
    "enhance", "anime", "photographic", "digital-art", "comic-book", "fantasy-art",
    "analog-film", "neon-punk", "isometric", "low-poly", "origami", "line-art",
    "craft-clay", "cinematic", "3d-model", "pixel-art", "texture", "futuristic", "realism",
    "watercolor", "photorealistic",
)

# Super resolution's `model_id`: the documented upscalers.
UPSCALERS: tuple[str, ...] = ("RealESRGAN_x4plus", "RealESRGAN_x4plus_anime_6B",
                              "RealESRGAN_x2plus", "realesr-general-x4v3", "ultra_resolution")
UPSCALE_SCALES: tuple[int, ...] = (2, 3, 4)

DEFAULT_SCHEDULER = "DPMSolverMultistepScheduler"
PROMPT_MAX_LENGTH = 2000  # inferred: far beyond what the text encoder reads; Discord allows 6000
MODEL_ID_MAX_LENGTH = 100  # inferred
# What a ModelsLab model id looks like (inferred from the documented ids: pony_realism, ...).
MODEL_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
SEED_MAX = 2**32 - 1  # inferred: the samplers take 32-bit seeds


def _prompt() -> FieldRule:
    return FieldRule("prompt", "prompt", ValueKind.TEXT, "prompt", required=True,
                     max_length=PROMPT_MAX_LENGTH)


def _negative_prompt() -> FieldRule:
    return FieldRule("negative_prompt", "negative_prompt", ValueKind.TEXT, "negative prompt",
                     max_length=PROMPT_MAX_LENGTH, default=None, send_default=False)


def _init_image() -> FieldRule:
    return FieldRule("image", "init_image", ValueKind.URL, "image", required=True,
                     member_option=False)


def _model() -> FieldRule:
    # The default comes from the settings (DEFAULT_MODEL_ID), not from the catalogue.
    return FieldRule("model", "model_id", ValueKind.TEXT, "model", required=True,
                     max_length=MODEL_ID_MAX_LENGTH)


def _size(option: str, low: int, high: int, default: int) -> FieldRule:
    return FieldRule(option, option, ValueKind.INT, option, minimum=low, maximum=high,
                     multiple_of=8, default=default)


def _samples() -> FieldRule:
    return FieldRule("samples", "samples", ValueKind.INT, "samples", minimum=1, maximum=4,
                     default=1)


def _guidance() -> FieldRule:
    return FieldRule("guidance_scale", "guidance_scale", ValueKind.FLOAT, "guidance_scale",
                     minimum=1, maximum=20, default=7.5)


def _strength() -> FieldRule:
    return FieldRule("strength", "strength", ValueKind.FLOAT, "strength", minimum=0, maximum=1,
                     default=0.7)


def _seed() -> FieldRule:
    # null asks ModelsLab for a random seed; the seed actually used comes back in `meta`.
    return FieldRule("seed", "seed", ValueKind.INT, "seed", minimum=0, maximum=SEED_MAX,
                     default=None)


def _scheduler(allowed: tuple[str, ...]) -> FieldRule:
    return FieldRule("scheduler", "scheduler", ValueKind.CHOICE, "scheduler", allowed=allowed,
                     default=DEFAULT_SCHEDULER)


def _karras() -> FieldRule:
    return FieldRule("karras", "use_karras_sigmas", ValueKind.FLAG, "karras", default=True)


def _clip_skip(high: int, default: int) -> FieldRule:
    return FieldRule("clip_skip", "clip_skip", ValueKind.INT, "clip_skip", minimum=1,
                     maximum=high, default=default)


def _safety_checker() -> FieldRule:
    # Decided by the bot from the channel (always on outside NSFW channels).
    return FieldRule("safety_checker", "safety_checker", ValueKind.FLAG, "safety checker",
                     default=True, member_option=False)


def _enhance_prompt() -> FieldRule:
    # Left out, the v6 pages' default ("yes") lets ModelsLab rewrite the prompt: always sent.
    return FieldRule("enhance_prompt", "enhance_prompt", ValueKind.FLAG, "enhance_prompt",
                     default=False)


def _algorithm() -> FieldRule:
    return FieldRule("algorithm", "algorithm_type", ValueKind.CHOICE, "algorithm",
                     allowed=ALGORITHMS, default=None, send_default=False)


def _lora_rules() -> tuple[FieldRule, ...]:
    # In the enterprise example bodies, not their attribute lists; left out unless given.
    # The 0.1-1 strength range is the one ModelsLab's v6 pages give (inferred to hold here).
    return (
        FieldRule("lora", "lora_model", ValueKind.TEXT, "lora", default=None,
                  send_default=False, max_length=MODEL_ID_MAX_LENGTH),
        FieldRule("lora_strength", "lora_strength", ValueKind.FLOAT, "lora_strength",
                  minimum=0.1, maximum=1, default=None, send_default=False),
        FieldRule("vae", "vae", ValueKind.TEXT, "vae", default=None, send_default=False,
                  max_length=MODEL_ID_MAX_LENGTH),
    )


# Options whose text is an id ModelsLab looks up (same shape as a model id).
ID_OPTIONS: tuple[str, ...] = ("model", "lora", "vae")


def _rules(*rules: FieldRule) -> Mapping[str, FieldRule]:
    return MappingProxyType({r.option: r for r in rules})


def _enterprise_rules(schedulers: tuple[str, ...], *,
                      mask: bool = False) -> Mapping[str, FieldRule]:
    return _rules(
        _prompt(), _negative_prompt(), _init_image(), *((_mask(),) if mask else ()), _model(),
        # 256 as the smallest size is inferred; the documented rule is "max 1024, default 512".
        _size("width", 256, 1024, 512), _size("height", 256, 1024, 512),
        _samples(),
        FieldRule("steps", "num_inference_steps", ValueKind.INT, "steps",
                  allowed=(21, 31, 41), default=21),
        _guidance(), _strength(), _seed(), _scheduler(schedulers), _karras(),
        _clip_skip(8, 1),
        _safety_checker(),
        FieldRule("safety_checker_type", "safety_checker_type", ValueKind.CHOICE,
                  "safety checker type", allowed=SAFETY_CHECKER_TYPES,
                  default="sensitive_content_text", member_option=False),
        _enhance_prompt(), *_lora_rules(),
    )


def _mask() -> FieldRule:
    return FieldRule("mask", "mask_image", ValueKind.URL, "mask", required=True,
                     member_option=False)


_COMMUNITY_FETCH = FetchRoute("/api/v6/images/fetch/{id}", id_in_body=False)
# The enterprise Pony endpoint documents no fetch route; it is inferred to share this one.
_ENTERPRISE_FETCH = FetchRoute("/api/v1/enterprise/fetch", id_in_body=True)
_REALTIME_FETCH = FetchRoute("/api/v1/enterprise/realtime/fetch/{id}", id_in_body=False)


def _enterprise_endpoint(name: str, title: str, path: str, schedulers: tuple[str, ...], *,
                         operation: Operation = Operation.IMG2IMG,
                         choice: str = "") -> Endpoint:
    """The enterprise endpoints differ only in path, allowed schedulers and the mask."""
    return Endpoint(
        name=name,
        title=title,
        operation=operation,
        path=path,
        key=KeyKind.ENTERPRISE,
        flag_wire=FlagWire.YES_NO,
        fetch=_ENTERPRISE_FETCH,
        rules=_enterprise_rules(schedulers, mask=operation is Operation.INPAINT),
        fixed=MappingProxyType({"tomesd": True}),  # the documented default
        choice=choice,
    )

V6 = Endpoint(
    name="v6",
    title="v6",
    operation=Operation.IMG2IMG,
    path="/api/v6/images/img2img",
    key=KeyKind.STANDARD,
    flag_wire=FlagWire.YES_NO,
    fetch=_COMMUNITY_FETCH,
    rules=_rules(
        _prompt(), _negative_prompt(), _init_image(), _model(),
        _size("width", 1024, 2048, 1024), _size("height", 1024, 2048, 1024),
        _samples(),
        # The default of 30 is the bot's choice inside the documented 20-50.
        FieldRule("steps", "num_inference_steps", ValueKind.INT, "steps", minimum=20,
                  maximum=50, default=30),
        _guidance(), _strength(), _seed(), _scheduler(SCHEDULERS), _karras(),
        _clip_skip(4, 2),
        _safety_checker(),
        _algorithm(), _enhance_prompt(),
    ),
)

INPAINT = Endpoint(
    name="inpaint",
    title="inpainting",
    operation=Operation.INPAINT,
    path="/api/v6/images/inpaint",
    key=KeyKind.STANDARD,
    flag_wire=FlagWire.YES_NO,
    fetch=_COMMUNITY_FETCH,
    rules=_rules(
        _prompt(), _negative_prompt(), _init_image(), _mask(), _model(),
        _size("width", 512, 1024, 512), _size("height", 512, 1024, 512),
        _samples(),
        # Inpainting names the field `steps`; the 1-50 range is inferred, the default documented.
        FieldRule("steps", "steps", ValueKind.INT, "steps", minimum=1, maximum=50, default=21),
        _guidance(), _strength(), _seed(), _scheduler(SCHEDULERS), _karras(),
        _clip_skip(4, 2),
        _safety_checker(),
        _algorithm(), _enhance_prompt(),
    ),
    choice="v6",
)

ENTERPRISE = _enterprise_endpoint("enterprise", "enterprise", "/api/v1/enterprise/img2img",
                                  SCHEDULERS)
ENTERPRISE_PONY = _enterprise_endpoint("enterprise_pony", "enterprise Pony",
                                       "/api/v1/enterprise/pony/img2img", PONY_SCHEDULERS)
# The documentation's example body: enterprise img2img's fields plus `mask_image`.
ENTERPRISE_INPAINT = _enterprise_endpoint(
    "enterprise_inpaint", "enterprise inpainting", "/api/v1/enterprise/inpaint", SCHEDULERS,
    operation=Operation.INPAINT, choice="enterprise")

REALTIME = Endpoint(
    name="realtime",
    title="realtime",
    operation=Operation.IMG2IMG,
    path="/api/v1/enterprise/realtime/img2img",
    key=KeyKind.ENTERPRISE,
    flag_wire=FlagWire.JSON_BOOL,
    fetch=_REALTIME_FETCH,
    # No model, steps, clip_skip, scheduler or guidance_scale on this endpoint (the realtime
    # page documents none of them). The 256 minimum is inferred.
    rules=_rules(
        _prompt(), _negative_prompt(), _init_image(),
        _size("width", 256, 1024, 512), _size("height", 256, 1024, 512),
        _samples(), _strength(), _seed(),
        _safety_checker(),
        _enhance_prompt(),
        FieldRule("style", "enhance_style", ValueKind.CHOICE, "style", allowed=STYLES,
                  default=None, send_default=False),
    ),
    # Outputs as URLs (not base64), queued like the others.
    fixed=MappingProxyType({"base64": False, "instant_response": False}),
)

UPSCALE = Endpoint(
    name="upscale",
    title="super resolution",
    operation=Operation.UPSCALE,
    path="/api/v6/image_editing/super_resolution",
    key=KeyKind.STANDARD,
    flag_wire=FlagWire.JSON_BOOL,
    # Documented: fetch through `fetch_result`. This route, for when there is none, is inferred.
    fetch=FetchRoute("/api/v6/image_editing/fetch/{id}", id_in_body=False),
    rules=_rules(
        _init_image(),
        FieldRule("scale", "scale", ValueKind.INT, "scale", allowed=UPSCALE_SCALES, default=4),
        FieldRule("upscaler", "model_id", ValueKind.CHOICE, "upscaler", allowed=UPSCALERS,
                  default="RealESRGAN_x4plus"),
        FieldRule("face_enhance", "face_enhance", ValueKind.FLAG, "face_enhance",
                  default=False),
    ),
)

ENDPOINTS: Mapping[str, Endpoint] = MappingProxyType(
    {e.name: e for e in (V6, ENTERPRISE, ENTERPRISE_PONY, REALTIME, INPAINT,
                         ENTERPRISE_INPAINT, UPSCALE)}
)


def choices_for(operation: Operation) -> tuple[str, ...]:
    """The values of a command's `endpoint` option, in the order members see them."""
    return tuple(e.choice_name for e in ENDPOINTS.values() if e.operation is operation)


def by_choice(operation: Operation, choice: str) -> Endpoint | None:
    return next((e for e in ENDPOINTS.values()
                 if e.operation is operation and e.choice_name == choice), None)


def where_taken(option: str) -> tuple[Endpoint, ...]:
    """The endpoints where a member may set ``option``."""
    return tuple(e for e in ENDPOINTS.values()
                 if (rule := e.rule(option)) is not None and rule.member_option)


IMG2IMG_ENDPOINTS: tuple[str, ...] = choices_for(Operation.IMG2IMG)
INPAINT_ENDPOINTS: tuple[str, ...] = choices_for(Operation.INPAINT)
DEFAULT_IMG2IMG_ENDPOINT = V6.name
DEFAULT_INPAINT_ENDPOINT = INPAINT.choice_name


def endpoint(name: str) -> Endpoint:
    try:
        return ENDPOINTS[name]
    except KeyError:
        raise KeyError(f"unknown endpoint {name!r}") from None
