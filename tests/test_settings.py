"""Settings: CC_* variables, validated at start with messages that name the bad variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from contact_center.settings import SettingsError, load_settings


def test_embedded_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CC_DATABASE_URL", "CC_REDIS_URL", "CC_PUBLIC_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(_env_file=None)
    assert settings.is_sqlite
    assert settings.embedded
    assert settings.database_url == "sqlite+aiosqlite:///./contact_center.db"
    assert settings.public_url == "http://127.0.0.1:8000"
    # The wallboard's defaults: 80/20, short abandons (5 s) left out, today in UTC.
    assert (settings.service_level_target, settings.service_level_seconds) == (0.8, 20.0)
    assert settings.service_level_abandoned == "short"
    assert settings.short_abandon_seconds == 5.0
    assert settings.metrics_timezone == "UTC"


def test_postgres_and_redis_switch_the_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC_DATABASE_URL", "postgresql://u@db:5432/cc")
    monkeypatch.setenv("CC_REDIS_URL", "redis://cache:6379/0")
    settings = load_settings()
    assert settings.database_url == "postgresql+asyncpg://u@db:5432/cc"
    assert not settings.embedded
    assert not settings.is_sqlite


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("CC_DATABASE_URL", "mysql://x", "CC_DATABASE_URL"),
        ("CC_REDIS_URL", "http://x", "CC_REDIS_URL"),
        ("CC_PORT", "eighty", "CC_PORT"),
        ("CC_PUBLIC_URL", "example.com", "CC_PUBLIC_URL"),
        ("CC_LOG_LEVEL", "LOUD", "CC_LOG_LEVEL"),
        ("CC_METRICS_TIMEZONE", "Mars/Olympus_Mons", "CC_METRICS_TIMEZONE"),
        ("CC_SERVICE_LEVEL_TARGET", "1.5", "CC_SERVICE_LEVEL_TARGET"),
        ("CC_SERVICE_LEVEL_SECONDS", "0", "CC_SERVICE_LEVEL_SECONDS"),
        ("CC_SERVICE_LEVEL_ABANDONED", "sometimes", "CC_SERVICE_LEVEL_ABANDONED"),
        ("CC_SHORT_ABANDON_SECONDS", "-1", "CC_SHORT_ABANDON_SECONDS"),
        ("CC_STAFFING_MAX_OCCUPANCY", "0", "CC_STAFFING_MAX_OCCUPANCY"),
    ],
)
def test_bad_setting_is_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=needle):
        load_settings()


def test_production_needs_a_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC_ENVIRONMENT", "production")
    monkeypatch.delenv("CC_SECRET_KEY", raising=False)
    with pytest.raises(SettingsError, match="CC_SECRET_KEY"):
        load_settings(_env_file=None)


def test_cli_exits_with_the_message(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "contact_center.cli", "migrate"],
        env={"CC_DATABASE_URL": "oracle://nope", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "CC_DATABASE_URL" in result.stderr
