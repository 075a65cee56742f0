"""Streaming validation and normalisation of fine-tuning JSONL uploads.

Pure Python (stdlib + orjson). The API feeds an upload to :class:`StreamingValidator` in byte chunks of any
size (a boundary may fall anywhere, even inside a UTF-8 character or a CRLF) and gets back a
:class:`ValidationReport`. Memory stays flat: the validator holds at most one partial line (capped at
``max_line_bytes``) plus the chunk being processed. :meth:`StreamingValidator.feed` and
:meth:`StreamingValidator.finish` never raise, whatever the bytes; the report is the same however the input
is chunked.

Formats (one JSON object per line; :func:`detect_format` tells them apart by their keys):

- ``chat`` (OpenAI supervised): ``{"messages": [...], "tools"?: [...], "parallel_tool_calls"?: bool}``.
  Roles: system, developer (system-like; kept, the worker renders it as vLLM does), user, assistant, tool.
  Content is a string or a list of ``{"type": "text", "text": str}`` parts (joined with "\\n", as vLLM
  does). An assistant message may carry ``tool_calls`` instead of content, and ``weight`` 0 or 1 (an int,
  or a float equal to 0 or 1; not a bool). At least one assistant message must be trainable (weight absent
  or 1).
- ``prompt_completion`` (legacy): ``{"prompt": str, "completion": str}``.
- ``preference`` (DPO): ``{"input": {"messages": [...], "tools"?: [...]}, "preferred_output": [msg],
  "non_preferred_output": [msg]}``, each output a list of exactly one assistant message with text
  content. The SPEC aliases ``preferred_completion`` / ``non_preferred_completion`` are accepted (the
  canonical key wins if both are present).
- ``sharegpt``: ``{"conversations": [{"from": ..., "value": str}, ...], "system"?: str}``; ``from`` is one
  of human/user, gpt/assistant, system, function_call (an assistant turn whose text is the call),
  tool/observation (a tool result). At least one assistant turn.
- ``alpaca``: ``{"instruction": str, "input"?: str, "output": str, "system"?: str,
  "history"?: [[user, assistant], ...]}``.

Rules, applied consistently:

- The first *valid* line fixes the file's format. A later line whose keys say another format gets one
  ``mixed_formats`` error; a later line whose keys match no format is checked against the file's format
  (so it gets e.g. ``missing_field`` for ``messages``). Before any line is valid, such a line is
  ``unknown_format``.
- Unknown keys are ignored everywhere (top level, inside messages, tools and content parts). A *known* key
  with the wrong type or value is an error. ``null`` for an optional key means "absent". Content that is
  ``null`` counts as missing, except for an assistant message that has ``tool_calls``.
- Each bad line gets exactly one error: the first problem found on it. ``errors`` keeps the first
  ``max_errors``; ``error_count`` counts them all.
- Line numbers are 1-based physical lines (blank lines count for numbering, not for ``line_count``). A line
  is blank when it holds only spaces, tabs and CRs. A UTF-8 BOM is allowed at the very start of the file.
- A line's length is its bytes up to (not including) the ``\\n``, so a CR and a first-line BOM count. A
  line longer than ``max_line_bytes`` gets one ``line_too_long`` error; its bytes are discarded as they
  arrive, without being buffered.
- :meth:`StreamingValidator.finish` records file-level problems with ``line=0``: ``empty_file`` (no
  non-blank line) or ``too_few_examples`` (fewer than ``min_examples`` valid lines). ``report.ok`` is
  therefore simply "no errors".

Error codes: invalid_utf8, invalid_json, not_an_object, line_too_long, unknown_format, mixed_formats,
missing_field, wrong_type, empty_messages, unknown_role, wrong_role, missing_content,
invalid_content_part, invalid_weight, invalid_value, wrong_length, missing_assistant_message, empty_file,
too_few_examples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

__all__ = [
    "FORMATS",
    "LineError",
    "StreamingValidator",
    "ValidationReport",
    "detect_format",
    "normalize_example",
    "validate_bytes",
]

FORMATS = ("chat", "prompt_completion", "preference", "sharegpt", "alpaca")

_BOM = b"\xef\xbb\xbf"
_BLANK = b" \t\r"
_ROLE_LIST = "system, developer, user, assistant or tool"
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
}
_SHAREGPT_ROLE_LIST = "human, user, gpt, assistant, system, function_call, tool or observation"
_PREF_KEYS = (
    ("preferred_output", "preferred_completion"),
    ("non_preferred_output", "non_preferred_completion"),
)

# (field path or None, code, detail). The message is "line N: <field>: <detail>".
_Err = tuple[str | None, str, str]

_HAS_ASSISTANT = 1
_HAS_TRAINABLE = 2

# Sentinels of StreamingValidator._parse_slow.
_BLANK_LINE = object()
_BAD_LINE = object()


@dataclass
class LineError:
    line: int
    field: str | None
    code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ValidationReport:
    data_format: str | None
    example_count: int
    line_count: int
    errors: list[LineError] = field(default_factory=list)
    error_count: int = 0
    bytes: int = 0
    longest_example_bytes: int = 0  # the longest valid example's line: an upper bound of its tokens

    @property
    def ok(self) -> bool:
        # finish() records too_few_examples / empty_file as errors, so "no errors" covers min_examples.
        return self.error_count == 0

    def summary(self) -> str:
        if self.error_count == 0:
            fmt = self.data_format or "unknown"
            return (
                f"valid {fmt} training file: {self.example_count} examples "
                f"on {self.line_count} lines ({self.bytes} bytes)"
            )
        if not self.errors:
            return f"invalid training file: {self.error_count} errors"
        first = self.errors[0].message
        more = self.error_count - 1
        if more == 0:
            return first
        return f"{first} (and {more} more error{'s' if more > 1 else ''})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_format": self.data_format,
            "example_count": self.example_count,
            "line_count": self.line_count,
            "errors": [e.to_dict() for e in self.errors],
            "error_count": self.error_count,
            "bytes": self.bytes,
            "longest_example_bytes": self.longest_example_bytes,
            "ok": self.ok,
        }


# --------------------------------------------------------------------------------------------- helpers


def _kind(v: Any) -> str:
    """A short, safe description of a JSON value's type (never repr of arbitrary, maybe deep, values)."""
    if v is None:
        return "null"
    t = type(v)
    if t is str:
        return "a string"
    if t is bool:
        return "a boolean"
    if t is int or t is float:
        return "a number"
    if t is list:
        return "a list"
    if t is dict:
        return "an object"
    return t.__name__


