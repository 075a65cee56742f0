"""Graders for reinforcement fine-tuning, in OpenAI's shapes: check one, and score a sample with one.

Pure Python (no torch), so the API validates and runs graders and the worker turns the same grader into its
GRPO reward. Types:

- ``string_check``: ``input`` against ``reference`` with ``operation`` eq, ne, like (contains) or ilike
  (contains, ignoring case); 1.0 or 0.0.
- ``text_similarity``: ``evaluation_metric`` fuzzy_match (rapidfuzz WRatio with its default processor, /100),
  bleu (sacrebleu's sentence BLEU with effective order, /100), or rouge_1..rouge_5 and rouge_l (torchmetrics'
  ROUGE F-measure: lower-cased words and digits, no stemming). torchmetrics needs torch, which an API-only
  install lacks: there rouge graders are refused with a 400. The other metrics (cosine, gleu, meteor) are
  refused: they need libraries or embedding models this server lacks.
- ``score_model``: a model this server serves is asked to grade (its ``input`` messages, templated); the first
  number in its answer, clamped to ``range`` (default [0, 1]), is the score. The caller supplies the call.
- ``multi``: named sub-graders combined by ``calculate_output``, an arithmetic formula over their names
  (+ - * / ^, parentheses, min max abs floor ceil exp sqrt log), parsed with ``ast``, never ``eval``.
- ``python`` (and ``label_model``) are refused: this server never runs user code.

Templates: ``{{ item.<field>[.<key>...] }}`` (the data line's field) and ``{{ sample.output_text }}`` (the
model's answer), ``{{ sample.output_json.<key> }}`` (the answer parsed as JSON).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import operator
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.errors import InvalidRequestError

GRADER_TYPES = ("string_check", "text_similarity", "score_model", "multi")
STRING_OPERATIONS = ("eq", "ne", "like", "ilike")
# OpenAI's ROUGE metrics -> torchmetrics' rouge_keys
ROUGE_METRICS = {**{f"rouge_{n}": f"rouge{n}" for n in range(1, 6)}, "rouge_l": "rougeL"}
SIMILARITY_METRICS = ("fuzzy_match", "bleu", *ROUGE_METRICS)
# OpenAI's other metrics: refused with the reason.
_UNSUPPORTED_METRICS = {
    "cosine": "it needs an embedding model",
    "gleu": "it is not implemented here",
    "meteor": "it needs NLTK's WordNet data",
}
ROUGE_LIBRARY = "torchmetrics"
_MAX_DEPTH = 3  # multi graders nest at most this deep
_MAX_FORMULA = 512

_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


class GraderError(InvalidRequestError):
    """A grader that cannot be used, or an item it cannot grade (400)."""


# -- templates ----------------------------------------------------------------------------------------------


def template_refs(text: str, param: str) -> list[tuple[str, ...]]:
    """The references in a template, as paths (("item", "answer"), ("sample", "output_text")); a 400 for
    any other namespace or a malformed one."""
    refs = []
    for match in _TEMPLATE.finditer(text):
        ref = match.group(1)
        if not _PATH.match(ref):
            raise GraderError(f"Invalid template reference '{{{{ {ref} }}}}' in {param}", param=param)
        parts = tuple(ref.split("."))
        if parts[0] == "item" and len(parts) >= 2:
            refs.append(parts)
        elif parts[:2] == ("sample", "output_text") and len(parts) == 2:
            refs.append(parts)
        elif parts[:2] == ("sample", "output_json") and len(parts) >= 2:
            refs.append(parts)
        else:
            raise GraderError(
                f"Unknown template reference '{{{{ {ref} }}}}' in {param}: use {{{{ item.<field> }}}}, "
                "{{ sample.output_text }} or {{ sample.output_json.<key> }}",
                param=param,
            )
    if "{{" in _TEMPLATE.sub("", text) or "}}" in _TEMPLATE.sub("", text):
        raise GraderError(f"Unbalanced '{{{{' or '}}}}' in {param}", param=param)
    return refs


def _lookup(value: Any, path: tuple[str, ...], what: str) -> Any:
    for key in path:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            raise KeyError(what)
    return value


def render(text: str, item: dict[str, Any], sample: str, param: str = "grader") -> str:
    """The template with its references filled in. A missing item field is a GraderError naming it."""

    def fill(match: re.Match[str]) -> str:
        parts = tuple(match.group(1).split("."))
        if parts[0] == "item":
            try:
                value = _lookup(item, parts[1:], ".".join(parts))
            except KeyError:
                raise GraderError(
                    f"The item has no field '{'.'.join(parts[1:])}', which {param} references",
                    param=f"item.{'.'.join(parts[1:])}",
                ) from None
        elif parts[1] == "output_text":
            value = sample
        else:
            try:
                value = _lookup(json.loads(sample), parts[2:], ".".join(parts))
            except (ValueError, KeyError):
                value = ""  # a sample that is not the JSON asked for scores as an empty answer
        return value if isinstance(value, str) else json.dumps(value)

    return _TEMPLATE.sub(fill, text)


# -- the multi formula ---------------------------------------------------------------------------------------

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.BitXor: operator.pow,  # OpenAI writes powers as ^
}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}


def _formula(text: Any, names: set[str], param: str) -> ast.expr:
    if not isinstance(text, str) or not text.strip() or len(text) > _MAX_FORMULA:
        raise GraderError(f"{param} must be a formula of at most {_MAX_FORMULA} characters", param=param)
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise GraderError(f"{param} is not a valid formula: {text!r}", param=param) from None
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                raise GraderError(f"{param}: operator not allowed in {text!r}", param=param)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.UAdd | ast.USub):
                raise GraderError(f"{param}: operator not allowed in {text!r}", param=param)
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
                raise GraderError(
                    f"{param}: only {', '.join(_FUNCTIONS)} may be called in {text!r}", param=param
                )
        elif isinstance(node, ast.Name):
            if node.id not in names and node.id not in _FUNCTIONS:
                raise GraderError(
                    f"{param} references '{node.id}', which is not one of the graders "
                    f"({', '.join(sorted(names)) or 'none'})",
                    param=param,
                )
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise GraderError(f"{param}: only numbers are allowed in {text!r}", param=param)
        elif not isinstance(node, ast.operator | ast.unaryop | ast.Load | ast.expr_context):
            raise GraderError(f"{param}: {type(node).__name__} is not allowed in {text!r}", param=param)
    return tree


def evaluate_formula(tree: ast.expr, values: dict[str, float]) -> float:
    """The formula's value; math errors (division by zero, log of 0) give 0.0, a useless sample's score."""

    def ev(node: ast.expr) -> float:
        if isinstance(node, ast.Constant):
            assert isinstance(node.value, int | float)
            return float(node.value)
        if isinstance(node, ast.Name):
            return values[node.id]
        if isinstance(node, ast.UnaryOp):
            return -ev(node.operand) if isinstance(node.op, ast.USub) else ev(node.operand)
        if isinstance(node, ast.BinOp):
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow | ast.BitXor) and abs(right) > 64:
                raise OverflowError("exponent too large")
            return float(_BINARY[type(node.op)](left, right))
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        return float(_FUNCTIONS[node.func.id](*[ev(a) for a in node.args]))

    try:
        result = ev(tree)
    except (ZeroDivisionError, OverflowError, ValueError, TypeError):
        return 0.0
    return result if math.isfinite(result) else 0.0


# -- checking a grader --------------------------------------------------------------------------------------


@dataclass
class Grader:
    """A checked grader: its spec and the item fields its templates reference."""

    spec: dict[str, Any]
    item_fields: set[str] = field(default_factory=set)
    formula: ast.expr | None = None
    subs: dict[str, Grader] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return str(self.spec["type"])

    @property
    def name(self) -> str:
        return str(self.spec.get("name") or self.type)

    def sub_graders(self) -> dict[str, Grader]:
        """Every named sub-grader of a multi (nested ones as outer.inner)."""
        out: dict[str, Grader] = {}
        for name, sub in self.subs.items():
            out[name] = sub
            out.update({f"{name}.{k}": v for k, v in sub.sub_graders().items()})
        return out


def _string(spec: dict[str, Any], key: str, param: str) -> str:
    value = spec.get(key)
    if not isinstance(value, str):
        raise GraderError(f"{param}.{key} must be a string", param=f"{param}.{key}")
    return value


def _known_keys(spec: dict[str, Any], allowed: set[str], param: str) -> None:
    unknown = sorted(set(spec) - allowed - {"type", "name"})
    if unknown:
        raise GraderError(
            f"Unknown field '{unknown[0]}' for a {spec['type']} grader", param=f"{param}.{unknown[0]}"
        )


def check_grader(spec: Any, param: str = "grader", *, depth: int = 0) -> Grader:
    """The grader checked (a GraderError, a 400, names the bad field), with the item fields it references."""
    if not isinstance(spec, dict):
        raise GraderError(f"{param} must be an object", param=param)
    kind = spec.get("type")
    if kind == "python":
        raise GraderError(
            "python graders are not supported: this server never runs user code. Use string_check, "
            "text_similarity, score_model or multi.",
            param=f"{param}.type",
            code="unsupported_grader",
        )
    if kind not in GRADER_TYPES:
        raise GraderError(
            f"{param}.type must be one of {', '.join(GRADER_TYPES)}, got {kind!r}",
            param=f"{param}.type",
            code="unsupported_grader" if isinstance(kind, str) else None,
        )
    name = spec.get("name")
    if name is not None and not isinstance(name, str):
        raise GraderError(f"{param}.name must be a string", param=f"{param}.name")
    grader = Grader(spec)
    if kind in ("string_check", "text_similarity"):
        texts = [_string(spec, "input", param), _string(spec, "reference", param)]
        for key, text in zip(("input", "reference"), texts, strict=True):
            grader.item_fields |= {p[1] for p in template_refs(text, f"{param}.{key}") if p[0] == "item"}
        if kind == "string_check":
            _known_keys(spec, {"input", "reference", "operation"}, param)
            if spec.get("operation") not in STRING_OPERATIONS:
                raise GraderError(
                    f"{param}.operation must be one of {', '.join(STRING_OPERATIONS)}, got "
                    f"{spec.get('operation')!r}",
                    param=f"{param}.operation",
                )
        else:
            _known_keys(spec, {"input", "reference", "evaluation_metric", "pass_threshold"}, param)
            metric = spec.get("evaluation_metric")
            if metric in _UNSUPPORTED_METRICS:
                raise GraderError(
                    f"evaluation_metric '{metric}' is not supported here: {_UNSUPPORTED_METRICS[metric]}. "
                    f"Use {', '.join(SIMILARITY_METRICS)}.",
                    param=f"{param}.evaluation_metric",
                    code="unsupported_grader",
                )
            if metric not in SIMILARITY_METRICS:
                raise GraderError(
                    f"{param}.evaluation_metric must be one of {', '.join(SIMILARITY_METRICS)}, got {metric!r}",
                    param=f"{param}.evaluation_metric",
                )
            if metric in ROUGE_METRICS and not rouge_available():
                raise _rouge_missing(metric, f"{param}.evaluation_metric")
    elif kind == "score_model":
        _known_keys(spec, {"model", "input", "range", "sampling_params"}, param)
        _string(spec, "model", param)
        messages = spec.get("input")
        if not isinstance(messages, list) or not messages:
            raise GraderError(f"{param}.input must be a non-empty list of messages", param=f"{param}.input")
        for i, m in enumerate(messages):
            where = f"{param}.input[{i}]"
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise GraderError(f"{where} must be a message with string content", param=where)
            if m.get("role") not in ("system", "developer", "user", "assistant"):
                raise GraderError(f"{where}.role must be system, developer, user or assistant", param=where)
            refs = template_refs(m["content"], f"{where}.content")
            grader.item_fields |= {p[1] for p in refs if p[0] == "item"}
        low, high = score_range(spec, param)
        if not low < high:
            raise GraderError(f"{param}.range must be [min, max] with min < max", param=f"{param}.range")
        sampling = spec.get("sampling_params")
        if sampling is not None and not isinstance(sampling, dict):
            raise GraderError(f"{param}.sampling_params must be an object", param=f"{param}.sampling_params")
    else:  # multi
        _known_keys(spec, {"graders", "calculate_output"}, param)
        if depth >= _MAX_DEPTH:
            raise GraderError(f"{param}: multi graders nest at most {_MAX_DEPTH} deep", param=param)
        subs = spec.get("graders")
        if not isinstance(subs, dict) or not subs:
            raise GraderError(f"{param}.graders must be an object of named graders", param=f"{param}.graders")
        for sub_name, sub in subs.items():
            if not str(sub_name).isidentifier():
                raise GraderError(
                    f"{param}.graders: '{sub_name}' must be a name usable in calculate_output (letters, digits, _)",
                    param=f"{param}.graders.{sub_name}",
                )
            checked = check_grader(sub, f"{param}.graders.{sub_name}", depth=depth + 1)
            grader.subs[sub_name] = checked
            grader.item_fields |= checked.item_fields
        grader.formula = _formula(spec.get("calculate_output"), set(subs), f"{param}.calculate_output")
    return grader


def score_range(spec: dict[str, Any], param: str = "grader") -> tuple[float, float]:
    value = spec.get("range", [0, 1])
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise GraderError(f"{param}.range must be [min, max]", param=f"{param}.range")
    return float(value[0]), float(value[1])


# -- scoring --------------------------------------------------------------------------------------------------

# (model, messages, sampling_params) -> the grader model's answer
ModelCall = Callable[[str, list[dict[str, str]], dict[str, Any]], str]
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE]-?\d+)?")


@dataclass
class Score:
    reward: float
    sub_rewards: dict[str, float] = field(default_factory=dict)  # multi: each sub-grader's score
    errors: list[str] = field(default_factory=list)


def fuzzy_match(output: str, reference: str) -> float:
    from rapidfuzz import fuzz, utils

    return float(fuzz.WRatio(output, reference, processor=utils.default_process)) / 100.0


def bleu(output: str, reference: str) -> float:
    from sacrebleu.metrics.bleu import BLEU

    return float(BLEU(effective_order=True).sentence_score(output, [reference]).score) / 100.0


def rouge_available() -> bool:
    """Whether torchmetrics (and torch, which it needs) can be imported here, without importing them."""
    for module in ("torch", ROUGE_LIBRARY):
        try:
            if importlib.util.find_spec(module) is None:
                return False
        except (ImportError, ValueError):  # ValueError: a module in sys.modules without a spec
            return False
    return True


def _rouge_missing(metric: str, param: str) -> GraderError:
    return GraderError(
        f"evaluation_metric '{metric}' needs {ROUGE_LIBRARY} (and torch), which this server's install lacks: "
        "install ftserve with its training extras (pip install 'ftserve[train]') to use ROUGE graders.",
        param=param,
        code="unsupported_grader",
    )


def rouge(output: str, reference: str, metric: str) -> float:
    """ROUGE-N or ROUGE-L F-measure of `output` against `reference` (torchmetrics, as Google's rouge-score
    computes it without stemming); imported here, so the API imports no torch until a ROUGE grader runs."""
    try:
        from torchmetrics.functional.text.rouge import rouge_score
    except ImportError:
        raise _rouge_missing(metric, "grader.evaluation_metric") from None
    key = ROUGE_METRICS[metric]
    return float(rouge_score(output, reference, rouge_keys=key)[f"{key}_fmeasure"])


def parse_model_score(answer: str, low: float, high: float) -> float | None:
    """The score in a grader model's answer: `{"result": x}` if it is JSON, else its first number; clamped."""
    value: Any = None
    try:
        parsed = json.loads(answer)
        value = parsed.get("result") if isinstance(parsed, dict) else parsed
    except ValueError:
        pass
    if not isinstance(value, int | float) or isinstance(value, bool):
        match = _NUMBER.search(answer)
        if match is None:
            return None
        value = float(match.group())
    return min(high, max(low, float(value)))


