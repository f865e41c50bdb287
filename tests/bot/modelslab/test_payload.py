"""Every endpoint rule, as a member meets it: what is sent, and what is refused in words."""

from __future__ import annotations

import pytest

from bot.errors import OptionError
from bot.modelslab.catalogue import ENDPOINTS, PONY_SCHEDULERS, SCHEDULERS
from bot.modelslab.payload import GenerationOptions, SourceImage, build_payload, fit_size

IMAGE = SourceImage("https://cdn.discordapp.test/a.png", 1024, 1024)
MASK = SourceImage("https://cdn.discordapp.test/m.png", 1024, 1024)


def build(endpoint: str, image: SourceImage = IMAGE, safety_checker_type=None, **options):
    if endpoint != "upscale":
        options.setdefault("prompt", "a red fox in the snow")
    return build_payload(
        ENDPOINTS[endpoint],
        GenerationOptions(**options),
        image=image,
        mask=MASK if ENDPOINTS[endpoint].takes("mask") else None,
        default_model="pony_realism",
        safety_checker_type=safety_checker_type,
        track_id="track-1",
    )


def refusal(endpoint: str, **options) -> str:
    with pytest.raises(OptionError) as caught:
        build(endpoint, **options)
    return str(caught.value)


# --- the exact body of each endpoint with nothing but a prompt --------------------------

def test_v6_body_with_defaults():
    assert build("v6") == {
        "prompt": "a red fox in the snow",
        "init_image": IMAGE.url,
        "model_id": "pony_realism",
        "width": 1024,
        "height": 1024,
        "samples": 1,
        "num_inference_steps": 30,
        "guidance_scale": 7.5,
        "strength": 0.7,
        "seed": None,
        "scheduler": "DPMSolverMultistepScheduler",
        "use_karras_sigmas": "yes",
        "clip_skip": 2,
        "safety_checker": "yes",
        "enhance_prompt": "no",
        "track_id": "track-1",
    }


def test_inpaint_body_uses_steps_and_mask():
    body = build("inpaint", image=SourceImage(IMAGE.url, 512, 512))
    assert body["steps"] == 21
    assert "num_inference_steps" not in body
    assert body["mask_image"] == MASK.url
    assert (body["width"], body["height"]) == (512, 512)
    assert body["clip_skip"] == 2
    assert body["use_karras_sigmas"] == "yes"


@pytest.mark.parametrize("name", ["enterprise", "enterprise_pony"])
def test_enterprise_bodies(name):
    body = build(name, image=SourceImage(IMAGE.url, 512, 512))
    assert body["num_inference_steps"] == 21
    assert body["safety_checker"] == "yes"
    assert body["safety_checker_type"] == "sensitive_content_text"
    assert body["enhance_prompt"] == "no"
    assert body["model_id"] == "pony_realism"
    assert (body["width"], body["height"]) == (512, 512)


def test_realtime_body_has_json_booleans_and_no_model():
    body = build("realtime", image=SourceImage(IMAGE.url, 512, 512))
    for flag in ("safety_checker", "base64", "instant_response", "enhance_prompt"):
        assert body[flag] in (True, False) and isinstance(body[flag], bool), flag
    assert body["safety_checker"] is True
    for absent in ("model_id", "num_inference_steps", "steps", "clip_skip", "scheduler",
                   "use_karras_sigmas"):
        assert absent not in body


def test_numbers_are_json_numbers_not_strings():
    body = build("enterprise", steps=31, width=768, height=512, samples=2, guidance_scale=9,
                 strength=1, seed=42, clip_skip=8)
    assert body["num_inference_steps"] == 31 and isinstance(body["num_inference_steps"], int)
    assert body["guidance_scale"] == 9.0 and isinstance(body["guidance_scale"], float)
    assert body["strength"] == 1.0 and isinstance(body["strength"], float)
    assert body["seed"] == 42 and body["samples"] == 2 and body["clip_skip"] == 8


def test_member_values_reach_the_wire_names():
    body = build("v6", negative_prompt=" blurry ", model="anything-v5", steps=50,
                 scheduler="eulerancestraldiscretescheduler", karras=False, clip_skip=4)
    assert body["negative_prompt"] == "blurry"
    assert body["model_id"] == "anything-v5"
    assert body["num_inference_steps"] == 50
    assert body["scheduler"] == "EulerAncestralDiscreteScheduler"  # case-insensitive, canonical
    assert body["use_karras_sigmas"] == "no"


