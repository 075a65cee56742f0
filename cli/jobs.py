"""`ftserve jobs ...`: create, follow and control fine-tuning jobs through the API (the SDK), as
api/routes/fine_tuning.py serves them. `check_model` and `finish` are shared with `ftserve config run`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from cli.files import upload_file
from cli.follow import follow_job
from cli.user_common import (
    HYPERPARAMETER_NAMES,
    JSON_HELP,
    UserError,
    cli_errors,
    console,
    fail,
    make_client,
    out,
    print_json,
    print_json_line,
    print_table,
    suggest,
    when,
)
from ftserve_client import Client
from ftserve_client.types import FineTuningJob

jobs_app = typer.Typer(no_args_is_help=True, help="Create, follow and control fine-tuning jobs.")

JOB_FLAGS = {
    "model": "--model",
    "training_file": "--file",
    "validation_file": "--validation-file",
    "suffix": "--suffix",
    "seed": "--seed",
    "metadata": "--metadata",
    "method.type": "--method",
    "hyperparameters": "-H {}=VALUE",
    "max_trained_tokens": "--max-trained-tokens",
    "max_cost": "--max-cost",
}
METHODS = {"sft": "supervised", "supervised": "supervised", "dpo": "dpo"}


def parse_value(raw: str) -> Any:
    """-H values: "auto", integers, floats, true/false, comma lists (target_modules), else the string."""
    value = raw.strip()
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    if "," in value:
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def parse_pairs(pairs: list[str], flag: str, *, typed: bool) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} takes key=value, got '{pair}'. Example: {flag} n_epochs=3.")
        parsed[key.strip()] = parse_value(value) if typed else value
    return parsed


def check_model(client: Client, model: str, *, where: str) -> None:
    """Fail before uploading anything when the model does not exist."""
    ids = [m.id for m in client.models.list()]
    if model in ids:
        return
    bases = [m for m in ids if not m.startswith("ft:")]
    raise UserError(
        f"unknown model '{model}'.{suggest(model, ids)} Base models on this server: "
        f"{', '.join(bases) or 'none registered'}. Fix {where} (`ftserve models list` shows them all).",
        exit_code=2,
    )


def resolve_file(client: Client, value: str, *, flag: str, as_json: bool) -> str:
    """A file id is used as it is; a local path is uploaded first."""
    path = Path(value).expanduser()
    if path.is_file():
        return upload_file(client, path, as_json=as_json).id
    if value.startswith("file-"):
        return value
    raise UserError(
        f"no such file: {value}. Give {flag} a local JSONL path or an uploaded file id (file-...)."
    )


def finish(job: FineTuningJob, *, as_json: bool) -> None:
    """Report how a followed job ended: the model name on stdout, exit 0 only on success."""
    if as_json:
        print_json_line(job)
    if job.status == "succeeded":
        if not as_json:
            console.print(f"[green]✓[/green] {job.id} succeeded. Fine-tuned model:", highlight=False)
            print(job.fine_tuned_model, flush=True)
        raise typer.Exit(0)
    if not as_json:
        why = f": {job.error.message}" if job.error else ""
        console.print(Text("✗ ", style="red") + Text(f"{job.id} {job.status}{why}"), soft_wrap=True)
    raise typer.Exit(1)


def create_and_follow(
    client: Client, body: dict[str, Any], *, follow: bool, as_json: bool, names: dict[str, str]
) -> None:
    with cli_errors(names):
        job = client.fine_tuning.jobs.create(**body)
    if not follow:
        if as_json:
            print_json(job)
        else:
            print(job.id)
        return
    if not as_json:
        console.print(
            f"Created {job.id} ({job.model}); following. Ctrl-C stops following, not the job.",
            highlight=False,
            soft_wrap=True,
        )
    with cli_errors(names):
        try:
            final = follow_job(client, job, console=console, as_json=as_json)
        except KeyboardInterrupt:
            fail(f"stopped following; {job.id} goes on. Resume with `ftserve jobs follow {job.id}`.", 130)
    finish(final, as_json=as_json)


@jobs_app.command("create")
def jobs_create(
    model: str = typer.Option(..., "--model", "-m", help="Base model id (see `ftserve models list`)."),
    file: str = typer.Option(
        ..., "--file", "-f", help="Training file: a local JSONL path (uploaded first) or a file id."
    ),
    validation_file: str = typer.Option(
        None, "--validation-file", help="Validation file: a path or a file id."
    ),
    method: str = typer.Option("sft", "--method", help="sft or dpo."),
    suffix: str = typer.Option(None, "--suffix", help="Goes into the model name: ft:base:org:SUFFIX:job."),
    hyperparameter: list[str] = typer.Option(
        [],
        "-H",
        "--hyperparameter",
        help="key=value, repeatable: n_epochs=3, lora_rank=8, learning_rate=5e-3.",
    ),
    seed: int = typer.Option(None, "--seed", help="Seed for a reproducible run."),
    metadata: list[str] = typer.Option([], "--metadata", help="key=value, repeatable."),
    max_trained_tokens: int = typer.Option(
        None, "--max-trained-tokens", help="Pause the job once it has trained this many tokens."
    ),
    max_cost: float = typer.Option(None, "--max-cost", help="Pause the job once it has cost this much."),
    follow: bool = typer.Option(
        False, "--follow", help="Follow the job live until it ends; exit 0 on success."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP + " With --follow: events as JSON lines."),
) -> None:
    """Create a fine-tuning job (uploading local files first), optionally following it live."""
    with cli_errors(JOB_FLAGS):
        method_type = METHODS.get(method.lower())
        if method_type is None:
            raise UserError(f"unknown method '{method}'. Use --method sft or --method dpo.")
        hyperparameters = parse_pairs(hyperparameter, "-H", typed=True)
        for name in hyperparameters:
            if name not in HYPERPARAMETER_NAMES:
                raise UserError(
                    f"unknown hyperparameter '{name}'.{suggest(name, HYPERPARAMETER_NAMES)} "
                    f"Fix -H {name}=VALUE; known: {', '.join(HYPERPARAMETER_NAMES)}."
                )
        meta = parse_pairs(metadata, "--metadata", typed=False)
        client = make_client()
        check_model(client, model, where="--model")
        training_file = resolve_file(client, file, flag="--file", as_json=as_json)
        validation = (
            resolve_file(client, validation_file, flag="--validation-file", as_json=as_json)
            if validation_file
            else None
        )
    body: dict[str, Any] = {
        "model": model,
        "training_file": training_file,
        "validation_file": validation,
        "method": method_type,
        "hyperparameters": hyperparameters or None,
        "suffix": suffix,
        "seed": seed,
        "metadata": meta or None,
        "max_trained_tokens": max_trained_tokens,
        "max_cost": max_cost,
    }
    create_and_follow(client, body, follow=follow, as_json=as_json, names=JOB_FLAGS)


def _print_jobs(jobs: list[FineTuningJob]) -> None:
    rows = [
        [
            job.id,
            job.status,
            job.model,
            job.fine_tuned_model or "-",
            f"{job.step or 0}/{job.total_steps}" if job.total_steps else "-",
            when(job.created_at),
        ]
        for job in jobs
    ]
    print_table(["id", "status", "model", "fine-tuned model", "progress", "created"], rows)


@jobs_app.command("list")
def jobs_list(
    limit: int = typer.Option(20, "--limit", "-n", help="How many (newest first)."),
    all_jobs: bool = typer.Option(False, "--all", help="Every job, page after page."),
    metadata: list[str] = typer.Option([], "--metadata", help="Only jobs with this key=value (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List your fine-tuning jobs, newest first."""
    with cli_errors():
        meta = parse_pairs(metadata, "--metadata", typed=False) or None
        page = make_client().fine_tuning.jobs.list(limit=min(limit, 100), metadata=meta)
        jobs = list(page) if all_jobs else list(page)[:limit]
        if as_json:
            print_json(jobs)
            return
        if not jobs:
            console.print("No jobs yet: `ftserve jobs create --model demo-tiny --file train.jsonl --follow`.")
            return
        _print_jobs(jobs)


