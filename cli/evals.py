"""`ftserve evals ...`: evaluate models on held-out data through the API (the SDK's `evals`), as
api/routes/evals.py serves them. `run` starts one run per --model on the same items, shows a progress bar per run
while they are graded, and ends with the table that compares them (`runs` prints it again later)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from cli.user_common import (
    JSON_HELP,
    UserError,
    cli_errors,
    console,
    make_client,
    print_json,
    print_table,
    when,
)
from ftserve_client.types.evals import EvalRun

evals_app = typer.Typer(
    no_args_is_help=True,
    help="Evaluate models on held-out data with graders, e.g. a base model against a fine-tuned one (through "
    "the API).",
)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{path} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} must hold one JSON object (name, data_source_config, testing_criteria)")
    return value


@evals_app.command("create")
def create_eval(
    path: Path = typer.Argument(
        ...,
        help="A JSON file: {name, data_source_config: {type: custom, item_schema}, testing_criteria: [...]}.",
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Create an eval from a JSON file; its id goes to stdout."""
    with cli_errors():
        body = _load_json(path)
        created = make_client().evals.create(
            name=body.get("name"),
            data_source_config=body.get("data_source_config") or {},
            testing_criteria=body.get("testing_criteria") or [],
            metadata=body.get("metadata"),
        )
    if as_json:
        print_json(created)
    else:
        print(created.id, flush=True)


@evals_app.command("list")
def list_evals(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """List your evals, oldest first."""
    with cli_errors():
        rows = list(make_client().evals.list())
    if as_json:
        print_json(rows)
        return
    print_table(
        ["id", "name", "criteria", "created"],
        [
            [e.id, e.name, ", ".join(str(c.get("name")) for c in e.testing_criteria), when(e.created_at)]
            for e in rows
        ],
    )


@evals_app.command("get")
def get_eval(eval_id: str = typer.Argument(...)) -> None:
    """Print an eval as JSON."""
    with cli_errors():
        print_json(make_client().evals.retrieve(eval_id))


@evals_app.command("delete")
def delete_eval(eval_id: str = typer.Argument(...)) -> None:
    """Delete an eval (its running runs are canceled)."""
    with cli_errors():
        make_client().evals.delete(eval_id)
    console.print(f"deleted {eval_id}")


def _data_source(
    model: str,
    file_id: str | None,
    items: Path | None,
    prompt: str | None,
    temperature: float,
    max_tokens: int,
) -> dict[str, Any]:
    if (file_id is None) == (items is None):
        raise UserError("give the items to evaluate on: --file FILE_ID or --items PATH.jsonl (one of them)")
    source: dict[str, Any]
    if file_id is not None:
        source = {"type": "file_id", "id": file_id}
    else:
        assert items is not None
        rows = [json.loads(line) for line in items.read_text().splitlines() if line.strip()]
        source = {
            "type": "file_content",
            "content": [r if isinstance(r.get("item"), dict) else {"item": r} for r in rows],
        }
    messages: dict[str, Any]
    if prompt is not None:
        messages = {"type": "template", "template": [{"role": "user", "content": prompt}]}
    else:
        messages = {"type": "item_reference", "item_reference": "item.messages"}
    return {
        "type": "completions",
        "model": model,
        "input_messages": messages,
        "source": source,
        "sampling_params": {"temperature": temperature, "max_completion_tokens": max_tokens, "seed": 0},
    }


def _criteria_names(runs: list[EvalRun]) -> list[str]:
    names: list[str] = []
    for run in runs:
        names += [
            r.testing_criteria for r in run.per_testing_criteria_results if r.testing_criteria not in names
        ]
    return names


def print_comparison(runs: list[EvalRun]) -> None:
    """One row per run: its counts, and per criterion the pass count and mean score."""
    names = _criteria_names(runs)
    rows = []
    for run in runs:
        counts = run.result_counts
        per = {r.testing_criteria: r for r in run.per_testing_criteria_results}
        cells = []
        for name in names:
            r = per.get(name)
            mean = f"{r.mean_score:.3f}" if r is not None and r.mean_score is not None else "-"
            cells.append(f"{r.passed}/{r.passed + r.failed} · {mean}" if r is not None else "-")
        rows.append(
            [run.id, run.model, run.status, f"{counts.passed}/{counts.total}", str(counts.errored), *cells,
             run.report_file_id or "-"]
        )  # fmt: skip
    print_table(["run", "model", "status", "passed", "errored", *names, "report file"], rows)


@evals_app.command("run")
def run_eval(
    eval_id: str = typer.Argument(..., help="The eval (eval_...)."),
    models: list[str] = typer.Option(
        ..., "--model", "-m", help="A model to evaluate; repeat to compare (e.g. the base and an ft: model)."
    ),
    file_id: str = typer.Option(
        None, "--file", "-f", help="A processed file (file-...) whose lines are the items."
    ),
    items: Path = typer.Option(None, "--items", help="A local JSONL file of items, sent inline."),
    prompt: str = typer.Option(
        None, "--prompt", help="A user message template, e.g. '{{ item.question }}' (default: item.messages)."
    ),
    temperature: float = typer.Option(0.0, "--temperature"),
    max_tokens: int = typer.Option(64, "--max-tokens", help="max_completion_tokens of each sample."),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="Show progress until done (default), or only start."
    ),
    timeout: float = typer.Option(3600.0, "--timeout", help="Stop waiting after this many seconds."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP + " (the runs)"),
) -> None:
    """Run the eval once per --model on the same items, then compare them."""
    names = {
        "data_source.source.id": "--file",
        "data_source.model": "--model",
        "model": "--model",
        "data_source.input_messages.template[0].content": "--prompt",
    }
    with cli_errors(names):
        client = make_client()
        started = [
            client.evals.runs.create(
                eval_id,
                name=model,
                data_source=_data_source(model, file_id, items, prompt, temperature, max_tokens),
            )
            for model in models
        ]
        if not wait:
            if as_json:
                print_json(started)
            else:
                for run in started:
                    print(run.id, flush=True)
            return
        finished = _follow(client, eval_id, started, timeout=timeout, quiet=as_json)
    if as_json:
        print_json(finished)
        return
    print_comparison(finished)