def test_safety_checker_follows_the_caller():
    off = build_payload(ENDPOINTS["v6"], GenerationOptions(prompt="x"), image=IMAGE,
                        default_model="m", safety_checker=False)
    assert off["safety_checker"] == "no"
    rt = build_payload(ENDPOINTS["realtime"], GenerationOptions(prompt="x"),
                       image=SourceImage(IMAGE.url, 512, 512), default_model="m",
                       safety_checker=False)
    assert rt["safety_checker"] is False


# --- refusals: each documented rule, at and beyond its edges ----------------------------

OUT_OF_RANGE = [
    # endpoint, option, value, words the member reads
    ("v6", "width", 1016, "width must be a multiple of 8 from 1024 to 2048 on the v6 endpoint"),
    ("v6", "width", 2056, "width must be a multiple of 8 from 1024 to 2048"),
    ("v6", "height", 1030, "height must be a multiple of 8 from 1024 to 2048"),
    ("v6", "steps", 19, "steps must be a whole number from 20 to 50 on the v6 endpoint"),
    ("v6", "steps", 51, "steps must be a whole number from 20 to 50"),
    ("v6", "clip_skip", 5, "clip_skip must be a whole number from 1 to 4"),
    ("v6", "clip_skip", 0, "clip_skip must be a whole number from 1 to 4"),
    ("v6", "samples", 0, "samples must be a whole number from 1 to 4"),
    ("v6", "samples", 5, "samples must be a whole number from 1 to 4"),
    ("v6", "guidance_scale", 0.5, "guidance_scale must be between 1 and 20"),
    ("v6", "guidance_scale", 20.5, "guidance_scale must be between 1 and 20"),
    ("v6", "strength", -0.1, "strength must be between 0 and 1"),
    ("v6", "strength", 1.01, "strength must be between 0 and 1"),
    ("v6", "seed", -1, "seed must be a whole number from 0 to 4294967295"),
    ("v6", "seed", 2**32, "seed must be a whole number from 0 to 4294967295"),
    ("inpaint", "width", 504, "width must be a multiple of 8 from 512 to 1024 on the inpainting"),
    ("inpaint", "height", 1032, "height must be a multiple of 8 from 512 to 1024"),
    ("inpaint", "steps", 51, "steps must be a whole number from 1 to 50 on the inpainting"),
    ("inpaint", "clip_skip", 5, "clip_skip must be a whole number from 1 to 4"),
    ("enterprise", "steps", 30, "steps must be 21, 31 or 41 on the enterprise endpoint"),
    ("enterprise", "steps", 20, "steps must be 21, 31 or 41 on the enterprise endpoint"),
    ("enterprise", "width", 1032, "width must be a multiple of 8 from 256 to 1024"),
    ("enterprise", "clip_skip", 9, "clip_skip must be a whole number from 1 to 8"),
    ("enterprise_pony", "steps", 40, "steps must be 21, 31 or 41 on the enterprise Pony endpoint"),
    ("enterprise_pony", "height", 1100, "height must be a multiple of 8 from 256 to 1024"),
    ("realtime", "width", 1032, "width must be a multiple of 8 from 256 to 1024 on the realtime"),
    ("realtime", "samples", 5, "samples must be a whole number from 1 to 4"),
    ("realtime", "strength", 2.0, "strength must be between 0 and 1"),
]


@pytest.mark.parametrize(("endpoint", "option", "value", "words"), OUT_OF_RANGE)
def test_out_of_range_values_are_refused_in_words(endpoint, option, value, words):
    assert words in refusal(endpoint, **{option: value})


@pytest.mark.parametrize(
    ("endpoint", "option", "value", "wire", "sent"),
    [
        ("v6", "width", 1024, "width", 1024),
        ("v6", "width", 2048, "width", 2048),
        ("v6", "steps", 20, "num_inference_steps", 20),
        ("v6", "clip_skip", 1, "clip_skip", 1),
        ("v6", "strength", 0, "strength", 0.0),
        ("v6", "guidance_scale", 20, "guidance_scale", 20.0),
        ("v6", "seed", 2**32 - 1, "seed", 2**32 - 1),
        ("inpaint", "width", 1024, "width", 1024),
        ("inpaint", "steps", 1, "steps", 1),
        ("enterprise", "steps", 41, "num_inference_steps", 41),
        ("enterprise", "clip_skip", 8, "clip_skip", 8),
        ("enterprise", "width", 256, "width", 256),
        ("enterprise_pony", "steps", 31, "num_inference_steps", 31),
        ("realtime", "height", 1024, "height", 1024),
        ("realtime", "samples", 4, "samples", 4),
    ],
)
def test_values_at_the_edges_are_sent(endpoint, option, value, wire, sent):
    assert build(endpoint, **{option: value})[wire] == sent


