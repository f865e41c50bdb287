"""The bot's settings: one class, read from the environment and ``.env``, built once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.modelslab.catalogue import MODEL_ID_MAX_LENGTH, MODEL_ID_PATTERN
from bot.net import DEFAULT_OUTPUT_HOSTS, OutputHosts, is_loopback

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
_SECRET_FIELDS = {"discord_token", "modelslab_api_key", "modelslab_enterprise_api_key"}


def _http_url(value: str, name: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, like https://{name}")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query string or fragment")
    return value.strip().rstrip("/")


def _https_url(value: str, name: str) -> str:
    """An http(s) URL that is https unless its host is a loopback one (a local test)."""
    value = _http_url(value, name)
    parts = urlsplit(value)
    if parts.scheme != "https" and not is_loopback(parts.hostname or ""):
        raise ValueError(f"must be an https:// URL (plain http only on a loopback host), "
                         f"like https://{name}")
    return value


class Settings(BaseSettings):
    """Every setting the bot reads. Environment names are the field names in upper case."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        case_sensitive=False,
    )

    discord_token: SecretStr
    modelslab_api_key: SecretStr
    modelslab_enterprise_api_key: SecretStr | None = None
    modelslab_base_url: str = "https://modelslab.com"
    public_base_url: str | None = None
    web_host: str = "0.0.0.0"
    web_port: Annotated[int, Field(ge=1, le=65535)] = 8080
    # /metrics has a listener of its own, never the public web port.
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int, Field(ge=1, le=65535)] = 9108
    # A 429's Retry-After pauses sending to ModelsLab at most this many seconds.
    modelslab_max_pause: Annotated[float, Field(ge=1, le=3600)] = 300.0
    database_path: Path = Path("data/bot.sqlite3")
    # Unset or sqlite:///path: the embedded SQLite file. postgresql://...: PostgreSQL, shared
    # by any number of bot processes.
    database_url: str | None = None
    # Gateway shards: how many the bot has in all (unset: one, or Discord's advice when
    # SHARD_IDS is set), and which of them this process serves (unset: all of them).
    shard_count: Annotated[int, Field(ge=1, le=10000)] | None = None
    shard_ids: str | None = None
    # Several processes: a job step held by a process that died is taken over by the others
    # within two of these periods.
    job_lease_seconds: Annotated[float, Field(ge=0.5, le=300)] = 10.0
    dev_guild_id: Annotated[int, Field(gt=0)] | None = None
    default_model_id: str = "pony_realism"
    daily_image_quota: Annotated[int, Field(ge=0)] = 20
    # Per member: this many actions in quick succession, then one every this many seconds
    # (servers can change both with /config cooldown; 0 turns the cooldown off).
    cooldown_burst: Annotated[int, Field(ge=0, le=100)] = 5
    cooldown_seconds: Annotated[float, Field(ge=0, le=3600)] = 5.0
    modelslab_max_concurrency: Annotated[int, Field(ge=1, le=100)] = 5
    # How often ModelsLab's model lists are read again, in seconds (default 6 hours).
    model_list_refresh: Annotated[float, Field(gt=0)] = 6 * 3600.0
    # Delivered jobs keep their full request (payload, options) this many days, then only
    # what /quota and /history show (0: keep everything).
    job_retention_days: Annotated[float, Field(ge=0, le=36500)] = 90.0
    log_level: LogLevel = "INFO"
    # The hosts ModelsLab's output links may point to: exact names or *.domain patterns.
    modelslab_output_hosts: str = ",".join(DEFAULT_OUTPUT_HOSTS)
    # For test suites only: lets outbound requests reach loopback addresses (the local fakes).
    allow_loopback_outbound: bool = False
    # For tests against a local Discord; never set in production.
    discord_api_base: str | None = None
    discord_gateway_url: str | None = None
    discord_cdn_base: str | None = None

    @field_validator("modelslab_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        return _https_url(value, "modelslab.com")

    @field_validator("public_base_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        return None if value is None else _https_url(value, "bot.example.org")

    @field_validator("discord_api_base", "discord_cdn_base")
    @classmethod
    def _check_discord_urls(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value, "127.0.0.1:8000/api/v10")

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if value.startswith(("postgresql://", "postgres://")):
            return value
        if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
            return value
        raise ValueError("must be sqlite:///path/to/bot.sqlite3 or postgresql://user:password@"
                         "host:5432/database")

    @field_validator("shard_ids")
    @classmethod
    def _check_shard_ids(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = [p.strip() for p in value.replace(" ", ",").split(",") if p.strip()]
        if not parts or not all(p.isdigit() for p in parts):
            raise ValueError("must be shard numbers separated by commas, like 0,1")
        return ",".join(parts)

    def shard_problem(self) -> str | None:
        """What is wrong with SHARD_COUNT and SHARD_IDS together, if anything."""
        if self.shard_ids is None:
            return None
        if self.shard_count is None:
            return "SHARD_IDS needs SHARD_COUNT (how many shards the bot has in all)"
        if any(i >= self.shard_count for i in self.shards or ()):
            return f"every one of SHARD_IDS must be below SHARD_COUNT ({self.shard_count})"
        return None

    @property
    def database(self) -> str | Path:
        """Where the store lives: a SQLite file's path, or a postgresql:// URL."""
        if self.database_url is None:
            return self.database_path
        if self.database_url.startswith("sqlite:///"):
            return Path(self.database_url.removeprefix("sqlite:///"))
        return self.database_url

    @property
    def shards(self) -> list[int] | None:
        """This process's shard ids (None: every shard)."""
        if self.shard_ids is None:
            return None
        return [int(p) for p in self.shard_ids.split(",")]
    @field_validator("modelslab_output_hosts")
    @classmethod
    def _check_output_hosts(cls, value: str) -> str:
        return ",".join(OutputHosts.parse(value).patterns)

    @field_validator("default_model_id")
    @classmethod
    def _check_model(cls, value: str) -> str:
        if not MODEL_ID_PATTERN.match(value) or len(value) > MODEL_ID_MAX_LENGTH:
            raise ValueError("must be a ModelsLab model id such as pony_realism")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @property
    def enterprise_enabled(self) -> bool:
        return self.modelslab_enterprise_api_key is not None

    @property
    def output_hosts(self) -> OutputHosts:
        return OutputHosts.parse(self.modelslab_output_hosts)

    @property
    def webhooks_enabled(self) -> bool:
        return self.public_base_url is not None


def describe_settings_error(exc: ValidationError) -> str:
    """One line naming every missing variable and every invalid value (never a secret's value)."""
    missing: list[str] = []
    invalid: list[str] = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        name = field.upper()
        if error["type"] == "missing":
            missing.append(name)
            continue
        reason = str(error["msg"]).removeprefix("Value error, ")
        reason = reason.replace("Input should be", "must be").split(", unable to")[0]
        if field in _SECRET_FIELDS:
            invalid.append(f"{name} {reason}")
        else:
            invalid.append(f"{name} {reason} (got {error.get('input')!r})")
    parts = []
    if missing:
        parts.append("missing required setting" + ("s " if len(missing) > 1 else " ")
                     + ", ".join(missing))
    if invalid:
        parts.append("invalid setting" + ("s: " if len(invalid) > 1 else ": ")
                     + "; ".join(invalid))
    return ("Remixer cannot start: " + "; ".join(parts)
            + ". Set them in the environment or in .env (see .env.example).")
