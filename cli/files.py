"""`ftserve files ...`: upload and manage training files through the API (the SDK), as api/routes/files.py
serves them. `upload_file` is shared with `ftserve jobs create` and `ftserve config run`, which upload local
files first."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from cli.user_common import (
    JSON_HELP,
    UserError,
    cli_errors,
    console,
    human_bytes,
    make_client,
    out,
    print_json,
    print_table,
    when,
)
from ftserve_client import BadRequestError, Client
from ftserve_client.types import FileObject

files_app = typer.Typer(no_args_is_help=True, help="Upload and manage training files (through the API).")


def upload_file(client: Client, path: Path, *, as_json: bool = False, what: str = "") -> FileObject:
    """Upload with a progress bar on stderr. A rejected file prints each bad line and why, then exits 1."""
    if not path.is_file():
        hint = what or "Check the path"
        raise UserError(f"no such file: {path}. {hint}.")
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=as_json,
    ) as progress:
        task = progress.add_task(f"upload {path.name}", total=path.stat().st_size)
        try:
            uploaded = client.files.create(
                file=path, on_progress=lambda sent, total: progress.update(task, completed=sent)
            )
        except BadRequestError as exc:
            if exc.file_id is None:
                raise
            progress.stop()
            report_rejection(client, path, exc.file_id, as_json=as_json)
    if not as_json:
        console.print(
            f"[green]✓[/green] {path.name} → {uploaded.id}: {uploaded.status}, "
            f"{uploaded.example_count} {uploaded.data_format} examples",
            highlight=False,
        )
    return uploaded


def report_rejection(client: Client, path: Path, file_id: str, *, as_json: bool) -> None:
    report = client.files.validation_report(file_id)
    if as_json:
        print_json(report)
        raise typer.Exit(1)
    shown = len(report.errors)
    more = f" (the first {shown} shown)" if report.error_count > shown else ""
    print(
        f"error: {path} was rejected: {report.error_count} problem(s){more}. Fix these lines and upload again:",
        file=sys.stderr,
    )
    for error in report.errors:
        print(f"  {error.message}", file=sys.stderr)
    raise typer.Exit(1)


@files_app.command("upload")
def files_upload(
    path: Path = typer.Argument(..., help="A JSONL training file (chat, prompt/completion, DPO, ...)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Upload a training file; it is validated line by line while it streams. Prints the file id."""
    with cli_errors():
        client = make_client()
        uploaded = upload_file(client, path, as_json=as_json)
        if as_json:
            print_json(uploaded)
        else:
            print(uploaded.id)


@files_app.command("list")
def files_list(
    purpose: str = typer.Option(None, help="Only files with this purpose (fine-tune, fine-tune-results)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List your files, newest first."""
    with cli_errors():
        files = list(make_client().files.list(purpose=purpose))
        if as_json:
            print_json(files)
            return
        if not files:
            console.print("No files yet: `ftserve files upload train.jsonl`.")
            return
        rows = [
            [
                f.id,
                f.filename,
                human_bytes(f.bytes),
                f.status,
                f.data_format or "-",
                str(f.example_count if f.example_count is not None else "-"),
                when(f.created_at),
            ]
            for f in files
        ]
        print_table(["id", "filename", "size", "status", "format", "examples", "created"], rows)


@files_app.command("get")
def files_get(
    file_id: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json", help=JSON_HELP)
) -> None:
    """Show one file."""
    with cli_errors():
        f = make_client().files.retrieve(file_id)
        if as_json:
            print_json(f)
            return
        for key, value in f.to_dict().items():
            out.print(f"{key:15} {value}", markup=False)


@files_app.command("report")
def files_report(
    file_id: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json", help=JSON_HELP)
) -> None:
    """Show the validation report of an upload: every bad line (the first 100) and why."""
    with cli_errors():
        report = make_client().files.validation_report(file_id)
        if as_json:
            print_json(report)
            return
        layout = f" ({report.layout})" if report.layout else ""
        out.print(
            f"{report.file_id}: {report.status}, {report.data_format or 'unknown format'}{layout}, "
            f"{report.example_count} examples, {report.error_count} errors",
            markup=False,
        )
        for error in report.errors:
            out.print(f"  {error.message}", markup=False)
        for warning in report.warnings:
            out.print(f"  warning: {warning.message}", markup=False)


@files_app.command("download")
def files_download(
    file_id: str = typer.Argument(...),
    output: Path = typer.Option(None, "--output", "-o", help="Where to write it (default: stdout)."),
) -> None:
    """Download a file's content (e.g. a job's results.csv)."""
    with cli_errors():
        content = make_client().files.content(file_id)
        if output is None:
            for chunk in content.iter_bytes():
                sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        else:
            content.write_to_file(output)
            console.print(f"Wrote {output}")


@files_app.command("delete")
def files_delete(
    file_id: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json", help=JSON_HELP)
) -> None:
    """Delete a file."""
    with cli_errors():
        deleted = make_client().files.delete(file_id)
        if as_json:
            print_json(deleted)
        else:
            print(f"Deleted {deleted.id}")