@jobs_app.command("get")
def jobs_get(
    job_id: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json", help=JSON_HELP)
) -> None:
    """Show one job."""
    with cli_errors():
        job = make_client().fine_tuning.jobs.retrieve(job_id)
        if as_json:
            print_json(job)
            return
        data = job.to_dict()
        for key in ("id", "status", "model", "fine_tuned_model", "training_file", "validation_file"):
            out.print(f"{key:18} {data.get(key) or '-'}", markup=False)
        if job.total_steps:
            out.print(f"{'progress':18} step {job.step or 0}/{job.total_steps}", markup=False)
        if job.error:
            out.print(f"{'error':18} {job.error.message}", markup=False)
        method = job.method.type if job.method else "supervised"
        section = getattr(job.method, method, None) if job.method else None
        hp = section.hyperparameters if section and section.hyperparameters else job.hyperparameters
        out.print(f"{'method':18} {method}", markup=False)
        if hp is not None:
            shown = ", ".join(f"{k}={v}" for k, v in hp.model_dump(exclude_none=True).items())
            out.print(f"{'hyperparameters':18} {shown}", markup=False)
        out.print(f"{'created':18} {when(job.created_at)}", markup=False)
        if job.finished_at:
            out.print(f"{'finished':18} {when(job.finished_at)}", markup=False)


