"""Launcher: settings -> logging -> resources -> bot. ``python -m bot``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys

from pydantic import ValidationError

from bot.logs import FORMAT, JobContextFilter
from bot.settings import Settings, describe_settings_error

log = logging.getLogger("bot")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr)
    for handler in logging.getLogger().handlers:  # "[job abcd1234] " on a job's records
        handler.addFilter(JobContextFilter())
    # discord.py's gateway chatter is noise at INFO; its warnings still show.
    logging.getLogger("discord.gateway").setLevel(max(logging.WARNING, logging.getLevelName(level)))


async def run(settings: Settings) -> int:
    # Imported here so that a settings mistake is reported before the heavier imports.
    import aiohttp
    import discord

    from bot.app import create_bot, point_discord_at

    point_discord_at(settings)
    bot = create_bot(settings)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def request_stop(sig: signal.Signals) -> None:
        log.info("received %s, shutting down", sig.name)
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig)

    async with bot:
        runner = asyncio.create_task(bot.start(settings.discord_token.get_secret_value()))
        stopper = asyncio.create_task(stopping.wait())
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if runner in done:
            try:
                runner.result()
            except discord.LoginFailure:
                print("Remixer cannot start: Discord rejected DISCORD_TOKEN "
                      "(check the bot token in the Discord developer portal).", file=sys.stderr)
                return 1
            except discord.PrivilegedIntentsRequired:
                print("Remixer cannot start: the bot asks for an intent that is not enabled "
                      "in the Discord developer portal.", file=sys.stderr)
                return 1
            except (aiohttp.ClientConnectionError, discord.GatewayNotFound) as exc:
                # Logging in comes first: a network failure here is Discord being out of
                # reach (aiohttp's connection errors are OSErrors too, hence caught first).
                print(f"Remixer cannot start: Discord cannot be reached "
                      f"({describe_connection_error(exc)}). Check this machine's network "
                      f"connection, DNS and firewall.", file=sys.stderr)
                return 1
            except OSError as exc:
                print(f"Remixer cannot start: the web server cannot listen on "
                      f"{settings.web_host}:{settings.web_port} ({exc.strerror or exc}).",
                      file=sys.stderr)
                return 1
            return 0
        await bot.close()
        await asyncio.gather(runner, return_exceptions=True)
    return 0


def describe_connection_error(exc: BaseException) -> str:
    """Where the bot tried to connect and why it could not, in one short phrase."""
    key = getattr(exc, "host", None) and f"{exc.host}:{exc.port}"  # type: ignore[attr-defined]
    code = getattr(exc, "errno", None)
    if isinstance(getattr(exc, "os_error", None), socket.gaierror):
        reason = "the name does not resolve (DNS)"
    elif code and code > 0:
        reason = os.strerror(code)
    else:
        reason = str(exc) or type(exc).__name__
    return f"{key}: {reason}" if key else reason


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        print(describe_settings_error(exc), file=sys.stderr)
        return 2
    if (problem := settings.shard_problem()) is not None:
        print(f"Remixer cannot start: {problem}.", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        return asyncio.run(run(settings))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