@pytest.mark.parametrize(
    ("endpoint", "option", "value"),
    [
        ("realtime", "model", "pony_realism"),
        ("realtime", "steps", 21),
        ("realtime", "clip_skip", 1),
        ("realtime", "scheduler", "LCMScheduler"),
        ("realtime", "karras", True),
    ],
)
def test_options_an_endpoint_does_not_take_are_refused(endpoint, option, value):
    assert f"{option} can't be set on the realtime endpoint" in refusal(endpoint, **{option: value})


def test_pony_scheduler_list_is_shorter():
    excluded = sorted(set(SCHEDULERS) - set(PONY_SCHEDULERS))
    assert excluded == ["DDIMInverseScheduler", "KarrasVeScheduler", "ScoreSdeVeScheduler"]
    for name in excluded:
        words = refusal("enterprise_pony", scheduler=name)
        assert f"{name} is not a scheduler the enterprise Pony endpoint accepts" in words
        assert build("enterprise", scheduler=name)["scheduler"] == name
    for name in PONY_SCHEDULERS:
        assert build("enterprise_pony", scheduler=name)["scheduler"] == name


def test_unknown_scheduler_is_refused_everywhere_it_applies():
    for name in ("v6", "inpaint", "enterprise", "enterprise_pony"):
        assert "Turbo is not a scheduler" in refusal(name, scheduler="Turbo")


def test_every_problem_is_named_at_once():
    words = refusal("v6", width=1000, strength=1.5, samples=9)
    assert words.startswith("Some options can't be used:")
    assert "width must be" in words and "strength must be" in words and "samples must be" in words


@pytest.mark.parametrize("prompt", ["", "   ", "\n"])
def test_empty_prompt_is_refused(prompt):
    assert refusal("v6", prompt=prompt) == "the prompt can't be empty."


def test_overlong_prompt_and_bad_model_id_are_refused():
    assert "at most 2000" in refusal("v6", prompt="x" * 2001)
    assert "is not a model id" in refusal("v6", model="../etc/passwd")
    assert "negative prompt is 2001 characters long" in refusal("v6", negative_prompt="y" * 2001)


def test_inpaint_without_a_mask_is_refused():
    with pytest.raises(OptionError, match="needs a mask image"):
        build_payload(ENDPOINTS["inpaint"], GenerationOptions(prompt="x"), image=IMAGE,
                      default_model="m")


def test_non_finite_and_fractional_numbers_are_refused():
    assert "finite" in refusal("v6", guidance_scale=float("nan"))
    assert "finite" in refusal("v6", strength=float("inf"))


# --- width and height follow the image when not given -----------------------------------

@pytest.mark.parametrize(
    ("endpoint", "image_size", "expected"),
    [
        ("v6", (1024, 1024), (1024, 1024)),  # in range: kept
        ("v6", (1200, 1600), (1200, 1600)),
        ("v6", (4032, 3024), (2048, 1536)),  # scaled down to fit, 4:3 kept
        ("v6", (640, 480), (1368, 1024)),  # scaled up to the 1024 minimum, 4:3 within rounding
        ("v6", (3000, 1000), (2048, 1024)),  # 3:1 is wider than 2048x1024 allows: clamped
        ("enterprise", (4032, 3024), (1024, 768)),
        ("enterprise", (300, 200), (384, 256)),  # under the 256 minimum: scaled up, 3:2 kept
        ("enterprise", (500, 333), (504, 336)),  # in range: kept, snapped to multiples of 8
        ("enterprise_pony", (1080, 1920), (576, 1024)),  # portrait 9:16
        ("realtime", (800, 600), (800, 600)),
        ("inpaint", (256, 256), (512, 512)),
        ("inpaint", (2000, 1000), (1024, 512)),
    ],
)
def test_size_follows_the_image(endpoint, image_size, expected):
    body = build(endpoint, image=SourceImage(IMAGE.url, *image_size))
    assert (body["width"], body["height"]) == expected
    assert body["width"] % 8 == 0 and body["height"] % 8 == 0


def test_one_given_side_keeps_the_aspect_ratio():
    ep = ENDPOINTS["enterprise"]
    assert fit_size(ep, 1600, 900, width=512) == (512, 288)
    assert fit_size(ep, 1600, 900, height=720) == (1024, 720)  # 1280 clamped to the maximum
    body = build("enterprise", image=SourceImage(IMAGE.url, 1600, 900), width=512)
    assert (body["width"], body["height"]) == (512, 288)