def _show(s: str) -> str:
    if len(s) > 40:
        s = s[:37] + "..."
    return repr(s)


def _wrong(path: str, expected: str, v: Any) -> _Err:
    return (path, "wrong_type", f"expected {expected}, got {_kind(v)}")


def _check_parts(content: list[Any], path: str) -> _Err | None:
    for j, part in enumerate(content):
        if type(part) is not dict:
            return _wrong(f"{path}[{j}]", "a content part object", part)
        ptype = part.get("type")
        if ptype != "text":
            if ptype is None:
                return (f"{path}[{j}].type", "missing_field", "content part has no 'type'")
            if type(ptype) is not str:
                return _wrong(f"{path}[{j}].type", "a string", ptype)
            return (
                f"{path}[{j}].type",
                "invalid_content_part",
                f"unsupported content part type {_show(ptype)} (only 'text' is supported)",
            )
        text = part.get("text")
        if type(text) is not str:
            if text is None:
                return (f"{path}[{j}].text", "missing_field", "text content part has no 'text'")
            return _wrong(f"{path}[{j}].text", "a string", text)
    return None


def _check_content(content: Any, path: str) -> _Err | None:
    """Content that is not a str: a list of text parts, or an error."""
    if content is None:
        return (path, "missing_content", "content is missing or null")
    if type(content) is list:
        return _check_parts(content, path)
    return _wrong(path, "a string or a list of text parts", content)


