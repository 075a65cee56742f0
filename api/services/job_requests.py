"""What a job request and an estimate request share: the method, its validated hyperparameters, and the
files they name."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError
from sqlmodel import Session, col, select

from api.protocol import CreateEstimateRequest, CreateFineTuningJobRequest
from core.continuation import is_fine_tuned_name, resolve_parent, take_parent_shape
from core.errors import InvalidRequestError
from core.graders import Grader, GraderError, check_grader, missing_fields
from core.hyperparameters import hyperparameters_model
from core.model_registry import load_registry
from core.models import File, Organization
from core.settings import Settings
from core.storage import Storage


def _pydantic_param(exc: ValidationError, prefix: str) -> tuple[str, str]:
    """The bad field and a useful reason. Each field is `"auto" | number`, so pydantic reports one error
    per union branch; the branch names are not fields, and the non-"auto" branch says what is wrong."""
    errors = exc.errors()
    field = str(errors[0]["loc"][0]) if errors[0]["loc"] else ""
    same_field = [e for e in errors if e["loc"] and str(e["loc"][0]) == field]
    specific = [e for e in same_field if e["type"] != "literal_error"] or same_field
    reason = specific[0]["msg"]
    if len(same_field) > 1:
        reason += ", or 'auto'"
    if "input" in specific[0] and specific[0]["type"] != "extra_forbidden":
        reason += f" (got {specific[0]['input']!r})"
    elif specific[0]["type"] == "extra_forbidden":
        reason = "unknown hyperparameter"
    return (f"{prefix}.{field}" if field else prefix), reason


def method_and_hyperparameters(
    request: CreateFineTuningJobRequest | CreateEstimateRequest,
) -> tuple[str, dict[str, Any], str]:
    """Returns (method type, validated hyperparameters as a dict with "auto" kept, the param path)."""
    method = request.method
    method_type = method.type if method else "supervised"
    section = getattr(method, method_type, None) if method else None
    raw = section.hyperparameters if section and section.hyperparameters is not None else None
    param = f"method.{method_type}.hyperparameters"
    if request.hyperparameters is not None:
        if raw is not None:
            raise InvalidRequestError(
                "Pass hyperparameters in method.*.hyperparameters only, not also at the top level.",
                param="hyperparameters",
            )
        if method_type != "supervised":
            raise InvalidRequestError(
                "Top-level 'hyperparameters' apply to supervised jobs only; use "
                f"method.{method_type}.hyperparameters.",
                param="hyperparameters",
            )
        raw, param = request.hyperparameters, "hyperparameters"
    grader: dict[str, Any] | None = None
    if method_type == "reinforcement":
        grader = _reinforcement_grader(section, raw)
    model = hyperparameters_model(method_type)
    try:
        validated = model.model_validate(raw or {})
    except ValidationError as exc:
        where, why = _pydantic_param(exc, param)
        raise InvalidRequestError(
            f"Invalid hyperparameter '{where}': {why}", param=where, code="invalid_hyperparameter"
        ) from None
    values = validated.model_dump(mode="json", exclude_none=True)
    if grader is not None:
        values["grader"] = (
            grader  # kept with the hyperparameters: the worker and the job object read it there
        )
    return method_type, values, param


def base_model_for(
    session: Session,
    settings: Settings,
    *,
    org: Organization,
    model: str,
    hyperparameters: dict[str, Any],
    param: str,
) -> str:
    """The registry model a job on `model` trains: `model` itself, or, for a fine-tuned model or checkpoint of
    the organization, its base model. A continued job takes its parent's LoRA shape into `hyperparameters`
    (core.continuation). Refuses what could not be served: a rank above vLLM's max_lora_rank."""
    rank = hyperparameters.get("lora_rank")
    limit = settings.vllm_max_lora_rank
    if isinstance(rank, int) and rank > limit:
        # vLLM refuses adapters above its max_lora_rank: say so now rather than after training.
        raise InvalidRequestError(
            f"lora_rank {rank} is above this server's max_lora_rank {limit}; such an adapter could not be "
            "served.",
            param=f"{param}.lora_rank",
            code="invalid_hyperparameter",
        )
    parent = None
    if is_fine_tuned_name(model):
        parent = resolve_parent(session, organization_id=org.id, model=model)
        take_parent_shape(parent, hyperparameters, param=param)
        base = parent.base_model
    else:
        base = model
    registry = load_registry(settings)
    if base not in registry:
        known = ", ".join(sorted(registry)) or "none registered"
        raise InvalidRequestError(
            f"The model '{base}' does not exist or cannot be fine-tuned (base models: {known}).",
            param="model",
            code="model_not_found",
        )
    rank = hyperparameters.get("lora_rank")
    if parent is not None and isinstance(rank, int) and rank + parent.served_lora_rank > limit:
        # The stored adapter concatenates the parent's and the new LoRA (gpu_worker/parent_adapter.py).
        raise InvalidRequestError(
            f"Continuing '{model[:300]}' would store an adapter of rank {rank + parent.served_lora_rank} (its "
            f"{parent.served_lora_rank} plus a new {rank}), above this server's max_lora_rank {limit}; such an "
            "adapter could not be served. Continue from a model with fewer rounds of training behind it.",
            param="model",
            code="invalid_hyperparameter",
        )
    return base


