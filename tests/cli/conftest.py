"""Run `ftserve` user verbs against the session's `ftserve up`, output captured.

`ftserve_proc` runs a real `ftserve` process, as a user does (used for what the issue's "Done when" names:
following a job, `config run`, the one-line errors). `ftserve` runs the same app in-process with typer's
runner, which costs no interpreter start (a second or more each on a busy 2-core machine).
"""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from ftserve_client import Client
from tests.support.cli_runner import Result, Run, run_ftserve
from tests.support.ftserve_process import FtserveProcess


@pytest.fixture(scope="package")
def cli_key(ftserve_server: FtserveProcess) -> str:
    return ftserve_server.create_key("cli-user")


@pytest.fixture(scope="package")
def cli_env(ftserve_server: FtserveProcess, cli_key: str) -> dict[str, str]:
    """A user's shell: the key and the server's address, nothing of the server's own settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTSERVE_")}
    env.update({"FTSERVE_API_KEY": cli_key, "FTSERVE_BASE_URL": ftserve_server.base_url, "COLUMNS": "100"})
    return env


@pytest.fixture(scope="package")
def sdk(ftserve_server: FtserveProcess, cli_key: str) -> Client:
    return Client(api_key=cli_key, base_url=ftserve_server.base_url)


def _env(cli_env: dict[str, str], extra: dict[str, str] | None, unset: tuple[str, ...]) -> dict[str, str]:
    env = {**cli_env, **(extra or {})}
    for name in unset:
        env.pop(name, None)
    return env


@pytest.fixture
def ftserve_proc(cli_env: dict[str, str]) -> Run:
    """ftserve_proc(*args, env_extra=None, unset=(), stdin=None): a real `ftserve` process."""

    def run(
        *args: str,
        env_extra: dict[str, str] | None = None,
        unset: tuple[str, ...] = (),
        stdin: str | None = None,
    ) -> Result:
        return run_ftserve(*args, env=_env(cli_env, env_extra, unset), stdin=stdin)

    return run


class InProcess:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def ftserve(cli_env: dict[str, str]) -> Run:
    """The same as ftserve_proc, in this process. An exception the CLI did not turn into an exit fails."""
    from cli.main import app

    def run(
        *args: str,
        env_extra: dict[str, str] | None = None,
        unset: tuple[str, ...] = (),
        stdin: str | None = None,
    ) -> Result:
        env = _env(cli_env, env_extra, unset)
        # The runner sets these for the call and restores them after; None removes a variable.
        overrides: dict[str, str | None] = {k: None for k in os.environ if k.startswith("FTSERVE_")}
        overrides.update({k: v for k, v in env.items() if k.startswith("FTSERVE_") or k == "COLUMNS"})
        result = CliRunner().invoke(app, list(args), env=overrides, input=stdin, catch_exceptions=True)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return InProcess(result.exit_code, result.stdout, result.stderr)

    return run