def _check_tool_calls(calls: Any, path: str) -> _Err | None:
    if type(calls) is not list:
        return _wrong(path, "a list of tool calls", calls)
    for j, call in enumerate(calls):
        p = f"{path}[{j}]"
        if type(call) is not dict:
            return _wrong(p, "a tool call object", call)
        cid = call.get("id")
        if cid is not None and type(cid) is not str:
            return _wrong(f"{p}.id", "a string", cid)
        ctype = call.get("type")
        if ctype is not None and ctype != "function":
            if type(ctype) is not str:
                return _wrong(f"{p}.type", "a string", ctype)
            return (f"{p}.type", "invalid_value", f"tool call type must be 'function', got {_show(ctype)}")
        fn = call.get("function")
        if type(fn) is not dict:
            if fn is None:
                return (f"{p}.function", "missing_field", "tool call has no 'function'")
            return _wrong(f"{p}.function", "an object", fn)
        name = fn.get("name")
        if type(name) is not str:
            if name is None:
                return (f"{p}.function.name", "missing_field", "tool call function has no 'name'")
            return _wrong(f"{p}.function.name", "a string", name)
        args = fn.get("arguments")
        if type(args) is not str and type(args) is not dict:
            if args is None:
                return (f"{p}.function.arguments", "missing_field", "tool call function has no 'arguments'")
            return _wrong(f"{p}.function.arguments", "a JSON string or an object", args)
    return None


def _check_tools(tools: Any, path: str) -> _Err | None:
    if type(tools) is not list:
        return _wrong(path, "a list of tools", tools)
    for j, tool in enumerate(tools):
        p = f"{path}[{j}]"
        if type(tool) is not dict:
            return _wrong(p, "a tool object", tool)
        ttype = tool.get("type")
        if ttype is not None and ttype != "function":
            if type(ttype) is not str:
                return _wrong(f"{p}.type", "a string", ttype)
            return (f"{p}.type", "invalid_value", f"tool type must be 'function', got {_show(ttype)}")
        fn = tool.get("function")
        if type(fn) is not dict:
            if fn is None:
                return (f"{p}.function", "missing_field", "tool has no 'function'")
            return _wrong(f"{p}.function", "an object", fn)
        name = fn.get("name")
        if type(name) is not str:
            if name is None:
                return (f"{p}.function.name", "missing_field", "tool function has no 'name'")
            return _wrong(f"{p}.function.name", "a string", name)
        desc = fn.get("description")
        if desc is not None and type(desc) is not str:
            return _wrong(f"{p}.function.description", "a string", desc)
        params = fn.get("parameters")
        if params is not None and type(params) is not dict:
            return _wrong(f"{p}.function.parameters", "a JSON schema object", params)
    return None


def _check_weight(w: Any, path: str) -> _Err | None:
    t = type(w)
    if (t is int or t is float) and (w == 0 or w == 1):
        return None
    if t is str:
        shown = _show(w)
    elif t is int or t is float:
        shown = repr(w)
    else:
        shown = _kind(w)
    return (path, "invalid_weight", f"weight must be 0 or 1, got {shown}")


def _bad_role(role: Any, path: str) -> _Err:
    if role is None:
        return (f"{path}.role", "missing_field", "message has no 'role'")
    if type(role) is not str:
        return _wrong(f"{path}.role", "a string", role)
    return (f"{path}.role", "unknown_role", f"unknown role {_show(role)} (expected {_ROLE_LIST})")


def _check_message(m: dict[str, Any], role: Any, content: Any, path: str) -> _Err | int:
    """One message, in full (the fast path in _check_messages handles plain {role, content: str}).
    Returns the error, or the assistant flags (0 for other roles)."""
    if role == "assistant":
        if content is None:
            calls = m.get("tool_calls")
            if calls is None or (type(calls) is list and not calls):
                return (
                    f"{path}.content",
                    "missing_content",
                    "assistant message has neither content nor tool_calls",
                )
        elif type(content) is not str:
            err = _check_content(content, f"{path}.content")
            if err is not None:
                return err
    elif role == "user" or role == "system" or role == "tool" or role == "developer":
        if type(content) is not str:
            err = _check_content(content, f"{path}.content")
            if err is not None:
                return err
    else:
        return _bad_role(role, path)
    name = m.get("name")
    if name is not None and type(name) is not str:
        return _wrong(f"{path}.name", "a string", name)
    w = m.get("weight")
    if w is not None:
        err = _check_weight(w, f"{path}.weight")
        if err is not None:
            return err
    if role == "assistant":
        calls = m.get("tool_calls")
        if calls is not None:
            err = _check_tool_calls(calls, f"{path}.tool_calls")
            if err is not None:
                return err
        return _HAS_ASSISTANT | _HAS_TRAINABLE if w is None or w == 1 else _HAS_ASSISTANT
    tcid = m.get("tool_call_id")
    if tcid is not None and type(tcid) is not str:
        return _wrong(f"{path}.tool_call_id", "a string", tcid)
    return 0


