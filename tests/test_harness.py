"""The harness itself: tests are isolated from the shell's FTSERVE_* settings."""

from __future__ import annotations

import os

import pytest

from core.settings import Settings
from tests.support.env import clear_ftserve_settings


def test_no_ftserve_setting_reaches_a_test() -> None:
    # The autouse fixture ran before this test: whatever the shell exported, no setting is left.
    assert not [name for name in os.environ if name.startswith("FTSERVE_") and name.removeprefix("FTSERVE_").lower()
                in Settings.model_fields]  # fmt: skip


def test_clearing_unsets_settings_and_client_variables_and_keeps_test_knobs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FTSERVE_DATABASE_URL", "postgresql+psycopg://prod.example/db")
    monkeypatch.setenv("FTSERVE_API_KEY", "ftsk-from-the-shell")
    monkeypatch.setenv("FTSERVE_DEMO_MODEL_CACHE", "/tmp/cache")
    assert Settings().database_url == "postgresql+psycopg://prod.example/db"

    unset = clear_ftserve_settings(monkeypatch)

    assert {"FTSERVE_DATABASE_URL", "FTSERVE_API_KEY"} <= set(unset)
    assert "FTSERVE_DATABASE_URL" not in os.environ and "FTSERVE_API_KEY" not in os.environ
    assert os.environ["FTSERVE_DEMO_MODEL_CACHE"] == "/tmp/cache"
    assert Settings().database_url is None
