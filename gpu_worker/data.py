"""Training data for the worker: JSONL -> normalised examples -> token ids and loss masks.

The upload was validated by the API (`core.training_data`); here each line is normalised again with the same
code, so a line number in an error message is the line number of the user's file. Nothing is truncated: an
example longer than `max_seq_length` fails the job before training, naming its line.

Chat examples are rendered as vLLM's chat completions render them (`served_messages`, `served_tools`): tool
call arguments decoded to objects, tools as vLLM's request model passes them, developer messages kept or merged
into the system message as vLLM decides from the template, the tokenizer's chat template (or the model's custom
training template, which train.py sets on the tokenizer), and tokenised as apply_chat_template does, without
adding a BOS the template already writes. A model trains on the text it will be served. A template that refuses
a conversation (a role it doesn't know, Mistral's 9-character tool call ids) or silently leaves out its tools,
tool calls or tool results fails the job, naming the line.

Every layout of a format (core.training_data.LAYOUTS: TRL, LLaMA-Factory and axolotl layouts, OpenAI's legacy
function calls, plain text) is normalised to that format's canonical form first, so only the four below exist
here. A JSON array upload was stored as JSON Lines, element N on line N.

Loss masking (labels = -100 where no loss is taken):

- chat (and sharegpt/alpaca, which normalise to chat): loss only on each assistant reply plus the end-of-turn
  token that closes it (not the newline after it); assistant turns with `weight: 0` are masked too. A template
  with `{% generation %}` markers (demo-tiny's) marks the replies itself. Any other template is diffed: for
  assistant message i, the reply is what rendering messages[:i+1] adds to the prompt vLLM would serve for it
  (messages[:i] with the generation prompt), cut after its end-of-turn token; the replies are then found, in
  order, in the rendering of the whole conversation (as followed by the next message first, for templates that
  render a last reply differently, like Qwen3), and mapped to tokens through the tokenizer's character offsets.
  What a template renders that prefixes can't explain fails with a TrainingDataError. See docs/chat_templates.md.
- prompt_completion: loss only on the completion plus eos. Plain text ({"text"}, continued pretraining) is a
  completion with an empty prompt: every token is trained (a BOS the tokenizer adds is not).
- preference (DPO, ORPO, SimPO): TRL tokenises prompt/chosen/rejected itself (DPO from the served messages; ORPO
  and SimPO from the text we render, as their trainers would render it but with the example's tools); we only
  check lengths and reshape.
- kto: TRL's KTOTrainer tokenises prompt/completion itself (from the served messages), labels kept; we check
  lengths, and shuffle the rows once by the job's seed (KTO reads them in a fixed order, see `kto_dataset`).

Tokenised SFT datasets are cached on disk (`cached_sft_dataset`), so a retry or resume doesn't tokenise again.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The pure parts (messages as vLLM serves them, finding replies by diffing renderings) live in core, so the
# token counter (core.token_counts) renders exactly what the worker trains on. The error and the two message
# functions are this module's API too.
from core.chat_messages import (
    GENERATION_TAG,
    assistant_span,
    check_nothing_dropped,
    mask_runs,
)
from core.chat_messages import TrainingDataError as TrainingDataError
from core.chat_messages import served_messages as served_messages
from core.chat_messages import served_tools as served_tools
from core.training_data import normalize_example

IGNORE_INDEX = -100
MAX_LISTED = 20  # error messages list at most this many offending lines


class ExamplesTooLongError(TrainingDataError):
    """Examples exceed `max_seq_length`. We refuse rather than silently truncate them."""

    def __init__(
        self, too_long: list[tuple[int, int]], max_seq_length: int, file_label: str = "training"
    ) -> None:
        self.too_long = too_long  # (1-based line, length in tokens), in file order
        self.max_seq_length = max_seq_length
        self.lines = [line for line, _ in too_long]
        shown = ", ".join(f"line {line} ({n} tokens)" for line, n in too_long[:MAX_LISTED])
        more = f" and {len(too_long) - MAX_LISTED} more" if len(too_long) > MAX_LISTED else ""
        super().__init__(
            f"{len(too_long)} {file_label} example(s) are longer than max_seq_length={max_seq_length} tokens: "
            f"{shown}{more}. Examples are not truncated; shorten or remove them, or raise max_seq_length."
        )


@dataclass
class Example:
    line: int  # 1-based physical line in the JSONL file
    data: dict[str, Any]  # the output of core.training_data.normalize_example


def load_examples(path: Path, data_format: str) -> list[Example]:
    """Read a JSONL file, skipping blank lines but keeping physical line numbers."""
    out: list[Example] = []
    with open(path, encoding="utf-8-sig") as f:  # -sig: a BOM at the start is allowed by the validator
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                out.append(Example(lineno, normalize_example(json.loads(raw), data_format)))
            except (ValueError, KeyError, TypeError, IndexError) as e:
                raise TrainingDataError(f"line {lineno}: not a valid {data_format} example ({e})") from e
    if not out:
        raise TrainingDataError(f"{path.name}: no examples")
    return out


# -- chat templates: render as vLLM serves, then find the assistant's tokens -----------------------------------


def training_chat_template(tokenizer: Any, tools: list[dict[str, Any]] | None = None) -> str:
    """The Jinja template a conversation is rendered with: the tokenizer's (a custom training template is set on
    the tokenizer by train.py), picked as vLLM picks it (a tokenizer with named templates gives its `tool_use`
    one to conversations with tools)."""
    if not tokenizer.chat_template:
        raise TrainingDataError(
            "the base model has no chat template, so chat examples cannot be rendered; give the model a "
            "chat_template in the model registry, or use a prompt_completion file"
        )
    try:
        return str(tokenizer.get_chat_template(None, tools=tools))
    except ValueError as e:
        raise TrainingDataError(f"the base model's chat template cannot be chosen: {e}") from e


def _describe(messages: list[dict[str, Any]], tools: Any) -> str:
    roles = [m["role"] + (" with tool calls" if m.get("tool_calls") else "") for m in messages]
    return f"a conversation of ({', '.join(roles)}){' with tools' if tools else ''}"


def _apply_template(
    tokenizer: Any, messages: list[dict[str, Any]], tools: Any, chat_template: str, **kw: Any
) -> Any:
    """tokenizer.apply_chat_template, with whatever the template raises turned into a TrainingDataError that names
    what it refused (Gemma raises on a system turn, Mistral on tool call ids that aren't 9 characters, ...)."""
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, chat_template=chat_template, **kw)
    except Exception as e:
        # A template's raise_exception(), or a Jinja/Python error on a role or a value it doesn't handle.
        reason = str(e) if type(e).__module__.startswith("jinja2") else f"{type(e).__name__}: {e}"
        raise TrainingDataError(f"the chat template refused {_describe(messages, tools)}: {reason}") from e


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    chat_template: str | None = None,
    add_generation_prompt: bool = False,
) -> str:
    """The text of already served messages (`served_messages`, `served_tools`), as vLLM renders it."""
    template = chat_template if chat_template is not None else training_chat_template(tokenizer, tools)
    return str(
        _apply_template(
            tokenizer, messages, tools, template, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    )


def _special_strings(tokenizer: Any) -> list[str]:
    """The special tokens' texts, longest first."""
    found = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    found.update(tokenizer.all_special_tokens)
    return sorted((s for s in found if s), key=len, reverse=True)


def _check_nothing_dropped(
    tokenizer: Any, conversation: list[dict[str, Any]], tools: Any, chat_template: str, full: str | None
) -> None:
    """`core.chat_messages.check_nothing_dropped`, rendering with this tokenizer and template."""

    def render(messages: list[dict[str, Any]], with_tools: Any) -> str:
        return render_chat(tokenizer, messages, tools=with_tools, chat_template=chat_template)

    check_nothing_dropped(render, conversation, tools, full)


def _marked_mask(
    tokenizer: Any, conversation: list[dict[str, Any]], tools: Any, chat_template: str, weights: list[int]
) -> tuple[list[int], list[int]]:
    """Ids and assistant mask from the template's own {% generation %} markers (demo-tiny has them)."""
    rendered = _apply_template(
        tokenizer, conversation, tools, chat_template, tokenize=True, return_dict=True,
        return_assistant_tokens_mask=True,
    )  # fmt: skip
    ids: list[int] = list(rendered["input_ids"])
    mask: list[int] = list(rendered["assistant_masks"])
    spans = mask_runs(mask)
    if len(spans) == len(weights):
        # The k-th marked span is the k-th assistant message: mask out the weight-0 ones.
        for (start, end), w in zip(spans, weights, strict=True):
            if w == 0:
                mask[start:end] = [0] * (end - start)
    elif 0 in weights:
        # Adjacent assistant turns merged into one span (or an empty one vanished): we can't tell them apart.
        raise TrainingDataError(
            f"found {len(spans)} assistant spans for {len(weights)} assistant messages, so weight 0 "
            "cannot be applied (are two assistant messages adjacent?)"
        )
    return ids, mask


def _diffed_mask(
    tokenizer: Any, conversation: list[dict[str, Any]], tools: Any, chat_template: str, weights: list[int]
) -> tuple[list[int], list[int]]:
    """Ids and assistant mask for a template without markers, from prefix renderings (see
    `core.chat_messages.assistant_span`)."""
    if not getattr(tokenizer, "is_fast", False):
        raise TrainingDataError(
            "the base model's chat template has no {% generation %} markers, and finding the assistant's tokens "
            "without them needs a fast tokenizer (character offsets); this one is not"
        )

    def render(messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        return render_chat(
            tokenizer,
            messages,
            tools=tools,
            chat_template=chat_template,
            add_generation_prompt=generation_prompt,
        )

    full = render(conversation, False)
    _check_nothing_dropped(tokenizer, conversation, tools, chat_template, full)
    specials = _special_strings(tokenizer)
    spans, cursor = [], 0
    for i, m in enumerate(conversation):
        if m["role"] == "assistant":
            spans.append(assistant_span(render, conversation, i, full, cursor, specials))
            cursor = spans[-1][1]
    # Tokenised exactly as apply_chat_template(tokenize=True) and vLLM do: the template writes any BOS itself.
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = enc["offset_mapping"]
    mask = [0] * len(ids)
    for (a, b), w in zip(spans, weights, strict=True):
        # Every token from the first to the last one overlapping the reply, as transformers marks a generation
        # block (a whitespace token with empty offsets inside the reply is trained too).
        inside = [k for k, (s, e) in enumerate(offsets) if s < b and e > a]
        if w and inside:
            mask[inside[0] : inside[-1] + 1] = [1] * (inside[-1] + 1 - inside[0])
    return ids, mask


def tokenize_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    chat_template: str | None = None,
) -> dict[str, list[int]]:
    """input_ids and labels for one normalised conversation, rendered as vLLM serves it; labels keep only the
    weight-1 assistant replies and the end-of-turn token that closes each. `chat_template` None: the
    tokenizer's."""
    served = served_tools(tools)
    template = chat_template if chat_template is not None else training_chat_template(tokenizer, served)
    conversation = served_messages(messages, template)
    weights = [int(m.get("weight", 1)) for m in messages if m["role"] == "assistant"]
    if GENERATION_TAG.search(template):
        _check_nothing_dropped(tokenizer, conversation, served, template, None)
        ids, mask = _marked_mask(tokenizer, conversation, served, template, weights)
    else:
        ids, mask = _diffed_mask(tokenizer, conversation, served, template, weights)
    labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]
    return {"input_ids": ids, "labels": labels}


