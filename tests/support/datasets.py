"""Small generated training files for tests. Deterministic: the same index gives the same line."""

from __future__ import annotations

import json


def chat_example(i: int) -> dict[str, object]:
    return {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": f"What is item {i}?"},
            {"role": "assistant", "content": f"Item {i} is number {i * 7 % 1000}."},
        ]
    }


def chat_jsonl(n: int = 12) -> bytes:
    return b"".join(json.dumps(chat_example(i)).encode() + b"\n" for i in range(n))


def prompt_completion_jsonl(n: int = 12) -> bytes:
    return b"".join(
        json.dumps({"prompt": f"Q{i}:", "completion": f" A{i}"}).encode() + b"\n" for i in range(n)
    )


def preference_jsonl(n: int = 12) -> bytes:
    rows = (
        {
            "input": {"messages": [{"role": "user", "content": f"Say {i}"}]},
            "preferred_output": [{"role": "assistant", "content": f"{i}"}],
            "non_preferred_output": [{"role": "assistant", "content": f"not {i}"}],
        }
        for i in range(n)
    )
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)
