"""`python -m bot` as an admin runs it, before any network is involved."""

from __future__ import annotations

import os
import subprocess
import sys


def run_bot(tmp_path, env: dict[str, str] | None = None, dotenv: str | None = None):
    if dotenv is not None:
        (tmp_path / ".env").write_text(dotenv)
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("DISCORD_", "MODELSLAB_", "WEB_", "PUBLIC_", "DATABASE_",
                                  "DEV_GUILD", "DEFAULT_MODEL", "DAILY_", "LOG_LEVEL",
                                  "COOLDOWN_"))}
    return subprocess.run(
        [sys.executable, "-m", "bot"], cwd=tmp_path, env={**clean, **(env or {})},
        capture_output=True, text=True, timeout=30,
    )


def test_no_settings_names_every_missing_variable_and_exits_non_zero(tmp_path):
    result = run_bot(tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "DISCORD_TOKEN" in lines[0] and "MODELSLAB_API_KEY" in lines[0]
    assert "Traceback" not in result.stderr


def test_invalid_values_are_named_without_a_traceback(tmp_path):
    result = run_bot(tmp_path, env={"DISCORD_TOKEN": "t", "MODELSLAB_API_KEY": "k",
                                    "WEB_PORT": "http", "MODELSLAB_BASE_URL": "modelslab.com"})
    assert result.returncode != 0
    assert "WEB_PORT" in result.stderr and "MODELSLAB_BASE_URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_settings_come_from_dotenv_in_the_working_directory(tmp_path):
    result = run_bot(tmp_path, dotenv="DISCORD_TOKEN=t\nMODELSLAB_API_KEY=k\nWEB_PORT=nope\n")
    assert "missing" not in result.stderr  # both required values were read from .env
    assert "WEB_PORT must be a valid integer (got 'nope')" in result.stderr
