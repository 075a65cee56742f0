"""`ftserve config validate|run FILE`: a fine-tuning job described in YAML, in the spirit of Axolotl.

    base_model: demo-tiny
    method: sft
    datasets:
      - path: data/train.jsonl      # relative to this file; uploaded first
    num_epochs: 3
    lora_r: 16

Keys are documented in docs/config.md. Every mistake is reported as one line naming the key (and the YAML
line) and what to write instead.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal, TypeAlias

import typer
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cli.files import upload_file
from cli.follow import follow_job
from cli.jobs import check_model, finish
from cli.user_common import (
    JSON_HELP,
    UserError,
    cli_errors,
    console,
    fail,
    make_client,
    print_json,
    server_message,
    suggest,
)
from ftserve_client import APIStatusError, Client
from ftserve_client.types import Estimate

config_app = typer.Typer(
    no_args_is_help=True, help="Fine-tuning jobs described in YAML files (see docs/config.md)."
)

Auto: TypeAlias = Literal["auto"]

# YAML key -> the API's hyperparameter name (method.<type>.hyperparameters.<name>).
HYPERPARAMETER_KEYS = {
    "num_epochs": "n_epochs",
    "batch_size": "batch_size",
    "micro_batch_size": "micro_batch_size",
    "learning_rate": "learning_rate",
    "learning_rate_multiplier": "learning_rate_multiplier",
    "warmup_ratio": "warmup_ratio",
    "sequence_len": "max_seq_length",
    "eval_steps": "eval_every_steps",
    "save_steps": "checkpoint_every_steps",
    "beta": "beta",
    "lora_r": "lora_rank",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "lora_target_modules": "target_modules",
}
# PyYAML's wording for the usual slips, and what they mean in plain words.
YAML_PROBLEMS = {
    "'\\t'": "a tab; YAML indents with spaces only",
    "expected <block end>": "the indentation does not line up with the lines above",
    "mapping values are not allowed": "a ':' YAML did not expect: check this line's indentation, or quote a value that contains ': '",
    "could not find expected ':'": "a line that is not `key: value`",
}
# The job file's method names, as the API's.
API_METHOD = {"sft": "supervised", "dpo": "dpo"}


class Dataset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    file_id: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Dataset:
        if (self.path is None) == (self.file_id is None):
            raise ValueError(
                "give exactly one of 'path' (a local JSONL file) or 'file_id' (an uploaded file)"
            )
        return self


class JobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(min_length=1)
    method: Literal["sft", "dpo"] = "sft"
    datasets: list[Dataset | str] = Field(min_length=1)
    validation_datasets: list[Dataset | str] | None = None
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None
    adapter: Literal["lora"] = "lora"
    num_epochs: Auto | int | None = None
    batch_size: Auto | int | None = None
    # axolotl's pair: batch_size = micro_batch_size x gradient_accumulation_steps
    micro_batch_size: Auto | int | None = None
    gradient_accumulation_steps: int | None = Field(None, ge=1)
    learning_rate: Auto | float | None = None
    learning_rate_multiplier: Auto | float | None = None
    warmup_ratio: Auto | float | None = None
    sequence_len: Auto | int | None = None
    eval_steps: Auto | int | None = None
    save_steps: Auto | int | None = None
    beta: Auto | float | None = None
    lora_r: Auto | int | None = None
    lora_alpha: Auto | int | None = None
    lora_dropout: Auto | float | None = None
    lora_target_modules: Auto | str | list[str] | None = None
    lora_target_linear: bool | None = None

    def hyperparameters(self) -> dict[str, Any]:
        out = {
            api: getattr(self, key)
            for key, api in HYPERPARAMETER_KEYS.items()
            if getattr(self, key) is not None
        }
        if self.lora_target_linear:
            out["target_modules"] = "all-linear"
        return out

    @model_validator(mode="after")
    def _accumulation_makes_the_batch(self) -> JobConfig:
        """axolotl's effective batch is micro_batch_size x gradient_accumulation_steps; ours is batch_size."""
        accumulation = self.gradient_accumulation_steps
        if accumulation is None:
            return self
        if not isinstance(self.micro_batch_size, int):
            raise ValueError(
                "gradient_accumulation_steps needs a micro_batch_size (a number) to make the batch"
            )
        batch = self.micro_batch_size * accumulation
        if self.batch_size not in (None, "auto", batch):
            raise ValueError(
                f"batch_size {self.batch_size} is not micro_batch_size x gradient_accumulation_steps ({batch}); "
                "give batch_size, or the other two"
            )
        self.batch_size = batch
        return self


