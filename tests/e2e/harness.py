"""The real bot, started as an admin starts it (`python -m bot` with settings in the
environment), against the local fake Discord and fake ModelsLab on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETTING_PREFIXES = ("DISCORD_", "MODELSLAB_", "WEB_", "PUBLIC_", "DATABASE_", "DEV_GUILD",
                    "DEFAULT_MODEL", "DAILY_", "LOG_LEVEL", "METRICS_", "COOLDOWN_",
                    "MODEL_LIST", "ALLOW_LOOPBACK_OUTBOUND", "SHARD_", "JOB_LEASE",
                    "JOB_RETENTION")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class BotProcess:
    """``python -m bot`` in its own process; stopped by its own pid."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES)}
        self.env = {**base, **env, "PYTHONUNBUFFERED": "1"}
        self.workdir = workdir
        self.log_path = workdir / "bot.log"
        self.proc: subprocess.Popen | None = None
        self.port = int(env["WEB_PORT"])

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot"], cwd=self.workdir, env=self.env,
            stdout=self.log_path.open("a"), stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_exit(self, within: float = 15.0) -> int:
        deadline = time.monotonic() + within
        while self.alive():
            if time.monotonic() > deadline:
                raise AssertionError("the bot did not exit:\n" + self.log()[-3000:])
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def kill(self) -> None:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    async def terminate(self, within: float = 20.0) -> None:
        """SIGTERM, then wait without blocking the event loop: the fakes live in this loop,
        and a bot finishing its work on the way out still needs them to answer."""
        if not self.alive():
            return
        self.proc.terminate()
        try:
            await self.wait_exit(within)
        except AssertionError:
            self.kill()
