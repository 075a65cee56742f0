"""Bad input, part 2: the JSONL validator (core/training_data.py) on almost-valid files.

tests/core/test_training_data.py already fuzzes random bytes and random JSON values. Here the inputs start
as valid training files and are then damaged (bytes flipped, cut, duplicated, inserted), and a list of known
parser traps is checked: the validator never raises, and it either accepts the file or names 1-based lines
that exist (0 for file-level problems).
"""

from __future__ import annotations

import os

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.training_data import ValidationReport, validate_bytes
from tests.support.datasets import chat_jsonl, preference_jsonl, prompt_completion_jsonl

EXAMPLES = int(os.environ.get("FTSERVE_FUZZ_JSONL_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
VALID_FILES = [chat_jsonl(12), preference_jsonl(12), prompt_completion_jsonl(12)]


def assert_well_formed(data: bytes, report: ValidationReport) -> None:
    physical_lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    assert report.ok == (report.error_count == 0)
    assert report.error_count >= len(report.errors)
    if report.ok:
        assert report.example_count >= 1 and report.data_format is not None
    for error in report.errors:
        assert 0 <= error.line <= max(physical_lines, 1), (error, physical_lines)
        assert error.message.startswith(f"line {error.line}: " if error.line else "file: ")
        assert error.code and isinstance(error.code, str)


# One damage to a valid file: (kind, position, payload).
mutation = st.tuples(
    st.sampled_from(["flip", "delete", "insert", "truncate", "duplicate"]),
    st.integers(0, 10_000),
    st.binary(min_size=1, max_size=8),
)


def damage(data: bytes, mutations: list[tuple[str, int, bytes]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, payload in mutations:
        if not buf:
            buf.extend(payload)
            continue
        i = pos % len(buf)
        if kind == "flip":
            buf[i] ^= payload[0] or 1
        elif kind == "delete":
            del buf[i : i + len(payload)]
        elif kind == "insert":
            buf[i:i] = payload
        elif kind == "truncate":
            del buf[i:]
        else:
            buf[i:i] = buf[i : i + 40]
    return bytes(buf)


@FUZZ
@given(
    base=st.sampled_from(VALID_FILES),
    mutations=st.lists(mutation, min_size=1, max_size=6),
    min_examples=st.sampled_from([1, 10]),
)
def test_damaged_valid_files_give_line_numbered_errors(
    base: bytes, mutations: list[tuple[str, int, bytes]], min_examples: int
) -> None:
    data = damage(base, mutations)
    report = validate_bytes(data, min_examples=min_examples, max_line_bytes=4096)
    assert_well_formed(data, report)


@FUZZ
@given(
    keys=st.lists(
        st.sampled_from(
            [
                "messages",
                "role",
                "content",
                "weight",
                "prompt",
                "completion",
                "input",
                "preferred_output",
                "tool_calls",
                "conversations",
            ]
        ),
        max_size=6,
    ),
    values=st.lists(
        st.sampled_from(["null", "true", "1e999", "-0", '""', "[]", "{}", "[[[]]]", '"\\ud800"']), max_size=6
    ),
)
def test_known_keys_with_hostile_values(keys: list[str], values: list[str]) -> None:
    members = ",".join(f'"{k}":{v}' for k, v in zip(keys, values, strict=False))
    line = ("{" + members + "}").encode()
    data = b"\n".join([line, *chat_jsonl(3).splitlines()]) + b"\n"
    assert_well_formed(data, validate_bytes(data, min_examples=1))


CHAT_LINE = orjson.dumps(
    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
)
TRAPS: dict[str, bytes] = {
    "bad utf-8": b'{"messages": "\xff\xfe"}',
    "lone surrogate escape": b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
    "NaN": b'{"prompt": NaN, "completion": "x"}',
    "Infinity": b'{"prompt": "x", "completion": Infinity}',
    "5000-digit int": b'{"prompt": "x", "completion": "y", "n": ' + b"9" * 5000 + b"}",
    "100k-deep nesting": b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "duplicate keys": b'{"prompt": "a", "prompt": 1, "completion": "b"}',
    "NUL bytes": b'{"prompt": "a\x00", "completion": "b"}\x00',
    "only a BOM": b"\xef\xbb\xbf",
    "BOM mid-file": CHAT_LINE + b"\n\xef\xbb\xbf" + CHAT_LINE,
    "CR-only line ends": CHAT_LINE + b"\r" + CHAT_LINE,
    "top-level array": b"[" + CHAT_LINE + b"]",
    "json string": b'"messages"',
    "huge float": b'{"prompt": "a", "completion": "b", "weight": 1e400}',
    "weight bool": b'{"messages": [{"role": "assistant", "content": "a", "weight": true}]}',
    "line over the limit": b'{"prompt": "' + b"a" * 5000 + b'", "completion": "b"}',
}


@pytest.mark.parametrize("name", list(TRAPS))
def test_parser_traps_become_line_errors(name: str) -> None:
    data = TRAPS[name]
    report = validate_bytes(data, min_examples=1, max_line_bytes=4096)
    assert_well_formed(data, report)
    if name not in ("CR-only line ends",):
        assert not report.ok, (name, report.to_dict())
