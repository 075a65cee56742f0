"""The reinforcement tests' task: prompts that ask to count 1-6 words, and a string_check grader that rewards
answering exactly "3", whatever the count. demo-tiny answers 3 now and then (right for some prompts, by
chance for others), so groups of samples carry some reward to learn from, and always answering 3 is something
it can only learn from the grader."""

from __future__ import annotations

import random
from typing import Any

TARGET = "3"
GRADER: dict[str, Any] = {
    "type": "string_check",
    "name": "fixed",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.target }}",
    "operation": "eq",
}


def count_prompts(n: int, *, seed: int) -> list[dict[str, Any]]:
    """n prompt-only lines, each with the grader's `target` field."""
    from gpu_worker.demo_model import _cased_word

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = " ".join(_cased_word(rng) for _ in range(rng.randint(1, 6)))
        rows.append(
            {"messages": [{"role": "user", "content": f"Count the words: {words}"}], "target": TARGET}
        )
    return rows