def _check_messages(msgs: Any, path: str) -> _Err | int:
    """A list of chat messages. Returns the first error, or the OR of the per-message assistant flags."""
    if type(msgs) is not list:
        if msgs is None:
            return (path, "missing_field", f"'{path}' is missing")
        return _wrong(path, "a list of messages", msgs)
    if not msgs:
        return (path, "empty_messages", "the list of messages is empty")
    flags = 0
    i = -1
    for m in msgs:
        i += 1
        if type(m) is not dict:
            return _wrong(f"{path}[{i}]", "a message object", m)
        role = m.get("role")
        content = m.get("content")
        if type(content) is str and len(m) == 2:  # the hot path: exactly {role, content: str}
            if role == "assistant":
                flags = _HAS_ASSISTANT | _HAS_TRAINABLE
                continue
            if role == "user" or role == "system" or role == "tool" or role == "developer":
                continue
            return _bad_role(role, f"{path}[{i}]")
        res = _check_message(m, role, content, f"{path}[{i}]")
        if isinstance(res, tuple):
            return res
        flags |= res
    return flags


def _check_output(val: Any, key: str) -> _Err | None:
    """A DPO preferred/non-preferred output: a list of exactly one assistant message with text content."""
    if type(val) is not list:
        return _wrong(key, "a list holding one assistant message", val)
    if len(val) != 1:
        return (key, "wrong_length", f"expected exactly one assistant message, got {len(val)}")
    m = val[0]
    path = f"{key}[0]"
    if type(m) is not dict:
        return _wrong(path, "a message object", m)
    role = m.get("role")
    if role != "assistant":
        if role is None:
            return (f"{path}.role", "missing_field", "message has no 'role'")
        if type(role) is not str:
            return _wrong(f"{path}.role", "a string", role)
        return (f"{path}.role", "wrong_role", f"expected role 'assistant', got {_show(role)}")
    content = m.get("content")
    if type(content) is not str:
        err = _check_content(content, f"{path}.content")
        if err is not None:
            return err
    if len(m) > 2:
        name = m.get("name")
        if name is not None and type(name) is not str:
            return _wrong(f"{path}.name", "a string", name)
    return None


# ------------------------------------------------------------------------------------ per-format checks


def _check_chat(obj: dict[str, Any]) -> _Err | None:
    res = _check_messages(obj.get("messages"), "messages")
    if isinstance(res, tuple):
        return res
    if not res & _HAS_TRAINABLE:
        if res & _HAS_ASSISTANT:
            detail = "every assistant message has weight 0; at least one must be trained on"
        else:
            detail = "no assistant message; at least one is required"
        return ("messages", "missing_assistant_message", detail)
    if len(obj) > 1:
        tools = obj.get("tools")
        if tools is not None:
            err = _check_tools(tools, "tools")
            if err is not None:
                return err
        ptc = obj.get("parallel_tool_calls")
        if ptc is not None and type(ptc) is not bool:
            return _wrong("parallel_tool_calls", "a boolean", ptc)
    return None


def _check_prompt_completion(obj: dict[str, Any]) -> _Err | None:
    for key in ("prompt", "completion"):
        v = obj.get(key)
        if type(v) is not str:
            if v is None:
                return (key, "missing_field", f"'{key}' is missing")
            return _wrong(key, "a string", v)
    return None


