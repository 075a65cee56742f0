"""Keep the shell's FTSERVE_* settings out of tests (the autouse fixture in tests/conftest.py)."""

from __future__ import annotations

import os

import pytest

from core.settings import Settings

# The SDK's and the CLI's variables, which are not Settings fields.
CLIENT_ENV = ("FTSERVE_API_KEY", "FTSERVE_BASE_URL")


def ftserve_settings_env_names() -> set[str]:
    prefix = str(Settings.model_config.get("env_prefix", "FTSERVE_"))
    return {f"{prefix}{field}".upper() for field in Settings.model_fields} | set(CLIENT_ENV)


def clear_ftserve_settings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Unset every FTSERVE_ variable that Settings, the SDK or the CLI would read; returns the names unset.
    Test knobs that are not settings (FTSERVE_DEMO_MODEL_CACHE, FTSERVE_FUZZ_*) stay."""
    names = sorted(ftserve_settings_env_names() & set(os.environ))
    for name in names:
        monkeypatch.delenv(name)
    return names
