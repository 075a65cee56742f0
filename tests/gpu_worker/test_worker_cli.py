"""`ftserve models create-demo --if-missing` and `ftserve models list`, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from core.model_registry import load_registry, register_model
from core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def _ftserve(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FTSERVE_API_KEY"}  # server verbs, not the API view
    env["FTSERVE_DATA_DIR"] = str(data_dir)
    env.pop("FTSERVE_MODEL_REGISTRY", None)
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_create_demo_if_missing_keeps_a_current_build_and_list_shows_it(
    tmp_path: Path, demo_model_dir: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    register_model(settings, "demo-tiny", demo_model_dir)

    done = _ftserve(settings.data_dir, "models", "create-demo", "--if-missing")
    assert done.returncode == 0, done.stderr
    assert "registered and current" in done.stderr
    assert load_registry(settings)["demo-tiny"].path == demo_model_dir.resolve()  # nothing rebuilt

    listed = _ftserve(settings.data_dir, "models", "list")
    assert listed.returncode == 0 and listed.stdout.split("\t")[:2] == [
        "demo-tiny",
        str(demo_model_dir.resolve()),
    ]


def test_models_list_on_an_empty_registry_says_how_to_add_one(tmp_path: Path) -> None:
    listed = _ftserve(tmp_path / "data", "models", "list")
    assert listed.returncode == 0 and listed.stdout == "" and "create-demo" in listed.stderr
