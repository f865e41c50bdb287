"""Settings as an admin meets them: names fixed, defaults documented, mistakes named."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.settings import Settings, describe_settings_error

REQUIRED = {"DISCORD_TOKEN": "discord-secret", "MODELSLAB_API_KEY": "ml-secret"}
ALL_NAMES = [
    "DISCORD_TOKEN", "MODELSLAB_API_KEY", "MODELSLAB_ENTERPRISE_API_KEY", "MODELSLAB_BASE_URL",
    "PUBLIC_BASE_URL", "WEB_HOST", "WEB_PORT", "DATABASE_PATH", "DEV_GUILD_ID",
    "DEFAULT_MODEL_ID", "DAILY_IMAGE_QUOTA", "MODELSLAB_MAX_CONCURRENCY", "LOG_LEVEL",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ALL_NAMES:
        monkeypatch.delenv(name, raising=False)


def load(monkeypatch, **env) -> Settings:
    for name, value in {**REQUIRED, **env}.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def test_defaults(monkeypatch):
    s = load(monkeypatch)
    assert s.modelslab_base_url == "https://modelslab.com"
    assert s.public_base_url is None and not s.webhooks_enabled
    assert s.modelslab_enterprise_api_key is None and not s.enterprise_enabled
    assert (s.web_host, s.web_port) == ("0.0.0.0", 8080)
    assert s.database_path == Path("data/bot.sqlite3")
    assert s.dev_guild_id is None
    assert s.default_model_id == "pony_realism"
    assert s.daily_image_quota == 20
    assert s.modelslab_max_concurrency == 5
    assert s.log_level == "INFO"


def test_every_name_is_read(monkeypatch):
    s = load(
        monkeypatch,
        MODELSLAB_ENTERPRISE_API_KEY="ent-secret",
        MODELSLAB_BASE_URL="http://127.0.0.1:9000/",
        PUBLIC_BASE_URL="https://bot.example.org",
        WEB_HOST="127.0.0.1",
        WEB_PORT="9090",
        DATABASE_PATH="/var/lib/remixer/db.sqlite3",
        DEV_GUILD_ID="123456789012345678",
        DEFAULT_MODEL_ID="anything-v5",
        DAILY_IMAGE_QUOTA="50",
        MODELSLAB_MAX_CONCURRENCY="10",
        LOG_LEVEL="debug",
    )
    assert s.enterprise_enabled
    assert s.modelslab_enterprise_api_key.get_secret_value() == "ent-secret"
    assert s.modelslab_base_url == "http://127.0.0.1:9000"
    assert s.webhooks_enabled and s.public_base_url == "https://bot.example.org"
    assert (s.web_host, s.web_port) == ("127.0.0.1", 9090)
    assert s.database_path == Path("/var/lib/remixer/db.sqlite3")
    assert s.dev_guild_id == 123456789012345678
    assert s.default_model_id == "anything-v5"
    assert (s.daily_image_quota, s.modelslab_max_concurrency, s.log_level) == (50, 10, "DEBUG")


def test_secrets_are_hidden_in_reprs(monkeypatch):
    s = load(monkeypatch)
    assert "discord-secret" not in repr(s) and "ml-secret" not in str(s)


def test_empty_optional_values_mean_unset(monkeypatch):
    s = load(monkeypatch, PUBLIC_BASE_URL="", MODELSLAB_ENTERPRISE_API_KEY="", DEV_GUILD_ID="")
    assert s.public_base_url is None and s.modelslab_enterprise_api_key is None
    assert s.dev_guild_id is None


def test_dotenv_file_is_read(tmp_path, monkeypatch):
    env = tmp_path / ".env"
    env.write_text("DISCORD_TOKEN=from-file\nMODELSLAB_API_KEY=also\nWEB_PORT=9999\n")
    s = Settings(_env_file=env)
    assert s.discord_token.get_secret_value() == "from-file" and s.web_port == 9999


def message(monkeypatch, **env) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    return describe_settings_error(caught.value)


def test_missing_required_names_are_listed_in_one_line(monkeypatch):
    text = message(monkeypatch)
    assert "\n" not in text
    assert "missing required settings DISCORD_TOKEN, MODELSLAB_API_KEY" in text


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("WEB_PORT", "eighty", "WEB_PORT must be a valid integer (got 'eighty')"),
        ("WEB_PORT", "70000", "WEB_PORT must be less than or equal to 65535"),
        ("MODELSLAB_BASE_URL", "modelslab.com", "MODELSLAB_BASE_URL must be an http:// or https://"),
        ("PUBLIC_BASE_URL", "ftp://x", "PUBLIC_BASE_URL must be an http:// or https://"),
        ("DAILY_IMAGE_QUOTA", "-1", "DAILY_IMAGE_QUOTA must be greater than or equal to 0"),
        ("MODELSLAB_MAX_CONCURRENCY", "0", "MODELSLAB_MAX_CONCURRENCY must be greater than"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL must be 'DEBUG', 'INFO'"),
        ("DEFAULT_MODEL_ID", "no spaces allowed", "DEFAULT_MODEL_ID must be a ModelsLab model id"),
        ("DEV_GUILD_ID", "guild", "DEV_GUILD_ID must be a valid integer"),
    ],
)
def test_invalid_values_are_named(monkeypatch, name, value, words):
    text = message(monkeypatch, **REQUIRED, **{name: value})
    assert words in text
    assert "missing" not in text


def test_missing_and_invalid_together_and_no_secret_echoed(monkeypatch):
    text = message(monkeypatch, MODELSLAB_API_KEY="ml-secret", WEB_PORT="x")
    assert "missing required setting DISCORD_TOKEN" in text and "WEB_PORT" in text
    assert "ml-secret" not in text
