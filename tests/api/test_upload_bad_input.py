"""The bad-input suite for POST /v1/files (issue #2).

Every malformed training file gets the documented answer: HTTP 400 in OpenAI's error envelope with
``param == "file"``, a message naming the first bad line (and field), the ``file_id`` of a file row in
status ``error`` whose full report (GET /v1/files/{id}/validation) has that line, field and error code
(the codes are core/training_data.py's), and whose content is not served. Request-level bad input (purpose,
multipart framing, size limits, expires_after) gets a 400/413 envelope naming the right param. Nothing gets
a 5xx. The accepted edge cases (BOM, CRLF, blank lines, no final newline) are 200 with the right count, and
a 200 MB valid file streams through a real server process without being held in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from core.redis_embedded import free_port
from core.settings import Settings
from tests.support.datasets import chat_example, chat_jsonl, preference_jsonl, prompt_completion_jsonl
from tests.support.keys import make_key

REPO_ROOT = Path(__file__).resolve().parents[2]
BOM = b"\xef\xbb\xbf"
MIB = 1024 * 1024
Response = Any  # what TestClient returns: an httpx2 (or, with older Starlette, httpx) Response


# ----------------------------------------------------------------------------------------------- fixtures
# The case tables are long, so one app (and one key) per backend serves the whole module instead of a fresh
# database per case; each case only looks at the file it created. Same backends as tests/api/conftest.py.


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    data_dir = tmp_path_factory.mktemp(f"bad-input-{request.param}") / "data"
    if request.param == "sqlite":
        yield Settings(data_dir=data_dir, database_url=None, storage_url=None, min_examples=10)
        return
    import psycopg

    request.getfixturevalue("postgres_server")  # skips, with the reason, where PostgreSQL is absent
    name = f"ftserve_test_{uuid.uuid4().hex[:12]}"
    admin = "host=127.0.0.1 port=5432 user=postgres dbname=test"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Settings(
            data_dir=data_dir,
            database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
            storage_url=None,
            min_examples=10,
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    from api.main import create_app

    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def org_a_key(settings: Settings, client: TestClient) -> str:
    return make_key(settings, "org-a")


@pytest.fixture(scope="module")
def limited_client(settings: Settings, client: TestClient) -> Iterator[TestClient]:
    """An app on the same database and storage as `client` (so `org_a_key` works) with small limits."""
    from api.main import create_app

    limited = settings.model_copy(update={"max_upload_bytes": 100_000, "max_line_bytes": 1024})
    with TestClient(create_app(limited)) as test_client:
        yield test_client


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _upload(client: TestClient, key: str, data: bytes, **form: str) -> Response:
    fields = {"purpose": "fine-tune", **form}
    return client.post("/v1/files", headers=_auth(key), data=fields, files={"file": ("train.jsonl", data)})


# ------------------------------------------------------------------------------------------ file builders


def _line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _chat(*messages: dict[str, Any], **extra: Any) -> bytes:
    return _line({"messages": list(messages), **extra})


def _lines(data: bytes) -> list[bytes]:
    """The file's lines, each with its b"\\n" (the builders always end a file with one)."""
    assert data.endswith(b"\n")
    return [part + b"\n" for part in data.split(b"\n")[:-1]]


def _insert(base: bytes, lineno: int, *bad: bytes) -> bytes:
    """`base` with the `bad` lines inserted so that the first of them is physical line `lineno`."""
    lines = _lines(base)
    lines[lineno - 1 : lineno - 1] = [b if b.endswith(b"\n") else b + b"\n" for b in bad]
    return b"".join(lines)


def _sharegpt_jsonl(n: int = 12) -> bytes:
    return b"".join(
        _line({"conversations": [{"from": "human", "value": f"Q{i}"}, {"from": "gpt", "value": f"A{i}"}]})
        for i in range(n)
    )


def _alpaca_jsonl(n: int = 12) -> bytes:
    return b"".join(_line({"instruction": f"Say {i}", "input": "", "output": f"{i}"}) for i in range(n))


CHAT = chat_jsonl(12)
PC = prompt_completion_jsonl(12)
PREF = preference_jsonl(12)
SHAREGPT = _sharegpt_jsonl(12)
ALPACA = _alpaca_jsonl(12)