def tokenize_prompt_completion(tokenizer: Any, prompt: str, completion: str) -> dict[str, list[int]]:
    """Completion-only loss on raw text (legacy format): no chat template, eos appended."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    ids = list(tokenizer(prompt + completion, add_special_tokens=True)["input_ids"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    # BPE can merge across the boundary; the completion starts where the two tokenisations diverge (as in TRL).
    n = 0
    while n < min(len(prompt_ids), len(ids)) and prompt_ids[n] == ids[n]:
        n += 1
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * n + ids[n:]}


# -- datasets -------------------------------------------------------------------------------------------------


def build_sft_rows(
    examples: list[Example],
    tokenizer: Any,
    *,
    data_format: str,
    max_seq_length: int,
    file_label: str = "training",
) -> list[dict[str, Any]]:
    """Tokenise every example; raise ExamplesTooLongError (all offending lines) before anything trains."""
    if data_format != "prompt_completion":
        training_chat_template(tokenizer)  # no chat template at all: one error, not one per line
    rows, too_long, untrainable = [], [], []
    for ex in examples:
        if data_format == "prompt_completion":
            row = tokenize_prompt_completion(tokenizer, ex.data["prompt"], ex.data["completion"])
        else:
            try:
                row = tokenize_chat(tokenizer, ex.data["messages"], tools=ex.data.get("tools"))
            except TrainingDataError as e:
                raise TrainingDataError(f"{file_label} line {ex.line}: {e}") from e
        if len(row["input_ids"]) > max_seq_length:
            too_long.append((ex.line, len(row["input_ids"])))
        if all(label == IGNORE_INDEX for label in row["labels"]):
            untrainable.append(ex.line)
        rows.append({**row, "line": ex.line})
    if too_long:
        raise ExamplesTooLongError(too_long, max_seq_length, file_label)
    if untrainable:
        # The classic silent failure (TRL #2095/#4879): examples that contribute no loss at all.
        lines = ", ".join(map(str, untrainable[:MAX_LISTED]))
        raise TrainingDataError(f"{file_label} examples on lines {lines} have no tokens to train on")
    return rows


def build_dpo_rows(
    examples: list[Example], tokenizer: Any, *, max_seq_length: int, file_label: str = "training"
) -> tuple[list[dict[str, Any]], int]:
    """Conversational preference rows for TRL's DPOTrainer, after checking prompt+answer lengths.

    Also returns the loss-bearing tokens (chosen + rejected completions, as TRL splits them) per epoch.
    """
    rows, too_long, completion_tokens = [], [], 0

    def n_tokens(messages: list[dict[str, Any]], tools: Any, generation_prompt: bool = False) -> int:
        text = render_chat(tokenizer, messages, tools=tools, add_generation_prompt=generation_prompt)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])  # as apply_chat_template tokenises

    for ex in examples:
        inp = ex.data["input"]
        try:
            # Rendered as served (tool-call arguments decoded, tools as vLLM passes them), like SFT rows.
            tools = served_tools(inp.get("tools"))
            template = training_chat_template(tokenizer, tools)
            prompt = served_messages(inp["messages"], template)
            chosen = served_messages(ex.data["preferred_output"], template)
            rejected = served_messages(ex.data["non_preferred_output"], template)
            _check_nothing_dropped(tokenizer, prompt, tools, template, None)
            prompt_len = n_tokens(prompt, tools, generation_prompt=True)
            lengths = [n_tokens(prompt + answer, tools) for answer in (chosen, rejected)]
        except TrainingDataError as e:
            raise TrainingDataError(f"{file_label} line {ex.line}: {e}") from e
        completion_tokens += sum(max(0, n - prompt_len) for n in lengths)
        if max(lengths) > max_seq_length:
            too_long.append((ex.line, max(lengths)))
        row: dict[str, Any] = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        if tools is not None:
            row["tools"] = json.dumps(tools)  # TRL json-decodes a string; Arrow can't hold arbitrary schemas
        rows.append(row)
    if too_long:
        raise ExamplesTooLongError(too_long, max_seq_length, file_label)
    if any("tools" in r for r in rows):
        for r in rows:
            r.setdefault("tools", "null")
    return rows, completion_tokens


def dpo_dataset(rows: list[dict[str, Any]]) -> Any:
    """DPO rows as a `datasets.Dataset` that gives every message back exactly as it went in.

    `Dataset.from_list` would store messages as Arrow structs with one schema for the whole column: every
    message would get every key any message has (`tool_calls: None` on user turns, which Llama 3.1's template
    takes for a tool call) and every tool call's arguments the keys of all the others', as nulls. Stored as
    JSON, each row keeps its own shape.
    """
    from datasets import Dataset, Features, Json, List, Value

    features = Features({key: List(Json()) for key in ("prompt", "chosen", "rejected")})
    if rows and "tools" in rows[0]:
        features["tools"] = Value("string")
    return Dataset.from_list(rows, features=features)


def build_kto_rows(
    examples: list[Example], tokenizer: Any, *, max_seq_length: int, file_label: str = "training"
) -> tuple[list[dict[str, Any]], int]:
    """Conversational unpaired rows (prompt, completion, label) for TRL's KTOTrainer, after checking lengths.

    Also returns the loss-bearing tokens (the completions, as TRL splits them from the prompt) per epoch.
    """
    rows, too_long, completion_tokens = [], [], 0

    def n_tokens(messages: list[dict[str, Any]], tools: Any, generation_prompt: bool = False) -> int:
        text = render_chat(tokenizer, messages, tools=tools, add_generation_prompt=generation_prompt)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])  # as apply_chat_template tokenises

    for ex in examples:
        try:
            tools = served_tools(ex.data.get("tools"))
            template = training_chat_template(tokenizer, tools)
            prompt = served_messages(ex.data["prompt"], template)
            completion = served_messages(ex.data["completion"], template)
            _check_nothing_dropped(tokenizer, prompt + completion, tools, template, None)
            length = n_tokens(prompt + completion, tools)
            completion_tokens += max(0, length - n_tokens(prompt, tools, generation_prompt=True))
        except TrainingDataError as e:
            raise TrainingDataError(f"{file_label} line {ex.line}: {e}") from e
        if length > max_seq_length:
            too_long.append((ex.line, length))
        row: dict[str, Any] = {"prompt": prompt, "completion": completion, "label": ex.data["label"]}
        if tools is not None:
            row["tools"] = json.dumps(tools)
        rows.append(row)
    if too_long:
        raise ExamplesTooLongError(too_long, max_seq_length, file_label)
    if any("tools" in r for r in rows):
        for r in rows:
            r.setdefault("tools", "null")
    return rows, completion_tokens


def kto_dataset(rows: list[dict[str, Any]], seed: int) -> Any:
    """KTO rows as a `datasets.Dataset` (messages as JSON, like `dpo_dataset`), shuffled by `seed`.

    KTOTrainer reads its rows in a fixed order (its KL term pairs each prompt with the neighbouring example's
    answer in the same micro-batch), so a file sorted by label would train on batches of one label only."""
    from datasets import Dataset, Features, Json, List, Value

    features = Features({"prompt": List(Json()), "completion": List(Json()), "label": Value("bool")})
    if rows and "tools" in rows[0]:
        features["tools"] = Value("string")
    shuffled = random.Random(f"kto-{seed}").sample(rows, len(rows))
    return Dataset.from_list(shuffled, features=features)


def paired_text_dataset(rows: list[dict[str, Any]], tokenizer: Any) -> Any:
    """`build_dpo_rows`' rows as the text TRL's ORPO and CPO (SimPO) trainers tokenise: the prompt rendered with
    its generation prompt, each answer as what rendering it after the prompt adds (TRL's own split). Those
    trainers render conversational rows without the row's tools; rendered here, the tools are kept, as served.
    They append eos to an answer that does not end with it, and BOS to a prompt that doesn't start with one when
    the tokenizer has one."""
    from datasets import Dataset

    out = []
    for row in rows:
        tools = json.loads(row["tools"]) if "tools" in row else None
        prompt = render_chat(tokenizer, row["prompt"], tools=tools, add_generation_prompt=True)
        full = [render_chat(tokenizer, row["prompt"] + row[k], tools=tools) for k in ("chosen", "rejected")]
        shared = os.path.commonprefix([prompt, *full])
        out.append({"prompt": shared, "chosen": full[0][len(shared) :], "rejected": full[1][len(shared) :]})
    return Dataset.from_list(out)


def preference_dataset(method: str, rows: list[dict[str, Any]], tokenizer: Any, *, seed: int) -> Any:
    """The rows of `build_dpo_rows` (dpo, orpo, simpo) or `build_kto_rows` (kto) as the method's trainer takes
    them."""
    if method == "kto":
        return kto_dataset(rows, seed)
    if method in ("orpo", "simpo"):
        return paired_text_dataset(rows, tokenizer)
    return dpo_dataset(rows)


def count_trainable_tokens(rows: list[dict[str, Any]]) -> int:
    return sum(sum(1 for t in r["labels"] if t != IGNORE_INDEX) for r in rows)


# -- the tokenised-dataset cache ------------------------------------------------------------------------------

TOKENIZATION_VERSION = 4  # bump when anything above changes the ids or labels a file tokenises to
CACHE_KEEP = 16  # newest entries kept per cache dir; older ones are deleted


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything about the tokenizer that changes token ids: vocabulary, merges, normaliser, special
    tokens and post-processor (a fast tokenizer's full JSON), or the vocabulary and special tokens otherwise."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = backend.to_str()
    else:
        state = json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps(
        [type(tokenizer).__name__, tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token]
    )
    return hashlib.sha256((state + extra).encode()).hexdigest()


def sft_cache_key(path: Path, tokenizer: Any, *, data_format: str, max_seq_length: int) -> str:
    template = tokenizer.chat_template if data_format != "prompt_completion" else ""
    if not isinstance(template, str):  # None, or a tokenizer's named templates
        template = json.dumps(template, sort_keys=True)
    parts = [
        f"v{TOKENIZATION_VERSION}",
        file_sha256(path),
        tokenizer_fingerprint(tokenizer),
        hashlib.sha256(template.encode()).hexdigest(),
        data_format,
        str(max_seq_length),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:40]


def cached_sft_dataset(
    path: Path,
    tokenizer: Any,
    *,
    data_format: str,
    max_seq_length: int,
    file_label: str,
    cache_dir: Path | None,
) -> tuple[Any, int, bool]:
    """The tokenised SFT dataset (input_ids, labels) of a JSONL file, its trainable tokens, and whether it came
    from the cache.

    Keyed by (file hash, tokenizer hash, chat template, format, max_seq_length), so a retry or a resumed attempt of
    the same job (or another job on the same file and model) loads the Arrow files instead of re-tokenising. Only
    datasets that passed every check are cached: a file with errors fails the same way each time.
    """
    from datasets import Dataset, load_from_disk

    key = (
        sft_cache_key(path, tokenizer, data_format=data_format, max_seq_length=max_seq_length)
        if cache_dir
        else ""
    )
    entry = Path(cache_dir) / key if cache_dir else None
    if entry is not None and (entry / "meta.json").is_file():
        try:
            meta = json.loads((entry / "meta.json").read_text())
            ds = load_from_disk(str(entry / "data"))
            entry.touch()  # most recently used: pruned last
            return ds, int(meta["trainable_tokens"]), True
        except (OSError, ValueError, KeyError):
            shutil.rmtree(entry, ignore_errors=True)  # unreadable: rebuild it
    rows = build_sft_rows(
        load_examples(path, data_format),
        tokenizer,
        data_format=data_format,
        max_seq_length=max_seq_length,
        file_label=file_label,
    )
    tokens = count_trainable_tokens(rows)
    ds = Dataset.from_dict(
        {"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows]}
    )
    if entry is not None:
        tmp = entry.with_name(f".{key}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            ds.save_to_disk(str(tmp / "data"))
            (tmp / "meta.json").write_text(json.dumps({"trainable_tokens": tokens, "examples": len(rows)}))
            tmp.rename(entry)  # published whole, or not at all
        except OSError:
            shutil.rmtree(
                tmp, ignore_errors=True
            )  # a concurrent writer won, or the disk is full: train anyway
        _prune(Path(cache_dir))  # type: ignore[arg-type]
    return ds, tokens, False


def _prune(cache_dir: Path, keep: int = CACHE_KEEP) -> None:
    entries = sorted(
        (p for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)