def _follow(client: Any, eval_id: str, runs: list[EvalRun], *, timeout: float, quiet: bool) -> list[EvalRun]:
    """A bar per run, items graded out of the run's total, until every run is done."""
    deadline = time.monotonic() + timeout
    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[state]}"), TimeElapsedColumn())  # fmt: skip
    latest = {run.id: run for run in runs}
    with Progress(*columns, console=console, disable=quiet) as progress:
        tasks = {
            run.id: progress.add_task(run.model, total=run.result_counts.total or None, state=run.status)
            for run in runs
        }
        while True:
            for run_id in tasks:
                if not latest[run_id].done:
                    latest[run_id] = client.evals.runs.retrieve(run_id, eval_id=eval_id)
                run = latest[run_id]
                counts = run.result_counts
                state = f"{run.status} · {counts.passed} passed"
                progress.update(tasks[run_id], completed=run.graded, total=counts.total or None, state=state)
            if all(run.done for run in latest.values()):
                break
            if time.monotonic() > deadline:
                raise UserError(
                    f"the runs are not done after {timeout:.0f}s; they go on. See them with "
                    f"`ftserve evals runs {eval_id}`.",
                    exit_code=1,
                )
            time.sleep(0.5)
    return list(latest.values())


@evals_app.command("runs")
def list_runs(
    eval_id: str = typer.Argument(...),
    watch: bool = typer.Option(False, "--watch", help="Follow the unfinished runs with progress bars first."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Compare an eval's runs: passed, errored, and per criterion passed/graded · mean score."""
    with cli_errors():
        client = make_client()
        runs = list(client.evals.runs.list(eval_id))
        if watch and not all(r.done for r in runs):
            runs = _follow(client, eval_id, runs, timeout=3600.0, quiet=as_json)
    if as_json:
        print_json(runs)
        return
    print_comparison(runs)


@evals_app.command("cancel")
def cancel_run(eval_id: str = typer.Argument(...), run_id: str = typer.Argument(...)) -> None:
    """Cancel a queued or running run."""
    with cli_errors():
        run = make_client().evals.runs.cancel(run_id, eval_id=eval_id)
    console.print(f"{run.id}: {run.status}")