def _check_preference(obj: dict[str, Any]) -> _Err | None:
    inp = obj.get("input")
    if type(inp) is not dict:
        if inp is None:
            return ("input", "missing_field", "'input' is missing")
        return _wrong("input", "an object with 'messages'", inp)
    res = _check_messages(inp.get("messages"), "input.messages")
    if isinstance(res, tuple):
        return res
    tools = inp.get("tools")
    if tools is not None:
        err = _check_tools(tools, "input.tools")
        if err is not None:
            return err
    ptc = inp.get("parallel_tool_calls")
    if ptc is not None and type(ptc) is not bool:
        return _wrong("input.parallel_tool_calls", "a boolean", ptc)
    for key, alias in _PREF_KEYS:
        name = key if obj.get(key) is not None else alias if obj.get(alias) is not None else None
        if name is None:
            return (key, "missing_field", f"'{key}' is missing")
        err = _check_output(obj[name], name)
        if err is not None:
            return err
    return None


def _check_sharegpt(obj: dict[str, Any]) -> _Err | None:
    convs = obj.get("conversations")
    if type(convs) is not list:
        if convs is None:
            return ("conversations", "missing_field", "'conversations' is missing")
        return _wrong("conversations", "a list of turns", convs)
    if not convs:
        return ("conversations", "empty_messages", "the list of turns is empty")
    has_assistant = False
    for i, turn in enumerate(convs):
        path = f"conversations[{i}]"
        if type(turn) is not dict:
            return _wrong(path, "a turn object", turn)
        frm = turn.get("from")
        if type(frm) is not str:
            if frm is None:
                return (f"{path}.from", "missing_field", "turn has no 'from'")
            return _wrong(f"{path}.from", "a string", frm)
        role = _SHAREGPT_ROLES.get(frm)
        if role is None:
            return (
                f"{path}.from",
                "unknown_role",
                f"unknown speaker {_show(frm)} (expected {_SHAREGPT_ROLE_LIST})",
            )
        if role == "assistant":
            has_assistant = True
        value = turn.get("value")
        if type(value) is not str:
            if value is None:
                return (f"{path}.value", "missing_field", "turn has no 'value'")
            return _wrong(f"{path}.value", "a string", value)
    system = obj.get("system")
    if system is not None and type(system) is not str:
        return _wrong("system", "a string", system)
    if not has_assistant:
        return (
            "conversations",
            "missing_assistant_message",
            "no gpt/assistant turn; at least one is required",
        )
    return None


def _check_alpaca(obj: dict[str, Any]) -> _Err | None:
    for key in ("instruction", "output"):
        v = obj.get(key)
        if type(v) is not str:
            if v is None:
                return (key, "missing_field", f"'{key}' is missing")
            return _wrong(key, "a string", v)
    for key in ("input", "system"):
        v = obj.get(key)
        if v is not None and type(v) is not str:
            return _wrong(key, "a string", v)
    history = obj.get("history")
    if history is not None:
        if type(history) is not list:
            return _wrong("history", "a list of [instruction, output] pairs", history)
        for i, pair in enumerate(history):
            if type(pair) is not list or len(pair) != 2:
                return _wrong(f"history[{i}]", "an [instruction, output] pair of strings", pair)
            for j in (0, 1):
                if type(pair[j]) is not str:
                    return _wrong(f"history[{i}][{j}]", "a string", pair[j])
    return None


_CHECKS = {
    "chat": _check_chat,
    "prompt_completion": _check_prompt_completion,
    "preference": _check_preference,
    "sharegpt": _check_sharegpt,
    "alpaca": _check_alpaca,
}


def detect_format(obj: dict[str, Any]) -> str | None:
    """The format a line's keys claim, whether or not the line is valid in it; None if no format fits."""
    if type(obj) is not dict:
        return None
    if "messages" in obj:
        return "chat"
    for key, alias in _PREF_KEYS:
        if key in obj or alias in obj:
            return "preference"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj:
        return "alpaca"
    if "prompt" in obj or "completion" in obj:
        return "prompt_completion"
    if "input" in obj:
        return "preference" if type(obj["input"]) is dict else "alpaca"
    if "output" in obj:
        return "alpaca"
    return None


