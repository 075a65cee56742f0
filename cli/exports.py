"""`ftserve jobs export` and `ftserve jobs exports`: take a fine-tuned model away as a PEFT adapter zip, a merged
16-bit model or a GGUF file (through the SDK's `fine_tuning.jobs.exports`), with a live view while the worker
makes and checks it, then a download bar."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from cli.user_common import (
    JSON_HELP,
    UserError,
    cli_errors,
    console,
    human_bytes,
    make_client,
    print_json,
    print_json_line,
    print_table,
    when,
)
from ftserve_client import ExportFailedError
from ftserve_client.types import ExportFormat, FineTuningJobExport

FORMATS = ("adapter", "merged", "gguf")


def _checkpoint(value: str | None) -> str | int | None:
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def _failed(export: FineTuningJobExport, *, as_json: bool) -> None:
    if as_json:
        print_json_line(export)
    else:
        reason = export.error.message if export.error else "no reason given"
        console.print(Text("✗ ", style="red") + Text(f"export {export.id} failed: {reason}"), soft_wrap=True)
    raise typer.Exit(1)


def export_job(
    job_id: str = typer.Argument(..., help="The job (ftjob-...) whose fine-tuned model to export."),
    format: str = typer.Option(
        ..., "--format", "-F", help="adapter (PEFT zip), merged (16-bit HF zip) or gguf."
    ),
    checkpoint: str = typer.Option(
        None, "--checkpoint", "-c", help="Export a checkpoint instead: its step, ftckpt- id or model name."
    ),
    output: Path = typer.Option(
        None, "--output", "-o", help="Where to write the file, or a directory for it (default: here)."
    ),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="Wait and download (default), or only queue it."
    ),
    timeout: float = typer.Option(3600.0, "--timeout", help="Give up waiting after this many seconds."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP + " (the export object, as a JSON line)"),
) -> None:
    """Export a job's fine-tuned model and download it: the file's path goes to stdout."""
    if format not in FORMATS:
        raise typer.BadParameter(f"must be one of {', '.join(FORMATS)}", param_hint="--format")
    chosen: ExportFormat = format  # type: ignore[assignment]  # checked just above
    target = output if output is not None else Path.cwd()
    if output is not None and not output.parent.is_dir():
        with cli_errors():
            raise UserError(f"no such directory: {output.parent}. Create it, or choose another --output.")
    names = {"format": "--format", "checkpoint": "--checkpoint"}
    with cli_errors(names):
        client = make_client()
        exports = client.fine_tuning.jobs.exports
        export = exports.create(job_id, format=chosen, checkpoint=_checkpoint(checkpoint))
        if not wait:
            if as_json:
                print_json(export)
            else:
                print(export.id)
            return
        with Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=as_json,
        ) as progress:
            task = progress.add_task(f"export {format} {export.id}: {export.status}", total=None)
            started = time.monotonic()

            def on_update(current: FineTuningJobExport) -> None:
                progress.update(task, description=f"export {format} {current.id}: {current.status}")

            def on_progress(done: int, total: int | None) -> None:
                progress.update(task, description=f"download {format}", completed=done, total=total)

            try:
                path = exports.download(
                    job_id, export.id, target, poll_interval=1.0, timeout=timeout, on_update=on_update,
                    on_progress=on_progress,
                )  # fmt: skip
            except ExportFailedError as exc:
                progress.stop()
                _failed(exc.export, as_json=as_json)
            except TimeoutError:
                raise UserError(
                    f"export {export.id} is not done after {timeout:.0f}s; it goes on. Download it later with "
                    f"`ftserve jobs exports {job_id}` and `ftserve files download FILE_ID`.",
                    exit_code=1,
                ) from None
        final = exports.retrieve(job_id, export.id)
    if as_json:
        print_json_line({**final.to_dict(), "path": str(path)})
        return
    size = human_bytes(final.bytes or path.stat().st_size)
    checks = ", ".join(name for name, record in final.checks.items() if record.get("passed"))
    console.print(
        f"[green]✓[/green] {final.id} ({format}, {size}) in {time.monotonic() - started:.0f}s; checked: "
        f"{checks or 'nothing'}",
        highlight=False,
        soft_wrap=True,
    )
    print(path, flush=True)


def list_exports(
    job_id: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json", help=JSON_HELP)
) -> None:
    """List a job's exports, newest first, with their files."""
    with cli_errors():
        exports = list(make_client().fine_tuning.jobs.exports.list(job_id))
    if as_json:
        print_json(exports)
        return
    rows = [
        [
            e.id,
            e.format,
            str(e.checkpoint_step) if e.checkpoint_step is not None else "final",
            e.status,
            human_bytes(e.bytes) if e.bytes else "-",
            e.file_id or (e.error.message[:60] if e.error else "-"),
            when(e.created_at),
        ]
        for e in exports
    ]
    print_table(["id", "format", "of", "status", "size", "file / error", "created"], rows)


def register_export_commands(jobs_app: typer.Typer) -> None:
    jobs_app.command("export")(export_job)
    jobs_app.command("exports")(list_exports)
