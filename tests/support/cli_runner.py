"""Run the `ftserve` CLI as a user does: a real process, output captured."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

REPO_ROOT = Path(__file__).resolve().parents[2]


class Result(Protocol):
    returncode: int
    stdout: str
    stderr: str


Run = Callable[..., Result]


def run_ftserve(
    *args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO_ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