@jobs_app.command("events")
def jobs_events(
    job_id: str = typer.Argument(...),
    limit: int = typer.Option(50, "--limit", "-n", help="The last N events (oldest of them first)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Show a job's latest events, oldest first (`ftserve jobs follow` to keep watching)."""
    with cli_errors():
        page = make_client().fine_tuning.jobs.list_events(job_id, limit=min(limit, 1000))
        events = list(page.data)[:limit][::-1]
        if as_json:
            print_json(events)
            return
        for event in events:
            out.print(f"{when(event.created_at)}  {event.level:5}  {event.message}", markup=False)


@jobs_app.command("follow")
def jobs_follow(
    job_id: str = typer.Argument(...),
    as_json: bool = typer.Option(False, "--json", help="Events as JSON lines, then the final job."),
) -> None:
    """Follow a job live until it ends: exit 0 if it succeeded, 1 if it failed or was cancelled."""
    with cli_errors():
        client = make_client()
        job = client.fine_tuning.jobs.retrieve(job_id)
        try:
            final = follow_job(client, job, console=console, as_json=as_json)
        except KeyboardInterrupt:
            fail(f"stopped following; {job_id} goes on.", 130)
    finish(final, as_json=as_json)


def _control(verb: str, job_id: str, as_json: bool) -> None:
    with cli_errors():
        jobs = make_client().fine_tuning.jobs
        job = {"cancel": jobs.cancel, "pause": jobs.pause, "resume": jobs.resume}[verb](job_id)
        if as_json:
            print_json(job)
        else:
            print(f"{job.id} {job.status}")


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Cancel a job that has not finished."""
    _control("cancel", job_id, as_json)


@jobs_app.command("pause")
def jobs_pause(job_id: str, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Pause a queued or running job: it checkpoints and frees its worker."""
    _control("pause", job_id, as_json)


@jobs_app.command("resume")
def jobs_resume(
    job_id: str,
    max_trained_tokens: int = typer.Option(None, "--max-trained-tokens", help="A new token cap (0: none)."),
    max_cost: float = typer.Option(None, "--max-cost", help="A new cost cap (0: none)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Resume a paused job from its checkpoint; a job paused at a cap needs that cap raised."""
    if max_trained_tokens is None and max_cost is None:
        _control("resume", job_id, as_json)
        return
    caps: dict[str, Any] = {}
    if max_trained_tokens is not None:
        caps["max_trained_tokens"] = max_trained_tokens or None
    if max_cost is not None:
        caps["max_cost"] = max_cost or None
    with cli_errors({"max_trained_tokens": "--max-trained-tokens", "max_cost": "--max-cost"}):
        job = make_client().fine_tuning.jobs.resume(job_id, **caps)
        if as_json:
            print_json(job)
        else:
            print(f"{job.id} {job.status}")


@jobs_app.command("checkpoints")
def jobs_checkpoints(job_id: str, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """List a job's checkpoints (newest first; the last 3 are kept)."""
    with cli_errors():
        checkpoints = list(make_client().fine_tuning.jobs.checkpoints.list(job_id))
        if as_json:
            print_json(checkpoints)
            return
        rows = [
            [
                str(c.step_number),
                c.fine_tuned_model_checkpoint,
                f"{loss:.4f}" if isinstance(loss := c.metrics.get("train_loss"), float) else "-",
                when(c.created_at),
            ]
            for c in checkpoints
        ]
        print_table(["step", "model", "train loss", "created"], rows)
