"""The web app's typed keys, in one place."""

from __future__ import annotations

from aiohttp import web

from bot.jobs.engine import JobEngine

ENGINE = web.AppKey("engine", JobEngine)