def score(grader: Grader, item: dict[str, Any], sample: str, *, model_call: ModelCall | None = None) -> Score:
    """Grade one sample. A missing item field is a GraderError (400); a model grader whose answer holds no
    number scores the range's minimum, with the reason in `errors`."""
    spec, param = grader.spec, "grader"
    kind = grader.type
    if kind == "string_check":
        got = render(spec["input"], item, sample, f"{param}.input")
        want = render(spec["reference"], item, sample, f"{param}.reference")
        op = spec["operation"]
        hit = {
            "eq": got == want,
            "ne": got != want,
            "like": want in got,
            "ilike": want.lower() in got.lower(),
        }[op]
        return Score(1.0 if hit else 0.0)
    if kind == "text_similarity":
        got = render(spec["input"], item, sample, f"{param}.input")
        want = render(spec["reference"], item, sample, f"{param}.reference")
        metric = spec["evaluation_metric"]
        if metric in ROUGE_METRICS:
            return Score(rouge(got, want, metric))
        return Score(fuzzy_match(got, want) if metric == "fuzzy_match" else bleu(got, want))
    if kind == "score_model":
        low, high = score_range(spec)
        if model_call is None:
            raise GraderError("score_model graders need a model to call here", param=f"{param}.model")
        messages = [
            {"role": m["role"], "content": render(m["content"], item, sample, f"{param}.input")}
            for m in spec["input"]
        ]
        sampling = dict(spec.get("sampling_params") or {})
        if sampling.get("max_completion_tokens") is None:  # openai-python spells it max_completions_tokens
            sampling["max_completion_tokens"] = sampling.get("max_completions_tokens")
        answer = model_call(spec["model"], messages, sampling)
        value = parse_model_score(answer, low, high)
        if value is None:
            return Score(low, errors=[f"the grader model's answer holds no score: {answer[:200]!r}"])
        return Score(value)
    values: dict[str, float] = {}
    subs: dict[str, float] = {}
    errors: list[str] = []
    for name, sub in grader.subs.items():
        result = score(sub, item, sample, model_call=model_call)
        values[name] = subs[name] = result.reward
        subs.update({f"{name}.{k}": v for k, v in result.sub_rewards.items()})
        errors += result.errors
    assert grader.formula is not None
    return Score(evaluate_formula(grader.formula, values), subs, errors)


def score_model_names(spec: dict[str, Any]) -> set[str]:
    """The models a grader's score_model parts call."""
    if spec.get("type") == "score_model":
        return {str(spec.get("model"))}
    subs = spec.get("graders") if spec.get("type") == "multi" else None
    return set().union(*(score_model_names(s) for s in subs.values())) if isinstance(subs, dict) else set()


def missing_fields(grader: Grader, item: dict[str, Any]) -> list[str]:
    """The top-level item fields the grader references that `item` lacks."""
    return sorted(f for f in grader.item_fields if f not in item)


def run_grader(
    spec: Any, item: Any, sample: str, *, model_call: ModelCall | None = None
) -> tuple[Score, float]:
    """Check and run a grader once; returns the score and the seconds it took."""
    grader = check_grader(spec)
    if item is None:
        item = {}
    if not isinstance(item, dict):
        raise GraderError("item must be an object", param="item")
    t0 = time.perf_counter()
    result = score(grader, item, sample, model_call=model_call)
    return result, time.perf_counter() - t0
