"""The job services in a process of their own, for crash tests: ``python -m
tests.support.engine_process``. Settings come from the environment exactly as for the bot;
deliveries are appended to the file named by ``DELIVERIES_FILE``."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from pathlib import Path

from bot.runtime import Services
from bot.settings import Settings
from tests.support.jobs import FileDelivery


def die_with_parent() -> None:
    """If the test process dies, so does this one (Linux)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


async def main() -> None:
    settings = Settings(_env_file=None)
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    services = Services(settings, FileDelivery(Path(os.environ["DELIVERIES_FILE"])))
    await services.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await services.stop()


if __name__ == "__main__":
    die_with_parent()
    if os.environ.get("ENGINE_PROFILE"):  # a profile of the run, written at SIGTERM
        import cProfile

        cProfile.run("asyncio.run(main())", os.environ["ENGINE_PROFILE"])
    else:
        asyncio.run(main())