class LoadedConfig:
    """A validated config plus where its datasets are on disk."""

    def __init__(self, path: Path, config: JobConfig) -> None:
        self.path = path
        self.config = config
        self.base = path.parent

    def sources(self, which: str) -> list[tuple[str, Path | str]]:
        """(where, local path or file id) for each entry of `datasets`/`validation_datasets`."""
        entries = getattr(self.config, which) or []
        out: list[tuple[str, Path | str]] = []
        for i, entry in enumerate(entries):
            where = f"{which}[{i}]"
            if isinstance(entry, str):
                entry = Dataset(path=entry)
            if entry.file_id is not None:
                out.append((where, entry.file_id))
                continue
            assert entry.path is not None
            local = Path(entry.path).expanduser()
            local = local if local.is_absolute() else (self.base / local)
            if not local.is_file():
                raise UserError(
                    f"{self.path}: {where}.path: no such file: {local}. Paths are relative to the config "
                    "file's folder; fix the path or upload it and use file_id."
                )
            out.append((where, local))
        return out

    def api_names(self) -> dict[str, str]:
        """API param -> config key, so a server refusal names the key to fix."""
        names = {api: f"{key} in {self.path}" for key, api in HYPERPARAMETER_KEYS.items()}
        names.update(
            {
                "model": f"base_model in {self.path}",
                "training_file": f"datasets in {self.path}",
                "validation_file": f"validation_datasets in {self.path}",
                "suffix": f"suffix in {self.path}",
                "seed": f"seed in {self.path}",
                "metadata": f"metadata in {self.path}",
                "hyperparameters": "{} in " + str(self.path),
            }
        )
        return names


def _key_lines(text: str) -> dict[str, int]:
    """1-based line of each top-level key, to point errors at the right line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): k.start_mark.line + 1 for k, _ in node.value}


FIELD_NAMES = set(JobConfig.model_fields) | set(Dataset.model_fields)


def _pydantic_problem(exc: ValidationError, path: Path, lines: dict[str, int]) -> str:
    errors = exc.errors()

    # Union fields ("auto" or a number, a Dataset or a path) report one error per branch, with the branch's
    # name in `loc`; keep real keys and indexes only, and prefer the branch that says what is wrong.
    def where_in(error: Any) -> list[str]:
        return [str(p) for p in error["loc"] if isinstance(p, int) or p in FIELD_NAMES]

    first_loc = where_in(errors[0])
    same = [e for e in errors if where_in(e) == first_loc]
    specific = [e for e in same if e["type"] != "literal_error"] or same
    error = specific[0]
    loc = where_in(error) if error["type"] != "extra_forbidden" else [str(p) for p in error["loc"]]
    key = loc[0] if loc else ""
    where = f"{path}:{lines[key]}" if key in lines else str(path)
    dotted = key + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc[1:])
    if error["type"] == "extra_forbidden":
        valid = sorted(JobConfig.model_fields) if len(loc) == 1 else sorted(Dataset.model_fields)
        return (
            f"{where}: unknown key '{loc[-1]}'.{suggest(loc[-1], valid)} "
            f"Valid keys: {', '.join(valid)} (see docs/config.md)."
        )
    if error["type"] == "missing":
        examples = {"base_model": "base_model: demo-tiny", "datasets": "datasets: [{path: train.jsonl}]"}
        example = examples.get(key, f"{key}: ...")
        return f"{path}: missing required key '{dotted}'. Add a line like `{example}` (see docs/config.md)."
    reason = error["msg"].removeprefix("Value error, ")
    if len(same) > 1 and any(e["type"] == "literal_error" for e in same) and key in HYPERPARAMETER_KEYS:
        reason += ", or 'auto'"
    got = f" (got {error['input']!r})" if "input" in error and not isinstance(error["input"], dict) else ""
    return f"{where}: {dotted}: {reason}{got}. Fix that value (see docs/config.md)."


def load_config(path: Path) -> LoadedConfig:
    if not path.is_file():
        raise UserError(f"no such config file: {path}. Check the path (examples/demo.yaml is one to copy).")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        for clue, plain in YAML_PROBLEMS.items():
            if clue in problem:
                problem = f"{plain} ({problem})"
                break
        raise UserError(
            f"{where}: invalid YAML: {problem}. Fix the syntax there: keys are `name: value`, list items "
            "`- item`, indent with spaces (see docs/config.md)."
        ) from None
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else f"a {type(raw).__name__}"
        raise UserError(
            f"{path}: expected a mapping of keys (e.g. `base_model: demo-tiny`), got {got}. See docs/config.md."
        )
    try:
        config = JobConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_pydantic_problem(exc, path, _key_lines(text))) from None
    lines = _key_lines(text)
    if config.beta is not None and config.method != "dpo":
        raise UserError(
            f"{path}:{lines.get('beta', '?')}: beta applies to method: dpo only. Remove it or set "
            "method: dpo (see docs/config.md)."
        )
    if config.lora_target_linear and config.lora_target_modules is not None:
        raise UserError(
            f"{path}: give lora_target_linear or lora_target_modules, not both "
            "(lora_target_linear: true means every linear layer; see docs/config.md)."
        )
    loaded = LoadedConfig(path, config)
    loaded.sources("datasets")  # fail early on a missing dataset file
    loaded.sources("validation_datasets")
    return loaded


def check_datasets_locally(loaded: LoadedConfig) -> list[dict[str, Any]]:
    """Run the server's own validator on local datasets, so `validate` finds bad lines without uploading."""
    from core.training_data import StreamingValidator, format_refusal

    summaries: list[dict[str, Any]] = []
    for which in ("datasets", "validation_datasets"):
        for where, source in loaded.sources(which):
            if not isinstance(source, Path):
                summaries.append({"where": where, "file_id": source})
                continue
            # min_examples=1: the server's minimum is its own setting; only line errors are certain here.
            validator = StreamingValidator(min_examples=1, filename=source.name)
            with source.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    validator.feed(chunk)
            report = validator.finish()
            if not report.ok:
                first = report.errors[0].message if report.errors else f"{report.error_count} errors"
                more = f" ({report.error_count - 1} more)" if report.error_count > 1 else ""
                raise UserError(
                    f"{loaded.path}: {where}: {source} is not valid training data: {first}{more}. Fix the file "
                    f"(`ftserve files upload {source}` lists every bad line)."
                )
            refusal = format_refusal(report.data_format, report.layout, API_METHOD[loaded.config.method])
            if refusal is not None:
                raise UserError(
                    f"{loaded.path}: {where}: {source} cannot train method {loaded.config.method}: {refusal} "
                    "Change method or the dataset."
                )
            summaries.append(
                {
                    "where": where,
                    "path": str(source),
                    "data_format": report.data_format,
                    "examples": report.example_count,
                }
            )
    return summaries