# ----------------------------------------------------------------------------------------- validator


class StreamingValidator:
    """Validates a JSONL upload fed in arbitrary byte chunks. Never raises from feed() or finish()."""

    def __init__(
        self, *, max_line_bytes: int = 8 * 1024 * 1024, min_examples: int = 10, max_errors: int = 100
    ) -> None:
        self.max_line_bytes = max_line_bytes
        self.min_examples = min_examples
        self.max_errors = max_errors
        self._pending = bytearray()  # the current, incomplete line
        self._skipping = False  # inside an over-long line: discard until the next newline
        self._lineno = 0  # number of completed physical lines
        self._bytes = 0
        self._line_count = 0
        self._examples = 0
        self._longest = 0  # bytes of the longest valid example line
        self._errors: list[LineError] = []
        self._error_count = 0
        self._format: str | None = None
        self._format_line = 0
        self._finished: ValidationReport | None = None

    # -- errors

    def _error(self, line: int, fieldname: str | None, code: str, detail: str) -> None:
        self._error_count += 1
        if len(self._errors) < self.max_errors:
            where = f"line {line}" if line else "file"
            msg = f"{where}: {fieldname}: {detail}" if fieldname else f"{where}: {detail}"
            self._errors.append(LineError(line, fieldname, code, msg))

    def _too_long(self, line: int) -> None:
        self._line_count += 1
        self._error(line, None, "line_too_long", f"line is longer than {self.max_line_bytes} bytes")

    # -- feeding

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        try:
            self._feed(chunk)
        except Exception as exc:  # noqa: BLE001 (a bug guard: the API relies on feed() not raising)  # pragma: no cover
            self._pending = bytearray()
            self._skipping = True
            self._error(self._lineno + 1, None, "internal_error", f"validator error: {type(exc).__name__}")

    def _feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if not chunk or self._finished is not None:
            return
        if type(chunk) is not bytes:  # bytearray, memoryview
            chunk = bytes(chunk)
        self._bytes += len(chunk)
        if self._skipping:
            nl = chunk.find(b"\n")
            if nl < 0:
                return
            self._skipping = False
            self._lineno += 1
            chunk = chunk[nl + 1 :]
            if not chunk:
                return
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if self._pending:
            if not lines:
                if len(self._pending) + len(tail) > self.max_line_bytes:
                    self._start_skipping()
                else:
                    self._pending += tail
                return
            self._pending += lines[0]
            lines[0] = bytes(self._pending)
            self._pending = bytearray()
        if lines:
            self._process(lines)
        if tail:
            if len(tail) > self.max_line_bytes:
                self._start_skipping()
            else:
                self._pending = bytearray(tail)

    def _start_skipping(self) -> None:
        self._pending = bytearray()
        self._skipping = True
        self._too_long(self._lineno + 1)

    def _process(self, lines: list[bytes]) -> None:
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        max_len = self.max_line_bytes
        lineno = self._lineno
        fmt = self._format
        check = _CHECKS[fmt] if fmt is not None else None
        examples = 0
        counted = 0
        longest = self._longest
        try:
            for line in lines:
                lineno += 1
                if len(line) > max_len:
                    self._too_long(lineno)
                    continue
                try:
                    obj = loads(line)
                except decode_error:
                    obj = self._parse_slow(line, lineno)
                    if obj is _BLANK_LINE:
                        continue
                    if obj is _BAD_LINE:
                        counted += 1
                        continue
                counted += 1
                if type(obj) is not dict:
                    self._error(lineno, None, "not_an_object", f"expected a JSON object, got {_kind(obj)}")
                    continue
                if fmt == "chat" and "messages" in obj:
                    err = _check_chat(obj)
                else:
                    line_fmt = detect_format(obj)
                    if check is None:
                        if line_fmt is None:
                            self._error(
                                lineno,
                                None,
                                "unknown_format",
                                "not a known training format (expected keys 'messages'; "
                                "'prompt' and 'completion'; 'input', 'preferred_output' and "
                                "'non_preferred_output'; 'conversations'; or 'instruction' and 'output')",
                            )
                            continue
                        err = _CHECKS[line_fmt](obj)
                        if err is None:
                            fmt = self._format = line_fmt
                            self._format_line = lineno
                            check = _CHECKS[fmt]
                    elif line_fmt is not None and line_fmt != fmt:
                        self._error(
                            lineno,
                            None,
                            "mixed_formats",
                            f"line is in {line_fmt} format but the file is in {fmt} format "
                            f"(set by line {self._format_line})",
                        )
                        continue
                    else:
                        err = check(obj)
                if err is None:
                    examples += 1
                    if len(line) > longest:
                        longest = len(line)
                else:
                    self._error(lineno, err[0], err[1], err[2])
        finally:
            self._lineno = lineno
            self._examples += examples
            self._line_count += counted
            self._longest = longest

    def _parse_slow(self, line: bytes, lineno: int) -> Any:
        """The failing path of orjson.loads: a blank line, a first-line BOM, invalid UTF-8 or invalid JSON.
        Returns the parsed value, _BLANK_LINE, or _BAD_LINE after recording the line's error."""
        if not line.strip(_BLANK):
            return _BLANK_LINE
        if lineno == 1 and line.startswith(_BOM):
            line = line[3:]
            if not line.strip(_BLANK):
                return _BLANK_LINE
            try:
                return orjson.loads(line)
            except orjson.JSONDecodeError:
                pass
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._error(
                lineno, None, "invalid_utf8", f"not valid UTF-8 (at byte {exc.start + 1} of the line)"
            )
            return _BAD_LINE
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            self._error(lineno, None, "invalid_json", f"invalid JSON: {exc}")
        return _BAD_LINE

    def finish(self) -> ValidationReport:
        if self._finished is not None:
            return self._finished
        try:
            if self._skipping:
                self._lineno += 1
            elif self._pending:
                last = bytes(self._pending)
                self._pending = bytearray()
                self._process([last])
            self._skipping = False
            if self._line_count == 0:
                self._error(0, None, "empty_file", "the file has no examples")
            elif self._examples < self.min_examples:
                self._error(
                    0,
                    None,
                    "too_few_examples",
                    f"the file has {self._examples} valid example{'s' if self._examples != 1 else ''}; "
                    f"at least {self.min_examples} are required",
                )
        except Exception as exc:  # noqa: BLE001 (a bug guard: finish() must return a report)  # pragma: no cover
            self._error(self._lineno, None, "internal_error", f"validator error: {type(exc).__name__}")
        self._finished = ValidationReport(
            data_format=self._format,
            example_count=self._examples,
            line_count=self._line_count,
            errors=self._errors,
            error_count=self._error_count,
            bytes=self._bytes,
            longest_example_bytes=self._longest,
        )
        return self._finished


