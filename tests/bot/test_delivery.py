"""What members see of a result: its text, buttons and files (Discord-free parts)."""

from __future__ import annotations

import io
import os

from PIL import Image

from bot.delivery import (
    carries,
    failure_text,
    fit_for_upload,
    is_account_error,
    job_marker,
    quote,
    result_text,
    shrink,
)
from bot.jobs.models import Job, JobStatus, Output, Requester


def output(data: bytes, name: str = "remix_abcdefgh_1.png") -> Output:
    return Output(0, name, "image/png", data, "https://cdn.example/x.png")


def test_small_outputs_are_posted_as_they_are():
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "PNG")
    assert fit_for_upload(output(buf.getvalue())) == ("remix_abcdefgh_1.png", buf.getvalue())


def test_outputs_over_the_upload_limit_are_re_encoded_to_fit():
    noise = Image.frombytes("RGB", (1024, 1024), os.urandom(1024 * 1024 * 3))
    buf = io.BytesIO()
    noise.save(buf, "PNG")  # random pixels: about 3 MB, far over a 1 MB limit
    name, data = fit_for_upload(output(buf.getvalue()), limit=1024 * 1024)
    assert name == "remix_abcdefgh_1.jpg" and len(data) <= 1024 * 1024
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.width >= 350


# --- texts within Discord's limits --------------------------------------------------------

def job(prompt: str, *, model: str = "pony_realism", error: str | None = None,
        status: str = "succeeded", seed: int | None = 12345678901234) -> Job:
    fields = {name: None for name in Job.__dataclass_fields__}
    fields.update(
        track_id="AbCdEfGh" + "x" * 16, endpoint="enterprise_pony", status=JobStatus(status),
        payload={"prompt": prompt, "model_id": model, "strength": 0.7}, options={},
        requester=Requester(user_id=1001, guild_id=10, channel_id=5000), images=1,
        outputs=(), future_links=(), nsfw=False, seed=seed, error=error, created_at=0.0,
        submit_attempts=0, poll_attempts=0, downloaded=True, delivery_attempts=0)
    return Job(**fields)


NASTY_PROMPTS = [
    "x" * 2000,
    "*" * 2000,
    "a" + "\n" * 1998 + "b",
    "\\" * 2000,
    ("# h\n[a](http://x) <@1> @everyone _i_ `c` ~~s~~ ||p|| > q\n" * 60)[:2000],
]


def test_every_text_fits_whatever_the_prompt_model_or_error():
    long_model = "m" * 100
    long_error = "ModelsLab could not make the image: " + "e" * 5000
    note = "\n" + "n" * 150
    for prompt in NASTY_PROMPTS:
        for extra in ("", note):
            ok = job(prompt, model=long_model)
            failed = job(prompt, model=long_model, error=long_error, status="failed")
            for text in (result_text(ok, extra=extra), failure_text(failed, extra=extra),
                         failure_text(failed, extra=extra, public=True),
                         result_text(ok, extra=extra, prompt_limit=100)):
                assert len(text) <= 2000
                assert text.startswith("<@1001> your image")
                assert text.endswith(extra)  # the marker line and the note are never cut
                assert job_marker(ok) in text


def test_prompts_are_shown_as_text():
    text = result_text(job("# Big\n[free](http://evil.example) <@1002> @everyone _x_"))
    assert "[free](" not in text and "<@1002>" not in text and "@everyone" not in text
    assert "> \\# Big" in text and "\\_x\\_" in text
    assert "snake_case" in quote("snake_case")  # an underscore in a word formats nothing


def test_a_prompt_quoting_a_marker_is_not_the_jobs_message():
    victim = job("mine")
    other = job(f"see {job_marker(victim)} here")
    other = Job(**{**{f: getattr(other, f) for f in Job.__dataclass_fields__},
                   "track_id": "ZZZZZZZZ" + "y" * 16})

    class Message:
        def __init__(self, content: str) -> None:
            self.content = content
            self.components = []

    assert not carries(Message(result_text(other)), victim)
    assert carries(Message(result_text(victim)), victim)
    assert carries(Message(failure_text(job("mine", status="failed", error="x"))), victim)


def test_account_errors_are_recognised():
    for words in ("Insufficient credits", "Invalid API key", "subscription expired",
                  "Your wallet balance is too low", "The key field is required."):
        assert is_account_error(words), words
    for words in ("NSFW content detected", "Out of memory on the GPU", "a monkey"):
        assert not is_account_error(words), words
    public = failure_text(job("p", status="failed", error="Insufficient credits: top up"),
                          public=True)
    assert "credit" not in public.lower() and "ModelsLab account" in public


def test_a_refused_image_is_sent_again_at_most_half_its_size():
    from tests.fakes.images import png_for
    data = png_for("x", 1024)
    _, smaller = shrink("remix_1.png", data)
    assert len(smaller) <= len(data) // 2
    with Image.open(io.BytesIO(smaller)) as image:
        assert image.width >= 64