def upload_datasets(client: Client, loaded: LoadedConfig, which: str, *, as_json: bool) -> str | None:
    """One file id for a list of datasets: one entry is used as it is; several are joined into one upload."""
    sources = loaded.sources(which)
    if not sources:
        return None
    if len(sources) == 1:
        source = sources[0][1]
        return source if isinstance(source, str) else upload_file(client, source, as_json=as_json).id
    stem = f"{loaded.path.stem}-{'train' if which == 'datasets' else 'validation'}"
    with tempfile.TemporaryDirectory() as tmp:
        joined = Path(tmp) / f"{stem}.jsonl"
        with joined.open("wb") as out:
            for _, source in sources:
                data = (
                    _json_lines(source) if isinstance(source, Path) else client.files.content(source).content
                )
                out.write(data if data.endswith(b"\n") else data + b"\n")
        return upload_file(client, joined, as_json=as_json).id


def _json_lines(path: Path) -> bytes:
    """A local dataset as JSON Lines: a .json file holding a JSON array becomes one example per line, as the
    server stores it (a file uploaded alone is converted by the server)."""
    from core.training_data import StreamingValidator

    validator = StreamingValidator(min_examples=1, filename=path.name)
    out = bytearray()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            out += validator.feed(chunk)
    validator.finish()
    return bytes(out)


def job_body(loaded: LoadedConfig, training_file: str, validation_file: str | None) -> dict[str, Any]:
    config = loaded.config
    return {
        "model": config.base_model,
        "training_file": training_file,
        "validation_file": validation_file,
        "method": "dpo" if config.method == "dpo" else "supervised",
        "hyperparameters": config.hyperparameters() or None,
        "suffix": config.suffix,
        "seed": config.seed,
        "metadata": config.metadata,
    }


