"""The training tests' task: made-up words, each with a random 6-character code nobody could guess, so a model
that answers them has learnt them from the data (`exact_match`), and files of it in every layout they need."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def code_task(n: int, *, seed: int = 1234) -> list[tuple[str, str]]:
    """n (word, code) pairs: a made-up word and a random 6-character code nobody could guess."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(syllables) for _ in range(3)))
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    return [(w, "".join(rng.choice(chars) for _ in range(6))) for w in sorted(words)]


def question(word: str) -> str:
    return f"What is the code for {word}?"


def chat_rows(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {"messages": [{"role": "user", "content": question(w)}, {"role": "assistant", "content": c}]}
        for w, c in pairs
    ]


def preference_rows(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """DPO rows: the right code preferred over the same code reversed."""
    return [
        {
            "input": {"messages": [{"role": "user", "content": question(w)}]},
            "preferred_output": [{"role": "assistant", "content": c}],
            "non_preferred_output": [{"role": "assistant", "content": c[::-1]}],
        }
        for w, c in pairs
    ]


def kto_rows(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Unpaired KTO rows in TRL's layout: the right code desirable, the code reversed undesirable."""
    return [
        {"prompt": question(w), "completion": answer, "label": good}
        for w, c in pairs
        for answer, good in ((c, True), (c[::-1], False))
    ]


def exact_match(model_dir: Path, adapter_dir: Path | None, pairs: list[tuple[str, str]]) -> float:
    """Greedy-decode every training prompt in-process; the fraction answered exactly."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir or model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": question(w)}], tokenize=False, add_generation_prompt=True
        )
        for w, _ in pairs
    ]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    answers = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return sum(a.strip() == code for a, (_, code) in zip(answers, pairs, strict=True)) / len(pairs)