def validate_bytes(data: bytes, **kw: Any) -> ValidationReport:
    """Validate a whole upload held in memory (tests, small files)."""
    v = StreamingValidator(**kw)
    v.feed(data)
    return v.finish()


# ------------------------------------------------------------------------------------- normalisation


# vLLM's chat completions drop the first line of a system text part that starts with this (Claude Code's
# per-request attribution header, which would defeat the prefix cache).
_BILLING_HEADER = "x-anthropic-billing-header"


def _flatten(content: Any, role: str = "user") -> str:
    """Message content as vLLM's chat completions hand it to a template that takes string content
    (``_parse_chat_message_content`` and ``_parse_chat_message_content_parts`` in vllm/renderers/chat_utils.py):
    a string is one text part, a system message's parts lose a leading Claude Code billing header line
    (``_strip_claude_code_billing_header``), empty parts are dropped, and the rest are joined with "\\n" whatever
    the role; null is ""."""
    if type(content) is str:
        texts = [content]
    elif type(content) is list:
        texts = [p["text"] for p in content]
    else:
        return ""
    kept = []
    for text in texts:
        if role == "system" and text.startswith(_BILLING_HEADER):
            text = text.partition("\n")[2]
        if text:
            kept.append(text)
    return "\n".join(kept)


def _norm_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for j, call in enumerate(calls):
        fn = call["function"]
        args = fn["arguments"]
        if type(args) is not str:
            args = orjson.dumps(args).decode()
        cid = call.get("id")
        out.append(
            {
                "id": cid if type(cid) is str else f"call_{j}",
                "type": "function",
                "function": {"name": fn["name"], "arguments": args},
            }
        )
    return out


