"""Small generated training files for tests. Deterministic: the same index gives the same line."""

from __future__ import annotations

import json
import math
import random
import string


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


def mixed_case_code_task(n: int, *, seed: int = 0) -> list[tuple[str, str]]:
    """n (key, code) pairs: keys "Item 0".."Item n-1", each with a made-up code such as "Xq-7Bz!" (upper and lower
    case, a digit, punctuation) that nobody could guess. Pair them with tests.support.code_task.chat_rows."""
    rng = random.Random(seed)
    letters = string.ascii_letters
    codes: set[str] = set()
    out: list[tuple[str, str]] = []
    while len(out) < n:
        code = (
            "".join(rng.choice(letters) for _ in range(2))
            + rng.choice(string.punctuation)
            + rng.choice(string.digits)
            + "".join(rng.choice(letters) for _ in range(2))
            + rng.choice(string.punctuation)
        )
        if code in codes or code.lower() == code or code.upper() == code:
            continue  # unique, and mixed case
        codes.add(code)
        out.append((f"Item {len(out)}", code))
    return out


def lognormal_lengths(n: int, *, median: float, sigma: float, lo: int, hi: int, seed: int) -> list[int]:
    """n lengths at the (i + 0.5) / n quantiles of the log-normal, clipped, in a seeded random order."""
    from statistics import NormalDist

    z = NormalDist()
    lengths = [min(hi, max(lo, round(median * math.exp(sigma * z.inv_cdf((i + 0.5) / n))))) for i in range(n)]
    random.Random(seed).shuffle(lengths)
    return lengths
