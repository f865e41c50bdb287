"""Logs that say which job they are about, and never show a webhook secret.

The engine runs each step of a job (submit, poll, result, download and delivery) in a task
whose context names the job's ``track_id``; the webhook route does the same once the request
is authenticated. ``JobContextFilter``, on the log handler, copies it onto every record:
``record.track_id`` (the whole id, or ``""``) and ``record.job`` (``"[job abcd1234] "`` or
``""``, for the format string). It also masks the secret of any webhook URL in a message.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
from collections.abc import Iterator

TRACK_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("track_id", default=None)
FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(job)s%(message)s"
_WEBHOOK_SECRET = re.compile(r"(/webhooks/modelslab/[^/\s]+/)[^\s\"'<>]+")


def job_tag(track_id: str | None) -> str:
    return f"[job {track_id[:8]}] " if track_id else ""


def context_for(track_id: str) -> contextvars.Context:
    """A copy of the current context in which log records carry ``track_id`` (for tasks)."""
    context = contextvars.copy_context()
    context.run(TRACK_ID.set, track_id)
    return context


@contextlib.contextmanager
def job_context(track_id: str) -> Iterator[None]:
    """Records logged inside the block carry ``track_id``."""
    token = TRACK_ID.set(track_id)
    try:
        yield
    finally:
        TRACK_ID.reset(token)


def redact(text: str) -> str:
    """``.../webhooks/modelslab/<track_id>/<secret>`` with the secret masked."""
    return _WEBHOOK_SECRET.sub(r"\1***", text)


class JobContextFilter(logging.Filter):
    """Adds ``track_id`` and ``job`` to every record; masks webhook secrets in messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        track_id = TRACK_ID.get()
        record.track_id = track_id or ""
        record.job = job_tag(track_id)
        if "/webhooks/modelslab/" in str(record.msg) or any(
                isinstance(a, str) and "/webhooks/modelslab/" in a
                for a in (record.args if isinstance(record.args, tuple) else ())):
            record.msg, record.args = redact(record.getMessage()), ()
        return True
