"""Settings from ``CC_*`` environment variables (and an optional ``.env``).

The defaults are the embedded set-up: a SQLite file, an in-process bus and in-process jobs.
Setting ``CC_DATABASE_URL`` and ``CC_REDIS_URL`` switches to PostgreSQL, the Redis bus and rq.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_DEV_SECRET = "insecure-development-secret-change-me"  # noqa: S105


class SettingsError(Exception):
    """A setting is invalid; the message names the ``CC_`` variable and what is wrong."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CC_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = "sqlite+aiosqlite:///./contact_center.db"
    redis_url: str | None = None
    public_url: str = "http://127.0.0.1:8000"
    secret_key: str = _DEV_SECRET
    environment: Literal["development", "production", "test"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=2525, ge=1, le=65535)
    data_dir: Path = Path("./data")
    attachment_max_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    allowed_origins: list[str] = Field(default_factory=list)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    token_ttl_hours: int = Field(default=24 * 14, ge=1)
    # Outbound sending: attempts before a message is marked failed, and the base of the backoff.
    send_max_attempts: int = Field(default=5, ge=1, le=50)
    send_backoff_seconds: float = Field(default=2.0, gt=0)
    # A send claimed longer ago than this is considered interrupted (its worker died).
    send_lease_seconds: float = Field(default=300.0, gt=0)
    relay_interval_seconds: float = Field(default=0.25, gt=0)
    # Routing: the engine's tick, offers an agent may miss in a row before being set away, the
    # re-offer cool-down after a decline or miss, and how long a silent agent websocket is
    # tolerated before the agent goes offline.
    routing_tick_seconds: float = Field(default=1.0, gt=0)
    routing_max_missed_offers: int = Field(default=3, ge=1)
    # An agent who declined or missed a task is not offered it again for this long (while
    # others may take it), unless they come back to available meanwhile.
    routing_reoffer_seconds: float = Field(default=60.0, ge=0)
    agent_grace_seconds: float = Field(default=60.0, gt=0)
    rq_queue: str = "contact-center"
    # Metrics and the wallboard (docs/metrics.md): service level X/T (the share answered within
    # T seconds, against a target share), how abandoned contacts count in it, the time zone of
    # "today" and of the 15-minute intervals, the Erlang C staffing estimate (observed arrivals
    # over the last window, an occupancy ceiling) and how often the wallboard refreshes anyway.
    service_level_seconds: float = Field(default=20.0, gt=0, le=86400)
    service_level_target: float = Field(default=0.8, gt=0, lt=1)
    service_level_abandoned: Literal["count", "ignore", "short"] = "short"
    short_abandon_seconds: float = Field(default=5.0, ge=0, le=3600)
    metrics_timezone: str = "UTC"
    staffing_window_minutes: int = Field(default=60, ge=15, le=1440)
    staffing_max_occupancy: float = Field(default=0.85, gt=0, le=1)
    wallboard_tick_seconds: float = Field(default=5.0, ge=0.2, le=300)

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if value.startswith("postgres://"):
            value = "postgresql+asyncpg://" + value.removeprefix("postgres://")
        elif value.startswith("postgresql://"):
            value = "postgresql+asyncpg://" + value.removeprefix("postgresql://")
        elif value.startswith("sqlite://") and not value.startswith("sqlite+aiosqlite://"):
            value = "sqlite+aiosqlite://" + value.removeprefix("sqlite://")
        if not value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError("must be a postgresql://... or sqlite:///... URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://host:port/db URL")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("metrics_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone such as Europe/Istanbul") from None
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def embedded(self) -> bool:
        """True when bus and jobs run inside the process (no Redis configured)."""
        return self.redis_url is None

    @property
    def attachments_dir(self) -> Path:
        return self.data_dir / "attachments"

    def derive_key(self, purpose: str) -> str:
        """A key for one purpose (reply tokens, visitor tokens), so no component holds the
        secret key itself."""
        import hashlib
        import hmac

        return hmac.new(self.secret_key.encode(), purpose.encode(), hashlib.sha256).hexdigest()

    def check_production(self) -> None:
        if self.environment == "production" and self.secret_key == _DEV_SECRET:
            raise SettingsError(
                "CC_SECRET_KEY: must be set in production (for example to "
                f"{secrets.token_urlsafe(32)!r})"
            )


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment; raise SettingsError naming the bad variable."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = "CC_" + "_".join(str(part) for part in error["loc"]).upper()
            lines.append(f"{name}: {error['msg']} (got {error.get('input')!r})")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
    settings.check_production()
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
