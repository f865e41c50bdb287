"""The client against the local fake ModelsLab, which enforces every documented rule."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from bot.errors import OptionError
from bot.modelslab.catalogue import ENDPOINTS
from bot.modelslab.client import (
    FetchRedirected,
    MissingKey,
    ModelsLabClient,
    NotSent,
    OutcomeUnknown,
    RateLimited,
    Redirected,
    Rejected,
)
from bot.modelslab.payload import GenerationOptions, SourceImage, build_payload
from bot.modelslab.responses import ApiStatus
from tests.bot.modelslab.test_payload import OUT_OF_RANGE

pytestmark = pytest.mark.asyncio


def image(fake, size=(1024, 768)) -> SourceImage:
    return SourceImage(fake.cdn_url + "/files/in.png", *size)


def body_for(fake, name: str, **options) -> dict:
    prompt = options.pop("prompt", None if name == "upscale" else "a lighthouse at dusk")
    return build_payload(
        ENDPOINTS[name],
        GenerationOptions(prompt=prompt, **options),
        image=image(fake),
        mask=image(fake) if ENDPOINTS[name].takes("mask") else None,
        default_model="pony_realism",
        track_id="trk-" + name,
    )


RICH_OPTIONS = {
    "v6": dict(negative_prompt="blurry", strength=0.55, model="anything-v5", width=1152,
               height=1536, samples=2, steps=40, guidance_scale=9.5, scheduler="LCMScheduler",
               seed=7, clip_skip=3, karras=False),
    "inpaint": dict(negative_prompt="text", strength=1.0, width=768, height=512, samples=4,
                    steps=50, guidance_scale=1, scheduler="DDIMScheduler", seed=0, clip_skip=1),
    "enterprise": dict(strength=0.2, width=1024, height=256, steps=41, clip_skip=8,
                       scheduler="KarrasVeScheduler", karras=True),
    "enterprise_pony": dict(steps=31, scheduler="EulerAncestralDiscreteScheduler", samples=3),
    "realtime": dict(width=256, height=1024, samples=4, strength=0.9, seed=4294967295,
                     style="pixel-art", enhance_prompt=True),
    "enterprise_inpaint": dict(steps=31, width=768, height=512, lora="more_details",
                               lora_strength=0.6, vae="sdxl-vae", enhance_prompt=False),
    "upscale": dict(scale=2, upscaler="RealESRGAN_x2plus", face_enhance=True),
}
RICH_OPTIONS["v6"].update(algorithm="sde-dpmsolver++", enhance_prompt=True)
RICH_OPTIONS["inpaint"].update(algorithm="none")
RICH_OPTIONS["enterprise"].update(lora="more_details", lora_strength=1, vae="sdxl-vae")


@pytest.mark.parametrize("name", list(ENDPOINTS))
@pytest.mark.parametrize("rich", [False, True], ids=["defaults", "every-option"])
async def test_each_endpoint_payload_is_accepted_exactly_as_built(fake, client, name, rich):
    body = body_for(fake, name, **(RICH_OPTIONS[name] if rich else {}))
    response = await client.submit(ENDPOINTS[name], body, webhook="https://bot.example/hook/x")

    assert fake.rejections == []
    (sent,) = fake.submits
    assert sent.path == ENDPOINTS[name].path
    expected_key = fake.enterprise_key if ENDPOINTS[name].key == "enterprise" else fake.api_key
    assert sent.body == {"key": expected_key, **body, "webhook": "https://bot.example/hook/x"}
    assert response.status is ApiStatus.PROCESSING
    assert response.request_id == str(sent.response.body["id"])
    assert response.fetch_result and response.future_links


async def test_numbers_travel_as_json_numbers(fake, client):
    await client.submit(ENDPOINTS["enterprise"], body_for(fake, "enterprise", steps=31))
    raw = fake.submits[0].raw.decode()
    assert '"num_inference_steps": 31' in raw and '"width": 1024' in raw
    assert '"guidance_scale": 7.5' in raw and '"safety_checker": "yes"' in raw


@pytest.mark.parametrize(("name", "option", "value", "words"), OUT_OF_RANGE)
async def test_out_of_range_values_are_refused_before_any_request(
        fake, client, name, option, value, words):
    async def member_asks():
        body = body_for(fake, name, **{option: value})  # refused here...
        await client.submit(ENDPOINTS[name], body)  # ...so this never runs

    with pytest.raises(OptionError, match=words):
        await member_asks()
    assert fake.requests == []


# The seed bound is the bot's own (inferred) rule; ModelsLab documents none, nor does the fake.
DOCUMENTED_OUT_OF_RANGE = [row for row in OUT_OF_RANGE if row[1] != "seed"]


@pytest.mark.parametrize(("name", "option", "value", "words"), DOCUMENTED_OUT_OF_RANGE)
async def test_the_fake_agrees_those_values_are_out_of_range(
        fake, client, name, option, value, words):
    """The catalogue and the fake were written apart: each refusal is confirmed by the other."""
    body = body_for(fake, name)
    body[ENDPOINTS[name].rules[option].wire] = value
    with pytest.raises(Rejected) as caught:
        await client.submit(ENDPOINTS[name], body)
    assert ENDPOINTS[name].rules[option].wire in caught.value.response.field_errors


@pytest.mark.parametrize(("name", "field", "value"), [
    ("realtime", "model_id", "pony_realism"),
    ("realtime", "num_inference_steps", 21),
    ("inpaint", "num_inference_steps", 21),
    ("v6", "steps", 30),
    ("v6", "safety_checker_type", "blur"),
])
async def test_fields_an_endpoint_does_not_take_are_not_in_its_payload(fake, client, name, field,
                                                                       value):
    body = body_for(fake, name)
    assert field not in body
    with pytest.raises(Rejected):  # and the fake would refuse them
        await client.submit(ENDPOINTS[name], {**body, field: value})


async def test_processing_then_fetch_until_success(fake, client):
    submitted = await client.submit(ENDPOINTS["v6"], body_for(fake, "v6", samples=2))
    assert submitted.status is ApiStatus.PROCESSING and submitted.eta is not None
    still = await client.fetch(ENDPOINTS["v6"], submitted.request_id,
                               fetch_url=submitted.fetch_result)
    assert still.status is ApiStatus.PROCESSING and still.output == ()
    await fake.complete(submitted.request_id)
    done = await client.fetch(ENDPOINTS["v6"], submitted.request_id,
                              fetch_url=submitted.fetch_result)
    assert done.succeeded and len(done.output) == 2
    assert all(url.startswith(fake.cdn_url) for url in done.output)
    assert done.seed is not None


@pytest.mark.parametrize("name", ["v6", "inpaint", "enterprise", "enterprise_pony", "realtime"])
async def test_fetch_by_documented_route_without_fetch_result(fake, client, name):
    submitted = await client.submit(ENDPOINTS[name], body_for(fake, name))
    await fake.complete(submitted.request_id, fail="GPU out of memory")
    answer = await client.fetch(ENDPOINTS[name], submitted.request_id)
    assert answer.status is ApiStatus.FAILED
    assert answer.readable_error == "GPU out of memory"
    assert fake.fetches[-1].path.startswith(ENDPOINTS[name].fetch.path.split("{")[0])


async def test_key_never_goes_to_a_foreign_fetch_result_host(fake, client, unused_tcp_port):
    seen: list[web.Request] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request)
        return web.json_response({"status": "success", "output": ["https://x/1.png"]})

    app = web.Application()
    app.router.add_post("/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        submitted = await client.submit(ENDPOINTS["v6"], body_for(fake, "v6"))
        foreign = f"http://127.0.0.1:{unused_tcp_port}/api/v6/images/fetch/{submitted.request_id}"
        answer = await client.fetch(ENDPOINTS["v6"], submitted.request_id, fetch_url=foreign)
    finally:
        await runner.cleanup()
    assert seen == []
    assert answer.status is ApiStatus.PROCESSING  # the configured host answered instead
    assert fake.fetches[-1].path == f"/api/v6/images/fetch/{submitted.request_id}"


async def test_rate_limit_carries_retry_after(fake, client):
    fake.queue_limit, fake.retry_after = 1, 12
    await client.submit(ENDPOINTS["v6"], body_for(fake, "v6"))
    with pytest.raises(RateLimited) as caught:
        await client.submit(ENDPOINTS["v6"], body_for(fake, "v6"))
    assert caught.value.retry_after == 12
    assert "Maximum 1 queued requests" in str(caught.value)


async def test_429_without_a_json_body_uses_retry_after_header(fake, client):
    fake.script("submit", 429, "<html>slow down</html>", content_type="text/html")
    with pytest.raises(RateLimited) as caught:
        await client.submit(ENDPOINTS["v6"], body_for(fake, "v6"))
    assert caught.value.retry_after == 30


@pytest.mark.parametrize(("status", "body", "words"), [
    (200, {"status": "error", "message": "Unable to fetch image from provided URL"},
     "Unable to fetch image from provided URL"),
    (200, {"status": "error", "messege": {"init_image": ["The init image field is required."]}},
     "init_image: The init image field is required."),
    (400, {"status": "error", "message": "Invalid request"}, "Invalid request"),
    (402, {"status": "error", "message": "Insufficient balance"}, "Insufficient balance"),
    (503, {"status": "error", "message": "Service busy"}, "Service busy"),
    (200, {"status": "failed", "id": 5, "message": "failed"}, "failed"),
])
async def test_rejections_carry_the_apis_words(fake, client, status, body, words):
    fake.script("submit", status, body)
    with pytest.raises(Rejected) as caught:
        await client.submit(ENDPOINTS["v6"], body_for(fake, "v6"))
    assert words in caught.value.message


async def test_wrong_key_is_a_rejection_in_words(fake, http):
    wrong = ModelsLabClient(http, base_url=fake.base_url, api_key=SecretStr("nope"))
    with pytest.raises(Rejected, match="Invalid API key"):
        await wrong.submit(ENDPOINTS["v6"], body_for(fake, "v6"))


@pytest.mark.parametrize(("status", "body", "content_type"), [
    (500, "<html><h1>Internal Server Error</h1></html>", "text/html"),
    (502, "Bad gateway", "text/plain"),
    (200, "{'status': 'success'", "application/json"),
    (200, {"status": "weird"}, "application/json"),
    (504, {"nothing": "here"}, "application/json"),
])
async def test_unreadable_answers_mean_the_outcome_is_unknown(fake, client, status, body,
                                                              content_type):
    fake.script("submit", status, body, content_type=content_type)
    with pytest.raises(OutcomeUnknown):
        await client.submit(ENDPOINTS["v6"], body_for(fake, "v6"))
    assert len(fake.requests) == 1  # never retried: a second submit could charge twice


async def test_timeout_after_sending_is_unknown_and_not_retried(fake, client):
    fake.hang_next("submit", 10)
    with pytest.raises(OutcomeUnknown, match="timed out"):
        await client.submit(ENDPOINTS["v6"], body_for(fake, "v6"))
    assert len(fake.requests) == 1


async def test_connection_refused_means_not_sent(http, unused_tcp_port):
    client = ModelsLabClient(http, base_url=f"http://127.0.0.1:{unused_tcp_port}",
                             api_key=SecretStr("k"))
    with pytest.raises(NotSent):
        await client.submit(ENDPOINTS["v6"], {"prompt": "x"})


async def test_enterprise_endpoints_need_the_enterprise_key(fake, http):
    standard_only = ModelsLabClient(http, base_url=fake.base_url, api_key=SecretStr(fake.api_key))
    for name in ("enterprise", "enterprise_pony", "realtime"):
        assert not standard_only.has_key_for(ENDPOINTS[name])
        with pytest.raises(MissingKey, match="MODELSLAB_ENTERPRISE_API_KEY"):
            await standard_only.submit(ENDPOINTS[name], body_for(fake, name))
    assert fake.requests == []


async def test_errors_never_show_a_key(fake, client):
    fake.script("submit", 500, "<html>boom</html>", content_type="text/html")
    with pytest.raises(OutcomeUnknown) as caught:
        await client.submit(ENDPOINTS["v6"], body_for(fake, "v6"))
    assert fake.api_key not in str(caught.value)


async def test_success_at_once(fake, client):
    fake.mode = "success"
    answer = await client.submit(ENDPOINTS["realtime"], body_for(fake, "realtime", samples=3))
    assert answer.succeeded and len(answer.output) == 3
    async with aiohttp.ClientSession() as cdn, cdn.get(answer.output[0]) as resp:
        assert resp.status == 200 and resp.content_type == "image/png"
    assert fake.cdn_key_leaks() == []


async def test_a_fetch_result_url_that_could_be_read_two_ways_gets_no_key(fake, client):
    submitted = await client.submit(ENDPOINTS["v6"], body_for(fake, "v6"))
    tricky = (f"{fake.base_url}\\@evil.example/api/v6/images/fetch/{submitted.request_id}")
    answer = await client.fetch(ENDPOINTS["v6"], submitted.request_id, fetch_url=tricky)
    assert answer.status is ApiStatus.PROCESSING
    assert fake.fetches[-1].path == f"/api/v6/images/fetch/{submitted.request_id}"


# --- protocol details from ModelsLab's documentation -----------------------------------------

@pytest.mark.parametrize(("status", "message"), [
    (500, "Internal server error. Please try again."),
    (503, "Service temporarily unavailable. Please try again later."),
])
async def test_a_documented_try_again_answer_without_a_job_is_safe_to_send_again(
        fake, client, status, message):
    fake.script("submit", status, {"status": "error", "message": message})
    with pytest.raises(NotSent) as caught:  # the job layer submits it again, with backoff
        await client.submit(ENDPOINTS["v6"], body_for(fake, "v6"))
    assert message in str(caught.value)


@pytest.mark.parametrize("body", [
    # names a job: it may have been taken
    {"status": "error", "message": "Please try again.", "id": 77},
    {"status": "error", "message": "Please try again later.",
     "fetch_result": "https://modelslab.com/api/v6/images/fetch/77"},
    {"status": "error", "message": "Please try again.", "future_links": ["https://x/1.png"]},
    {"status": "processing", "message": "Please try again.", "id": 77},
])
async def test_a_5xx_that_may_have_taken_the_job_is_never_sent_twice(fake, client, body):
    fake.script("submit", 503, body)
    with pytest.raises((OutcomeUnknown, Rejected)) as caught:
        await client.submit(ENDPOINTS["v6"], body_for(fake, "v6"))
    assert not isinstance(caught.value, NotSent)


async def test_a_5xx_error_without_try_again_keeps_todays_rule(fake, client):
    fake.script("submit", 503, {"status": "error", "message": "Service busy"})
    with pytest.raises(Rejected):
        await client.submit(ENDPOINTS["v6"], body_for(fake, "v6"))


async def test_same_host_fetch_result_carries_request_id_in_the_body(fake, client):
    submitted = await client.submit(ENDPOINTS["enterprise"], body_for(fake, "enterprise"))
    await client.fetch(ENDPOINTS["enterprise"], submitted.request_id,
                       fetch_url=submitted.fetch_result)
    sent = fake.fetches[-1]
    assert sent.path == f"/api/v1/enterprise/fetch/{submitted.request_id}"
    assert sent.body == {"key": fake.enterprise_key, "request_id": submitted.request_id}
    assert sent.accepted


async def test_a_processing_answer_without_an_id_is_fetched_through_fetch_result(fake, client):
    submitted = await client.submit(ENDPOINTS["v6"], body_for(fake, "v6"))
    await fake.complete(submitted.request_id)
    done = await client.fetch(ENDPOINTS["v6"], None, fetch_url=submitted.fetch_result)
    assert done.succeeded
    assert fake.fetches[-1].body == {"key": fake.api_key}
    with pytest.raises(OutcomeUnknown):  # no id and no usable URL: nothing to ask
        await client.fetch(ENDPOINTS["v6"], None, fetch_url="https://elsewhere.example/f/1")


@pytest.mark.parametrize(("headers", "body", "wait"), [
    ({"X-RateLimit-Reset": "45"}, {"status": "error", "message": "Too many"}, 45),
    ({"X-RateLimit-Reset": "45", "Retry-After": "10"}, {"status": "error", "message": "x",
                                                          "retry_after": 5}, 45),
    ({"Retry-After": "50", "X-RateLimit-Reset": "3"}, {"status": "error", "message": "x"}, 50),
    ({"X-RateLimit-Reset": "20"}, "<html>slow down</html>", 20),
])
async def test_429_honours_x_ratelimit_reset(fake, client, headers, body, wait):
    fake.script("submit", 429, body, headers=headers,
                content_type="text/html" if isinstance(body, str) else "application/json")
    with pytest.raises(RateLimited) as caught:
        await client.submit(ENDPOINTS["v6"], body_for(fake, "v6"))
    assert caught.value.retry_after == wait


async def test_429_reset_as_an_epoch_second_is_turned_into_a_wait(fake, client):
    import time
    fake.script("submit", 429, {"status": "error", "message": "x"},
                headers={"X-RateLimit-Reset": str(int(time.time()) + 120)})
    with pytest.raises(RateLimited) as caught:
        await client.submit(ENDPOINTS["v6"], body_for(fake, "v6"))
    assert 100 <= caught.value.retry_after <= 121


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirected_submit_or_fetch_sends_the_key_nowhere_else(fake, client, status,
                                                                       unused_tcp_port):
    """No request carrying a key follows a redirect: a 307/308 would re-send the body (key and
    webhook URL) to wherever it points. The redirect is an error in words."""
    seen: list[web.Request] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request)
        return web.json_response({"status": "success", "id": 1, "output": ["https://x/1.png"]})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    elsewhere = f"http://127.0.0.1:{unused_tcp_port}"
    try:
        fake.script("submit", status, {"status": "moved"},
                    headers={"Location": elsewhere + "/api/v6/images/img2img"})
        with pytest.raises(Redirected) as submit_error:
            await client.submit(ENDPOINTS["v6"], body_for(fake, "v6"),
                                webhook="https://bot.example.org/webhooks/x/secret")
        fake.script("fetch", status, "", headers={"Location": elsewhere + "/fetch/1"})
        with pytest.raises(FetchRedirected) as fetch_error:
            await client.fetch(ENDPOINTS["v6"], "1")
    finally:
        await runner.cleanup()
    assert seen == []
    assert isinstance(submit_error.value, Rejected)  # not accepted at the API: not charged
    assert isinstance(fetch_error.value, OutcomeUnknown)  # the poller asks again later
    for error in (submit_error.value, fetch_error.value):
        assert "redirect to another address" in str(error)
        assert "the key was not sent there" in str(error)
        assert fake.api_key not in str(error)
    assert "redirect" in submit_error.value.message
