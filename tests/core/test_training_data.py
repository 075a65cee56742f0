"""Tests for core/training_data.py: the streaming JSONL validator and format normalisation."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.training_data import (
    LineError,
    StreamingValidator,
    ValidationReport,
    detect_format,
    normalize_example,
    validate_bytes,
)

# ----------------------------------------------------------------------------------------------- helpers


def chat(i: int = 0) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": f"What is {i} + 1?"},
            {"role": "assistant", "content": str(i + 1)},
        ]
    }


def jsonl(objs: list[Any], sep: bytes = b"\n", trailing: bool = True) -> bytes:
    out = sep.join(o if isinstance(o, bytes) else orjson.dumps(o) for o in objs)
    return out + sep if trailing else out


def chat_file(n: int = 10) -> list[Any]:
    return [chat(i) for i in range(n)]


def with_line(lineno: int, bad: Any, n: int = 12) -> bytes:
    """A chat file of n lines whose line `lineno` (1-based) is replaced by `bad`."""
    objs = chat_file(n)
    objs[lineno - 1] = bad
    return jsonl(objs)


def feed_chunks(data: bytes, size: int, **kw: Any) -> ValidationReport:
    v = StreamingValidator(**kw)
    for i in range(0, len(data), size):
        v.feed(data[i : i + size])
    return v.finish()


def feed_cuts(data: bytes, cuts: list[int], **kw: Any) -> ValidationReport:
    v = StreamingValidator(**kw)
    prev = 0
    for c in sorted(set(cuts)) + [len(data)]:
        v.feed(data[prev:c])
        prev = c
    return v.finish()


def only_error(report: ValidationReport) -> LineError:
    assert report.error_count == 1, report.errors
    return report.errors[0]


def assert_bad(data: bytes, line: int, field: str | None, code: str, **kw: Any) -> LineError:
    report = validate_bytes(data, **kw)
    assert not report.ok
    err = report.errors[0]
    assert (err.line, err.field, err.code) == (line, field, code), err
    assert err.message.startswith(f"line {line}: ")
    if field:
        assert err.message.startswith(f"line {line}: {field}: ")
    return err


# ------------------------------------------------------------------------------------ accepted formats


def test_chat_accepted() -> None:
    report = validate_bytes(jsonl(chat_file(12)))
    assert report.ok, report.errors
    assert (report.data_format, report.example_count, report.line_count) == ("chat", 12, 12)
    assert report.errors == [] and report.error_count == 0
    assert report.summary().startswith("valid chat training file: 12 examples")


def test_the_longest_valid_example_is_measured_in_bytes_whatever_the_chunking() -> None:
    objs = chat_file(12)
    objs[5] = {"messages": [{"role": "user", "content": "é" * 300}, {"role": "assistant", "content": "ok"}]}
    objs[7] = b"{not json" + b"x" * 2000  # invalid lines do not count: they never train
    data = jsonl(objs)
    longest = len(orjson.dumps(objs[5]))
    assert longest > 600  # 300 two-byte characters
    report = validate_bytes(data)
    assert report.longest_example_bytes == longest and report.to_dict()["longest_example_bytes"] == longest
    v = StreamingValidator()
    for i in range(0, len(data), 7):  # lines split across chunks measure the same
        v.feed(data[i : i + 7])
    assert v.finish().longest_example_bytes == longest


def test_chat_rich_features_accepted() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    line = {
        "messages": [
            {"role": "developer", "content": "Be helpful."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Oslo?"}],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
                "weight": 0,
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "12C"},
            {"role": "assistant", "content": "It is 12C.", "weight": 1, "name": "bot", "refusal": None},
            {"role": "user", "content": "Thanks", "refusal": None},
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
        ],
        "tools": tools,
        "parallel_tool_calls": False,
        "metadata": {"anything": "goes"},
    }
    report = validate_bytes(jsonl([line] * 10))
    assert report.ok, report.errors
    assert (report.data_format, report.layout) == ("chat", "openai_chat")
    # Known fields that training does not use are accepted, and listed once each as ignored.
    assert [(w.field, w.code, w.line, w.count) for w in report.warnings] == [
        ("parallel_tool_calls", "ignored_field", 1, 10),
        ("metadata", "ignored_field", 1, 10),
    ]
    assert report.warnings[1].message.startswith("metadata: ignored, training does not use it")
    assert report.to_dict()["warnings"][0]["field"] == "parallel_tool_calls"


def test_prompt_completion_accepted() -> None:
    report = validate_bytes(jsonl([{"prompt": f"p{i}", "completion": f" c{i}"} for i in range(10)]))
    assert report.ok, report.errors
    assert report.data_format == "prompt_completion"


def preference(i: int = 0, alias: bool = False) -> dict[str, Any]:
    pref, non = (
        ("preferred_completion", "non_preferred_completion")
        if alias
        else ("preferred_output", "non_preferred_output")
    )
    return {
        "input": {
            "messages": [{"role": "user", "content": f"Say hi {i}"}],
            "tools": [],
            "parallel_tool_calls": True,
        },
        pref: [{"role": "assistant", "content": "Hi!"}],
        non: [{"role": "assistant", "content": [{"type": "text", "text": "Go away."}]}],
    }


def test_preference_accepted_with_both_key_spellings() -> None:
    report = validate_bytes(jsonl([preference(i, alias=i % 2 == 1) for i in range(10)]))
    assert report.ok, report.errors
    assert report.data_format == "preference"


def test_sharegpt_accepted() -> None:
    line = {
        "system": "Be nice.",
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
            {"from": "user", "value": "Weather?"},
            {"from": "function_call", "value": '{"name": "w", "arguments": {}}'},
            {"from": "observation", "value": "sunny"},
            {"from": "assistant", "value": "Sunny."},
        ],
    }
    report = validate_bytes(jsonl([line] * 10))
    assert report.ok, report.errors
    assert report.data_format == "sharegpt"


def test_alpaca_accepted() -> None:
    lines: list[dict[str, Any]] = [
        {"instruction": "Add one", "input": str(i), "output": str(i + 1)} for i in range(8)
    ]
    lines.append({"instruction": "Greet", "output": "Hello"})
    lines.append(
        {"instruction": "Greet", "input": None, "output": "Hi", "history": [["a", "b"]], "system": "s"}
    )
    report = validate_bytes(jsonl(lines))
    assert report.ok, report.errors
    assert report.data_format == "alpaca"


# ----------------------------------------------------------------------------------- accepted framing


def test_bom_crlf_blank_lines_and_no_final_newline() -> None:
    body = jsonl(chat_file(10), sep=b"\r\n", trailing=False)
    data = b"\xef\xbb\xbf" + b"\r\n\n   \r\n" + body.replace(b"\r\n", b"\r\n\r\n \t\r\n", 3) + b"\r\n\r\n\n\n"
    report = validate_bytes(data)
    assert report.ok, report.errors
    assert (report.example_count, report.line_count, report.bytes) == (10, 10, len(data))
    # ... and without any trailing newline at all
    assert validate_bytes(b"\xef\xbb\xbf" + jsonl(chat_file(10), trailing=False)).ok


def test_bom_directly_before_first_object() -> None:
    report = validate_bytes(b"\xef\xbb\xbf" + jsonl(chat_file(10)))
    assert report.ok, report.errors


def test_bom_is_only_allowed_at_the_start() -> None:
    data = jsonl(chat_file(10)) + b"\xef\xbb\xbf" + orjson.dumps(chat()) + b"\n"
    err = assert_bad(data, 11, None, "invalid_json")
    assert "BOM" in err.message


def test_bom_then_invalid_json_is_invalid_json() -> None:
    err = assert_bad(b"\xef\xbb\xbf{bad\n" + jsonl(chat_file(10)), 1, None, "invalid_json")
    assert "BOM" not in err.message


def test_line_numbers_count_blank_lines() -> None:
    data = b"\n\n" + jsonl(chat_file(3)) + b"\n" + b"{oops\n" + jsonl(chat_file(10))
    assert_bad(data, 7, None, "invalid_json")


# ---------------------------------------------------------------------------------------- rejections


def test_invalid_json() -> None:
    err = assert_bad(with_line(3, b'{"messages": [}'), 3, None, "invalid_json")
    assert "invalid JSON" in err.message


def test_invalid_utf8_is_not_reported_as_json() -> None:
    bad = b'{"messages": [{"role": "user", "content": "caf\xe9"}]}'
    err = assert_bad(with_line(4, bad), 4, None, "invalid_utf8")
    assert "UTF-8" in err.message


def test_invalid_utf8_even_inside_invalid_json() -> None:
    assert_bad(with_line(2, b"\xff\xfe{"), 2, None, "invalid_utf8")


@pytest.mark.parametrize("value", [b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_line_not_an_object(value: bytes) -> None:
    assert_bad(with_line(5, value), 5, None, "not_an_object")


@pytest.mark.parametrize("data", [b"", b"\n\n\r\n  \n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\r\n"])
def test_empty_file(data: bytes) -> None:
    report = validate_bytes(data)
    assert not report.ok
    err = only_error(report)
    assert (err.line, err.field, err.code) == (0, None, "empty_file")
    assert report.summary() == err.message


def test_too_few_examples() -> None:
    report = validate_bytes(jsonl(chat_file(9)))
    err = only_error(report)
    assert (err.line, err.code) == (0, "too_few_examples")
    assert "9 valid examples" in err.message and "at least 10" in err.message
    assert validate_bytes(jsonl(chat_file(3)), min_examples=3).ok


def test_too_few_counts_only_valid_lines() -> None:
    report = validate_bytes(with_line(2, {"messages": []}, n=10))
    assert [e.code for e in report.errors] == ["empty_messages", "too_few_examples"]
    assert report.example_count == 9 and report.line_count == 10


def test_mixed_formats() -> None:
    err = assert_bad(with_line(4, {"prompt": "a", "completion": "b"}), 4, None, "mixed_formats")
    assert "prompt_completion" in err.message and "chat" in err.message and "line 1" in err.message


def test_format_is_fixed_by_first_valid_line() -> None:
    data = jsonl([{"prompt": 1, "completion": "x"}] + chat_file(10))
    report = validate_bytes(data)
    assert report.data_format == "chat"
    err = only_error(report)
    assert (err.line, err.field, err.code) == (1, "prompt", "wrong_type")


def test_unknown_format_and_missing_field_after_format_is_fixed() -> None:
    assert_bad(jsonl([{"foo": 1}] + chat_file(10)), 1, None, "unknown_format")
    assert_bad(with_line(3, {"foo": 1}), 3, "messages", "missing_field")


def test_missing_assistant_message() -> None:
    bad = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}
    err = assert_bad(with_line(6, bad), 6, "messages", "missing_assistant_message")
    assert "no assistant" in err.message


def test_all_assistant_turns_weight_zero() -> None:
    bad = {
        "messages": [
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a", "weight": 0},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "b", "weight": 0.0},
        ]
    }
    err = assert_bad(with_line(2, bad), 2, "messages", "missing_assistant_message")
    assert "weight 0" in err.message


@pytest.mark.parametrize("weight", [2, -1, 0.5, "1", True, False, [1], {}])
def test_invalid_weight(weight: Any) -> None:
    bad = {
        "messages": [
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a", "weight": weight},
        ]
    }
    assert_bad(with_line(3, bad), 3, "messages[1].weight", "invalid_weight")


def test_unknown_role() -> None:
    bad = chat()
    bad["messages"][2]["role"] = "bot"
    err = assert_bad(with_line(7, bad), 7, "messages[2].role", "unknown_role")
    assert err.message.startswith("line 7: messages[2].role: unknown role 'bot' (expected system")


def test_unknown_role_with_extra_keys_still_reported() -> None:
    bad = chat()
    bad["messages"][1] = {"role": "narrator", "content": "x", "name": "n"}
    assert_bad(with_line(1, bad), 1, "messages[1].role", "unknown_role")


@pytest.mark.parametrize(
    ("line", "field", "code"),
    [
        ({"messages": "hi"}, "messages", "wrong_type"),
        ({"messages": None}, "messages", "missing_field"),
        ({"messages": []}, "messages", "empty_messages"),
        ({"messages": ["hi"]}, "messages[0]", "wrong_type"),
        ({"messages": [{"role": 1, "content": "x"}]}, "messages[0].role", "wrong_type"),
        ({"messages": [{"content": "x"}]}, "messages[0].role", "missing_field"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "wrong_type"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "missing_content"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content", "missing_content"),
        (
            {"messages": [{"role": "user", "content": "u"}, {"role": "assistant"}]},
            "messages[1].content",
            "missing_content",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "u"},
                    {"role": "assistant", "content": None, "tool_calls": []},
                ]
            },
            "messages[1].content",
            "missing_content",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0].type",
            "unsupported_modality",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "audio_clip", "x": 1}]}]},
            "messages[0].content[0].type",
            "invalid_content_part",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
            "messages[0].content[0].text",
            "wrong_type",
        ),
        ({"messages": [{"role": "user", "content": ["text"]}]}, "messages[0].content[0]", "wrong_type"),
        ({"messages": [{"role": "user", "content": "u", "name": 3}]}, "messages[0].name", "wrong_type"),
        (
            {"messages": [{"role": "tool", "content": "u", "tool_call_id": 3}]},
            "messages[0].tool_call_id",
            "wrong_type",
        ),
        (
            {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "tool_calls": {"a": 1}}]},
            "messages[1].tool_calls",
            "wrong_type",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "u"},
                    {"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]},
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
            "missing_field",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "u"},
                    {"role": "assistant", "tool_calls": [{"id": 1, "function": {}}]},
                ]
            },
            "messages[1].tool_calls[0].id",
            "wrong_type",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "u"},
                    {"role": "assistant", "tool_calls": [{"type": "code", "function": {}}]},
                ]
            },
            "messages[1].tool_calls[0].type",
            "invalid_value",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "u"},
                    {"role": "assistant", "tool_calls": [{"type": "function"}]},
                ]
            },
            "messages[1].tool_calls[0].function",
            "missing_field",
        ),
        (
            {
                "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
                "tools": [{"type": "x"}],
            },
            "tools[0].type",
            "invalid_value",
        ),
        (
            {
                "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}],
            },
            "tools[0].function.parameters",
            "wrong_type",
        ),
        (
            {
                "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
                "tools": {"x": 1},
            },
            "tools",
            "wrong_type",
        ),
        (
            {
                "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
                "tools": [{"function": {}}],
            },
            "tools[0].function.name",
            "missing_field",
        ),
        (
            {
                "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
                "parallel_tool_calls": "y",
            },
            "parallel_tool_calls",
            "wrong_type",
        ),
    ],
)
def test_chat_wrong_types(line: dict[str, Any], field: str, code: str) -> None:
    assert_bad(with_line(8, line), 8, field, code)


@pytest.mark.parametrize(
    ("mutate", "field", "code"),
    [
        (lambda o: o.pop("input"), "input", "missing_field"),
        (lambda o: o.update(input="hi"), "input", "wrong_type"),
        (lambda o: o["input"].update(messages=[]), "input.messages", "empty_messages"),
        (lambda o: o["input"]["messages"][0].update(role="robot"), "input.messages[0].role", "unknown_role"),
        (lambda o: o.pop("non_preferred_output"), "non_preferred_output", "missing_field"),
        (
            lambda o: o.update(preferred_output={"role": "assistant", "content": "x"}),
            "preferred_output",
            "wrong_type",
        ),
        (lambda o: o.update(preferred_output=[]), "preferred_output", "wrong_length"),
        (lambda o: o["preferred_output"][0].update(role="user"), "preferred_output[0].role", "wrong_role"),
        (
            lambda o: o["preferred_output"][0].update(content=None),
            "preferred_output[0].content",
            "missing_content",
        ),
    ],
)
def test_preference_rejections(mutate: Any, field: str, code: str) -> None:
    lines = [preference(i) for i in range(10)]
    mutate(lines[5])
    assert_bad(jsonl(lines), 6, field, code)


@pytest.mark.parametrize(
    ("line", "field", "code"),
    [
        ({"conversations": "x"}, "conversations", "wrong_type"),
        ({"conversations": [{"from": "bot", "value": "x"}]}, "conversations[0].from", "unknown_role"),
        ({"conversations": [{"from": "human", "value": 1}]}, "conversations[0].value", "wrong_type"),
        ({"conversations": [{"from": "human", "value": "x"}]}, "conversations", "missing_assistant_message"),
    ],
)
def test_sharegpt_rejections(line: dict[str, Any], field: str, code: str) -> None:
    good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert_bad(jsonl([good] * 3 + [line] + [good] * 8), 4, field, code)


@pytest.mark.parametrize(
    ("line", "field", "code"),
    [
        ({"instruction": "i"}, "output", "missing_field"),
        ({"instruction": 1, "output": "o"}, "instruction", "wrong_type"),
        ({"instruction": "i", "input": 1, "output": "o"}, "input", "wrong_type"),
        ({"instruction": "i", "output": "o", "history": [["a"]]}, "history[0]", "wrong_type"),
    ],
)
def test_alpaca_rejections(line: dict[str, Any], field: str, code: str) -> None:
    good = {"instruction": "i", "output": "o"}
    assert_bad(jsonl([good] * 3 + [line] + [good] * 8), 4, field, code)


def test_prompt_completion_rejections() -> None:
    good = {"prompt": "p", "completion": "c"}
    assert_bad(jsonl([good] * 2 + [{"prompt": "p"}] + [good] * 9), 3, "completion", "missing_field")
    assert_bad(
        jsonl([good] * 2 + [{"prompt": "p", "completion": 3}] + [good] * 9), 3, "completion", "wrong_type"
    )


def test_line_too_long_in_the_middle() -> None:
    long_line = orjson.dumps(
        {"messages": [{"role": "user", "content": "x" * 500}, {"role": "assistant", "content": "y"}]}
    )
    data = with_line(3, long_line)
    err = assert_bad(data, 3, None, "line_too_long", max_line_bytes=400)
    assert "400 bytes" in err.message
    report = validate_bytes(data, max_line_bytes=400)
    assert (report.error_count, report.example_count, report.line_count) == (1, 11, 12)
    for size in (1, 7, 64, 4096):
        assert feed_chunks(data, size, max_line_bytes=400) == report


def test_line_length_limit_is_exact() -> None:
    line = orjson.dumps(chat())
    data = jsonl([line] * 10)
    assert validate_bytes(data, max_line_bytes=len(line)).ok
    assert validate_bytes(data, max_line_bytes=len(line) - 1).error_count == 11  # 10 lines + too_few
    for size in (1, 5, len(line), len(line) + 1):
        assert feed_chunks(data, size, max_line_bytes=len(line)).ok


def test_ten_megabyte_line_is_rejected_without_buffering_and_later_lines_validate() -> None:
    limit = 1024 * 1024
    huge = b'{"messages": [{"role": "user", "content": "' + b"x" * (10 * 1024 * 1024) + b'"}]}'
    data = jsonl(chat_file(2)) + huge + b"\n" + jsonl(chat_file(10)) + b"{bad\n"
    v = StreamingValidator(max_line_bytes=limit)
    chunk = 64 * 1024
    for i in range(0, len(data), chunk):
        v.feed(data[i : i + chunk])
        assert len(v._pending) <= limit  # never buffers more than a line's allowance
    report = v.finish()
    assert [(e.line, e.code) for e in report.errors] == [(3, "line_too_long"), (14, "invalid_json")]
    assert report.example_count == 12 and report.line_count == 14
    assert report.bytes == len(data)
    # the same when the huge line arrives inside one big chunk
    assert validate_bytes(data, max_line_bytes=limit) == report


def test_huge_last_line_without_newline() -> None:
    data = jsonl(chat_file(10)) + b"{" + b" " * 5000
    report = feed_chunks(data, 1000, max_line_bytes=1000)
    assert [(e.line, e.code) for e in report.errors] == [(11, "line_too_long")]
    assert report == validate_bytes(data, max_line_bytes=1000)


# -------------------------------------------------------------------------------------- error capping


def test_error_cap_keeps_first_hundred_and_true_count() -> None:
    data = jsonl([b"{nope"] * 250 + chat_file(10))
    report = validate_bytes(data)
    assert len(report.errors) == 100
    assert report.error_count == 250
    assert [e.line for e in report.errors] == list(range(1, 101))
    assert report.example_count == 10
    assert report.summary().startswith("line 1: invalid JSON")
    assert "249 more errors" in report.summary()
    small = validate_bytes(data, max_errors=5)
    assert len(small.errors) == 5 and small.error_count == 250


def test_summary_names_first_bad_line_and_field() -> None:
    bad = chat()
    bad["messages"][2]["role"] = "bot"
    report = validate_bytes(with_line(7, bad))
    assert report.summary() == report.errors[0].message
    assert "line 7" in report.summary() and "messages[2].role" in report.summary()
    assert report.to_dict()["errors"][0] == {
        "line": 7,
        "field": "messages[2].role",
        "code": "unknown_role",
        "message": report.errors[0].message,
    }


# --------------------------------------------------------------------------------- chunk independence


def tricky_file() -> bytes:
    parts = [
        b"\xef\xbb\xbf",
        jsonl(
            [
                {
                    "messages": [
                        {"role": "user", "content": "héllo 日本語 🎉"},
                        {"role": "assistant", "content": "ok"},
                    ]
                }
            ]
            * 4,
            sep=b"\r\n",
        ),
        b"\r\n\n",
        b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\r\n',
        b"[1]\n",
        orjson.dumps({"messages": [{"role": "user", "content": "z" * 300}]}) + b"\n",
        jsonl(chat_file(8)),
        orjson.dumps({"prompt": "é", "completion": "🎉"}) + b"\r\n",
        b"{broken\r\n",
        jsonl([chat(1)] * 3, trailing=False),
    ]
    return b"".join(parts)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 4096])
def test_chunk_boundaries_do_not_matter(size: int) -> None:
    data = tricky_file()
    whole = validate_bytes(data, max_line_bytes=200)
    assert whole.example_count == 15
    assert [(e.line, e.code) for e in whole.errors] == [
        (7, "invalid_utf8"),
        (8, "not_an_object"),
        (9, "line_too_long"),
        (18, "mixed_formats"),
        (19, "invalid_json"),
    ]
    assert feed_chunks(data, size, max_line_bytes=200) == whole


def test_feed_accepts_bytearray_and_memoryview() -> None:
    data = jsonl(chat_file(10))
    v = StreamingValidator()
    v.feed(bytearray(data[:100]))
    v.feed(memoryview(data)[100:])
    assert v.finish() == validate_bytes(data)


def test_finish_is_idempotent_and_feed_after_finish_is_ignored() -> None:
    v = StreamingValidator()
    v.feed(jsonl(chat_file(10)))
    first = v.finish()
    v.feed(b"{bad\n")
    assert v.finish() is first and first.ok


# ---------------------------------------------------------------------------------------- fuzzing

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "bot", ""]) | json_values
contents = (
    st.text(max_size=6)
    | st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "image_url"]), "text": st.text(max_size=4) | json_values}
        ),
        max_size=2,
    )
    | json_values
)
messages = st.fixed_dictionaries(
    {"role": roles, "content": contents},
    optional={
        "weight": st.sampled_from([0, 1, 2, 0.0, 1.0, True, None, "1"]),
        "name": st.text(max_size=3) | json_values,
        "tool_calls": json_values
        | st.lists(
            st.fixed_dictionaries(
                {
                    "function": st.fixed_dictionaries(
                        {"name": st.text(max_size=3), "arguments": st.text(max_size=3) | json_values}
                    )
                }
            ),
            max_size=2,
        ),
        "tool_call_id": json_values,
    },
)
line_objects = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"messages": st.lists(messages, max_size=4) | json_values}, optional={"tools": json_values}
    ),
    st.fixed_dictionaries(
        {"prompt": st.text(max_size=4) | json_values, "completion": st.text(max_size=4) | json_values}
    ),
    st.fixed_dictionaries(
        {
            "input": st.fixed_dictionaries({"messages": st.lists(messages, max_size=2)}) | json_values,
            "preferred_output": st.lists(messages, max_size=2) | json_values,
        },
        optional={
            "non_preferred_output": st.lists(messages, max_size=2),
            "non_preferred_completion": json_values,
        },
    ),
    st.fixed_dictionaries(
        {
            "conversations": st.lists(
                st.fixed_dictionaries(
                    {
                        "from": st.sampled_from(["human", "gpt", "x"]) | json_values,
                        "value": st.text(max_size=3) | json_values,
                    }
                ),
                max_size=3,
            )
            | json_values
        }
    ),
    st.fixed_dictionaries(
        {"instruction": st.text(max_size=3) | json_values, "output": st.text(max_size=3) | json_values},
        optional={"input": json_values, "history": json_values},
    ),
)
separators = st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\n \n"])

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def check_everywhere(data: bytes, cuts: list[int], **kw: Any) -> ValidationReport:
    whole = validate_bytes(data, **kw)
    assert feed_cuts(data, cuts, **kw) == whole
    assert feed_chunks(data, 1, **kw) == whole
    assert whole.error_count >= len(whole.errors)
    assert whole.ok == (whole.error_count == 0)
    assert isinstance(whole.summary(), str)
    for e in whole.errors:
        assert e.message.startswith(f"line {e.line}: " if e.line else "file: ")
    return whole


@FUZZ
@given(
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 300), max_size=20),
    limit=st.sampled_from([8, 64, 1 << 20]),
)
def test_fuzz_random_bytes(data: bytes, cuts: list[int], limit: int) -> None:
    check_everywhere(data, [c for c in cuts if c <= len(data)], max_line_bytes=limit, min_examples=1)


@FUZZ
@given(
    objs=st.lists(line_objects, max_size=12),
    sep=separators,
    bom=st.booleans(),
    cuts=st.lists(st.integers(0, 2000), max_size=20),
    limit=st.sampled_from([40, 1 << 20]),
)
def test_fuzz_json_lines(objs: list[Any], sep: bytes, bom: bool, cuts: list[int], limit: int) -> None:
    data = (b"\xef\xbb\xbf" if bom else b"") + jsonl(objs, sep=sep)
    report = check_everywhere(data, [c for c in cuts if c <= len(data)], max_line_bytes=limit, min_examples=1)
    if (
        report.errors and report.errors[0].code == "json_array"
    ):  # the first line is a list: the rest is not read
        assert report.error_count == 1 and isinstance(objs[0], list)
        return
    assert report.line_count == len(objs)
    # every valid example must normalise without raising
    for obj in objs:
        if (
            report.data_format
            and isinstance(obj, dict)
            and validate_bytes(orjson.dumps(obj), min_examples=1).ok
        ):
            if detect_format(obj) == report.data_format:
                normalize_example(obj, report.data_format)


@FUZZ
@given(
    objs=st.lists(st.sampled_from([orjson.dumps(chat(1)), b"{x", b"\xff", b"[]", b"", b"  "]), max_size=30),
    cuts=st.lists(st.integers(0, 3000), max_size=30),
)
def test_fuzz_line_mixtures(objs: list[bytes], cuts: list[int]) -> None:
    data = jsonl(objs)
    check_everywhere(data, [c for c in cuts if c <= len(data)], max_line_bytes=64)


# ----------------------------------------------------------------------------------- detect / normalise


@pytest.mark.parametrize(
    ("obj", "fmt"),
    [
        (chat(), "chat"),
        ({"prompt": "a", "completion": "b"}, "prompt_completion"),
        ({"prompt": "a"}, "prompt_completion"),
        (preference(), "preference"),
        (preference(alias=True), "preference"),
        ({"input": {"messages": []}}, "preference"),
        ({"conversations": []}, "sharegpt"),
        ({"instruction": "i", "input": "x", "output": "o"}, "alpaca"),
        ({"input": "x", "output": "o"}, "alpaca"),
        ({"output": "o"}, "alpaca"),
        ({"text": "raw"}, "prompt_completion"),
        ({"txt": "raw"}, None),
        ({}, None),
    ],
)
def test_detect_format(obj: dict[str, Any], fmt: str | None) -> None:
    assert detect_format(obj) == fmt


def test_detect_format_of_non_object() -> None:
    assert detect_format([1, 2]) is None  # type: ignore[arg-type]


def test_normalize_chat() -> None:
    obj = {
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "user", "content": "q", "extra": 1},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}],
                "weight": 0,
            },
            {"role": "tool", "content": "r", "tool_call_id": "call_0"},
            {"role": "assistant", "content": "done", "weight": 1.0},
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "junk": True,
    }
    assert normalize_example(obj, "chat") == {
        "messages": [
            {"role": "developer", "content": "a\nb"},  # kept: the worker renders it as vLLM does
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "call_0", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
                ],
                "weight": 0,
            },
            {"role": "tool", "content": "r", "tool_call_id": "call_0"},
            {"role": "assistant", "content": "done", "weight": 1},
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }


def test_content_parts_are_joined_with_a_newline_for_every_role_as_vllm_does() -> None:
    # vLLM's _parse_chat_message_content_parts: "\n".join(texts), whatever the role, without empty parts (a
    # string is one part).
    def parts(*texts: str) -> list[dict[str, str]]:
        return [{"type": "text", "text": t} for t in texts]

    obj = {
        "messages": [
            {
                "role": role,
                "content": parts("a", "", "b"),
                **({"tool_call_id": "c"} if role == "tool" else {}),
            }
            for role in ("system", "developer", "user", "assistant", "tool")
        ]
    }
    assert [m["content"] for m in normalize_example(obj, "chat")["messages"]] == ["a\nb"] * 5
    pref = preference()
    pref["input"]["messages"][0]["content"] = parts("Say", "hi")
    pref["preferred_output"][0]["content"] = parts("Hi", "there!")
    out = normalize_example(pref, "preference")
    assert out["input"]["messages"][0]["content"] == "Say\nhi"
    assert out["preferred_output"] == [{"role": "assistant", "content": "Hi\nthere!"}]
    assert out["non_preferred_output"] == [{"role": "assistant", "content": "Go away."}]


def test_a_system_billing_header_line_is_dropped_as_vllm_does() -> None:
    # vLLM's _strip_claude_code_billing_header: only system messages, only a part's leading header line.
    header = "x-anthropic-billing-header: cch=123;"
    obj = {
        "messages": [
            {"role": "system", "content": f"{header}\nYou are terse."},
            {
                "role": "system",
                "content": [{"type": "text", "text": header}, {"type": "text", "text": "Be kind."}],
            },
            {"role": "developer", "content": f"{header}\nkept"},
            {"role": "user", "content": f"{header}\nkept"},
        ]
    }
    assert [m["content"] for m in normalize_example(obj, "chat")["messages"]] == [
        "You are terse.",
        "Be kind.",
        f"{header}\nkept",
        f"{header}\nkept",
    ]


def test_normalize_prompt_completion_and_preference() -> None:
    assert normalize_example({"prompt": "p", "completion": "c", "x": 1}, "prompt_completion") == {
        "prompt": "p",
        "completion": "c",
    }
    out = normalize_example(preference(alias=True), "preference")
    assert out == {
        "input": {
            "messages": [{"role": "user", "content": "Say hi 0"}],
            "tools": [],
            "parallel_tool_calls": True,
        },
        "preferred_output": [{"role": "assistant", "content": "Hi!"}],
        "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
    }


def test_normalize_sharegpt_and_alpaca_keep_original() -> None:
    sg = {"system": "s", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert normalize_example(sg, "sharegpt") == {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
        ],
        "original": sg,
    }
    al = {"instruction": "Translate", "input": "hola", "output": "hello", "history": [["hi", "hello"]]}
    assert normalize_example(al, "alpaca") == {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "Translate\n\nhola"},
            {"role": "assistant", "content": "hello"},
        ],
        "original": al,
    }
    assert normalize_example({"instruction": "i", "input": "", "output": "o"}, "alpaca")["messages"][0] == {
        "role": "user",
        "content": "i",
    }


def test_normalize_unknown_format_raises() -> None:
    with pytest.raises(ValueError):
        normalize_example({}, "csv")


# ------------------------------------------------------------------------ every peer's layout (issue #17)

U = {"role": "user", "content": "Weather in Paris?"}
A = {"role": "assistant", "content": "Sunny."}
CALL = {"name": "weather", "arguments": '{"city": "Paris"}'}
TOOL_CALL = {"id": "call_0", "type": "function", "function": CALL}
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
OPENAI_PREFERENCE = {
    "input": {"messages": [{"role": "user", "content": "Pick one"}]},
    "preferred_output": [{"role": "assistant", "content": "good"}],
    "non_preferred_output": [{"role": "assistant", "content": "bad"}],
}
TOOL_CHAT = {
    "messages": [
        U,
        {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
        {"role": "tool", "content": "22 C", "tool_call_id": "call_0"},
        A,
    ],
    "tools": TOOLS,
}

# (id, line, format, layout, normalised)
LAYOUT_CASES = [
    pytest.param(
        {"prompt": "Pick one", "chosen": "good", "rejected": "bad"},
        "preference",
        "trl_preference",
        OPENAI_PREFERENCE,
        id="trl-standard-preference",
    ),
    pytest.param(
        {"system": "Be kind.", "prompt": "Pick one", "chosen": "good", "rejected": "bad"},
        "preference",
        "trl_preference",
        {
            **OPENAI_PREFERENCE,
            "input": {
                "messages": [
                    {"role": "system", "content": "Be kind."},
                    {"role": "user", "content": "Pick one"},
                ]
            },
        },
        id="trl-standard-preference-with-system",
    ),
    pytest.param(
        {
            "prompt": [{"role": "user", "content": "Pick one"}],
            "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "bad"}]}],
        },
        "preference",
        "trl_conversational_preference",
        OPENAI_PREFERENCE,
        id="trl-conversational-preference",
    ),
    pytest.param(
        {
            "chosen": [{"role": "user", "content": "Pick one"}, {"role": "assistant", "content": "good"}],
            "rejected": [{"role": "user", "content": "Pick one"}, {"role": "assistant", "content": "bad"}],
        },
        "preference",
        "trl_conversational_preference",
        OPENAI_PREFERENCE,
        id="trl-implicit-prompt",
    ),
    pytest.param(
        {
            "prompt": "Pick one",  # UltraFeedback: the answers repeat the prompt
            "chosen": [{"role": "user", "content": "Pick one"}, {"role": "assistant", "content": "good"}],
            "rejected": [{"role": "user", "content": "Pick one"}, {"role": "assistant", "content": "bad"}],
        },
        "preference",
        "trl_conversational_preference",
        OPENAI_PREFERENCE,
        id="trl-answers-repeat-the-prompt",
    ),
    pytest.param(
        {
            "conversations": [{"from": "human", "value": "Pick one"}],
            "chosen": {"from": "gpt", "value": "good"},
            "rejected": {"from": "gpt", "value": "bad"},
        },
        "preference",
        "sharegpt_preference",
        OPENAI_PREFERENCE,
        id="llamafactory-sharegpt-preference",
    ),
    pytest.param(
        {"instruction": "Pick", "input": "one", "chosen": "good", "rejected": "bad"},
        "preference",
        "alpaca_preference",
        {**OPENAI_PREFERENCE, "input": {"messages": [{"role": "user", "content": "Pick\n\none"}]}},
        id="llamafactory-alpaca-preference",
    ),
    pytest.param(
        {
            "messages": [{"role": "user", "content": "Pick one"}],
            "chosen": {"role": "assistant", "content": "good"},
            "rejected": {"role": "assistant", "content": "bad"},
        },
        "preference",
        "messages_preference",
        OPENAI_PREFERENCE,
        id="axolotl-chat-template-preference",
    ),
    pytest.param(
        {"prompt": "Pick one", "completion": "bad", "label": False},
        "kto",
        "trl_kto",
        {
            "prompt": [{"role": "user", "content": "Pick one"}],
            "completion": [{"role": "assistant", "content": "bad"}],
            "label": False,
        },
        id="trl-kto",
    ),
    pytest.param(
        {
            "messages": [{"role": "user", "content": "Pick one"}, {"role": "assistant", "content": "good"}],
            "kto_tag": True,
        },
        "kto",
        "messages_kto",
        {
            "prompt": [{"role": "user", "content": "Pick one"}],
            "completion": [{"role": "assistant", "content": "good"}],
            "label": True,
        },
        id="llamafactory-kto-messages",
    ),
    pytest.param(
        {
            "conversations": [{"from": "human", "value": "Pick one"}, {"from": "gpt", "value": "bad"}],
            "kto_tag": False,
        },
        "kto",
        "sharegpt_kto",
        {
            "prompt": [{"role": "user", "content": "Pick one"}],
            "completion": [{"role": "assistant", "content": "bad"}],
            "label": False,
        },
        id="llamafactory-kto-sharegpt",
    ),
    pytest.param(
        {"text": "Once upon a time."},
        "prompt_completion",
        "text",
        {"prompt": "", "completion": "Once upon a time."},
        id="text",
    ),
    pytest.param(
        {
            "messages": [
                U,
                {"role": "assistant", "content": None, "function_call": CALL},
                {"role": "function", "name": "weather", "content": "22 C"},
                A,
            ],
            "functions": [TOOLS[0]["function"]],
        },
        "chat",
        "openai_chat",
        {
            "messages": [
                U,
                {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
                {"role": "tool", "content": "22 C", "name": "weather", "tool_call_id": "call_0"},
                A,
            ],
            "tools": TOOLS,
        },
        id="openai-legacy-functions",
    ),
    pytest.param(
        {
            "messages": [
                U,
                {**A, "train": False},
                U,
                {**A, "train": True},
                {"role": "user", "content": "x", "train": False},
            ]
        },
        "chat",
        "openai_chat",
        {"messages": [U, {**A, "weight": 0}, U, {**A, "weight": 1}, {"role": "user", "content": "x"}]},
        id="axolotl-train-flags",
    ),
    pytest.param(
        {"messages": [U, {**A, "reasoning_content": "Paris is sunny today."}]},
        "chat",
        "openai_chat",
        {"messages": [U, {**A, "reasoning_content": "Paris is sunny today."}]},
        id="reasoning-content",
    ),
    pytest.param(
        {"prompt": [U, A, U], "completion": [A]},
        "chat",
        "trl_conversational_prompt_completion",
        {"messages": [U, {**A, "weight": 0}, U, A]},
        id="trl-conversational-prompt-completion",
    ),
    pytest.param(
        {"instruction": "Add one", "input": "1", "response": "2"},
        "alpaca",
        "alpaca",
        {
            "messages": [{"role": "user", "content": "Add one\n\n1"}, {"role": "assistant", "content": "2"}],
            "original": {"instruction": "Add one", "input": "1", "response": "2"},
        },
        id="axolotl-alpaca-response",
    ),
]


@pytest.mark.parametrize(("line", "fmt", "layout", "normalised"), LAYOUT_CASES)
def test_every_layout_is_detected_validated_and_normalised(
    line: dict[str, Any], fmt: str, layout: str, normalised: dict[str, Any]
) -> None:
    from core.training_data import LAYOUTS, detect_layout

    assert (detect_layout(line), detect_format(line)) == (layout, fmt)
    assert LAYOUTS[layout][0] == fmt
    report = validate_bytes(jsonl([line] * 10))
    assert report.ok, report.errors
    assert (report.data_format, report.layout, report.warnings) == (fmt, layout, [])
    assert normalize_example(line, fmt) == normalised


def test_sharegpt_tool_calls_are_tool_calls_not_text() -> None:
    line = {
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": "22 C"},
            {"from": "gpt", "value": "Sunny."},
        ],
        "tools": '[{"name": "weather", "parameters": {"type": "object"}}]',  # LLaMA-Factory: a JSON string
    }
    assert validate_bytes(jsonl([line] * 10)).ok
    out = normalize_example(line, "sharegpt")
    compact = {**TOOL_CALL, "function": {**CALL, "arguments": '{"city":"Paris"}'}}  # an object, dumped
    assert {k: v for k, v in out.items() if k != "original"} == {
        **TOOL_CHAT,
        "messages": [
            U,
            {"role": "assistant", "content": "", "tool_calls": [compact]},
            *TOOL_CHAT["messages"][2:],
        ],
    }
    # axolotl's role/content turns with train flags, and parallel calls answered in order
    parallel = {
        "conversations": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "function_call",
                "content": '[{"name": "weather", "arguments": {"city": "Paris"}}, '
                '{"name": "weather", "arguments": {"city": "Rome"}}]',
                "train": False,
            },
            {"role": "tool", "content": "22 C"},
            {"role": "tool", "content": "25 C"},
            {"role": "assistant", "content": "Both sunny."},
        ]
    }
    assert validate_bytes(jsonl([parallel] * 10)).ok
    msgs = normalize_example(parallel, "sharegpt")["messages"]
    assert [c["id"] for c in msgs[1]["tool_calls"]] == ["call_0", "call_1"] and msgs[1]["weight"] == 0
    assert [m.get("tool_call_id") for m in msgs[2:4]] == ["call_0", "call_1"]


def test_a_format_may_mix_its_layouts_but_not_formats() -> None:
    data = jsonl([{"prompt": "p", "completion": "c"}, {"text": "t"}] * 5)
    report = validate_bytes(data)
    assert report.ok and (report.data_format, report.layout) == ("prompt_completion", "prompt_completion")
    err = assert_bad(
        jsonl([{"prompt": "p", "chosen": "c", "rejected": "r"}] * 10 + [chat()]), 11, None, "mixed_formats"
    )
    assert "chat format (OpenAI chat: messages) but the file is in preference format" in err.message


PEER_REJECTIONS = [
    # never a silent drop
    ({"messages": [U, A], "category": "x"}, "category", "unknown_field"),
    ({"messages": [U, {**A, "score": 1}]}, "messages[1].score", "unknown_field"),
    ({"messages": [{**U, "tool_call_id": "c"}, A]}, "messages[0].tool_call_id", "unknown_field"),
    ({"messages": [{**U, "reasoning_content": "x"}, A]}, "messages[0].reasoning_content", "unknown_field"),
    ({"messages": [U, {**A, "reasoning_content": 1}]}, "messages[1].reasoning_content", "wrong_type"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "cache": 1}]}, A]},
     "messages[0].content[0].cache", "unknown_field"),
    ({"messages": [U, A], "images": ["a.png"]}, "images", "unsupported_modality"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}, A]},
     "messages[0].content[0].type", "unsupported_modality"),
    ({"prompt": "p", "completion": "c", "weight": 1}, "weight", "unknown_field"),
    ({"text": "t", "meta": {}}, "meta", "unknown_field"),
    ({"text": "  "}, "text", "invalid_value"),
    ({"prompt": "p", "chosen": "c", "rejected": "r", "label": 1}, "label", "unknown_field"),
    ({"prompt": "p", "chosen": "c", "rejected": "r", "images": ["a.png"]}, "images", "unsupported_modality"),
    # OpenAI's legacy functions
    ({"messages": [U, {"role": "function", "content": "22 C"}, A]}, "messages[1].name", "missing_field"),
    ({"messages": [U, {"role": "assistant", "content": None, "function_call": {"name": "f"}}]},
     "messages[1].function_call.arguments", "missing_field"),
    ({"messages": [U, {"role": "assistant", "content": None, "function_call": CALL, "tool_calls": [TOOL_CALL]}]},
     "messages[1].function_call", "invalid_value"),
    ({"messages": [U, A], "tools": TOOLS, "functions": [TOOLS[0]["function"]]}, "functions", "invalid_value"),
    ({"messages": [U, A], "functions": [{"parameters": {}}]}, "functions[0].name", "missing_field"),
    # axolotl's train flags
    ({"messages": [{**U, "train": True}, A]}, "messages[0].train", "invalid_weight"),
    ({"messages": [{**U, "weight": 1}, A]}, "messages[0].weight", "invalid_weight"),
    ({"messages": [U, {**A, "train": "yes"}]}, "messages[1].train", "invalid_weight"),
    ({"messages": [U, {**A, "train": True, "weight": 1}]}, "messages[1].train", "invalid_weight"),
    ({"messages": [U, {**A, "train": False}]}, "messages", "missing_assistant_message"),
    # ShareGPT
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "f(x)"}]},
     "conversations[1].value", "invalid_value"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": '{"name": "f"}'}]},
     "conversations[1].value", "missing_field"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "tools": "[nope"},
     "tools", "invalid_value"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a", "loss": 1}]},
     "conversations[1].loss", "unknown_field"),
    ({"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]},
     "conversations[1].content", "missing_field"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "images": ["x.png"]},
     "images", "unsupported_modality"),
    # Alpaca
    ({"instruction": "i", "output": "o", "response": "r"}, "response", "invalid_value"),
    # preference layouts
    ({"prompt": "p", "chosen": "c"}, "rejected", "missing_field"),
    ({"chosen": "c", "rejected": "r"}, "prompt", "missing_field"),
    ({"prompt": "p", "chosen": "c", "rejected": [A]}, "rejected", "wrong_type"),
    ({"prompt": "p", "chosen": [A], "rejected": [A]}, "rejected", "invalid_value"),
    ({"chosen": [A], "rejected": [{**A, "content": "no"}]}, "prompt", "missing_field"),
    ({"prompt": "p", "chosen": [{**A, "content": "x"}, U], "rejected": [A]}, "chosen", "wrong_length"),
    ({"prompt": "p", "chosen": [U], "rejected": [A]}, "chosen[0].role", "wrong_role"),
    ({"prompt": "other", "chosen": [U, A], "rejected": [U, {**A, "content": "no"}]}, "chosen", "invalid_value"),
    ({"prompt": "p", "chosen": [{**A, "tool_calls": [TOOL_CALL]}], "rejected": [A]}, "chosen[0].tool_calls",
     "unknown_field"),
    ({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "human", "value": "c"},
      "rejected": {"from": "gpt", "value": "r"}}, "chosen.from", "wrong_role"),
    ({"conversations": [{"from": "human", "value": "q"}], "chosen": "c", "rejected": "r"}, "chosen", "wrong_type"),
    ({"messages": [U], "chosen": {"role": "assistant"}, "rejected": A}, "chosen.content", "missing_content"),
    ({**OPENAI_PREFERENCE, "preferred_output": [{"role": "assistant", "content": "c", "weight": 1}]},
     "preferred_output[0].weight", "unknown_field"),
    ({**OPENAI_PREFERENCE, "input": {"messages": [U], "extra": 1}}, "input.extra", "unknown_field"),
    # KTO
    ({"prompt": "p", "completion": "c", "label": "good"}, "label", "wrong_type"),
    ({"messages": [U, A], "kto_tag": "yes"}, "kto_tag", "wrong_type"),
    ({"messages": [U, A], "kto_tag": True, "label": True}, "label", "invalid_value"),
    ({"messages": [A, U], "kto_tag": True}, "messages", "missing_assistant_message"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "field", "code"), PEER_REJECTIONS)
def test_peer_layout_rejections(line: dict[str, Any], field: str, code: str) -> None:
    report = validate_bytes(jsonl([line] + [line] * 0))
    err = report.errors[0]
    assert (err.line, err.field, err.code) == (1, field, code), err
    assert err.message.startswith(f"line 1: {field}: ")


def test_unknown_fields_are_named_with_what_the_layout_uses() -> None:
    err = validate_bytes(jsonl([{"messages": [U, A], "category": "geo"}])).errors[0]
    assert err.message == (
        "line 1: category: unknown field 'category': ftserve would not train on it, and does not drop data "
        "silently; remove it (OpenAI chat uses functions, messages, parallel_tool_calls, tools)"
    )
    err = validate_bytes(jsonl([{"messages": [U, A], "images": ["cat.png"]}])).errors[0]
    assert "this model is text-only" in err.message


def test_known_harmless_fields_are_warnings_and_null_is_absent() -> None:
    lines: list[dict[str, Any]] = [
        {"id": i, "source": "hh", "prompt": "p", "chosen": "c", "rejected": "r", "score_chosen": 8.0}
        for i in range(10)
    ]
    lines[3]["category"] = None  # null means absent, even for a field ftserve does not know
    lines.append({"prompt": "p", "chosen": "c", "rejected": "r", "metadata": {"a": 1}})
    report = validate_bytes(jsonl(lines))
    assert report.ok, report.errors
    assert [(w.field, w.line, w.count) for w in report.warnings] == [
        ("id", 1, 10),
        ("source", 1, 10),
        ("score_chosen", 1, 10),
        ("metadata", 11, 1),
    ]
    assert report.warnings[0].message == (
        "id: ignored, training does not use it (a row identifier); on 10 examples, first on line 1"
    )
    pref = {**OPENAI_PREFERENCE, "input": {**OPENAI_PREFERENCE["input"], "parallel_tool_calls": True}}
    report = validate_bytes(jsonl([pref] * 10))
    assert [(w.field, w.count) for w in report.warnings] == [("input.parallel_tool_calls", 10)]


def test_format_refusal_names_the_layout_and_the_method_that_would_use_it() -> None:
    from core.training_data import format_refusal

    assert format_refusal("chat", "openai_chat", "supervised") is None
    assert format_refusal("preference", "trl_preference", "dpo") is None
    sft = format_refusal("preference", "sharegpt_preference", "supervised")
    assert sft is not None and "LLaMA-Factory ShareGPT preference" in sft and "'dpo'" in sft
    assert format_refusal("kto", "messages_kto", "kto") is None
    for method in ("orpo", "simpo"):
        assert format_refusal("preference", "openai_preference", method) is None
    for method in ("supervised", "dpo", "orpo", "simpo"):
        kto = format_refusal("kto", "messages_kto", method)
        assert kto is not None and "LLaMA-Factory KTO" in kto and "method 'kto'" in kto
    on_kto = format_refusal("preference", "trl_preference", "kto")
    assert on_kto is not None and "'dpo', 'orpo' or 'simpo'" in on_kto
    chat_on_kto = format_refusal("chat", "openai_chat", "kto")
    assert chat_on_kto is not None and "'supervised'" in chat_on_kto and "label" in chat_on_kto
    for method in ("dpo", "orpo", "simpo"):
        paired = format_refusal("alpaca", "alpaca", method)
        assert paired is not None and "'supervised'" in paired and "preference data" in paired
    assert format_refusal("preference", None, "supervised") is not None  # a file from before layouts


def test_a_line_of_another_format_does_not_normalise() -> None:
    kto = {"messages": [U, A], "kto_tag": False}
    with pytest.raises(ValueError, match="expected a chat example, but this line is kto data"):
        normalize_example(kto, "chat")


# ----------------------------------------------------------------------------------------- JSON arrays


def array_of(objs: list[Any], indent: int | None = 2) -> bytes:
    import json

    return json.dumps(objs, indent=indent, ensure_ascii=False).encode()


def feed_named(
    data: bytes, name: str = "train.json", size: int = 0, **kw: Any
) -> tuple[ValidationReport, bytes]:
    v = StreamingValidator(filename=name, **kw)
    step = size or len(data) or 1
    stored = b"".join(v.feed(data[i : i + step]) for i in range(0, len(data), step))
    return v.finish(), stored


@pytest.mark.parametrize("size", [0, 1, 2, 3, 7, 64])
@pytest.mark.parametrize("indent", [None, 2])
def test_a_json_array_is_validated_element_by_element_and_stored_as_json_lines(
    size: int, indent: int | None
) -> None:
    objs = [chat(i) for i in range(10)]
    objs[3]["messages"][1]["content"] = 'tricky: "quoted", [brackets], {braces}, back\\slash \\" and é 日本'
    data = b"\xef\xbb\xbf \n" + array_of(objs, indent) + b"\n"
    report, stored = feed_named(data, size=size)
    assert report.ok, report.errors
    assert (report.json_array, report.example_count, report.line_count, report.bytes) == (
        True,
        10,
        10,
        len(data),
    )
    assert report.summary().startswith("valid chat training file: 10 examples on 10 elements of a JSON array")
    assert stored == jsonl(objs)  # element N on line N: what the worker and the token counter read
    assert report.longest_example_bytes == max(len(orjson.dumps(o)) for o in objs)


def test_a_bad_element_is_named_by_its_number() -> None:
    objs: list[Any] = [chat(i) for i in range(12)]
    objs[2] = {"messages": []}
    objs[6] = 42
    report, _ = feed_named(array_of(objs), size=5)
    assert [(e.line, e.code) for e in report.errors] == [(3, "empty_messages"), (7, "not_an_object")]
    assert report.errors[0].message == "element 3: messages: the list of messages is empty"


@pytest.mark.parametrize(
    ("data", "code", "line"),
    [
        (b"[]", "empty_file", 0),
        (b"  [ \n ]  ", "empty_file", 0),
        (b"[" + orjson.dumps(chat()), "invalid_json", 0),  # cut short
        (b"[" + orjson.dumps(chat()) + b",]", "invalid_json", 2),  # a trailing comma
        (b"[" + orjson.dumps(chat()) + b",,", "invalid_json", 2),
        (b"[" + orjson.dumps(chat()) + b"] trailing", "invalid_json", 0),
        (b'[{"messages": [1 2]}]', "invalid_json", 1),
        (b'[{"messages": "\xff"}]', "invalid_utf8", 1),
    ],
)
def test_broken_json_arrays(data: bytes, code: str, line: int) -> None:
    report, _ = feed_named(data, min_examples=1)
    assert not report.ok
    assert (report.errors[0].code, report.errors[0].line) == (code, line), report.errors


def test_an_over_long_element_is_skipped_and_the_next_validates() -> None:
    objs = [chat(i) for i in range(11)]
    objs[1]["messages"][1]["content"] = "x" * 500
    report, _ = feed_named(array_of(objs), size=16, max_line_bytes=400)
    assert [(e.line, e.code) for e in report.errors] == [(2, "line_too_long")]
    assert report.errors[0].message == "element 2: element is longer than 400 bytes"
    assert report.example_count == 10


def test_a_json_file_of_json_lines_is_json_lines() -> None:
    data = jsonl(chat_file(10))
    for size in (0, 1, 5):
        report, stored = feed_named(data, size=size)
        assert report.ok and not report.json_array and stored == data


def test_a_json_array_in_a_jsonl_file_is_one_plain_error() -> None:
    for data in (
        array_of(chat_file(10)),
        array_of(chat_file(10), None),
        b"\xef\xbb\xbf\n" + array_of(chat_file(10)),
    ):
        for name in (None, "train.jsonl"):
            report, _ = feed_named(data, name=name or "", size=7)
            err = only_error(report)
            assert (err.code, err.field) == ("json_array", None)
            assert "this is a JSON array, not JSON Lines" in err.message and ".json" in err.message


def test_every_example_in_docs_data_md_is_valid_in_its_layout() -> None:
    import json
    import re
    from pathlib import Path

    from core.training_data import detect_layout

    doc = (Path(__file__).parents[2] / "docs" / "data.md").read_text()
    rows = re.findall(r"^\| `([a-z_]+)`[^|]*\| `(\{.*?\})`", doc, re.M)
    assert len(rows) >= 20
    for layout, example in rows:
        obj = json.loads(example)
        assert detect_layout(obj) == layout, example
        report = validate_bytes(jsonl([obj] * 10))
        assert report.ok, (example, report.errors)


# ------------------------------------------------------------------------------------------ reinforcement


def test_reinforcement_prompts_keep_their_grader_fields() -> None:
    def prompt(i: int) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": f"What is {i} + 1?"}], "answer": str(i + 1), "id": i}

    report = validate_bytes(jsonl([prompt(i) for i in range(10)]))
    assert report.ok, report.errors
    assert (report.data_format, report.layout, report.warnings) == (
        "reinforcement",
        "openai_reinforcement",
        [],
    )
    assert normalize_example(prompt(3), "reinforcement") == prompt(3)
    # a multi-turn prompt with a grader field ends before the answer; a chat ending with a tool message is chat
    turns = {"messages": [U, A, U], "answer": "x"}
    assert detect_format(turns) == "reinforcement"
    assert normalize_example(turns, "reinforcement")["answer"] == "x"
    assert (
        detect_format({"messages": [U, A, {"role": "tool", "content": "t", "tool_call_id": "c"}]}) == "chat"
    )
    # in a reinforcement file a line with the answer is wrong; in a chat file, a line without one is
    answered = {"messages": [U, A], "answer": "x"}
    data = jsonl([prompt(i) for i in range(9)] + [answered])
    assert_bad(data, 10, "messages[1].role", "wrong_role")
    assert_bad(with_line(4, {"messages": [U]}), 4, "messages", "missing_assistant_message")