def _norm_messages(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in msgs:
        role = m["role"]
        # developer stays developer: vLLM keeps it for a template that names the role and otherwise turns it
        # into system and merges the system messages, which depends on the template (the worker's job).
        nm: dict[str, Any] = {"role": role, "content": _flatten(m.get("content"), role)}
        name = m.get("name")
        if type(name) is str:
            nm["name"] = name
        if role == "assistant":
            calls = m.get("tool_calls")
            if calls:
                nm["tool_calls"] = _norm_tool_calls(calls)
            w = m.get("weight")
            if w is not None:
                nm["weight"] = int(w)
        elif role == "tool":
            tcid = m.get("tool_call_id")
            if type(tcid) is str:
                nm["tool_call_id"] = tcid
        out.append(nm)
    return out


def normalize_example(obj: dict[str, Any], data_format: str) -> dict[str, Any]:
    """The canonical form of one *valid* example (validate it first; invalid input may raise).

    - chat: ``{"messages": [...], "tools"?: [...]}``; content becomes the string vLLM's chat completions give a
      template (text parts joined with "\\n", see :func:`_flatten`), assistant content is "" when it has only
      tool_calls, developer stays developer (``core.chat_messages.served_messages`` renders it as vLLM does),
      tool-call arguments given as objects become JSON strings, weight becomes an int, unknown keys are dropped.
    - sharegpt, alpaca: chat ``messages`` plus ``"original"``: the input object.
    - prompt_completion: ``{"prompt", "completion"}``.
    - preference: ``{"input": {"messages", "tools"?, "parallel_tool_calls"?}, "preferred_output": [msg],
      "non_preferred_output": [msg]}`` with the ``_completion`` aliases resolved.
    """
    if data_format == "chat":
        out: dict[str, Any] = {"messages": _norm_messages(obj["messages"])}
        if obj.get("tools") is not None:
            out["tools"] = obj["tools"]
        return out
    if data_format == "prompt_completion":
        return {"prompt": obj["prompt"], "completion": obj["completion"]}
    if data_format == "preference":
        inp = obj["input"]
        ninp: dict[str, Any] = {"messages": _norm_messages(inp["messages"])}
        if inp.get("tools") is not None:
            ninp["tools"] = inp["tools"]
        if inp.get("parallel_tool_calls") is not None:
            ninp["parallel_tool_calls"] = inp["parallel_tool_calls"]
        out = {"input": ninp}
        for key, alias in _PREF_KEYS:
            val = obj.get(key)
            if val is None:
                val = obj[alias]
            out[key] = [{"role": "assistant", "content": _flatten(val[0].get("content"))}]
        return out
    if data_format == "sharegpt":
        msgs: list[dict[str, Any]] = []
        system = obj.get("system")
        if system:
            msgs.append({"role": "system", "content": _flatten(system, "system")})
        for turn in obj["conversations"]:
            role = _SHAREGPT_ROLES[turn["from"]]
            msgs.append({"role": role, "content": _flatten(turn["value"], role)})
        return {"messages": msgs, "original": obj}
    if data_format == "alpaca":
        msgs = []
        system = obj.get("system")
        if system:
            msgs.append({"role": "system", "content": _flatten(system, "system")})
        for q, a in obj.get("history") or ():
            msgs.append({"role": "user", "content": q})
            msgs.append({"role": "assistant", "content": a})
        prompt = obj["instruction"]
        extra = obj.get("input")
        if extra:
            prompt = f"{prompt}\n\n{extra}" if prompt else extra
        msgs.append({"role": "user", "content": prompt})
        msgs.append({"role": "assistant", "content": obj["output"]})
        return {"messages": msgs, "original": obj}
    raise ValueError(f"unknown data format {data_format!r} (expected one of {', '.join(FORMATS)})")
