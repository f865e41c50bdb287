"""Where a URL really points, as the key check and the output-host check see it."""

from __future__ import annotations

import pytest

from bot.net import origin


@pytest.mark.parametrize(("url", "expected"), [
    ("https://modelslab.com/api/v6/images/fetch/1", ("https", "modelslab.com", 443)),
    ("HTTPS://ModelsLab.com/", ("https", "modelslab.com", 443)),
    ("http://127.0.0.1:9000/a", ("http", "127.0.0.1", 9000)),
    # read differently by the standard library and by aiohttp: trusted by neither check
    ("https://modelslab.com\\@evil.example/api/v6/images/fetch/1", None),
    ("https://evil.example\u2100.r2.dev/x.png", None),
    ("http://modelslab.com:99999/", None),
    ("http://[::1", None),
])
def test_origin(url, expected):
    assert origin(url) == expected
