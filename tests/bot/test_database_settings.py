"""DATABASE_URL, SHARD_COUNT and SHARD_IDS as an admin meets them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.settings import Settings, describe_settings_error

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {"DISCORD_TOKEN": "discord-secret", "MODELSLAB_API_KEY": "ml-secret"}
NAMES = ("DATABASE_URL", "DATABASE_PATH", "SHARD_COUNT", "SHARD_IDS", "JOB_LEASE_SECONDS")


def load(monkeypatch, **env) -> Settings:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    for name, value in {**REQUIRED, **env}.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def test_sqlite_stays_the_default_and_database_path_is_honoured(monkeypatch):
    assert load(monkeypatch).database == Path("data/bot.sqlite3")
    assert load(monkeypatch, DATABASE_PATH="/srv/x.sqlite3").database == Path("/srv/x.sqlite3")
    assert load(monkeypatch, DATABASE_URL="sqlite:///var/bot.sqlite3").database == Path(
        "var/bot.sqlite3")
    assert load(monkeypatch, DATABASE_URL="sqlite:////srv/bot.sqlite3").database == Path(
        "/srv/bot.sqlite3")
    url = "postgresql://remixer:pw@db:5432/remixer"
    assert load(monkeypatch, DATABASE_URL=url).database == url


def test_a_database_url_of_another_kind_is_named(monkeypatch):
    with pytest.raises(ValidationError) as caught:
        load(monkeypatch, DATABASE_URL="mysql://db/remixer")
    text = describe_settings_error(caught.value)
    assert "DATABASE_URL must be sqlite:///" in text and "postgresql://" in text


def test_shards(monkeypatch):
    s = load(monkeypatch)
    assert s.shard_count is None and s.shards is None and s.shard_problem() is None
    s = load(monkeypatch, SHARD_COUNT="4", SHARD_IDS="1, 3")
    assert s.shards == [1, 3] and s.shard_problem() is None
    assert "below SHARD_COUNT" in load(monkeypatch, SHARD_COUNT="2",
                                       SHARD_IDS="2").shard_problem()
    with pytest.raises(ValidationError):
        load(monkeypatch, SHARD_IDS="one")


def test_shard_ids_without_a_count_stop_the_bot_at_once(tmp_path):
    env = {"PATH": "/usr/bin:/bin", **REQUIRED, "SHARD_IDS": "0"}
    done = subprocess.run([sys.executable, "-m", "bot"], cwd=tmp_path, env={
        **env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Remixer cannot start: SHARD_IDS needs SHARD_COUNT" in done.stderr
