"""The fake ModelsLab server enforces the documented rules and speaks every answer shape.

These tests talk to the fake with raw aiohttp, never through bot code, and carry their own
copies of the expected rules (so a slip in the fake's rule table shows up here).
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from tests.fakes.images import jpeg_bytes, png_bytes
from tests.fakes.modelslab import FakeModelsLab

STD = "test-key"
ENT = "test-enterprise-key"
DEL = object()  # marks a field to remove from a valid body

PATHS = {
    "v6": "/api/v6/images/img2img",
    "inpaint": "/api/v6/images/inpaint",
    "enterprise": "/api/v1/enterprise/img2img",
    "enterprise_pony": "/api/v1/enterprise/pony/img2img",
    "realtime": "/api/v1/enterprise/realtime/img2img",
    "enterprise_inpaint": "/api/v1/enterprise/inpaint",
    "super_resolution": "/api/v6/image_editing/super_resolution",
}
KEYS = {"v6": STD, "inpaint": STD, "enterprise": ENT, "enterprise_pony": ENT, "realtime": ENT,
        "enterprise_inpaint": ENT, "super_resolution": STD}
IMG = "https://cdn.discordapp.com/attachments/1/2/in.png?ex=1&is=2&hm=3"
MASK = "https://cdn.discordapp.com/attachments/1/2/mask.png"

# One valid body per endpoint, using every field the endpoint takes.
VALID: dict[str, dict[str, Any]] = {
    "v6": {
        "key": STD,
        "model_id": "pony_realism",
        "prompt": "a red fox in the snow",
        "negative_prompt": "blurry",
        "init_image": IMG,
        "width": 1024,
        "height": 1536,
        "samples": 2,
        "num_inference_steps": 30,
        "guidance_scale": 7.5,
        "strength": 0.7,
        "scheduler": "DPMSolverMultistepScheduler",
        "use_karras_sigmas": "yes",
        "algorithm_type": "sde-dpmsolver++",
        "clip_skip": 2,
        "safety_checker": "no",
        "seed": 42,
        "webhook": "http://127.0.0.1:9/hooks/secret-1",
        "track_id": "track-v6",
    },
    "inpaint": {
        "key": STD,
        "model_id": "pony_realism",
        "prompt": "a red fox in the snow",
        "negative_prompt": "",
        "init_image": IMG,
        "mask_image": MASK,
        "width": 512,
        "height": 1024,
        "samples": 1,
        "steps": 21,
        "guidance_scale": 7,
        "strength": 1,
        "scheduler": "UniPCMultistepScheduler",
        "use_karras_sigmas": "no",
        "algorithm_type": "dpmsolver++",
        "clip_skip": 4,
        "safety_checker": "yes",
        "seed": None,
        "webhook": None,
        "track_id": None,
    },
    "enterprise": {
        "key": ENT,
        "model_id": "my-model",
        "prompt": "a castle",
        "negative_prompt": "ugly",
        "init_image": IMG,
        "width": 512,
        "height": 768,
        "samples": 4,
        "num_inference_steps": 31,
        "guidance_scale": 20,
        "strength": 0,
        "scheduler": "KarrasVeScheduler",
        "use_karras_sigmas": "yes",
        "safety_checker": "yes",
        "safety_checker_type": "blur",
        "enhance_prompt": "no",
        "tomesd": "yes",
        "lora_model": "more_details",
        "lora_strength": 0.6,
        "vae": None,
        "clip_skip": 8,
        "seed": 7,
        "webhook": "http://127.0.0.1:9/hook",
        "track_id": "track-ent",
    },
    "enterprise_pony": {
        "key": ENT,
        "model_id": "pony-diffusion",
        "prompt": "a pony",
        "init_image": IMG,
        "width": 1024,
        "height": 256,
        "samples": 1,
        "num_inference_steps": 41,
        "guidance_scale": 1,
        "strength": 0.5,
        "scheduler": "EulerAncestralDiscreteScheduler",
        "use_karras_sigmas": "no",
        "safety_checker": "no",
        "safety_checker_type": "black",
        "enhance_prompt": "yes",
        "tomesd": "no",
        "lora_model": None,
        "lora_strength": None,
        "vae": "sdxl-vae",
        "clip_skip": 1,
    },
    "realtime": {
        "key": ENT,
        "prompt": "a watercolor lighthouse",
        "negative_prompt": "text",
        "init_image": IMG,
        "width": 512,
        "height": 512,
        "samples": 3,
        "strength": 0.45,
        "seed": 123,
        "safety_checker": False,
        "base64": False,
        "instant_response": True,
        "enhance_prompt": True,
        "enhance_style": "watercolor",
        "webhook": None,
        "track_id": "rt-1",
    },
    "enterprise_inpaint": {
        "key": ENT,
        "model_id": "my-model",
        "prompt": "a wooden door",
        "negative_prompt": "ugly",
        "init_image": IMG,
        "mask_image": MASK,
        "width": 512,
        "height": 512,
        "samples": 1,
        "num_inference_steps": 21,
        "safety_checker": "yes",
        "safety_checker_type": "pixelate",
        "enhance_prompt": "no",
        "guidance_scale": 7.5,
        "strength": 0.7,
        "scheduler": "DDPMScheduler",
        "seed": None,
        "lora_model": None,
        "tomesd": "yes",
        "use_karras_sigmas": "yes",
        "vae": None,
        "lora_strength": None,
        "clip_skip": 2,
        "webhook": None,
        "track_id": "ent-inpaint-1",
    },
    "super_resolution": {
        "key": STD,
        "init_image": IMG,
        "scale": 4,
        "model_id": "RealESRGAN_x4plus_anime_6B",
        "face_enhance": False,
        "webhook": "http://127.0.0.1:9/hook",
        "track_id": "sr-1",
    },
}

PONY_15 = [
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
]
NOT_PONY = ["DDIMInverseScheduler", "KarrasVeScheduler", "ScoreSdeVeScheduler"]
ALL_18 = PONY_15 + NOT_PONY


def body_for(endpoint: str, **changes: Any) -> dict[str, Any]:
    body = dict(VALID[endpoint])
    for name, value in changes.items():
        if value is DEL:
            body.pop(name, None)
        else:
            body[name] = value
    return body


@dataclass
class Reply:
    status: int
    body: Any
    content_type: str | None
    raw: bytes


async def call(
    http: aiohttp.ClientSession,
    url: str,
    body: Any = None,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> Reply:
    kwargs: dict[str, Any] = {"headers": headers}
    if data is not None:
        kwargs["data"] = data
    elif body is not None:
        kwargs["json"] = body
    async with http.request(method, url, **kwargs) as resp:
        raw = await resp.read()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw
        return Reply(resp.status, parsed, resp.headers.get("Content-Type"), raw)


def assert_json(reply: Reply) -> None:
    assert reply.content_type == "application/json", reply


@pytest.fixture
async def fake():
    async with FakeModelsLab(api_key=STD, enterprise_key=ENT) as f:
        yield f


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass
class Receiver:
    """A tiny webhook receiver on 127.0.0.1."""

    url: str
    received: list[tuple[dict[str, str], bytes]]
    answer_status: list[int]

    def bodies(self) -> list[Any]:
        return [json.loads(raw) for _, raw in self.received]


@pytest.fixture
async def receiver():
    received: list[tuple[dict[str, str], bytes]] = []
    answer_status = [200]

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=answer_status[0], text="ok")

    app = web.Application()
    app.router.add_post("/hook/{secret}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield Receiver(f"http://127.0.0.1:{port}/hook/s3cret", received, answer_status)
    await runner.cleanup()


async def submit(fake, http, endpoint: str, **changes: Any) -> Reply:
    return await call(http, fake.base_url + PATHS[endpoint], body_for(endpoint, **changes))


# --------------------------------------------------------------------------- accepted bodies


@pytest.mark.parametrize("endpoint", list(PATHS))
async def test_a_valid_body_is_queued_with_the_processing_shape(fake, http, endpoint):
    reply = await submit(fake, http, endpoint)
    assert reply.status == 200
    assert_json(reply)
    b = reply.body
    assert b["status"] == "processing"
    assert set(b) == {
        "status",
        "tip",
        "eta",
        "messege",
        "fetch_result",
        "id",
        "output",
        "future_links",
        "meta",
        "track_id",
    }
    assert isinstance(b["id"], int) and b["id"] == 1001
    assert isinstance(b["eta"], float) and b["eta"] == 1.0
    assert b["output"] == []
    samples = VALID[endpoint].get("samples", 1)
    assert len(b["future_links"]) == samples
    assert all(u.startswith(fake.cdn_url + "/generations/") for u in b["future_links"])
    assert all(u.endswith(f"-{n}.png") for n, u in enumerate(b["future_links"]))
    assert b["fetch_result"].startswith(fake.base_url + "/api/")
    assert b["track_id"] == VALID[endpoint].get("track_id")
    assert "key" not in b["meta"]
    assert isinstance(b["meta"]["seed"], int)
    if VALID[endpoint].get("seed") is not None:
        assert b["meta"]["seed"] == VALID[endpoint]["seed"]

    [rec] = fake.requests
    assert (rec.kind, rec.endpoint, rec.accepted, rec.errors) == ("submit", endpoint, True, {})
    assert rec.body == VALID[endpoint] and json.loads(rec.raw) == VALID[endpoint]
    assert rec.response.status == 200 and rec.response.body == b
    assert fake.submits == [rec] and fake.rejections == []
    job = fake.jobs["1001"]
    assert (job.id, job.endpoint, job.state, job.samples) == (1001, endpoint, "processing", samples)
    assert job.outputs == [] and job.future_links == b["future_links"]


async def test_ids_are_increasing_integers(fake, http):
    ids = [(await submit(fake, http, ep)).body["id"] for ep in PATHS]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(isinstance(i, int) for i in ids)
    assert list(fake.jobs) == [str(i) for i in ids]


ACCEPTED_VARIANTS = [
    # numeric strings are accepted (the real API takes both); the raw body is kept
    ("v6", {"width": "1024", "height": "2048", "samples": "4", "guidance_scale": "7.5"}),
    ("v6", {"num_inference_steps": "20", "strength": "1", "clip_skip": "1", "seed": "99"}),
    ("enterprise", {"num_inference_steps": "21", "width": "1024"}),
    ("enterprise", {"width": 1024.0}),
    # boundaries, inclusive
    ("v6", {"width": 2048, "height": 1024, "num_inference_steps": 50, "strength": 0}),
    ("v6", {"guidance_scale": 1, "clip_skip": 4, "samples": 1}),
    ("v6", {"guidance_scale": 20.0, "strength": 1.0}),
    ("inpaint", {"width": 1024, "height": 512, "steps": 1}),
    ("inpaint", {"steps": 50, "clip_skip": 1}),
    ("enterprise", {"width": 256, "height": 1024, "num_inference_steps": 21, "clip_skip": 1}),
    ("enterprise", {"num_inference_steps": 41, "safety_checker_type": "sensitive_content_text"}),
    ("enterprise", {"safety_checker_type": "pixelate", "lora_strength": "0.8"}),
    ("enterprise_pony", {"width": 256, "height": 1024}),
    ("realtime", {"width": 1024, "height": 256, "samples": 1, "strength": 1}),
    ("realtime", {"safety_checker": True, "base64": True, "instant_response": False}),
    # optional fields may be left out, nullable ones may be null
    ("v6", {f: DEL for f in VALID["v6"] if f not in ("key", "model_id", "prompt", "init_image")}),
    ("realtime", {f: DEL for f in VALID["realtime"] if f not in ("key", "prompt", "init_image")}),
    ("v6", {"seed": None, "webhook": None, "track_id": None}),
    ("enterprise", {"lora_model": None, "lora_strength": None, "vae": None}),
    ("v6", {"init_image": "http://127.0.0.1:8080/in.jpg"}),
]
ACCEPTED_VARIANTS += [("v6", {"scheduler": s}) for s in ALL_18]
ACCEPTED_VARIANTS += [("inpaint", {"scheduler": s}) for s in ALL_18]
ACCEPTED_VARIANTS += [("enterprise", {"scheduler": s}) for s in ALL_18]
ACCEPTED_VARIANTS += [("enterprise_pony", {"scheduler": s}) for s in PONY_15]


@pytest.mark.parametrize(("endpoint", "changes"), ACCEPTED_VARIANTS)
async def test_variants_within_the_rules_are_accepted(fake, http, endpoint, changes):
    reply = await submit(fake, http, endpoint, **changes)
    assert reply.status == 200 and reply.body["status"] == "processing", reply.body
    assert fake.submits[-1].body == body_for(endpoint, **changes)


async def test_raw_body_shows_whether_numbers_were_sent_as_strings(fake, http):
    await submit(fake, http, "v6", width="1024", guidance_scale=7.5)
    rec = fake.submits[0]
    assert rec.body["width"] == "1024" and isinstance(rec.body["guidance_scale"], float)
    assert b'"width": "1024"' in rec.raw


async def test_seed_null_gets_a_random_integer_seed_in_meta(fake, http):
    reply = await submit(fake, http, "v6", seed=None)
    assert isinstance(reply.body["meta"]["seed"], int)
    reply2 = await submit(fake, http, "v6", seed="77")
    assert reply2.body["meta"]["seed"] == 77


# --------------------------------------------------------------------------- refused bodies

REFUSED = [
    # v6 sizes: 1024-2048, multiple of 8
    ("v6", {"width": 1016}, "width"),
    ("v6", {"width": 2056}, "width"),
    ("v6", {"width": 1030}, "width"),
    ("v6", {"height": 512}, "height"),
    ("v6", {"height": "abc"}, "height"),
    ("v6", {"width": True}, "width"),
    ("v6", {"width": 1024.5}, "width"),
    ("v6", {"samples": 0}, "samples"),
    ("v6", {"samples": 5}, "samples"),
    ("v6", {"samples": "two"}, "samples"),
    ("v6", {"num_inference_steps": 19}, "num_inference_steps"),
    ("v6", {"num_inference_steps": 51}, "num_inference_steps"),
    ("v6", {"guidance_scale": 0.5}, "guidance_scale"),
    ("v6", {"guidance_scale": 20.5}, "guidance_scale"),
    ("v6", {"guidance_scale": "high"}, "guidance_scale"),
    ("v6", {"strength": -0.1}, "strength"),
    ("v6", {"strength": 1.01}, "strength"),
    ("v6", {"strength": None}, "strength"),
    ("v6", {"scheduler": "Euler"}, "scheduler"),
    ("v6", {"scheduler": "dpmsolvermultistepscheduler"}, "scheduler"),
    ("v6", {"use_karras_sigmas": True}, "use_karras_sigmas"),
    ("v6", {"use_karras_sigmas": "true"}, "use_karras_sigmas"),
    ("v6", {"safety_checker": False}, "safety_checker"),
    ("v6", {"safety_checker": "Yes"}, "safety_checker"),
    ("v6", {"algorithm_type": 3}, "algorithm_type"),
    ("v6", {"clip_skip": 0}, "clip_skip"),
    ("v6", {"clip_skip": 5}, "clip_skip"),
    ("v6", {"seed": "abc"}, "seed"),
    ("v6", {"seed": 1.5}, "seed"),
    ("v6", {"seed": True}, "seed"),
    ("v6", {"webhook": 5}, "webhook"),
    ("v6", {"webhook": "not a url"}, "webhook"),
    ("v6", {"track_id": 5}, "track_id"),
    ("v6", {"init_image": "ftp://example.com/in.png"}, "init_image"),
    ("v6", {"init_image": "in.png"}, "init_image"),
    ("v6", {"init_image": "data:image/png;base64,AAAA"}, "init_image"),
    ("v6", {"init_image": DEL}, "init_image"),
    ("v6", {"init_image": None}, "init_image"),
    ("v6", {"model_id": ""}, "model_id"),
    ("v6", {"model_id": DEL}, "model_id"),
    ("v6", {"model_id": 12}, "model_id"),
    ("v6", {"prompt": ""}, "prompt"),
    ("v6", {"prompt": "   "}, "prompt"),
    ("v6", {"prompt": DEL}, "prompt"),
    ("v6", {"negative_prompt": ["a"]}, "negative_prompt"),
    ("v6", {"steps": 30}, "steps"),
    ("v6", {"mask_image": MASK}, "mask_image"),
    ("v6", {"safety_checker_type": "blur"}, "safety_checker_type"),
    ("v6", {"tomesd": "yes"}, "tomesd"),
    ("v6", {"base64": False}, "base64"),
    ("v6", {"prompt_strength": 0.5}, "prompt_strength"),
    # inpaint: 512-1024, `steps` not `num_inference_steps`, mask required
    ("inpaint", {"num_inference_steps": 30}, "num_inference_steps"),
    ("inpaint", {"width": 1032}, "width"),
    ("inpaint", {"height": 504}, "height"),
    ("inpaint", {"width": 1020}, "width"),
    ("inpaint", {"steps": 0}, "steps"),
    ("inpaint", {"steps": 51}, "steps"),
    ("inpaint", {"mask_image": DEL}, "mask_image"),
    ("inpaint", {"mask_image": "mask.png"}, "mask_image"),
    ("inpaint", {"clip_skip": 5}, "clip_skip"),
    ("inpaint", {"use_karras_sigmas": False}, "use_karras_sigmas"),
    # enterprise: 256-1024, steps only 21/31/41, clip_skip 1-8
    ("enterprise", {"num_inference_steps": 30}, "num_inference_steps"),
    ("enterprise", {"num_inference_steps": 20}, "num_inference_steps"),
    ("enterprise", {"num_inference_steps": 50}, "num_inference_steps"),
    ("enterprise", {"num_inference_steps": "31.5"}, "num_inference_steps"),
    ("enterprise", {"width": 1032}, "width"),
    ("enterprise", {"width": 248}, "width"),
    ("enterprise", {"height": 300}, "height"),
    ("enterprise", {"clip_skip": 9}, "clip_skip"),
    ("enterprise", {"clip_skip": 0}, "clip_skip"),
    ("enterprise", {"safety_checker_type": "none"}, "safety_checker_type"),
    ("enterprise", {"enhance_prompt": True}, "enhance_prompt"),
    ("enterprise", {"tomesd": "maybe"}, "tomesd"),
    ("enterprise", {"lora_strength": "strong"}, "lora_strength"),
    ("enterprise", {"lora_model": 3}, "lora_model"),
    ("enterprise", {"vae": False}, "vae"),
    ("enterprise", {"samples": 5}, "samples"),
    ("enterprise", {"algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
    ("enterprise", {"steps": 31}, "steps"),
    ("enterprise", {"model_id": DEL}, "model_id"),
    ("enterprise", {"enhance_style": "anime"}, "enhance_style"),
    ("enterprise", {"scheduler": "Euler a"}, "scheduler"),
    # enterprise pony: only 15 schedulers
    *[("enterprise_pony", {"scheduler": s}, "scheduler") for s in NOT_PONY],
    ("enterprise_pony", {"num_inference_steps": 25}, "num_inference_steps"),
    ("enterprise_pony", {"clip_skip": 9}, "clip_skip"),
    # realtime: no model/steps/clip_skip/scheduler/karras; JSON booleans
    ("realtime", {"model_id": "pony_realism"}, "model_id"),
    ("realtime", {"num_inference_steps": 31}, "num_inference_steps"),
    ("realtime", {"steps": 21}, "steps"),
    ("realtime", {"clip_skip": 2}, "clip_skip"),
    ("realtime", {"scheduler": "DDIMScheduler"}, "scheduler"),
    ("realtime", {"use_karras_sigmas": "yes"}, "use_karras_sigmas"),
    ("realtime", {"algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
    ("realtime", {"safety_checker": "no"}, "safety_checker"),
    ("realtime", {"base64": "no"}, "base64"),
    ("realtime", {"instant_response": 1}, "instant_response"),
    ("realtime", {"enhance_prompt": "yes"}, "enhance_prompt"),
    ("realtime", {"enhance_style": 4}, "enhance_style"),
    ("realtime", {"width": 1032}, "width"),
    ("realtime", {"height": 2048}, "height"),
    ("realtime", {"width": 250}, "width"),
    ("realtime", {"samples": 0}, "samples"),
    ("realtime", {"strength": 2}, "strength"),
    ("realtime", {"guidance_scale": 0}, "guidance_scale"),
    ("realtime", {"init_image": DEL}, "init_image"),
    ("realtime", {"prompt": DEL}, "prompt"),
    ("realtime", {"mask_image": MASK}, "mask_image"),
]


@pytest.mark.parametrize(("endpoint", "changes", "field"), REFUSED)
async def test_a_body_breaking_a_rule_is_refused_naming_the_field(
    fake, http, endpoint, changes, field
):
    reply = await submit(fake, http, endpoint, **changes)
    assert reply.status == 200
    assert_json(reply)
    assert set(reply.body) == {"status", "message"}
    assert reply.body["status"] == "error"
    message = reply.body["message"]
    assert set(message) == {field}, message
    assert all(isinstance(s, str) and s for s in message[field])
    [rec] = fake.requests
    assert rec.accepted is False and rec.errors == message and rec.endpoint == endpoint
    assert fake.rejections == [rec] and fake.submits == [] and fake.jobs == {}


async def test_every_bad_field_is_listed_at_once(fake, http):
    reply = await submit(
        fake, http, "realtime", model_id="x", width=9999, safety_checker="yes", prompt=DEL
    )
    assert reply.status == 200 and reply.body["status"] == "error"
    assert set(reply.body["message"]) == {"model_id", "width", "safety_checker", "prompt"}
    # width is out of range and not a multiple of 8: both sentences
    assert len(reply.body["message"]["width"]) == 2


KEY_CASES = [
    ("v6", ENT),
    ("inpaint", ENT),
    ("enterprise", STD),
    ("enterprise_pony", STD),
    ("realtime", STD),
    ("v6", "wrong"),
    ("enterprise", "wrong"),
    ("v6", ""),
    ("realtime", None),
    ("v6", 12345),
    ("v6", DEL),
    ("realtime", DEL),
]


@pytest.mark.parametrize(("endpoint", "key"), KEY_CASES)
async def test_wrong_or_missing_key_is_401(fake, http, endpoint, key):
    reply = await submit(fake, http, endpoint, key=key)
    assert reply.status == 401
    assert_json(reply)
    assert reply.body == {"status": "error", "message": "Invalid API key"}
    [rec] = fake.requests
    assert rec.accepted is False and "key" in rec.errors
    assert fake.rejections == [rec] and fake.jobs == {}


BAD_BODIES = [
    (b"not json", {"Content-Type": "application/json"}),
    (b'{"key": "test-key",', {"Content-Type": "application/json"}),
    (b"", {"Content-Type": "application/json"}),
    (b"[1, 2]", {"Content-Type": "application/json"}),
    (b'"text"', {"Content-Type": "application/json"}),
    (b'{"key": "test-key", "seed": NaN}', {"Content-Type": "application/json"}),
    (b"key=test-key&prompt=x", {"Content-Type": "application/x-www-form-urlencoded"}),
    (json.dumps(VALID["v6"]).encode(), {"Content-Type": "text/plain"}),
]


@pytest.mark.parametrize(("data", "headers"), BAD_BODIES)
async def test_a_non_json_body_is_400(fake, http, data, headers):
    reply = await call(http, fake.base_url + PATHS["v6"], data=data, headers=headers)
    assert reply.status == 400
    assert_json(reply)
    assert reply.body["status"] == "error" and isinstance(reply.body["message"], str)
    [rec] = fake.requests
    assert rec.raw == data and rec.accepted is False and fake.rejections == [rec]


async def test_other_methods_and_paths(fake, http):
    reply = await call(http, fake.base_url + PATHS["v6"], method="GET")
    assert reply.status == 405 and reply.body["status"] == "error"
    assert_json(reply)
    reply = await call(http, fake.base_url + "/api/v6/realtime/img2img", {"key": STD})
    assert reply.status == 404
    assert_json(reply)
    assert [r.kind for r in fake.requests] == ["submit", "other"]
    assert fake.requests[1].endpoint is None


# --------------------------------------------------------------------------- fetch

FETCH_ROUTES = {
    "v6": "/api/v6/images/fetch/{id}",
    "inpaint": "/api/v6/images/fetch/{id}",
    "enterprise": "/api/v1/enterprise/fetch/{id}",
    "enterprise_pony": "/api/v1/enterprise/fetch/{id}",
    "realtime": "/api/v1/enterprise/realtime/fetch/{id}",
    "enterprise_inpaint": "/api/v1/enterprise/fetch/{id}",
    "super_resolution": "/api/v6/image_editing/fetch/{id}",
}


@pytest.mark.parametrize("endpoint", list(PATHS))
async def test_fetch_processing_then_success(fake, http, endpoint):
    queued = (await submit(fake, http, endpoint)).body
    job_id = queued["id"]
    assert queued["fetch_result"] == fake.base_url + FETCH_ROUTES[endpoint].format(id=job_id)
    key = {"key": KEYS[endpoint]}

    pending = await call(http, queued["fetch_result"], key)
    assert_json(pending)
    assert pending.body == {
        "status": "processing",
        "id": job_id,
        "output": "",
        "eta": 1.0,
        "messege": "Try to fetch request after given estimated time",
    }
    rec = fake.fetches[-1]
    assert (rec.kind, rec.endpoint, rec.accepted, rec.job_id) == ("fetch", endpoint, True, job_id)

    fake.send_webhooks = False
    assert await fake.complete(job_id) == []
    done = await call(http, queued["fetch_result"], key)
    assert_json(done)
    b = done.body
    assert b["status"] == "success" and b["id"] == job_id
    assert b["output"] == queued["future_links"] == b["proxy_links"]
    assert b["meta"]["seed"] == queued["meta"]["seed"]
    assert b["nsfw_content_detected"] is False
    assert isinstance(b["generationTime"], float)
    assert {"webhook_status", "tip", "track_id"} <= set(b)
    assert fake.jobs[str(job_id)].state == "success"


async def test_fetch_by_body_routes(fake, http):
    v6 = (await submit(fake, http, "v6")).body["id"]
    ent = (await submit(fake, http, "enterprise")).body["id"]
    pony = (await submit(fake, http, "enterprise_pony")).body["id"]
    b = fake.base_url
    r = await call(http, b + "/api/v6/images/fetch", {"key": STD, "request_id": v6})
    assert r.body["status"] == "processing" and r.body["id"] == v6
    r = await call(http, b + "/api/v6/images/fetch", {"key": STD, "request_id": str(v6)})
    assert r.body["status"] == "processing"
    for job_id in (ent, pony):
        r = await call(http, b + "/api/v1/enterprise/fetch", {"key": ENT, "request_id": job_id})
        assert r.body["status"] == "processing" and r.body["id"] == job_id
    r = await call(http, b + "/api/v1/enterprise/fetch", {"key": ENT})
    assert r.status == 200 and set(r.body["message"]) == {"request_id"}
    r = await call(http, f"{b}/api/v6/images/fetch/{v6}", {"key": STD, "extra": 1})
    assert r.body["status"] == "error" and set(r.body["message"]) == {"extra"}


async def test_fetch_enforces_family_route_and_key(fake, http):
    v6 = (await submit(fake, http, "v6")).body["id"]
    ent = (await submit(fake, http, "enterprise")).body["id"]
    rt = (await submit(fake, http, "realtime")).body["id"]
    b = fake.base_url
    not_found = {"status": "error", "message": "Request not found"}
    cases = [
        # (url, body, status, answer)
        (f"{b}/api/v1/enterprise/fetch", {"key": ENT, "request_id": v6}, 200, not_found),
        (f"{b}/api/v1/enterprise/realtime/fetch/{v6}", {"key": ENT}, 200, not_found),
        (f"{b}/api/v6/images/fetch/{ent}", {"key": STD}, 200, not_found),
        (f"{b}/api/v1/enterprise/realtime/fetch/{ent}", {"key": ENT}, 200, not_found),
        (f"{b}/api/v1/enterprise/fetch/{rt}", {"key": ENT}, 200, not_found),
        (f"{b}/api/v6/images/fetch/{rt}", {"key": STD}, 200, not_found),
        (f"{b}/api/v6/images/fetch/999999", {"key": STD}, 200, not_found),
        (f"{b}/api/v6/images/fetch/abc", {"key": STD}, 200, not_found),
        (f"{b}/api/v6/images/fetch/{v6}", {"key": ENT}, 401, None),
        (f"{b}/api/v6/images/fetch/{v6}", {}, 401, None),
        (f"{b}/api/v1/enterprise/fetch/{ent}", {"key": STD}, 401, None),
        (f"{b}/api/v1/enterprise/realtime/fetch/{rt}", {"key": STD}, 401, None),
    ]
    for url, body, status, answer in cases:
        reply = await call(http, url, body)
        assert_json(reply)
        assert reply.status == status, url
        expected = answer or {"status": "error", "message": "Invalid API key"}
        assert reply.body == expected, url


async def test_fetch_of_a_failed_job(fake, http):
    job_id = (await submit(fake, http, "inpaint")).body["id"]
    await fake.complete(job_id, fail="CUDA out of memory")
    reply = await call(http, f"{fake.base_url}/api/v6/images/fetch/{job_id}", {"key": STD})
    assert reply.body == {"status": "failed", "id": job_id, "message": "CUDA out of memory"}
    job = fake.jobs[str(job_id)]
    assert job.state == "failed" and job.outputs == [] and job.finished is not None
    with pytest.raises(ValueError):
        await fake.complete(job_id)
    with pytest.raises(KeyError):
        await fake.complete(424242)


# --------------------------------------------------------------------------- outputs and CDN


async def test_success_mode_answers_at_once_and_cdn_serves_pngs(fake, http):
    fake.mode = "success"
    reply = await submit(fake, http, "v6")
    b = reply.body
    assert_json(reply)
    assert b["status"] == "success" and isinstance(b["id"], int)
    assert set(b) == {
        "status",
        "generationTime",
        "id",
        "output",
        "proxy_links",
        "nsfw_content_detected",
        "meta",
        "webhook_status",
        "tip",
        "track_id",
    }
    assert b["track_id"] == "track-v6" and b["meta"]["seed"] == 42
    assert b["meta"]["prompt"] == VALID["v6"]["prompt"] and "key" not in b["meta"]
    assert len(b["output"]) == 2 and b["output"] == b["proxy_links"]
    assert fake.cdn_url != fake.base_url
    images = []
    for url in b["output"]:
        assert url.startswith(fake.cdn_url + "/generations/")
        async with http.get(url) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
            images.append(await resp.read())
    for data in images:
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG" and im.size == (64, 64)
    assert images[0] != images[1]  # deterministic per output, different per output
    async with http.get(b["output"][0]) as resp:
        assert await resp.read() == images[0]
    assert [r.kind for r in fake.cdn_requests] == ["cdn"] * 3
    assert fake.cdn_key_leaks() == []
    with pytest.raises(ValueError):
        fake.mode = "queued"


async def test_future_links_404_until_done_then_output_404s(fake, http):
    fake.output_404s = 2
    queued = (await submit(fake, http, "realtime", samples=1)).body
    [url] = queued["future_links"]
    async with http.get(url) as resp:
        assert resp.status == 404  # not done yet
    await fake.complete(queued["id"])
    statuses = []
    for _ in range(4):
        async with http.get(url) as resp:
            statuses.append(resp.status)
    assert statuses == [404, 404, 200, 200]
    async with http.get(fake.cdn_url + "/generations/nope-0.png") as resp:
        assert resp.status == 404


async def test_cdn_non_image_and_put_files(fake, http):
    async with http.get(fake.cdn_url + "/not-an-image") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/html"
        assert b"<html" in await resp.read()
    jpeg = jpeg_bytes(32, 16)
    url = fake.cdn_put("in.jpg", jpeg, "image/jpeg")
    async with http.get(url) as resp:
        assert resp.headers["Content-Type"] == "image/jpeg" and await resp.read() == jpeg
    with Image.open(io.BytesIO(png_bytes(8, 4))) as im:
        assert im.size == (8, 4)


async def test_cdn_key_leaks_are_detected(fake, http):
    async with http.get(fake.cdn_url + "/not-an-image", headers={"X-Key": STD}):
        pass
    async with http.get(fake.cdn_url + f"/not-an-image?key={ENT}"):
        pass
    assert len(fake.cdn_key_leaks()) == 2


async def test_nsfw_flag(fake, http):
    fake.mode = "success"
    fake.nsfw = True
    assert (await submit(fake, http, "v6")).body["nsfw_content_detected"] is True
    fake.mode = "processing"
    job_id = (await submit(fake, http, "v6")).body["id"]
    await fake.complete(job_id, nsfw=False)
    reply = await call(http, f"{fake.base_url}/api/v6/images/fetch/{job_id}", {"key": STD})
    assert reply.body["nsfw_content_detected"] is False


# --------------------------------------------------------------------------- webhooks


async def test_success_webhook(fake, http, receiver):
    queued = (await submit(fake, http, "v6", webhook=receiver.url)).body
    sent = await fake.complete(queued["id"])
    assert receiver.bodies() == sent
    [body] = sent
    assert body == {
        "status": "success",
        "id": str(queued["id"]),  # the doc warns the id may arrive as a string
        "output": queued["future_links"],
        "generationTime": 1.23,
        "track_id": "track-v6",
        "meta": queued["meta"],
        "nsfw_content_detected": False,
    }
    headers, raw = receiver.received[0]
    assert headers["Content-Type"] == "application/json"
    assert "Authorization" not in headers
    assert STD.encode() not in raw and ENT.encode() not in raw
    assert fake.webhook_results == [200]
    assert fake.jobs[str(queued["id"])].webhook_bodies == sent


async def test_failure_webhook_repeats_and_int_id(fake, http, receiver):
    fake.webhook_repeats = 3
    fake.webhook_id_as_string = False
    receiver.answer_status[0] = 500
    queued = (await submit(fake, http, "enterprise", webhook=receiver.url)).body
    sent = await fake.complete(queued["id"], fail="NSFW content")
    expected = {
        "status": "failed",
        "id": queued["id"],
        "message": "NSFW content",
        "track_id": "track-ent",
    }
    assert sent == [expected] * 3 and receiver.bodies() == [expected] * 3
    assert fake.webhook_results == [500, 500, 500]


async def test_webhooks_off_and_receiver_down(fake, http):
    fake.send_webhooks = False
    a = (await submit(fake, http, "v6", webhook="http://127.0.0.1:1/hook/x")).body["id"]
    assert await fake.complete(a) == []
    fake.send_webhooks = True
    fake.webhook_timeout = 0.5
    b = (await submit(fake, http, "v6", webhook="http://127.0.0.1:1/hook/x")).body["id"]
    sent = await fake.complete(b)  # must not raise
    assert len(sent) == 1
    assert fake.webhook_results == [None]
    assert fake.webhook_deliveries[0].error


async def test_success_mode_sends_webhook_in_background(fake, http, receiver):
    fake.mode = "success"
    reply = await submit(fake, http, "realtime", webhook=receiver.url)
    await fake.drain()
    assert [b["id"] for b in receiver.bodies()] == [str(reply.body["id"])]


# --------------------------------------------------------------------------- knobs


async def test_auto_complete_after(fake, http, receiver):
    fake.auto_complete_after = 0.05
    fake.eta = 0.05
    queued = (await submit(fake, http, "v6", webhook=receiver.url)).body
    assert queued["eta"] == 0.05
    await asyncio.sleep(0.1)
    reply = await call(http, queued["fetch_result"], {"key": STD})
    assert reply.body["status"] == "success"
    await fake.drain()
    assert [b["status"] for b in receiver.bodies()] == ["success"]


async def test_queue_limit_answers_429(fake, http):
    fake.queue_limit = 2
    fake.retry_after = 7
    first = (await submit(fake, http, "v6")).body["id"]
    await submit(fake, http, "enterprise")
    reply = await submit(fake, http, "realtime")
    assert reply.status == 429
    assert_json(reply)
    assert reply.body == {
        "status": "error",
        "message": "Rate limit exceeded. Maximum 2 queued requests allowed.",
        "retry_after": 7,
    }
    assert len(fake.jobs) == 2 and fake.rejections[-1].response.status == 429
    await fake.complete(first)
    assert (await submit(fake, http, "realtime")).body["status"] == "processing"


async def test_fail_next_with(fake, http, receiver):
    fake.fail_next_with("Unable to fetch image from provided URL")
    queued = (await submit(fake, http, "v6", webhook=receiver.url)).body
    assert queued["status"] == "processing"
    sent = await fake.complete(queued["id"])
    assert sent[0]["status"] == "failed"
    assert sent[0]["message"] == "Unable to fetch image from provided URL"
    # the next one is normal again
    ok = (await submit(fake, http, "v6")).body["id"]
    await fake.complete(ok)
    assert fake.jobs[str(ok)].state == "success"
    # in success mode the submit itself fails: HTTP 200, status error, no id
    fake.mode = "success"
    fake.fail_next_with("Server busy")
    reply = await submit(fake, http, "v6")
    assert reply.status == 200 and reply.body == {"status": "error", "message": "Server busy"}


SCRIPTED = [
    ("submit", 200, {"status": "error", "message": "Invalid prompt"}, "application/json"),
    (
        "submit",
        200,
        {"status": "error", "message": {"init_image": ["The init image field is required."]}},
        "application/json",
    ),
    ("submit", 200, {"status": "error", "message": "Failed to generate image"}, "application/json"),
    (
        "submit",
        429,
        {"status": "error", "message": "Rate limit exceeded.", "retry_after": 30},
        "application/json",
    ),
    ("submit", 500, "<html><body>Internal Server Error</body></html>", "text/html"),
    ("submit", 503, "<html><body>Service Unavailable</body></html>", "text/html; charset=utf-8"),
    ("submit", 200, b'{"status": "success", "output": [', "application/json"),
    (
        "submit",
        200,
        {"status": "processing", "id": "77", "eta": 3.5, "messege": "queued", "output": []},
        "application/json",
    ),
    ("submit", 200, {"status": "success", "id": 5, "output": [], "proxy_links": ""}, "text/json"),
    ("fetch", 200, {"status": "processing", "id": 9, "output": ""}, "application/json"),
    ("fetch", 200, {"status": "success", "id": "9", "proxy_links": {"0": "x"}}, "application/json"),
    ("fetch", 200, {"status": "success", "id": 9, "proxy_links": ["x"]}, "application/json"),
    ("fetch", 200, {"status": "failed", "id": 9, "message": "boom"}, "application/json"),
    ("fetch", 502, b"", "text/plain"),
]


@pytest.mark.parametrize(("kind", "status", "body", "content_type"), SCRIPTED)
async def test_script_serves_exactly_the_canned_answer(
    fake, http, kind, status, body, content_type
):
    fake.script(kind, status, body, content_type=content_type)
    if kind == "submit":
        url, payload = fake.base_url + PATHS["v6"], VALID["v6"]
    else:
        url, payload = fake.base_url + "/api/v6/images/fetch/1", {"key": STD}
    reply = await call(http, url, payload)
    assert reply.status == status and reply.content_type == content_type
    if isinstance(body, bytes):
        expected = body
    elif isinstance(body, str):
        expected = body.encode()
    else:
        expected = json.dumps(body).encode()
    assert reply.raw == expected
    [rec] = fake.requests
    assert rec.kind == kind and rec.scripted and not rec.accepted and rec.errors == {}
    assert rec.response.status == status and rec.response.raw == expected
    assert fake.jobs == {} and fake.submits == [] and fake.rejections == []
    # the normal behaviour resumes afterwards
    again = await call(http, url, payload)
    assert again.content_type == "application/json" and not fake.requests[-1].scripted


async def test_script_times_and_order(fake, http):
    fake.script("submit", 503, "busy", content_type="text/plain", times=2)
    fake.script("submit", 200, {"status": "error", "message": "x"})
    statuses = [(await submit(fake, http, "v6")).status for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    assert [r.scripted for r in fake.requests] == [True, True, True, False]
    assert len(fake.submits) == 1
    # a scripted submit still records what the rules would have said
    fake.script("submit", 500, "oops", content_type="text/plain")
    await submit(fake, http, "v6", width=1)
    assert set(fake.requests[-1].errors) == {"width"}
    with pytest.raises(ValueError):
        fake.script("cdn", 200, {})


async def test_transform_next_edits_a_real_answer(fake, http):
    fake.transform_next("submit", lambda b: {**b, "id": str(b["id"])})
    fake.transform_next("fetch", lambda b: {**b, "proxy_links": ""})
    queued = (await submit(fake, http, "v6")).body
    assert queued["id"] == "1001" and fake.jobs["1001"].state == "processing"
    await fake.complete(1001)
    reply = await call(http, queued["fetch_result"], {"key": STD})
    assert reply.body["proxy_links"] == "" and reply.body["output"]
    assert fake.fetches[-1].transformed


async def test_hang_next_for_timeouts(http):
    fake = FakeModelsLab(api_key=STD, enterprise_key=ENT)
    await fake.start()
    try:
        fake.hang_next("submit", 30)
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=0.2)
        with pytest.raises(asyncio.TimeoutError):
            await http.post(fake.base_url + PATHS["v6"], json=VALID["v6"], timeout=timeout)
        assert fake.requests[0].hung == 30
        # the next request is answered normally and at once
        reply = await submit(fake, http, "v6")
        assert reply.body["status"] == "processing"
        job_id = reply.body["id"]  # the hung submit has made no job yet
        # a short hang delays the answer and then answers normally
        fake.hang_next("fetch", 0.15)
        before = time.monotonic()
        reply = await call(http, f"{fake.base_url}/api/v6/images/fetch/{job_id}", {"key": STD})
        assert time.monotonic() - before >= 0.14
        assert reply.body["status"] == "processing"
        fake.hang_next("cdn", 0.05)
        async with http.get(fake.cdn_url + "/not-an-image") as resp:
            assert resp.status == 200
    finally:
        await fake.close()
    assert time.monotonic() - started < 5  # close() released the 30 s hang


async def test_reset(fake, http):
    fake.script("fetch", 500, "x", content_type="text/plain")
    fake.hang_next("submit", 10)
    fake.fail_next_with("nope")
    fake.reset()
    reply = await submit(fake, http, "v6")
    assert reply.status == 200 and fake.requests[0].hung == 0
    await fake.complete(reply.body["id"])
    assert fake.jobs["1001"].state == "success"
    fake.reset()
    assert fake.requests == [] and fake.cdn_requests == [] and "1001" in fake.jobs
    fake.reset(jobs=True)
    assert fake.jobs == {}


async def test_not_started_and_context_manager():
    fake = FakeModelsLab()
    with pytest.raises(RuntimeError):
        _ = fake.base_url
    async with FakeModelsLab() as f:
        assert f.base_url.startswith("http://127.0.0.1:")
        assert f.cdn_url.startswith("http://127.0.0.1:") and f.cdn_url != f.base_url
        assert f.url_for("inpaint") == f.base_url + "/api/v6/images/inpaint"
        assert f.key_for("enterprise_pony") == "test-enterprise-key"


# --------------------------------------------------------------------------- newer routes


async def test_realtime_refuses_guidance_scale_which_it_does_not_document(fake, http):
    reply = await submit(fake, http, "realtime", guidance_scale=7.5)
    assert reply.body["status"] == "error" and "guidance_scale" in reply.body["message"]
    assert fake.submits == []


async def test_v6_takes_enhance_prompt_as_yes_or_no(fake, http):
    assert (await submit(fake, http, "v6", enhance_prompt="no")).body["status"] == "processing"
    reply = await submit(fake, http, "inpaint", enhance_prompt=False)
    assert "enhance_prompt" in reply.body["message"]


async def test_super_resolution_takes_only_documented_upscalers(fake, http):
    reply = await submit(fake, http, "super_resolution", model_id="pony_realism")
    assert "model_id" in reply.body["message"]
    reply = await submit(fake, http, "super_resolution", prompt="x")
    assert "prompt" in reply.body["message"]


@pytest.mark.parametrize(("path", "key"), [("/api/v4/dreambooth/model_list", STD),
                                           ("/api/v1/enterprise/get_all_models", ENT)])
async def test_model_lists_answer_500_records_in_the_documented_shapes(fake, http, path, key):
    reply = await call(http, fake.base_url + path, {"key": key})
    assert reply.status == 200
    records = reply.body if path.startswith("/api/v4") else reply.body["message"]
    assert all("model_id" in r for r in records)
    assert len([r for r in records if r["model_category"] != "lora"]) == 500
    assert [r["model_id"] for r in records if r["model_category"] == "lora"] == fake.loras
    fake.models.append("brand-new-model")
    fake.enterprise_models.append("brand-new-model")
    again = await call(http, fake.base_url + path, {"key": key})
    records = again.body if path.startswith("/api/v4") else again.body["message"]
    assert records[-1 - len(fake.loras)]["model_id"] == "brand-new-model"
    assert len(fake.model_list_calls) == 2
    wrong = await call(http, fake.base_url + path, {"key": STD if key == ENT else ENT})
    assert wrong.status == 401


async def test_scripted_answers_can_carry_headers(fake, http):
    fake.script("submit", 429, {"status": "error", "message": "slow down"},
                headers={"X-RateLimit-Reset": "12"})
    async with http.post(fake.url_for("v6"), json=body_for("v6")) as resp:
        assert resp.status == 429 and resp.headers["X-RateLimit-Reset"] == "12"