U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "hello"}
S = {"role": "system", "content": "be brief"}
PREF_ROW: dict[str, Any] = {
    "input": {"messages": [U]},
    "preferred_output": [{"role": "assistant", "content": "yes"}],
    "non_preferred_output": [{"role": "assistant", "content": "no"}],
}


# One malformed file per case: (id, first bad line (0: file-level), field or None, code, file). Apart from
# the bad line, each file holds >= 10 valid lines, so the expected error is the only one unless it says not.
def _bad(case_id: str, line: int, field: str | None, code: str, data: bytes) -> Any:
    return pytest.param(data, line, field, code, id=case_id)


TRUNCATED = b'{"messages": [{"role": "user", "content": "hi"}'
NAN = (
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": NaN}]}'
)
TWO_OBJECTS = b'{"prompt": "a", "completion": "b"}{"prompt": "c", "completion": "d"}'
SURROGATE = b'{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "x"}]}'
LATIN1 = b'{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "x"}]}'
MID_LINE = b'{"messages": \xff\xfe[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}'
CUT_CHAR = b'{"messages": [{"role": "user", "content": "\xe2\x82"}, {"role": "assistant", "content": "x"}]}'
NO_NON_PREFERRED = {k: v for k, v in PREF_ROW.items() if k != "non_preferred_output"}
BAD_FROM = {"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]}

# fmt: off
REJECTED = [
    # -- invalid JSON
    _bad("json-truncated-object", 3, None, "invalid_json", _insert(CHAT, 3, TRUNCATED)),
    _bad("json-trailing-comma", 12, None, "invalid_json",
         _insert(PC, 12, b'{"prompt": "a", "completion": "b",}')),
    _bad("json-single-quotes", 1, None, "invalid_json",
         _insert(CHAT, 1, b"{'messages': [{'role': 'user'}]}")),
    _bad("json-nan", 5, None, "invalid_json", _insert(CHAT, 5, NAN)),
    _bad("json-bare-word", 2, None, "invalid_json", _insert(CHAT, 2, b"hello")),
    _bad("json-two-objects-on-one-line", 7, None, "invalid_json", _insert(PC, 7, TWO_OBJECTS)),
    _bad("json-lone-surrogate-escape", 4, None, "invalid_json", _insert(CHAT, 4, SURROGATE)),
    # -- not UTF-8
    _bad("utf8-bad-byte-in-string-value", 4, None, "invalid_utf8", _insert(CHAT, 4, LATIN1)),
    _bad("utf8-bad-bytes-mid-line", 6, None, "invalid_utf8", _insert(CHAT, 6, MID_LINE)),
    _bad("utf8-truncated-multibyte-char", 9, None, "invalid_utf8", _insert(CHAT, 9, CUT_CHAR)),
    _bad("utf8-whole-file-is-utf16", 1, None, "invalid_utf8", CHAT.decode().encode("utf-16")),
    # -- a line that is JSON but not an object
    _bad("line-is-array", 6, None, "not_an_object", _insert(CHAT, 6, b'[{"messages": []}]')),
    _bad("line-is-string", 6, None, "not_an_object", _insert(CHAT, 6, b'"hello"')),
    _bad("line-is-number", 6, None, "not_an_object", _insert(CHAT, 6, b"42")),
    _bad("line-is-null", 6, None, "not_an_object", _insert(CHAT, 6, b"null")),
    # -- file-level problems (line 0)
    _bad("empty-file-0-bytes", 0, None, "empty_file", b""),
    _bad("only-blank-lines", 0, None, "empty_file", b"\n \n\t\r\n\r\n\n"),
    _bad("only-bom-and-blank-lines", 0, None, "empty_file", BOM + b"\r\n\n"),
    _bad("nine-examples", 0, None, "too_few_examples", chat_jsonl(9)),
    # -- mixed and unknown formats
    _bad("mixed-chat-then-prompt-completion", 4, None, "mixed_formats",
         _insert(CHAT, 4, _line({"prompt": "a", "completion": "b"}))),
    _bad("mixed-chat-then-preference", 8, None, "mixed_formats", _insert(CHAT, 8, _line(PREF_ROW))),
    _bad("unknown-format-on-first-line", 1, None, "unknown_format", _insert(CHAT, 1, _line({"txt": "hi"}))),
    _bad("no-known-keys-after-format-is-set", 5, "messages", "missing_field",
         _insert(CHAT, 5, _line({"txt": "hi"}))),
    _bad("mixed-chat-then-text", 5, None, "mixed_formats", _insert(CHAT, 5, _line({"text": "hi"}))),
    # -- never a silent drop: fields ftserve cannot use, images
    _bad("unknown-top-level-field", 3, "category", "unknown_field",
         _insert(CHAT, 3, _chat(U, A, category="chitchat"))),
    _bad("unknown-message-field", 3, "messages[1].score", "unknown_field",
         _insert(CHAT, 3, _chat(U, {**A, "score": 5}))),
    _bad("llamafactory-images", 2, "images", "unsupported_modality",
         _insert(CHAT, 2, _chat({"role": "user", "content": "<image>What is it?"}, A, images=["cat.png"]))),
    _bad("image-url-content-part", 2, "messages[0].content[1].type", "unsupported_modality",
         _insert(CHAT, 2, _chat({"role": "user", "content": [
             {"type": "text", "text": "What is it?"},
             {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}, A))),
    _bad("sharegpt-function-call-not-json", 4, "conversations[1].value", "invalid_value",
         _insert(SHAREGPT, 4, _line({"conversations": [
             {"from": "human", "value": "hi"}, {"from": "function_call", "value": "weather(Paris)"}]}))),
    # -- a JSON array in a file that is not named .json: one error, not one per line
    _bad("json-array-in-a-jsonl-file", 1, None, "json_array",
         b"[\n" + b",\n".join(x.rstrip(b"\n") for x in _lines(CHAT)) + b"\n]\n"),
    _bad("one-line-json-array-in-a-jsonl-file", 1, None, "json_array",
         b"[" + b",".join(x.rstrip(b"\n") for x in _lines(CHAT)) + b"]"),
    # -- assistant turns
    _bad("no-assistant-turn", 3, "messages", "missing_assistant_message", _insert(CHAT, 3, _chat(S, U))),
    _bad("all-assistant-turns-weight-0", 3, "messages", "missing_assistant_message",
         _insert(CHAT, 3, _chat(U, {**A, "weight": 0}, U, {**A, "weight": 0.0}))),
    _bad("sharegpt-no-gpt-turn", 2, "conversations", "missing_assistant_message",
         _insert(SHAREGPT, 2, _line({"conversations": [{"from": "human", "value": "hi"}]}))),
    # -- roles
    _bad("unknown-role", 7, "messages[1].role", "unknown_role",
         _insert(CHAT, 7, _chat(U, {"role": "robot", "content": "beep"}, A))),
    _bad("missing-role", 7, "messages[1].role", "missing_field",
         _insert(CHAT, 7, _chat(U, {"content": "beep"}, A))),
    # -- weights
    _bad("weight-2", 2, "messages[3].weight", "invalid_weight",
         _insert(CHAT, 2, _chat(U, A, U, {**A, "weight": 2}))),
    _bad("weight-string-1", 2, "messages[1].weight", "invalid_weight",
         _insert(CHAT, 2, _chat(U, {**A, "weight": "1"}))),
    _bad("weight-true", 2, "messages[1].weight", "invalid_weight",
         _insert(CHAT, 2, _chat(U, {**A, "weight": True}))),
    # -- wrong types
    _bad("messages-not-a-list", 10, "messages", "wrong_type", _insert(CHAT, 10, _line({"messages": "hi"}))),
    _bad("content-an-int", 10, "messages[1].content", "wrong_type",
         _insert(CHAT, 10, _chat(U, {"role": "assistant", "content": 5}))),
    _bad("role-an-int", 10, "messages[0].role", "wrong_type",
         _insert(CHAT, 10, _chat({"role": 1, "content": "hi"}, A))),
    _bad("tools-not-a-list", 10, "tools", "wrong_type",
         _insert(CHAT, 10, _chat(U, A, tools={"type": "function"}))),
    _bad("prompt-an-int-on-first-line", 1, "prompt", "wrong_type",
         _insert(PC, 1, _line({"prompt": 5, "completion": "x"}))),
    _bad("preferred-output-not-a-list", 5, "preferred_output", "wrong_type",
         _insert(PREF, 5, _line({**PREF_ROW, "preferred_output": {"role": "assistant", "content": "y"}}))),
    # -- missing fields
    _bad("preference-without-non-preferred-output", 11, "non_preferred_output", "missing_field",
         _insert(PREF, 11, _line(NO_NON_PREFERRED))),
    _bad("alpaca-without-output", 3, "output", "missing_field",
         _insert(ALPACA, 3, _line({"instruction": "Say hi"}))),
    _bad("sharegpt-unknown-from", 4, "conversations[1].from", "unknown_role",
         _insert(SHAREGPT, 4, _line(BAD_FROM))),
    # -- line numbering: blank lines count, CRLF, BOM, no final newline, the first of several bad lines
    _bad("numbering-counts-blank-lines", 6, None, "not_an_object",
         _insert(CHAT, 4, b"\n", b"   \t\r\n", b"[1, 2]")),
    _bad("numbering-crlf-file", 5, None, "not_an_object", _insert(CHAT, 5, b"[]").replace(b"\n", b"\r\n")),
    _bad("numbering-bom-then-bad-first-line", 1, None, "not_an_object", BOM + _insert(CHAT, 1, b"42")),
    _bad("numbering-bad-last-line-no-newline", 13, None, "invalid_json", CHAT + b'{"messages": ['),
    _bad("numbering-first-of-several-bad-lines", 2, "messages", "missing_assistant_message",
         _insert(_insert(CHAT, 2, _chat(U)), 9, b"7")),
]
# fmt: on


def _assert_rejected(
    client: TestClient, key: str, resp: Response, line: int, field: str | None, code: str
) -> dict[str, Any]:
    """The whole documented answer to a malformed training file. Returns the validation report."""
    assert resp.status_code == 400, resp.text
    assert resp.headers.get("x-should-retry") == "false"
    error = resp.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "file"
    assert error["code"] == "invalid_file"
    message = error["message"]
    where = f"line {line}" if line else "file"
    prefix = f"Invalid training file: {where}: {field}: " if field else f"Invalid training file: {where}: "
    assert message.startswith(prefix), (prefix, message)
    file_id = error["file_id"]
    assert isinstance(file_id, str) and file_id.startswith("file-")
    assert f"GET /v1/files/{file_id}/validation" in message

    report_resp = client.get(f"/v1/files/{file_id}/validation", headers=_auth(key))
    assert report_resp.status_code == 200, report_resp.text
    report = report_resp.json()
    assert report["file_id"] == file_id
    assert report["status"] == "error"
    assert report["error_count"] >= 1 and report["errors"]
    first = report["errors"][0]
    assert (first["line"], first["field"], first["code"]) == (line, field, code), first
    assert first["message"] in message

    meta = client.get(f"/v1/files/{file_id}", headers=_auth(key))
    assert meta.status_code == 200, meta.text
    assert meta.json()["status"] == "error"
    assert first["message"] in meta.json()["status_details"]

    content = client.get(f"/v1/files/{file_id}/content", headers=_auth(key))
    assert 400 <= content.status_code < 500, content.status_code
    assert set(content.json()["error"]) >= {"message", "type", "param", "code"}
    return report


@pytest.mark.parametrize(("data", "line", "field", "code"), REJECTED)
def test_malformed_file_gets_documented_400(
    client: TestClient, org_a_key: str, data: bytes, line: int, field: str | None, code: str
) -> None:
    resp = _upload(client, org_a_key, data)
    _assert_rejected(client, org_a_key, resp, line, field, code)


def test_report_lists_every_bad_line_in_order(client: TestClient, org_a_key: str) -> None:
    data = _insert(_insert(_insert(CHAT, 2, b"[]"), 7, _chat(U)), 11, b"nope")
    resp = _upload(client, org_a_key, data)
    report = _assert_rejected(client, org_a_key, resp, 2, None, "not_an_object")
    assert report["error_count"] == 3
    assert [(e["line"], e["code"]) for e in report["errors"]] == [
        (2, "not_an_object"),
        (7, "missing_assistant_message"),
        (11, "invalid_json"),
    ]
    assert "(and 2 more errors)" in resp.json()["error"]["message"]


# ------------------------------------------------------------------------------------- over-long lines


@pytest.fixture(scope="module")
def ten_mb_line() -> bytes:
    """One valid chat example, 10 MB long (over the default 8 MiB max_line_bytes), without its newline."""
    head = b'{"messages": [{"role": "user", "content": "'
    tail = b'"}, {"role": "assistant", "content": "ok"}]}'
    return head + b"x" * (10 * 1000 * 1000 - len(head) - len(tail)) + tail


@pytest.mark.parametrize("where", ["middle", "last-without-newline"])
def test_10mb_single_line_is_line_too_long(
    client: TestClient, settings: Settings, org_a_key: str, ten_mb_line: bytes, where: str
) -> None:
    assert len(ten_mb_line) > settings.max_line_bytes == 8 * MIB
    if where == "middle":
        data, line = _insert(CHAT, 2, ten_mb_line), 2
    else:
        data, line = CHAT + ten_mb_line, 13
    resp = _upload(client, org_a_key, data)
    _assert_rejected(client, org_a_key, resp, line, None, "line_too_long")
    assert f"longer than {8 * MIB} bytes" in resp.json()["error"]["message"]


def _chat_line_of(n: int) -> bytes:
    """A valid chat line of exactly `n` bytes, newline not counted."""
    base = _chat(U, {"role": "assistant", "content": ""}).rstrip(b"\n")
    return base.replace(b'"content": ""}', b'"content": "' + b"y" * (n - len(base)) + b'"}')


def test_line_over_configured_max_line_bytes(limited_client: TestClient, org_a_key: str) -> None:
    long_line = _chat_line_of(1025)
    assert len(long_line) == 1025
    resp = _upload(limited_client, org_a_key, _insert(CHAT, 4, long_line))
    _assert_rejected(limited_client, org_a_key, resp, 4, None, "line_too_long")
    assert "longer than 1024 bytes" in resp.json()["error"]["message"]


def test_line_of_exactly_max_line_bytes_is_accepted(limited_client: TestClient, org_a_key: str) -> None:
    data = _insert(CHAT, 4, _chat_line_of(1024))
    resp = _upload(limited_client, org_a_key, data)
    assert resp.status_code == 200, resp.text
    assert resp.json()["example_count"] == 13


# ---------------------------------------------------------------------------------- accepted edge cases


ACCEPTED = [
    pytest.param(BOM + CHAT, 12, id="utf8-bom"),
    pytest.param(CHAT.replace(b"\n", b"\r\n"), 12, id="crlf-line-endings"),
    pytest.param(CHAT + b"\n\n   \n\t\r\n", 12, id="trailing-blank-lines"),
    pytest.param(CHAT.rstrip(b"\n"), 12, id="no-final-newline"),
    pytest.param(_insert(CHAT, 5, b"\n", b"  \t \n", b"\r\n"), 12, id="blank-lines-in-the-middle"),
    pytest.param(BOM + CHAT.replace(b"\n", b"\r\n").rstrip(b"\r\n"), 12, id="bom-crlf-no-final-newline"),
    pytest.param(chat_jsonl(10), 10, id="exactly-min-examples"),
]


@pytest.mark.parametrize(("data", "count"), ACCEPTED)
def test_accepted_edge_case(client: TestClient, org_a_key: str, data: bytes, count: int) -> None:
    resp = _upload(client, org_a_key, data)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "processed"
    assert body["data_format"] == "chat"
    assert body["example_count"] == count
    assert body["bytes"] == len(data)
    content = client.get(f"/v1/files/{body['id']}/content", headers=_auth(org_a_key))
    assert content.status_code == 200 and content.content == data


def _json_array(data: bytes, indent: bool = True) -> bytes:
    """The JSON Lines `data` as one JSON array, pretty-printed (as LLaMA-Factory and axolotl ship data) or not."""
    objs = [json.loads(x) for x in _lines(data)]
    return json.dumps(objs, indent=2 if indent else None, ensure_ascii=False).encode()


@pytest.mark.parametrize("indent", [True, False], ids=["pretty", "one-line"])
def test_json_array_in_a_json_file_is_stored_as_json_lines(
    client: TestClient, org_a_key: str, indent: bool
) -> None:
    data = BOM + _json_array(CHAT, indent)
    resp = client.post(
        "/v1/files",
        headers=_auth(org_a_key),
        data={"purpose": "fine-tune"},
        files={"file": ("train.json", data)},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["status"], body["data_format"], body["example_count"]) == ("processed", "chat", 12)
    assert body["filename"] == "train.json" and body["bytes"] == len(data)
    # Stored as JSON Lines, element N on line N: what the worker and the token counter read.
    content = client.get(f"/v1/files/{body['id']}/content", headers=_auth(org_a_key))
    assert content.status_code == 200
    assert [json.loads(x) for x in content.content.splitlines()] == [json.loads(x) for x in _lines(CHAT)]


def test_bad_element_of_a_json_array_is_named_by_its_number(client: TestClient, org_a_key: str) -> None:
    objs = [json.loads(x) for x in _lines(CHAT)]
    objs[4] = {"messages": [U, {**A, "weight": 2}]}
    data = json.dumps(objs, indent=1).encode()
    resp = client.post(
        "/v1/files", headers=_auth(org_a_key), data={"purpose": "fine-tune"}, files={"file": ("d.json", data)}
    )
    assert resp.status_code == 400, resp.text
    message = resp.json()["error"]["message"]
    assert message.startswith(
        "Invalid training file: element 5: messages[1].weight: weight must be 0 or 1, got 2."
    )
    report = client.get(
        f"/v1/files/{resp.json()['error']['file_id']}/validation", headers=_auth(org_a_key)
    ).json()
    assert [(e["line"], e["code"]) for e in report["errors"]] == [(5, "invalid_weight")]


def test_validation_report_has_the_layout_and_the_ignored_fields(client: TestClient, org_a_key: str) -> None:
    rows = [
        {
            "id": f"row-{i}",
            "prompt": f"Say {i}",
            "chosen": f"{i}",
            "rejected": f"not {i}",
            "score_chosen": 9.5,
        }
        for i in range(12)
    ]
    resp = _upload(client, org_a_key, b"".join(_line(r) for r in rows))
    assert resp.status_code == 200, resp.text
    assert resp.json()["data_format"] == "preference"
    report = client.get(f"/v1/files/{resp.json()['id']}/validation", headers=_auth(org_a_key)).json()
    assert report["layout"] == "trl_preference" and report["errors"] == []
    assert [(w["field"], w["code"], w["line"], w["count"]) for w in report["warnings"]] == [
        ("id", "ignored_field", 1, 12),
        ("score_chosen", "ignored_field", 1, 12),
    ]
    assert report["warnings"][0]["message"].startswith("id: ignored, training does not use it")


def test_too_few_examples_says_how_many_and_why(client: TestClient, org_a_key: str) -> None:
    resp = _upload(client, org_a_key, chat_jsonl(3))
    assert resp.status_code == 400, resp.text
    message = resp.json()["error"]["message"]
    assert "the file has 3 valid examples; at least 10 are required, because" in message
    # The report's address is its own sentence, not glued to the error.
    assert ". Full report: GET /v1/files/" in message


# ---------------------------------------------------------------------------------- request-level input

BOUNDARY = "ftserveBadInputBoundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def _field_part(name: str, value: bytes) -> bytes:
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"


def _file_part(data: bytes, filename: bytes = b"train.jsonl") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="'.encode()
        + filename
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + data
        + b"\r\n"
    )


END = f"--{BOUNDARY}--\r\n".encode()


def _post_raw(client: TestClient, key: str, body: bytes, content_type: str = MULTIPART) -> Response:
    return client.post("/v1/files", headers={**_auth(key), "content-type": content_type}, content=body)


def _assert_request_error(
    client: TestClient, key: str, resp: Response, status: int, param: str, before: set[str]
) -> None:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert "file_id" not in error
    # A request rejected as a whole leaves no file behind.
    assert _file_ids(client, key) == before


def _file_ids(client: TestClient, key: str) -> set[str]:
    resp = client.get("/v1/files", headers=_auth(key))
    assert resp.status_code == 200, resp.text
    return {f["id"] for f in resp.json()["data"]}


RequestCase = Callable[[TestClient, str], Response]


def _req(case_id: str, param: str, send: RequestCase) -> Any:
    return pytest.param(send, param, id=case_id)


def _raw(body: bytes, content_type: str = MULTIPART) -> RequestCase:
    return lambda c, k: _post_raw(c, k, body, content_type)


def _form(**form: str) -> RequestCase:
    return lambda c, k: _upload(c, k, CHAT, **form)


def _expires(seconds: str) -> RequestCase:
    return _form(**{"expires_after[anchor]": "created_at", "expires_after[seconds]": seconds})


PURPOSE = _field_part("purpose", b"fine-tune")
HUGE_HEADER = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"{"x" * 100_000}\r\n\r\n'.encode()
)

# fmt: off
REQUEST_CASES = [
    _req("purpose-missing", "purpose",
         lambda c, k: c.post("/v1/files", headers=_auth(k), files={"file": ("t.jsonl", CHAT)})),
    _req("purpose-batch", "purpose", _form(purpose="batch")),
    _req("purpose-empty", "purpose", _form(purpose="")),
    _req("purpose-batch-after-the-file-part", "purpose",
         _raw(_file_part(CHAT) + _field_part("purpose", b"batch") + END)),
    _req("oversized-form-field", "purpose",
         _raw(_field_part("purpose", b"fine-tune" * 10_000) + _file_part(CHAT) + END)),
    _req("no-file-part", "file",
         lambda c, k: c.post("/v1/files", headers=_auth(k), data={"purpose": "fine-tune"},
                             files={"x": ("x.jsonl", CHAT)})),
    _req("only-purpose-field", "file", _raw(PURPOSE + END)),
    _req("two-file-parts", "file", _raw(PURPOSE + _file_part(CHAT) + _file_part(CHAT) + END)),
    _req("json-body-not-multipart", "file",
         lambda c, k: c.post("/v1/files", headers=_auth(k), json={"purpose": "fine-tune", "file": "x"})),
    _req("no-body-no-content-type", "file", lambda c, k: c.post("/v1/files", headers=_auth(k))),
    _req("multipart-without-boundary", "file", _raw(b"", content_type="multipart/form-data")),
    _req("garbage-multipart-body", "file", _raw(b"\x00\xffgarbage\r\n\r\n--")),
    _req("garbage-part-headers", "file", _raw(f"--{BOUNDARY}\r\ngarbage\r\n\r\n\x00".encode())),
    _req("oversized-part-header", "file", _raw(HUGE_HEADER)),
    _req("multipart-missing-closing-boundary", "file",
         _raw(PURPOSE + _file_part(chat_jsonl(11))[:-2])),
    _req("expires-after-seconds-too-small", "expires_after.seconds", _expires("10")),
    _req("expires-after-seconds-too-large", "expires_after.seconds", _expires("2592001")),
    _req("expires-after-seconds-negative", "expires_after.seconds", _expires("-1")),
    _req("expires-after-seconds-not-a-number", "expires_after.seconds", _expires("1h")),
    _req("expires-after-seconds-unicode-digit", "expires_after.seconds",
         _expires("3600\u00b2")),
    _req("expires-after-anchor-missing", "expires_after.anchor", _form(**{"expires_after[seconds]": "3600"})),
    _req("expires-after-anchor-wrong", "expires_after.anchor",
         _form(**{"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"})),
]
# fmt: on


@pytest.mark.parametrize(("send", "param"), REQUEST_CASES)
def test_bad_request_gets_400_envelope(
    client: TestClient, org_a_key: str, send: RequestCase, param: str
) -> None:
    before = _file_ids(client, org_a_key)
    _assert_request_error(client, org_a_key, send(client, org_a_key), 400, param, before)


def test_body_over_max_upload_bytes_with_content_length_is_413(
    limited_client: TestClient, org_a_key: str
) -> None:
    data = chat_jsonl(1200)  # ~200 KB: over 100_000 plus the 64 KiB allowance for form fields
    assert len(data) > 100_000 + 64 * 1024
    before = _file_ids(limited_client, org_a_key)
    resp = _upload(limited_client, org_a_key, data)
    _assert_request_error(limited_client, org_a_key, resp, 413, "file", before)
    assert resp.json()["error"]["code"] == "payload_too_large"


def test_body_over_max_upload_bytes_chunked_is_413(limited_client: TestClient, org_a_key: str) -> None:
    """No Content-Length (chunked): the limit is enforced on the bytes as they stream in."""
    data = chat_jsonl(700)  # ~120 KB: over the limit, but under the Content-Length pre-check's allowance
    assert 100_000 < len(data) < 100_000 + 64 * 1024
    body = _field_part("purpose", b"fine-tune") + _file_part(data) + END

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 16 * 1024):
            yield body[i : i + 16 * 1024]

    before = _file_ids(limited_client, org_a_key)
    resp = limited_client.post(
        "/v1/files", headers={**_auth(org_a_key), "content-type": MULTIPART}, content=chunks()
    )
    _assert_request_error(limited_client, org_a_key, resp, 413, "file", before)
    assert resp.json()["error"]["code"] == "payload_too_large"


