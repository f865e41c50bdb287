"""ModelsLab's webhooks.

The webhook route is on the public internet and ModelsLab signs nothing. So each job's
webhook URL carries a per-job secret (stored hashed), checked before the body is even read;
anything without it gets the same 404 as a path that does not exist, and changes nothing.
Bodies are size-capped and validated, and output URLs are accepted only on ModelsLab's output
hosts (MODELSLAB_OUTPUT_HOSTS). The route answers at once; the work happens after.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from aiohttp import web

from bot.jobs.engine import JobEngine
from bot.jobs.models import Job, JobStatus
from bot.logs import job_context
from bot.modelslab.responses import ApiStatus, MalformedResponse, parse_response
from bot.net import DEFAULT_OUTPUT_HOSTS, OutputHosts, read_capped
from bot.web.keys import ENGINE

log = logging.getLogger(__name__)

MAX_WEBHOOK_BYTES = 64 * 1024
# The suffixes of ModelsLab's default output hosts (the MODELSLAB_OUTPUT_HOSTS default).
OUTPUT_HOST_SUFFIXES: tuple[str, ...] = tuple(
    dict.fromkeys(p.removeprefix("*.") for p in DEFAULT_OUTPUT_HOSTS))


def json_response(status: int, body: dict[str, object]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _not_found() -> web.Response:
    return json_response(404, {"error": "not found"})


def outputs_allowed(urls: Iterable[str], hosts: OutputHosts | None = None) -> bool:
    """True when every URL is on one of ModelsLab's output hosts (MODELSLAB_OUTPUT_HOSTS):
    the same check the downloader makes of links from a fetch or from the submit's answer."""
    allowed = hosts or OutputHosts()
    return all(allowed.allows(url) for url in urls)


async def modelslab_webhook(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    track_id = request.match_info["track_id"]
    secret = request.match_info["secret"]
    job = None
    if len(track_id) <= 64 and len(secret) <= 128:
        job = await engine.store.authenticate(track_id, secret)
    if job is None:
        log.warning("webhook refused: no job matches the path")
        engine.metrics.webhook("refused")
        return _not_found()
    with job_context(track_id):
        answer = await _job_webhook(request, engine, job)
    if answer.status != 200:
        engine.metrics.webhook("refused")
    return answer


async def _job_webhook(request: web.Request, engine: JobEngine, job: Job) -> web.Response:
    """An authenticated webhook: checked, then handed to the engine (answered at once)."""
    track_id = job.track_id
    if request.content_length is not None and request.content_length > MAX_WEBHOOK_BYTES:
        return json_response(413, {"error": "body too large"})
    raw = await read_capped(request.content, MAX_WEBHOOK_BYTES)
    if len(raw) > MAX_WEBHOOK_BYTES:
        return json_response(413, {"error": "body too large"})
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise MalformedResponse("not an object")
        response = parse_response(200, data)
        # What is kept must fit SQLite: UTF-8 text (no lone surrogates), 64-bit integers.
        json.dumps(data, ensure_ascii=False).encode()
        if response.seed is not None and not -(2**63) <= response.seed < 2**63:
            raise MalformedResponse("seed out of range")
    except (ValueError, MalformedResponse, RecursionError, OverflowError):
        log.warning("job %s: malformed webhook body refused", track_id)
        return json_response(400, {"error": "malformed body"})
    if response.track_id is not None and response.track_id != track_id:
        log.warning("job %s: webhook names another track_id; refused", track_id)
        return json_response(400, {"error": "track_id does not match"})
    if response.request_id and job.request_id and response.request_id != job.request_id:
        log.warning("job %s: webhook names another request id; refused", track_id)
        return json_response(400, {"error": "id does not match"})
    if response.status is ApiStatus.SUCCESS:
        if not response.output:
            return json_response(422, {"error": "success without outputs"})
        if (job.status is JobStatus.SUBMITTED and job.request_id is None
                and not job.future_links and response.request_id):
            # The submit's answer was lost, so nothing vouches for these links: the job
            # takes ModelsLab's id from this (authenticated) webhook and fetches its
            # outputs from the API itself. The links in the body are not used.
            log.info("job %s: webhook for a submit whose answer was lost", track_id)
            engine.metrics.webhook("accepted")
            engine.adopt_request_id(track_id, response.request_id)
            return json_response(202, {"ok": True})
        if not outputs_allowed(response.output, engine.downloader.output_hosts):
            log.warning("job %s: webhook outputs on unexpected hosts; refused", track_id)
            return json_response(422, {"error": "outputs on unexpected hosts"})

    if job.status in (JobStatus.SUBMITTED, JobStatus.PROCESSING):
        log.info("job %s: webhook %s received", track_id, response.status)
        engine.metrics.webhook("accepted")
        engine.accept_result(track_id, response)
    else:
        log.info("job %s: repeated webhook (%s) ignored", track_id, job.status)
        engine.metrics.webhook("duplicate")
    return json_response(200, {"ok": True})
