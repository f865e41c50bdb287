"""The job services as a process of their own (tests/support/engine_process.py), started with
settings in the environment exactly as the bot's, for crash, shutdown and benchmark runs."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.support.jobs import cdn_host

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_settings(fake, workdir: Path, port: int, **extra: str) -> dict[str, str]:
    """The environment for an engine process against the fake ModelsLab ``fake``."""
    return {**os.environ,
            "DISCORD_TOKEN": "not-used-here", "MODELSLAB_API_KEY": fake.api_key,
            "MODELSLAB_ENTERPRISE_API_KEY": fake.enterprise_key,
            "MODELSLAB_BASE_URL": fake.base_url, "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "WEB_HOST": "127.0.0.1", "WEB_PORT": str(port), "METRICS_PORT": str(_free_port()),
            "DATABASE_PATH": str(workdir / "bot.sqlite3"),
            "ALLOW_LOOPBACK_OUTBOUND": "1", "MODELSLAB_OUTPUT_HOSTS": cdn_host(fake),
            "DELIVERIES_FILE": str(workdir / "deliveries.jsonl"),
            "PYTHONPATH": str(ROOT), **extra}


class EngineProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.engine_process"], cwd=ROOT, env=self.env,
            stdout=self.log.open("a"), stderr=subprocess.STDOUT)

    async def ready(self, url: str) -> None:
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as http:
            while True:
                assert self.proc.poll() is None, self.log.read_text()
                try:
                    async with http.get(url + "/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, self.log.read_text()
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
