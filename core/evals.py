"""Evals in OpenAI's shapes (/v1/evals): check an eval and a run's data source, build a sample's prompt, decide
pass or fail per testing criterion, count results, and write a run's report.

Pure Python over core.graders (no torch, no HTTP): the API's background runner (api/services/evals.py) samples
the model and calls these. Status of a run:

    queued ──▶ in_progress ──▶ completed (report_file_id set) | failed (error) | canceled
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, or_, select

from core import graders
from core.errors import InvalidRequestError
from core.models import EvalOutputItem, EvalRun

QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELED = "queued", "in_progress", "completed", "failed", "canceled"
ACTIVE = (QUEUED, IN_PROGRESS)
RUN_STATUSES = (QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELED)
PASS, FAIL, ERROR = "pass", "fail", "error"
REPORT_PURPOSE = "evals"  # OpenAI's purpose for eval data files: the report is one
MAX_ITEMS = 5000  # items in one run: each is a model call
MAX_CRITERIA = 16
SAMPLING_PARAMS = ("temperature", "max_completion_tokens", "seed", "top_p")
ROLES = ("system", "developer", "user", "assistant")
_ITEM_REFERENCE = re.compile(r"^item(\.[A-Za-z0-9_]+)+$")


# -- the eval ------------------------------------------------------------------------------------------------


def check_data_source_config(config: Any) -> dict[str, Any]:
    """The stored (and returned) config: OpenAI's `custom` one, its `schema` holding `item` (and `sample`)."""
    param = "data_source_config"
    if not isinstance(config, dict):
        raise InvalidRequestError(f"{param} must be an object", param=param)
    if config.get("type") != "custom":
        raise InvalidRequestError(
            f"{param}.type must be 'custom' (logs and stored_completions need OpenAI's stored completions, which "
            f"this server does not keep), got {config.get('type')!r}",
            param=f"{param}.type",
        )
    item_schema = config.get("item_schema")
    if not isinstance(item_schema, dict):
        raise InvalidRequestError(
            f"{param}.item_schema must be a JSON schema object", param=f"{param}.item_schema"
        )
    include_sample = config.get("include_sample_schema", False)
    if not isinstance(include_sample, bool):
        raise InvalidRequestError(
            f"{param}.include_sample_schema must be a boolean", param=f"{param}.include_sample_schema"
        )
    properties: dict[str, Any] = {"item": item_schema}
    required = ["item"]
    if include_sample:
        properties["sample"] = {
            "type": "object",
            "properties": {"output_text": {"type": "string"}, "output_json": {"type": "object"}},
        }
        required.append("sample")
    return {"type": "custom", "schema": {"type": "object", "properties": properties, "required": required}}


def _criterion_name(criterion: dict[str, Any], index: int) -> str:
    name = criterion.get("name")
    return name if isinstance(name, str) and name else f"{criterion.get('type')}-{index}"


def check_testing_criteria(criteria: Any, item_schema: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each criterion checked as a grader (core.graders: python and label_model refused), named (unique), with a
    numeric `pass_threshold` where given; item fields a template uses must be in the item schema's properties."""
    param = "testing_criteria"
    if not isinstance(criteria, list) or not criteria:
        raise InvalidRequestError(f"{param} must be a non-empty list of graders", param=param)
    if len(criteria) > MAX_CRITERIA:
        raise InvalidRequestError(f"{param} holds at most {MAX_CRITERIA} graders", param=param)
    properties = (item_schema or {}).get("properties")
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for i, criterion in enumerate(criteria):
        where = f"{param}[{i}]"
        if not isinstance(criterion, dict):
            raise InvalidRequestError(f"{where} must be a grader object", param=where)
        spec = {k: v for k, v in criterion.items() if k != "pass_threshold"}
        checked = graders.check_grader(spec, where)
        threshold = criterion.get("pass_threshold")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)):
            raise InvalidRequestError(
                f"{where}.pass_threshold must be a number", param=f"{where}.pass_threshold"
            )
        if threshold is None and criterion.get("type") == "text_similarity":
            raise InvalidRequestError(
                f"{where}.pass_threshold is required for a text_similarity grader",
                param=f"{where}.pass_threshold",
            )
        if isinstance(properties, dict):
            unknown = sorted(checked.item_fields - set(properties))
            if unknown:
                raise InvalidRequestError(
                    f"{where} references item.{unknown[0]}, which data_source_config.item_schema does not define",
                    param=where,
                )
        name = _criterion_name(criterion, i)
        if name in names:
            raise InvalidRequestError(f"{where}.name '{name}' is used twice", param=f"{where}.name")
        names.add(name)
        out.append({**criterion, "name": name})
    return out