def test_nul_byte_in_filename_is_not_5xx(client: TestClient, org_a_key: str) -> None:
    resp = _post_raw(client, org_a_key, PURPOSE + _file_part(CHAT, filename=b"a\x00b.jsonl") + END)
    assert resp.status_code < 500, resp.text
    assert resp.status_code == 200, resp.text
    assert resp.json()["filename"] == "ab.jsonl"


# ------------------------------------------------------------------------------- a 200 MB valid upload


def _write_big_file(path: Path, min_bytes: int) -> int:
    """Write a valid chat file of at least `min_bytes` from a repeated ~1 MiB block. Returns its line count."""
    pad = "z" * 900
    block_lines = []
    for i in range(1000):
        example = chat_example(i)
        example["messages"][1]["content"] += " " + pad  # type: ignore[index]
        block_lines.append(json.dumps(example).encode() + b"\n")
    block = b"".join(block_lines)
    repeats = -(-min_bytes // len(block))
    with path.open("wb") as f:
        for _ in range(repeats):
            f.write(block)
    return repeats * len(block_lines)


def _vm_hwm_bytes(pid: int) -> int | None:
    """The process's peak resident set size (Linux), or None where /proc does not say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@pytest.fixture
def api_process(tmp_path: Path) -> Iterator[tuple[str, str, int]]:
    """`ftserve api` on a free port over SQLite and local storage in tmp_path: (base URL, key, pid)."""
    data_dir = tmp_path / "data"
    key = make_key(Settings(data_dir=data_dir, database_url=None, storage_url=None), "org-big")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTSERVE_")}
    env.update({"FTSERVE_DATA_DIR": str(data_dir), "FTSERVE_LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1"})
    log = (tmp_path / "api.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "api", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ftserve api did not start:\n" + (tmp_path / "api.log").read_text())
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield base, key, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
def test_200mb_valid_file_streams_through_a_real_server(
    tmp_path: Path, api_process: tuple[str, str, int]
) -> None:
    """SQLite only (this is about streaming and storage, not the database). The file is generated on disk and
    sent from it in 1 MiB chunks with a Content-Length; neither side holds it whole."""
    base, key, pid = api_process
    path = tmp_path / "big.jsonl"
    lines = _write_big_file(path, 200 * 1000 * 1000)
    size = path.stat().st_size
    assert size >= 200 * 1000 * 1000

    head = _field_part("purpose", b"fine-tune") + _file_part(b"", filename=b"big.jsonl")[: -len(b"\r\n")]
    tail = b"\r\n" + END

    def body() -> Iterator[bytes]:
        yield head
        with path.open("rb") as f:
            while chunk := f.read(MIB):
                yield chunk
        yield tail

    headers = {**_auth(key), "content-type": MULTIPART, "content-length": str(len(head) + size + len(tail))}
    resp = httpx.post(f"{base}/v1/files", headers=headers, content=body(), timeout=300)
    assert resp.status_code == 200, resp.text
    file_object = resp.json()
    assert file_object["status"] == "processed"
    assert file_object["data_format"] == "chat"
    assert file_object["example_count"] == lines
    assert file_object["bytes"] == size
    assert file_object["filename"] == "big.jsonl"

    again = httpx.get(f"{base}/v1/files/{file_object['id']}", headers=_auth(key), timeout=30).json()
    assert again["bytes"] == size and again["example_count"] == lines and again["status"] == "processed"

    # What was stored is the file, byte for byte (streamed back and hashed on both sides).
    expected, stored = hashlib.sha256(), hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            expected.update(chunk)
    url = f"{base}/v1/files/{file_object['id']}/content"
    with httpx.stream("GET", url, headers=_auth(key), timeout=120) as content:
        assert content.status_code == 200
        for chunk in content.iter_bytes(MIB):
            stored.update(chunk)
    assert stored.hexdigest() == expected.hexdigest()

    peak = _vm_hwm_bytes(pid)
    if peak is not None:
        # About 95 MiB when streaming; a server that buffered the upload would peak above baseline + 200 MB.
        assert peak < 160 * MIB, f"the API server's peak RSS was {peak / MIB:.0f} MiB"
