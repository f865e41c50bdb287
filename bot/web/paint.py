"""The mask painter in the browser: ``/paint/<token>`` and what its page asks for.

Everything is served by the bot itself (``bot/web/static``: one page, one script, one style
sheet; no CDN, no build step) under a strict Content-Security-Policy. The source image (and a
starting mask) are fetched through the bot, bound to the link, so the page's canvas is
same-origin. The first browser that opens a link gets a cookie that binds the link to it;
submitting also needs the per-page nonce in a header and a same-origin request.
"""

from __future__ import annotations

import hmac
import html
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import BodyPartReader, web

from bot.errors import UserFacingError
from bot.images import MAX_UPLOAD_BYTES
from bot.painter import FORM_FIELDS, LinkRefused, Painter

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
ASSETS = {"painter.js": "text/javascript", "painter.css": "text/css"}
COOKIE = "remixer_paint"
NONCE_HEADER = "X-Paint-Nonce"
MAX_FIELD_BYTES = 8 * 1024  # a form field (the prompt is at most 2,000 characters)
MAX_FORM_BYTES = MAX_UPLOAD_BYTES + 64 * 1024
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
           "Cache-Control": "no-store", "Cross-Origin-Resource-Policy": "same-origin"}


@dataclass
class PainterSlot:
    """The painter, set when the bot has one (PUBLIC_BASE_URL set); the web app is built
    before the bot's services exist."""

    painter: Painter | None = None
    public_base_url: str | None = None


PAINTER = web.AppKey("painter", PainterSlot)


def _page(text: str, status: int) -> web.Response:
    body = (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<title>Remixer painter</title><link rel=\"stylesheet\" href=\"/static/paint/painter.css\">"
        f"</head><body><main class=\"notice\"><h1>Remixer</h1><p>{html.escape(text)}</p>"
        "</main></body></html>")
    return web.Response(status=status, text=body, content_type="text/html", headers=HEADERS)


def _json(status: int, body: dict[str, object]) -> web.Response:
    return web.json_response(body, status=status, headers=HEADERS)


def _painter(request: web.Request) -> Painter:
    painter = request.app[PAINTER].painter
    if painter is None:
        raise LinkRefused(404, "This Remixer has no painter.")
    return painter


def _template() -> str:
    return (STATIC / "paint.html").read_text(encoding="utf-8")


async def paint_page(request: web.Request) -> web.Response:
    token = request.match_info["token"]
    try:
        link, secret = await _painter(request).open(token, request.cookies.get(COOKIE))
    except LinkRefused as exc:
        return _page(exc.text, exc.status)
    page = _template().replace("{{nonce}}", html.escape(secret))
    response = web.Response(text=page, content_type="text/html", headers=HEADERS)
    secure = urlsplit(str(request.app[PAINTER].public_base_url or "")).scheme == "https"
    response.set_cookie(COOKIE, secret, path=f"/paint/{token}", httponly=True, samesite="Lax",
                        secure=secure, max_age=int(max(60, link.expires_at - link.created_at)))
    return response


async def paint_info(request: web.Request) -> web.Response:
    try:
        link = await _painter(request).check(request.match_info["token"],
                                             request.cookies.get(COOKIE))
    except LinkRefused as exc:
        return _json(exc.status, {"error": exc.text})
    return _json(200, link.form_defaults())


async def _image(request: web.Request, *, mask: bool) -> web.Response:
    try:
        painter = _painter(request)
        link = await painter.check(request.match_info["token"], request.cookies.get(COOKIE))
        data, content_type = await painter.source_image(link, mask=mask)
    except LinkRefused as exc:
        return _json(exc.status, {"error": exc.text})
    except UserFacingError as exc:
        return _json(502, {"error": str(exc)})
    return web.Response(body=data, content_type=content_type, headers=HEADERS)


async def paint_image(request: web.Request) -> web.Response:
    return await _image(request, mask=False)


async def paint_mask(request: web.Request) -> web.Response:
    return await _image(request, mask=True)


def _same_origin(request: web.Request) -> bool:
    """A submission comes from the page itself: the browser says so (Sec-Fetch-Site, Origin)
    and it carries a custom header, which no other site can send without a preflight."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    base = request.app[PAINTER].public_base_url or ""
    wanted = urlsplit(base)
    given = urlsplit(origin)
    return (given.scheme, given.netloc) == (wanted.scheme, wanted.netloc) or \
        origin == f"{request.scheme}://{request.host}"


class _TooLarge(Exception):
    pass


async def _read_form(request: web.Request) -> tuple[bytes | None, dict[str, str]]:
    """The multipart form, read with a cap on every part (the app's own body limit does not
    apply to a streamed multipart body)."""
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise _TooLarge
    reader = await request.multipart()
    mask: bytes | None = None
    fields: dict[str, str] = {}
    total = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise ValueError("nested multipart")
        name = part.name
        cap = MAX_UPLOAD_BYTES if name == "mask" else MAX_FIELD_BYTES
        data = bytearray()
        while chunk := await part.read_chunk(64 * 1024):
            data.extend(chunk)
            total += len(chunk)
            if len(data) > cap or total > MAX_FORM_BYTES:
                raise _TooLarge
        if name == "mask":
            mask = bytes(data)
        elif name in FORM_FIELDS:
            fields[name] = data.decode("utf-8", errors="replace")
    return mask, fields


async def paint_submit(request: web.Request) -> web.Response:
    if not _same_origin(request):
        return _json(403, {"error": "Submit from the painter page itself."})
    nonce = request.headers.get(NONCE_HEADER)
    browser = request.cookies.get(COOKIE)
    if not nonce or not browser or not hmac.compare_digest(nonce, browser):
        return _json(403, {"error": "This page is out of date; open the painter link again."})
    try:
        painter = _painter(request)
        # Is the link usable at all, before reading a large body?
        await painter.check(request.match_info["token"], browser)
        try:
            mask, fields = await _read_form(request)
        except _TooLarge:
            return _json(413, {"error": "The mask is too large (at most 10 MB)."})
        except (ValueError, AssertionError, KeyError):
            return _json(400, {"error": "The form could not be read."})
        if not mask:
            return _json(400, {"error": "No mask was sent."})
        submitted = await painter.submit(request.match_info["token"], browser, mask, fields)
    except LinkRefused as exc:
        return _json(exc.status, {"error": exc.text})
    except UserFacingError as exc:
        return _json(400, {"error": str(exc)})
    except Exception:
        log.exception("painter submission failed")
        return _json(500, {"error": "Something went wrong on my side; it has been logged."})
    return _json(200, {"queued": True, "job": submitted.job.track_id[:8],
                       "position": submitted.position, "channel_url": submitted.channel_url})


async def static_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    body = (STATIC / name).read_bytes()
    return web.Response(body=body, content_type=content_type,
                        headers={**HEADERS, "Cache-Control": "no-cache"})


def add_routes(app: web.Application) -> None:
    app[PAINTER] = PainterSlot()
    app.router.add_get("/paint/{token}", paint_page)
    app.router.add_post("/paint/{token}", paint_submit)
    app.router.add_get("/paint/{token}/info", paint_info)
    app.router.add_get("/paint/{token}/image", paint_image)
    app.router.add_get("/paint/{token}/mask", paint_mask)
    app.router.add_get("/static/paint/{name}", static_asset)