def pass_threshold(criterion: dict[str, Any]) -> float:
    """string_check passes on a match; the others at `pass_threshold`, else at the middle of their range."""
    if criterion.get("type") == "string_check":
        return 1.0
    threshold = criterion.get("pass_threshold")
    if isinstance(threshold, int | float):
        return float(threshold)
    if criterion.get("type") == "score_model":
        low, high = graders.score_range(criterion)
        return (low + high) / 2
    return 0.5


# -- a run's data source -------------------------------------------------------------------------------------


def _check_template(template: Any, param: str) -> None:
    if not isinstance(template, list) or not template:
        raise InvalidRequestError(f"{param} must be a non-empty list of messages", param=param)
    for i, message in enumerate(template):
        where = f"{param}[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequestError(f"{where} must be a message object", param=where)
        if message.get("role") not in ROLES:
            raise InvalidRequestError(
                f"{where}.role must be one of {', '.join(ROLES)}", param=f"{where}.role"
            )
        text = message_text(message.get("content"))
        if text is None:
            raise InvalidRequestError(
                f"{where}.content must be a string or an input_text part", param=f"{where}.content"
            )
        refs = graders.template_refs(text, f"{where}.content")
        if any(ref[0] != "item" for ref in refs):
            raise InvalidRequestError(
                f"{where}.content may reference only {{{{ item.<field> }}}}: the sample does not exist yet",
                param=f"{where}.content",
            )


