"""Every documented answer shape, read the way the job layer needs it."""

from __future__ import annotations

import json

import pytest

from bot.modelslab.responses import ApiStatus, MalformedResponse, parse_response

SUCCESS = {
    "status": "success",
    "generationTime": 1.71,
    "id": 12345,
    "output": ["https://pub-1.r2.dev/generations/a-0.png", "https://pub-1.r2.dev/generations/a-1.png"],
    "proxy_links": ["https://cdn2.stablediffusionapi.com/generations/a-0.png"],
    "nsfw_content_detected": False,
    "meta": {"prompt": "a fox", "seed": 1234567890, "W": 1024, "H": 1024},
    "webhook_status": "",
    "tip": "Get 20x faster image generation",
    "track_id": "trk",
}


def test_success():
    r = parse_response(200, json.dumps(SUCCESS).encode())
    assert r.status is ApiStatus.SUCCESS and r.succeeded and r.ended
    assert r.request_id == "12345"
    assert r.output == tuple(SUCCESS["output"])
    assert r.seed == 1234567890
    assert r.generation_time == pytest.approx(1.71)
    assert r.track_id == "trk"
    assert r.nsfw is False


@pytest.mark.parametrize("message_key", ["messege", "message"])
def test_processing_with_either_spelling(message_key):
    body = {
        "status": "processing",
        "tip": "",
        "eta": 12.5,
        message_key: "Try to fetch request after given estimated time",
        "fetch_result": "https://modelslab.com/api/v6/images/fetch/99",
        "id": 99,
        "output": [],
        "future_links": ["https://pub-1.r2.dev/generations/b-0.png"],
        "meta": {"seed": "42"},
    }
    r = parse_response(200, body)
    assert r.status is ApiStatus.PROCESSING and not r.ended
    assert r.eta == 12.5
    assert r.fetch_result == "https://modelslab.com/api/v6/images/fetch/99"
    assert r.future_links == ("https://pub-1.r2.dev/generations/b-0.png",)
    assert r.output == ()
    assert r.message == "Try to fetch request after given estimated time"
    assert r.seed == 42


def test_processing_fetch_with_output_as_empty_string_and_integer_eta():
    r = parse_response(200, {"status": "processing", "id": "77", "output": "", "eta": 3})
    assert r.output == () and r.eta == 3.0 and r.request_id == "77"


def test_error_with_string_message_and_no_id_on_http_200():
    body = {"status": "error", "message": "Unable to fetch image from provided URL"}
    r = parse_response(200, body)
    assert r.status is ApiStatus.ERROR and r.ended and not r.succeeded
    assert r.request_id is None
    assert r.readable_error == "Unable to fetch image from provided URL"


def test_error_with_field_errors_object():
    body = {"status": "error", "messege": {
        "init_image": ["The init image field is required."],
        "width": ["The width must not be greater than 1024.", "The width must be a number."],
    }}
    r = parse_response(200, body)
    assert r.field_errors == {
        "init_image": ("The init image field is required.",),
        "width": ("The width must not be greater than 1024.", "The width must be a number."),
    }
    assert "init_image: The init image field is required." in r.readable_error
    assert "width: The width must not be greater than 1024." in r.readable_error


def test_failed_from_a_webhook_with_string_id():
    r = parse_response(200, {"status": "failed", "id": "555", "message": "out of memory",
                             "track_id": "t"})
    assert r.status is ApiStatus.FAILED and r.request_id == "555"
    assert r.readable_error == "out of memory"


def test_error_without_any_message_still_reads():
    r = parse_response(200, {"status": "error"})
    assert "without saying why" in r.readable_error


def test_rate_limited():
    body = {"status": "error", "message": "Rate limit exceeded. Maximum 5 queued requests allowed.",
            "retry_after": 30}
    r = parse_response(429, body)
    assert r.http_status == 429 and r.retry_after == 30.0
    assert r.message.startswith("Rate limit exceeded")


@pytest.mark.parametrize(
    ("proxy_links", "expected"),
    [
        (["https://a.example/1.png", "https://a.example/2.png"],
         ("https://a.example/1.png", "https://a.example/2.png")),
        ("", ()),
        ({"0": "https://a.example/1.png", "1": ["https://a.example/2.png"]},
         ("https://a.example/1.png", "https://a.example/2.png")),
        (None, ()),
    ],
)
def test_proxy_links_in_each_shape(proxy_links, expected):
    assert parse_response(200, {**SUCCESS, "proxy_links": proxy_links}).proxy_links == expected


@pytest.mark.parametrize(("raw", "expected"), [(5, "5"), ("5", "5"), (" 6 ", "6"), (7.0, "7"),
                                               (None, None), (True, None), ("", None)])
def test_id_as_integer_or_string(raw, expected):
    assert parse_response(200, {**SUCCESS, "id": raw}).request_id == expected


@pytest.mark.parametrize(("raw", "expected"), [(True, True), ("true", True), ([False, True], True),
                                               ([False, False], False), (None, False)])
def test_nsfw_flag_shapes(raw, expected):
    assert parse_response(200, {**SUCCESS, "nsfw_content_detected": raw}).nsfw is expected


def test_only_web_urls_are_taken_as_outputs():
    body = {**SUCCESS, "output": ["javascript:alert(1)", "file:///etc/passwd", 5,
                                  "https://ok.example/x.png"]}
    assert parse_response(200, body).output == ("https://ok.example/x.png",)


def test_single_url_string_output():
    assert parse_response(200, {**SUCCESS, "output": "https://ok.example/x.png"}).output == (
        "https://ok.example/x.png",)


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>502 Bad Gateway</body></html>",
        b"{not json",
        b"[1, 2]",
        b'{"no": "status"}',
        b'{"status": "pending-ish"}',
        b"",
    ],
)
def test_malformed_answers_are_named(body):
    with pytest.raises(MalformedResponse):
        parse_response(200, body)


def test_status_is_case_and_space_tolerant():
    assert parse_response(200, {"status": " Success ", "output": []}).succeeded