@config_app.command("validate")
def config_validate(
    file: Path = typer.Argument(..., help="The YAML job file."),
    offline: bool = typer.Option(False, "--offline", help="Skip the server check of base_model."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Check a job file: keys and values, the datasets (line by line, locally), and that the server has
    base_model (when FTSERVE_API_KEY is set)."""
    with cli_errors():
        loaded = load_config(file)
        datasets = check_datasets_locally(loaded)
        checked_model = False
        estimate: Estimate | None = None
        estimate_note = ""
        if not offline and _has_key():
            client = make_client()
            check_model(client, loaded.config.base_model, where=f"base_model in {file}")
            checked_model = True
            estimate, estimate_note = _estimate(client, loaded, datasets)
    config = loaded.config
    if as_json:
        print_json(
            {
                "ok": True,
                "file": str(file),
                "base_model": config.base_model,
                "base_model_checked": checked_model,
                "method": config.method,
                "hyperparameters": config.hyperparameters(),
                "datasets": datasets,
                "estimate": estimate.to_dict() if estimate else None,
            }
        )
        return

    def describe(which: str) -> str:
        return ", ".join(
            f"{d['path']} ({d['examples']} {d['data_format']} examples)"
            if "examples" in d
            else str(d["file_id"])
            for d in datasets
            if d["where"].startswith(which)
        )

    described = describe("datasets") + (
        f"; validation: {describe('validation_datasets')}" if config.validation_datasets else ""
    )
    shown = [*HYPERPARAMETER_KEYS, "lora_target_linear"]
    hp = ", ".join(f"{k}={getattr(config, k)}" for k in shown if getattr(config, k) is not None) or "all auto"
    console.print(
        f"[green]✓[/green] {file} is valid: {config.method} on {config.base_model}"
        f"{'' if checked_model else ' (not checked against a server)'}; datasets: {described}; "
        f"hyperparameters: {hp}",
        highlight=False,
        markup=True,
        soft_wrap=True,
    )
    if estimate is not None:
        fits = (
            ", ".join(f"{f.gpu_class} ({f.free_now}/{f.devices} free)" for f in estimate.fits) or "none live"
        )
        console.print(
            f"  needs ~{estimate.estimated_vram_mb} MB of GPU memory (CPU worker: ~{estimate.cpu_ram_mb} MB RAM); "
            f"GPUs that fit: {fits}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    elif estimate_note:
        console.print(f"  {estimate_note}", highlight=False, markup=False, soft_wrap=True)


def _estimate(
    client: Client, loaded: LoadedConfig, datasets: list[dict[str, Any]]
) -> tuple[Estimate | None, str]:
    """The server's pre-flight memory estimate for the job, sized by the example count found locally.
    Only informative: a server without the endpoint, or a model it cannot size, is a note, not an error."""
    examples = [d["examples"] for d in datasets if d["where"].startswith("datasets") and "examples" in d]
    if len(examples) != len([d for d in datasets if d["where"].startswith("datasets")]):
        return None, ""  # a dataset given by file id: its size is not known here
    config = loaded.config
    try:
        estimate = client.estimates.create(
            model=config.base_model,
            n_examples=sum(examples),
            method="dpo" if config.method == "dpo" else "supervised",
            hyperparameters=config.hyperparameters() or None,
        )
    except APIStatusError as exc:
        return None, f"(no memory estimate: {server_message(exc)})"
    return estimate, ""


@config_app.command("run")
def config_run(
    file: Path = typer.Argument(..., help="The YAML job file."),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="Follow the job until it ends."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP + " With --follow: events as JSON lines."),
) -> None:
    """Upload the datasets, create the job and follow it; prints the fine-tuned model's name at the end."""
    with cli_errors():
        loaded = load_config(file)
        check_datasets_locally(loaded)  # bad lines and wrong formats fail here, before any upload
        client = make_client()
    names = loaded.api_names()
    with cli_errors(names):
        check_model(client, loaded.config.base_model, where=f"base_model in {file}")
        training_file = upload_datasets(client, loaded, "datasets", as_json=as_json)
        validation_file = upload_datasets(client, loaded, "validation_datasets", as_json=as_json)
        assert training_file is not None
        job = client.fine_tuning.jobs.create(**job_body(loaded, training_file, validation_file))
    if not follow:
        if as_json:
            print_json(job)
        else:
            print(job.id)
        return
    if not as_json:
        console.print(
            f"Created {job.id} from {file}; following. Ctrl-C stops following, not the job.", soft_wrap=True
        )
    with cli_errors(names):
        try:
            final = follow_job(client, job, console=console, as_json=as_json)
        except KeyboardInterrupt:
            fail(f"stopped following; {job.id} goes on. Resume with `ftserve jobs follow {job.id}`.", 130)
    finish(final, as_json=as_json)


def _has_key() -> bool:
    import os

    return bool(os.environ.get("FTSERVE_API_KEY"))
