"""What every user verb shares: the SDK client, one-line errors that say how to fix them, JSON output.

User verbs talk to the API through `ftserve_client` (FTSERVE_API_KEY, FTSERVE_BASE_URL), never to the
database: they work the same from a laptop as on the server.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from ftserve_client import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    Client,
    FtserveError,
)
from ftserve_client.types import Hyperparameters

# Progress and live views go to stderr, results to stdout: `ftserve ... --json | jq` stays clean.
console = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)

JSON_HELP = "Print machine-readable JSON on stdout."
HYPERPARAMETER_NAMES = sorted(Hyperparameters.model_fields)


class UserError(Exception):
    """A mistake the user can fix; printed as one line (no traceback). Exit code 2 by default."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(message: str, exit_code: int = 1) -> NoReturn:
    # Plain print, not rich: rich would wrap a long message over several lines and read [brackets] as markup.
    prefix = "\x1b[31merror:\x1b[0m" if sys.stderr.isatty() else "error:"
    print(f"{prefix} {' '.join(message.split())}", file=sys.stderr, flush=True)
    raise typer.Exit(exit_code)


def make_client() -> Client:
    if not os.environ.get("FTSERVE_API_KEY"):
        raise UserError(
            "FTSERVE_API_KEY is not set. Set it to an API key (`ftserve keys create --org NAME` on the server "
            "makes one), and FTSERVE_BASE_URL to the server (default http://127.0.0.1:8000/v1)."
        )
    return Client()


def suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def server_message(exc: APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return exc.message


def describe_api_error(exc: APIStatusError, names: Mapping[str, str]) -> str:
    """The server's message plus what to change. `names` maps API params (model, training_file, and
    hyperparameter names) to what the user typed them as (a flag, or a config key)."""
    message = server_message(exc).rstrip(".") + "."
    param = exc.param or ""
    if ".hyperparameters." in f".{param}":
        hp = param.rsplit(".", 1)[-1]
        where = names.get(hp, names.get("hyperparameters", "-H {}")).format(hp)
        hint = f" Fix {where}."
        if hp not in HYPERPARAMETER_NAMES:
            hint += suggest(hp, HYPERPARAMETER_NAMES) + f" Known: {', '.join(HYPERPARAMETER_NAMES)}."
        return message + hint
    if param in names:
        hint = f" Fix {names[param]}"
        if param == "model":
            hint += " (`ftserve models list` shows the models you can use)"
        return message + hint + "."
    return message


@contextmanager
def cli_errors(names: Mapping[str, str] | None = None) -> Iterator[None]:
    """Turn every expected failure into one line on stderr and an exit code: 2 for input to fix, 1 for a
    refusal or failure on the server's side, 130 for Ctrl-C."""
    try:
        yield
    except UserError as exc:
        fail(str(exc), exc.exit_code)
    except FileNotFoundError as exc:
        fail(f"no such file: {exc.filename or exc}. Check the path.", 2)
    except AuthenticationError:
        fail(
            "the server refused the API key (401). Set FTSERVE_API_KEY to a valid key "
            "(`ftserve keys create --org NAME` on the server makes one).",
            1,
        )
    except APIStatusError as exc:
        fail(describe_api_error(exc, names or {}), 2 if exc.status_code == 400 else 1)
    except APIConnectionError as exc:
        url = os.environ.get("FTSERVE_BASE_URL", "http://127.0.0.1:8000/v1")
        fail(
            f"cannot reach ftserve at {url} ({exc.message}). Is `ftserve up` running there? "
            "Set FTSERVE_BASE_URL to its address.",
            1,
        )
    except FtserveError as exc:
        fail(str(exc), 1)
    except KeyboardInterrupt:
        fail("interrupted.", 130)


def print_json(value: Any) -> None:
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    elif isinstance(value, list):
        value = [v.to_dict() if hasattr(v, "to_dict") else v for v in value]
    print(json.dumps(value, indent=2, ensure_ascii=False), flush=True)


def print_json_line(value: Any) -> None:
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    print(json.dumps(value, ensure_ascii=False), flush=True)


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; tab-separated lines when piped (for grep, cut and awk), like gh does."""
    if out.is_terminal:
        table = Table(*headers, box=None)
        for row in rows:
            table.add_row(*row)
        out.print(table)
        return
    for row in [headers, *rows]:
        print("\t".join(row))


def when(ts: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