def _reinforcement_grader(section: Any, raw: dict[str, Any] | None) -> dict[str, Any]:
    """The checked `method.reinforcement.grader` (400 naming the bad field)."""
    if raw is not None and "grader" in raw:
        raise InvalidRequestError(
            "Give the grader as method.reinforcement.grader, not among the hyperparameters.",
            param="method.reinforcement.hyperparameters.grader",
        )
    spec = getattr(section, "grader", None)
    if spec is None:
        raise InvalidRequestError(
            "A reinforcement job needs a grader: method.reinforcement.grader.",
            param="method.reinforcement.grader",
        )
    try:
        check_grader(spec, "method.reinforcement.grader")
    except GraderError as exc:
        raise InvalidRequestError(exc.message, param=exc.param, code=exc.code) from None
    return dict(spec)


def grader_of(hyperparameters: dict[str, Any]) -> Grader | None:
    """A reinforcement job's checked grader, from its stored hyperparameters."""
    spec = hyperparameters.get("grader")
    return check_grader(spec, "method.reinforcement.grader") if spec is not None else None


def check_grader_models(
    settings: Settings, grader: Grader, param: str = "method.reinforcement.grader"
) -> None:
    """A training job's score_model graders call the vLLM replicas of registered base models (the worker looks
    them up by base model): any other model is a 400 now, rather than a job that fails once it is placed."""
    if grader.type == "score_model":
        model = str(grader.spec.get("model"))
        registry = load_registry(settings)
        if model not in registry:
            known = ", ".join(sorted(registry)) or "none registered"
            raise InvalidRequestError(
                f"The score_model grader's model '{model[:300]}' is not a base model this server serves "
                f"(base models: {known}). A training job's grader calls a served base model.",
                param=f"{param}.model",
                code="model_not_found",
            )
    for name, sub in grader.subs.items():
        check_grader_models(settings, sub, f"{param}.graders.{name}")


def fine_tune_file(session: Session, *, org: Organization, file_id: str | None, param: str) -> File | None:
    """The org's processed fine-tune file `file_id` (None: None), or a 400 naming `param`."""
    if file_id is None:
        return None
    row = session.exec(
        select(File).where(File.id == file_id, File.organization_id == org.id, col(File.deleted_at).is_(None))
    ).first()
    if row is None:
        raise InvalidRequestError(f"No such File object: {file_id}", param=param, code="file_not_found")
    if row.purpose != "fine-tune":
        raise InvalidRequestError(
            f"File {file_id} has purpose '{row.purpose}'; fine-tuning needs purpose 'fine-tune'.", param=param
        )
    if row.status != "processed":
        raise InvalidRequestError(
            f"File {file_id} is not ready for training (status '{row.status}'): {row.status_details or ''}".strip(),
            param=param,
            code="invalid_file_status",
        )
    return row


def check_grader_fields(storage: Storage, row: File, grader: Grader, param: str) -> None:
    """Every line of the file holds the item fields the grader references: a 400 naming the first line that
    lacks one, and the field."""
    if not grader.item_fields:
        return
    buffer = b""
    lineno = 0

    def check(line: bytes) -> None:
        if not line.strip():
            return
        item = orjson.loads(line)
        missing = missing_fields(grader, item) if isinstance(item, dict) else []
        if missing:
            raise InvalidRequestError(
                f"File {row.id} line {lineno}: no field '{missing[0]}', which the grader references as "
                f"{{{{ item.{missing[0]} }}}}.",
                param=param,
                code="invalid_file_format",
            )

    for chunk in storage.iter_chunks(row.storage_key):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            lineno += 1
            check(line.removeprefix(b"\xef\xbb\xbf") if lineno == 1 else line)
    if buffer:
        lineno += 1
        check(buffer.removeprefix(b"\xef\xbb\xbf") if lineno == 1 else buffer)
