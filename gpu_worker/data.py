"""Training data for the worker: JSONL -> normalised examples -> token ids and loss masks.

The upload was validated by the API (`core.training_data`); here each line is normalised again with the same
code, so a line number in an error message is the line number of the user's file. Nothing is truncated: an
example longer than `max_seq_length` fails the job before training, naming its line.

Loss masking (labels = -100 where no loss is taken):
- chat (and sharegpt/alpaca, which normalise to chat): loss only on assistant content plus the end-of-turn token
  that closes it, found through the chat template's `{% generation %}` markers; assistant turns with
  `weight: 0` are masked too.
- prompt_completion: loss only on the completion plus eos.
- preference (DPO): TRL tokenises prompt/chosen/rejected itself; we only check lengths and reshape.

Tokenised SFT datasets are cached on disk (`cached_sft_dataset`), so a retry or resume doesn't tokenise again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.training_data import normalize_example

IGNORE_INDEX = -100
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
MAX_LISTED = 20  # error messages list at most this many offending lines


class TrainingDataError(ValueError):
    """The training file cannot be trained on as it is; the message names the lines."""


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


# -- chat templates -------------------------------------------------------------------------------------------


def training_chat_template(tokenizer: Any) -> str:
    """A chat template with `{% generation %}` markers, needed to find the assistant tokens.

    The model's own template when it has them (demo-tiny does); otherwise TRL's bundled training template
    for known families (Llama 3, Qwen, Gemma, Phi, ...), which renders identically but marks the assistant.
    """
    template = tokenizer.chat_template
    if template and _GENERATION_TAG.search(template):
        return str(template)
    from trl.chat_template_utils import get_training_chat_template

    patched = get_training_chat_template(tokenizer) if template else None
    if patched is None:
        raise TrainingDataError(
            "the base model's chat template has no {% generation %} markers and no training template is known "
            "for it, so assistant-only loss cannot be computed; use a prompt_completion file instead"
        )
    return str(patched)


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    """[start, end) spans of consecutive 1s."""
    spans, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i))
            start = None
    return spans


def tokenize_chat(
    tokenizer: Any, messages: list[dict[str, Any]], *, tools: list[Any] | None = None, chat_template: str
) -> dict[str, list[int]]:
    """input_ids and labels for one conversation; labels keep only weight-1 assistant turns (+ their eos)."""
    rendered = tokenizer.apply_chat_template(
        [{k: v for k, v in m.items() if k != "weight"} for m in messages],
        tools=tools,
        chat_template=chat_template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids: list[int] = list(rendered["input_ids"])
    mask: list[int] = list(rendered["assistant_masks"])
    weights = [int(m.get("weight", 1)) for m in messages if m["role"] == "assistant"]
    spans = _runs(mask)
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
    template = training_chat_template(tokenizer) if data_format != "prompt_completion" else ""
    rows, too_long, untrainable = [], [], []
    for ex in examples:
        if data_format == "prompt_completion":
            row = tokenize_prompt_completion(tokenizer, ex.data["prompt"], ex.data["completion"])
        else:
            try:
                row = tokenize_chat(
                    tokenizer, ex.data["messages"], tools=ex.data.get("tools"), chat_template=template
                )
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
        return len(
            tokenizer.apply_chat_template(
                messages,
                tools=tools,
                tokenize=True,
                return_dict=True,
                add_generation_prompt=generation_prompt,
            )["input_ids"]
        )

    for ex in examples:
        inp = ex.data["input"]
        prompt = [{k: v for k, v in m.items() if k != "weight"} for m in inp["messages"]]
        tools = inp.get("tools")
        prompt_len = n_tokens(prompt, tools, generation_prompt=True)
        lengths = [
            n_tokens(prompt + ex.data[key], tools) for key in ("preferred_output", "non_preferred_output")
        ]
        completion_tokens += sum(max(0, n - prompt_len) for n in lengths)
        if max(lengths) > max_seq_length:
            too_long.append((ex.line, max(lengths)))
        row: dict[str, Any] = {
            "prompt": prompt,
            "chosen": ex.data["preferred_output"],
            "rejected": ex.data["non_preferred_output"],
        }
        if tools is not None:
            row["tools"] = json.dumps(tools)  # TRL json-decodes a string; Arrow can't hold arbitrary schemas
        rows.append(row)
    if too_long:
        raise ExamplesTooLongError(too_long, max_seq_length, file_label)
    if any("tools" in r for r in rows):
        for r in rows:
            r.setdefault("tools", "null")
    return rows, completion_tokens


def count_trainable_tokens(rows: list[dict[str, Any]]) -> int:
    return sum(sum(1 for t in r["labels"] if t != IGNORE_INDEX) for r in rows)


# -- the tokenised-dataset cache ------------------------------------------------------------------------------

TOKENIZATION_VERSION = 1  # bump when anything above changes the ids or labels a file tokenises to
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
    template = training_chat_template(tokenizer) if data_format != "prompt_completion" else ""
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