def message_text(content: Any) -> str | None:
    """A template message's text: a string, or OpenAI's {type: input_text|output_text, text} part."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict) and content.get("type") in ("input_text", "output_text"):
        text = content.get("text")
        return text if isinstance(text, str) else None
    return None


def check_run_data_source(data_source: Any) -> dict[str, Any]:
    """A `completions` data source checked: model, input_messages, source, sampling_params. Returns it."""
    param = "data_source"
    if not isinstance(data_source, dict):
        raise InvalidRequestError(f"{param} must be an object", param=param)
    if data_source.get("type") != "completions":
        raise InvalidRequestError(
            f"{param}.type must be 'completions' (jsonl and responses sources are not supported here), got "
            f"{data_source.get('type')!r}",
            param=f"{param}.type",
        )
    model = data_source.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError(f"{param}.model must name a model", param=f"{param}.model")
    messages = data_source.get("input_messages")
    where = f"{param}.input_messages"
    if not isinstance(messages, dict):
        raise InvalidRequestError(f"{where} must be a template or an item_reference", param=where)
    if messages.get("type") == "template":
        _check_template(messages.get("template"), f"{where}.template")
    elif messages.get("type") == "item_reference":
        ref = messages.get("item_reference")
        if not isinstance(ref, str) or not _ITEM_REFERENCE.match(ref.replace(" ", "")):
            raise InvalidRequestError(
                f"{where}.item_reference must be 'item.<field>', e.g. 'item.messages'",
                param=f"{where}.item_reference",
            )
    else:
        raise InvalidRequestError(
            f"{where}.type must be 'template' or 'item_reference'", param=f"{where}.type"
        )
    source = data_source.get("source")
    where = f"{param}.source"
    if not isinstance(source, dict):
        raise InvalidRequestError(f"{where} must be a file_content or file_id source", param=where)
    if source.get("type") == "file_content":
        content = source.get("content")
        if not isinstance(content, list) or not content:
            raise InvalidRequestError(f"{where}.content must be a non-empty list", param=f"{where}.content")
        if len(content) > MAX_ITEMS:
            raise InvalidRequestError(
                f"{where}.content holds at most {MAX_ITEMS} items", param=f"{where}.content"
            )
        for i, row in enumerate(content):
            if not isinstance(row, dict) or not isinstance(row.get("item"), dict):
                raise InvalidRequestError(
                    f"{where}.content[{i}] must be {{'item': {{...}}}}", param=f"{where}.content[{i}].item"
                )
    elif source.get("type") == "file_id":
        if not isinstance(source.get("id"), str) or not source["id"]:
            raise InvalidRequestError(f"{where}.id must be a file id", param=f"{where}.id")
    else:
        raise InvalidRequestError(
            f"{where}.type must be 'file_content' or 'file_id' (stored_completions are not kept here)",
            param=f"{where}.type",
        )
    sampling = data_source.get("sampling_params")
    where = f"{param}.sampling_params"
    if sampling is not None:
        if not isinstance(sampling, dict):
            raise InvalidRequestError(f"{where} must be an object", param=where)
        for key in ("temperature", "top_p"):
            value = sampling.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise InvalidRequestError(f"{where}.{key} must be a number >= 0", param=f"{where}.{key}")
        for key in ("max_completion_tokens", "seed"):
            value = sampling.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InvalidRequestError(f"{where}.{key} must be an integer", param=f"{where}.{key}")
        tokens = sampling.get("max_completion_tokens")
        if tokens is not None and tokens < 1:
            raise InvalidRequestError(
                f"{where}.max_completion_tokens must be >= 1", param=f"{where}.max_completion_tokens"
            )
    return data_source


def items_from_jsonl(text: str, param: str = "data_source.source.id") -> list[dict[str, Any]]:
    """A file's items: each line's `item` object where it has one (OpenAI's eval files), else the line itself
    (a fine-tune file's `{"messages": [...]}` line)."""
    items: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise InvalidRequestError(f"Line {n} of the file is not JSON", param=param) from None
        if not isinstance(row, dict):
            raise InvalidRequestError(f"Line {n} of the file is not a JSON object", param=param)
        items.append(row["item"] if isinstance(row.get("item"), dict) else row)
        if len(items) > MAX_ITEMS:
            raise InvalidRequestError(f"The file holds more than {MAX_ITEMS} items", param=param)
    if not items:
        raise InvalidRequestError("The file holds no items", param=param)
    return items


def build_messages(data_source: dict[str, Any], item: dict[str, Any]) -> list[dict[str, str]]:
    """The prompt for one item. A missing item field is a GraderError naming it. An item_reference to a chat
    (a fine-tune line) drops its last assistant message: that is the reference answer, not the prompt."""
    spec = data_source["input_messages"]
    if spec["type"] == "template":
        out = []
        for i, message in enumerate(spec["template"]):
            text = message_text(message.get("content")) or ""
            param = f"data_source.input_messages.template[{i}].content"
            out.append({"role": message["role"], "content": graders.render(text, item, "", param)})
        return out
    path = spec["item_reference"].replace(" ", "").split(".")[1:]
    value: Any = item
    for key in path:
        if isinstance(value, dict) and key in value:
            value = value[key]
        else:
            raise graders.GraderError(
                f"The item has no field '{'.'.join(path)}', which input_messages.item_reference names",
                param=f"item.{'.'.join(path)}",
            )
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in value
    ):
        raise graders.GraderError(
            f"item.{'.'.join(path)} must be a list of messages with string content",
            param=f"item.{'.'.join(path)}",
        )
    messages = [{"role": m["role"], "content": m["content"]} for m in value]
    if len(messages) > 1 and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    return messages


def sampling_body(data_source: dict[str, Any]) -> dict[str, Any]:
    sampling = data_source.get("sampling_params") or {}
    return {k: sampling[k] for k in SAMPLING_PARAMS if sampling.get(k) is not None}


# -- grading -------------------------------------------------------------------------------------------------


def grade(
    criteria: list[dict[str, Any]], item: dict[str, Any], output: str, *, model_call: graders.ModelCall | None
) -> list[dict[str, Any]]:
    """One result per criterion: {name, type, score, passed, sample: None}, with `error` where it could not be
    graded (a missing item field, a grader model that failed)."""
    results = []
    for criterion in criteria:
        spec = {k: v for k, v in criterion.items() if k != "pass_threshold"}
        result: dict[str, Any] = {"name": criterion["name"], "type": criterion["type"], "sample": None}
        try:
            scored = graders.score(graders.check_grader(spec), item, output, model_call=model_call)
        except Exception as exc:  # noqa: BLE001 (one item's grading error is that item's result)
            result.update(score=0.0, passed=False, error=getattr(exc, "message", str(exc)))
        else:
            result.update(score=scored.reward, passed=scored.reward >= pass_threshold(criterion))
            if scored.sub_rewards:
                result["sub_scores"] = scored.sub_rewards
            if scored.errors:  # e.g. a grader model's answer without a number: scored as its minimum
                result["warnings"] = scored.errors
        results.append(result)
    return results


def item_status(results: list[dict[str, Any]]) -> str:
    if any(r.get("error") for r in results):
        return ERROR
    return PASS if all(r["passed"] for r in results) else FAIL


def summarize(
    criteria: list[dict[str, Any]], items: Iterable[EvalOutputItem], total: int
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """(result_counts, per_testing_criteria_results) over the items graded so far; `total` is the run's item
    count, so passed + failed + errored < total while the run goes on. Errored items count in no criterion."""
    counts = {"total": total, "errored": 0, "failed": 0, "passed": 0}
    per = {
        c["name"]: {"testing_criteria": c["name"], "passed": 0, "failed": 0, "_sum": 0.0} for c in criteria
    }
    for row in items:
        counts[{PASS: "passed", FAIL: "failed"}.get(row.status, "errored")] += 1
        if row.status == ERROR:
            continue
        for result in row.results:
            entry = per.get(result["name"])
            if entry is None:
                continue
            entry["passed" if result["passed"] else "failed"] += 1
            entry["_sum"] += float(result["score"])
    results = []
    for entry in per.values():
        graded = entry["passed"] + entry["failed"]
        mean = entry.pop("_sum") / graded if graded else None
        results.append({**entry, "mean_score": round(mean, 6) if mean is not None else None})
    return counts, results


def report_jsonl(
    *, eval_name: str, eval_id: str, run: EvalRun, criteria: list[dict[str, Any]], items: list[EvalOutputItem]
) -> bytes:
    """The run's report: a summary line first (`"type": "summary"`: counts and each criterion's pass rate and mean
    score), then one line per item (`"type": "item"`: the item, the model's output, each grader's score, pass)."""
    counts, per = summarize(criteria, items, run.result_counts.get("total", len(items)))
    graded = counts["passed"] + counts["failed"]
    summary = {
        "type": "summary",
        "eval_id": eval_id,
        "eval_name": eval_name,
        "run_id": run.id,
        "run_name": run.name,
        "model": run.model,
        "created_at": int(time.time()),
        "result_counts": counts,
        "pass_rate": round(counts["passed"] / graded, 6) if graded else None,
        "per_testing_criteria_results": [
            {
                **p,
                "pass_rate": round(p["passed"] / (p["passed"] + p["failed"]), 6)
                if p["passed"] + p["failed"]
                else None,
            }
            for p in per
        ],
    }
    lines = [json.dumps(summary)]
    for row in sorted(items, key=lambda r: r.datasource_item_id):
        output = row.sample.get("output") or []
        lines.append(
            json.dumps(
                {
                    "type": "item",
                    "datasource_item_id": row.datasource_item_id,
                    "item": row.datasource_item,
                    "output": output[0].get("content") if output else None,
                    "status": row.status,
                    "passed": row.status == PASS,
                    "scores": {r["name"]: r["score"] for r in row.results},
                    "results": row.results,
                    "error": (row.sample.get("error") or {}).get("message"),
                }
            )
        )
    return ("\n".join(lines) + "\n").encode()


# -- the runner's claim on a run -----------------------------------------------------------------------------


def claim(
    session: Session, run_id: str, *, runner_id: str, lease_ttl_s: float, now: float | None = None
) -> bool:
    """Take an active run whose lease is free or expired (a compare-and-set: one runner wins)."""
    now = time.time() if now is None else now
    statement = (
        update(EvalRun)
        .where(
            col(EvalRun.id) == run_id,
            col(EvalRun.status).in_(ACTIVE),
            or_(col(EvalRun.lease_expires_at).is_(None), col(EvalRun.lease_expires_at) < now),
        )
        .values(runner_id=runner_id, lease_expires_at=now + lease_ttl_s, updated_at=int(now))
    )
    won = session.connection().execute(statement).rowcount == 1
    session.commit()
    return won


def claimable(session: Session, *, now: float | None = None, limit: int = 20) -> list[str]:
    """Active runs no live runner holds: new ones, and those of a runner that died."""
    now = time.time() if now is None else now
    rows = session.exec(
        select(EvalRun.id)
        .where(
            col(EvalRun.status).in_(ACTIVE),
            or_(col(EvalRun.lease_expires_at).is_(None), col(EvalRun.lease_expires_at) < now),
        )
        .order_by(col(EvalRun.seq))
        .limit(limit)
    ).all()
    return list(rows)


def transition(session: Session, run_id: str, *, holder: str, **values: Any) -> bool:
    """Update a run this runner holds and that is still active (a compare-and-set: a cancel that came first
    wins). The caller commits; False: the run is not this runner's to change any more."""
    statement = (
        update(EvalRun)
        .where(col(EvalRun.id) == run_id, col(EvalRun.status).in_(ACTIVE), col(EvalRun.runner_id) == holder)
        .values(updated_at=int(time.time()), **values)
    )
    return bool(session.connection().execute(statement).rowcount == 1)