def test_degenerate_image_sizes_still_give_valid_sizes():
    for size in [(1, 1), (1, 10000), (10000, 1), (0, 0)]:
        for name, ep in ENDPOINTS.items():
            if not ep.takes("width"):
                continue
            w, h = fit_size(ep, *size)
            rule_w, rule_h = ep.rules["width"], ep.rules["height"]
            assert rule_w.minimum <= w <= rule_w.maximum, (name, size)
            assert rule_h.minimum <= h <= rule_h.maximum, (name, size)
            assert w % 8 == 0 and h % 8 == 0


# --- the options ModelsLab documents beyond the basics -------------------------------------

@pytest.mark.parametrize("endpoint", ["v6", "inpaint", "enterprise", "enterprise_pony",
                                      "enterprise_inpaint"])
def test_enhance_prompt_is_sent_as_no_unless_asked(endpoint):
    assert build(endpoint)["enhance_prompt"] == "no"
    assert build(endpoint, enhance_prompt=True)["enhance_prompt"] == "yes"


def test_realtime_sends_enhance_prompt_and_style_as_documented():
    body = build("realtime")
    assert body["enhance_prompt"] is False and "enhance_style" not in body
    assert "guidance_scale" not in body
    assert build("realtime", style="Watercolor")["enhance_style"] == "watercolor"
    words = refusal("realtime", style="van-gogh")
    assert "van-gogh is not a style the realtime endpoint accepts" in words


def test_guidance_scale_on_realtime_is_refused_naming_where_it_applies():
    words = refusal("realtime", guidance_scale=7)
    assert "guidance_scale can't be set on the realtime endpoint; it applies on the v6, " in words


def test_algorithm_is_sent_as_algorithm_type_on_v6_and_inpaint_only():
    assert build("v6", algorithm="sde-dpmsolver++")["algorithm_type"] == "sde-dpmsolver++"
    assert build("inpaint", algorithm="none")["algorithm_type"] == "none"
    assert "algorithm_type" not in build("v6")
    words = refusal("enterprise", algorithm="none")
    assert ("algorithm can't be set on the enterprise endpoint; it applies on the v6 and "
            "inpainting endpoints") in words


@pytest.mark.parametrize("endpoint", ["enterprise", "enterprise_pony", "enterprise_inpaint"])
def test_enterprise_takes_lora_vae_and_sends_tomesd(endpoint):
    body = build(endpoint, lora="more_details", lora_strength=0.6, vae="sdxl-vae")
    assert (body["lora_model"], body["lora_strength"], body["vae"]) == ("more_details", 0.6,
                                                                         "sdxl-vae")
    assert body["tomesd"] == "yes"
    plain = build(endpoint)
    assert "lora_model" not in plain and "vae" not in plain and plain["tomesd"] == "yes"


def test_lora_rules_are_refused_in_words():
    assert "lora_strength needs a lora" in refusal("enterprise", lora_strength=0.5)
    assert "lora_strength must be between 0.1 and 1" in refusal("enterprise", lora="x",
                                                                lora_strength=3)
    assert "is not a lora id" in refusal("enterprise", lora="../etc")
    assert "lora can't be set on the v6 endpoint; it applies on the enterprise, " in \
        refusal("v6", lora="more_details")


def test_safety_checker_type_is_the_servers_choice_where_the_endpoint_takes_it():
    assert build("enterprise", safety_checker_type="blur")["safety_checker_type"] == "blur"
    assert build("enterprise")["safety_checker_type"] == "sensitive_content_text"
    assert "safety_checker_type" not in build("v6", safety_checker_type="blur")


def test_enterprise_inpaint_body_is_enterprise_img2img_plus_the_mask():
    body = build("enterprise_inpaint")
    assert body["mask_image"] == MASK.url and body["num_inference_steps"] == 21
    assert set(build("enterprise")) | {"mask_image"} == set(body)


def test_upscale_body():
    assert build("upscale") == {"init_image": IMAGE.url, "scale": 4,
                                "model_id": "RealESRGAN_x4plus", "face_enhance": False,
                                "track_id": "track-1"}
    body = build("upscale", scale=2, upscaler="realesr-general-x4v3", face_enhance=True)
    assert (body["scale"], body["model_id"], body["face_enhance"]) == (
        2, "realesr-general-x4v3", True)
    assert "scale must be 2, 3 or 4" in refusal("upscale", scale=8)
    assert "prompt can't be set on the super resolution endpoint" in refusal("upscale",
                                                                             prompt="x")
