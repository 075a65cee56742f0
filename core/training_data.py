"""Streaming validation and normalisation of fine-tuning uploads: JSON Lines, or a JSON array in a .json file.

Pure Python (stdlib + orjson). The API feeds an upload to :class:`StreamingValidator` in byte chunks of any
size (a boundary may fall anywhere, even inside a UTF-8 character or a CRLF) and gets back a
:class:`ValidationReport`. Memory stays flat: the validator holds at most one partial line or array element
(capped at ``max_line_bytes``) plus the chunk being processed. :meth:`StreamingValidator.feed` and
:meth:`StreamingValidator.finish` never raise, whatever the bytes; the report is the same however the input
is chunked. docs/data.md is the user's guide to what follows.

Formats and layouts. A *format* is what the worker trains (``data_format`` on the file): chat,
prompt_completion, preference, sharegpt, alpaca and kto (``FORMATS_FOR_METHOD`` says which methods train
each). A *layout* is the shape a line came in (``LAYOUTS``); :func:`detect_layout` tells them apart by content
(keys, and whether a value is a string or a list), and :func:`normalize_example` maps every layout of a format
to one canonical form:

- chat: ``openai_chat`` ``{"messages": [...], "tools"?, "parallel_tool_calls"?}``, with OpenAI's legacy
  ``functions`` / ``function_call`` / role ``function`` (mapped to tools, tool_calls and role tool), axolotl's
  per-message ``train`` flags (``weight``), and ``reasoning_content`` on assistant messages (kept: the chat
  template renders it or the worker refuses the line); ``trl_conversational_prompt_completion``
  ``{"prompt": [msgs], "completion": [msgs]}`` (the prompt's assistant messages are not trained).
- prompt_completion: ``{"prompt": str, "completion": str}``; ``text`` ``{"text": str}`` (continued
  pretraining: an empty prompt, every token trained).
- preference (DPO, ORPO, SimPO): ``openai_preference`` ``{"input": {"messages", "tools"?}, "preferred_output": [msg],
  "non_preferred_output": [msg]}`` (or the ``_completion`` aliases); TRL's ``{"prompt"?, "chosen",
  "rejected", "system"?}`` as strings (``trl_preference``) or message lists (``trl_conversational_preference``,
  the prompt may be implicit: the messages chosen and rejected share); LLaMA-Factory's
  ``{"conversations", "chosen": turn, "rejected": turn}`` (``sharegpt_preference``) and ``{"instruction",
  "input"?, "chosen": str, "rejected": str}`` (``alpaca_preference``); axolotl's ``{"messages", "chosen": msg,
  "rejected": msg}`` (``messages_preference``). Each answer is one assistant message with text content.
- sharegpt: ``{"conversations": [{"from", "value"} or {"role", "content"}, ...], "system"?, "tools"?}``;
  ``from`` is human/user, gpt/assistant, system, function_call (a tool call: the value is a JSON object
  ``{"name", "arguments"}`` or a list of them), tool/observation (its result). ``tools`` is a list or a JSON
  string of OpenAI tools or bare function definitions. Turns may carry ``train``/``weight``.
- alpaca: ``{"instruction", "input"?, "output" (or axolotl's "response"), "system"?, "history"?}``.
- reinforcement: ``openai_reinforcement`` ``{"messages": [...], "tools"?, <any other fields>}`` whose last message
  is not the assistant's: the prompt the model answers while it trains (GRPO), plus the fields a grader
  references as ``{{ item.<field> }}`` (kept as they are; the job checks that they are there). Only method
  reinforcement trains it (:func:`format_refusal`). In a chat file, such a line is still a chat line
  missing its assistant message.
- kto: TRL's ``{"prompt", "completion", "label": bool}`` and LLaMA-Factory's ``{"messages" or
  "conversations", "kto_tag": bool}``: unpaired good/bad answers, which only method kto trains
  (:func:`format_refusal`), never SFT.

Rules, applied consistently:

- Never a silent drop. A field ftserve cannot use makes the line an ``unknown_field`` error naming it; images,
  videos and audio (LLaMA-Factory's ``images``, ``image_url`` content parts, ...) are ``unsupported_modality``
  ("this model is text-only"). Only a few known, harmless top-level fields (``_HARMLESS``: ids, sources,
  metadata, DPO scores, and ``parallel_tool_calls``, which matters only when serving) are accepted, and
  listed in ``report.warnings`` as ignored. ``null`` for an optional key means "absent". Inside ``tools`` the
  keys vLLM's request model knows are kept and others dropped, as vLLM drops them when serving.
- The first *valid* line fixes the file's format and layout. A later line whose keys say another format gets
  one ``mixed_formats`` error (another layout of the same format is fine); a later line whose keys match no
  format is checked against the file's layout (so it gets e.g. ``missing_field`` for ``messages``). Before any
  line is valid, such a line is ``unknown_format``.
- A *known* key with the wrong type or value is an error. Content that is ``null`` counts as missing, except
  for an assistant message that has ``tool_calls`` (or a legacy ``function_call``).
- Each bad line gets exactly one error: the first problem found on it. ``errors`` keeps the first
  ``max_errors``; ``error_count`` counts them all.
- Line numbers are 1-based physical lines (blank lines count for numbering, not for ``line_count``). A line
  is blank when it holds only spaces, tabs and CRs. A UTF-8 BOM is allowed at the very start of the file.
- A line's length is its bytes up to (not including) the ``\\n``, so a CR and a first-line BOM count. A
  line longer than ``max_line_bytes`` gets one ``line_too_long`` error; its bytes are discarded as they
  arrive, without being buffered.
- JSON arrays. A file named ``*.json`` whose content starts with ``[`` is a JSON array of examples, split into
  its elements as it streams (``element N`` replaces ``line N`` in errors). :meth:`StreamingValidator.feed`
  returns the bytes to store: for an array, each element as one compact JSON line, so the stored file is
  JSON Lines whose line N is element N and everything downstream (the worker, token counts) reads JSONL. Any
  other file whose first line starts with ``[`` gets one ``json_array`` error saying so, not an error per
  line.
- :meth:`StreamingValidator.finish` records file-level problems with ``line=0``: ``empty_file`` (no
  non-blank line) or ``too_few_examples`` (fewer than ``min_examples`` valid lines). ``report.ok`` is
  therefore simply "no errors".

Error codes: invalid_utf8, invalid_json, json_array, not_an_object, line_too_long, unknown_format,
mixed_formats, missing_field, wrong_type, unknown_field, unsupported_modality, empty_messages, unknown_role,
wrong_role, missing_content, invalid_content_part, invalid_weight, invalid_value, wrong_length,
missing_assistant_message, empty_file, too_few_examples. Warning code: ignored_field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

__all__ = [
    "FORMATS",
    "FORMATS_FOR_METHOD",
    "LAYOUTS",
    "LineError",
    "StreamingValidator",
    "ValidationReport",
    "ValidationWarning",
    "detect_format",
    "detect_layout",
    "format_refusal",
    "normalize_example",
    "validate_bytes",
]

FORMATS = ("chat", "prompt_completion", "preference", "sharegpt", "alpaca", "kto", "reinforcement")

# Which formats each training method trains on.
FORMATS_FOR_METHOD: dict[str, frozenset[str]] = {
    "supervised": frozenset({"chat", "prompt_completion", "sharegpt", "alpaca"}),
    "dpo": frozenset({"preference"}),
    "kto": frozenset({"kto"}),
    "orpo": frozenset({"preference"}),
    "simpo": frozenset({"preference"}),
    "reinforcement": frozenset({"reinforcement"}),
}
_PAIRED_METHODS = "'dpo', 'orpo' or 'simpo'"  # the methods that train preference data

# layout -> (format, what a person calls it). docs/data.md has an example of each.
LAYOUTS: dict[str, tuple[str, str]] = {
    "openai_chat": ("chat", "OpenAI chat: messages"),
    "trl_conversational_prompt_completion": (
        "chat",
        "TRL conversational prompt-completion: prompt and completion as message lists",
    ),
    "prompt_completion": ("prompt_completion", "prompt and completion strings"),
    "text": ("prompt_completion", "plain text for continued pretraining: text"),
    "openai_preference": ("preference", "OpenAI preference: input, preferred_output, non_preferred_output"),
    "trl_preference": ("preference", "TRL preference: prompt, chosen and rejected as strings"),
    "trl_conversational_preference": (
        "preference",
        "TRL conversational preference: prompt, chosen and rejected as message lists",
    ),
    "sharegpt_preference": (
        "preference",
        "LLaMA-Factory ShareGPT preference: conversations, chosen, rejected",
    ),
    "alpaca_preference": ("preference", "LLaMA-Factory Alpaca preference: instruction, chosen, rejected"),
    "messages_preference": ("preference", "axolotl chat_template preference: messages, chosen, rejected"),
    "sharegpt": ("sharegpt", "ShareGPT: conversations"),
    "alpaca": ("alpaca", "Alpaca: instruction, input, output"),
    "trl_kto": ("kto", "TRL unpaired preference (KTO): prompt, completion, label"),
    "messages_kto": ("kto", "LLaMA-Factory KTO: messages, kto_tag"),
    "sharegpt_kto": ("kto", "LLaMA-Factory KTO: conversations, kto_tag"),
    "openai_reinforcement": (
        "reinforcement",
        "OpenAI reinforcement: messages ending before the answer, plus the fields graders reference",
    ),
}

# Top-level keys each layout uses. Any other (non-null) key is an error, but for _HARMLESS ones.
_KEYS: dict[str, frozenset[str]] = {
    "openai_chat": frozenset({"messages", "tools", "functions", "parallel_tool_calls"}),
    "trl_conversational_prompt_completion": frozenset({"prompt", "completion", "tools"}),
    "prompt_completion": frozenset({"prompt", "completion"}),
    "text": frozenset({"text"}),
    "openai_preference": frozenset(
        {
            "input",
            "preferred_output",
            "non_preferred_output",
            "preferred_completion",
            "non_preferred_completion",
        }
    ),
    "trl_preference": frozenset({"prompt", "chosen", "rejected", "system", "tools"}),
    "trl_conversational_preference": frozenset({"prompt", "chosen", "rejected", "system", "tools"}),
    "sharegpt_preference": frozenset({"conversations", "chosen", "rejected", "system", "tools"}),
    "alpaca_preference": frozenset({"instruction", "input", "chosen", "rejected", "system", "history"}),
    "messages_preference": frozenset({"messages", "chosen", "rejected", "tools"}),
    "sharegpt": frozenset({"conversations", "system", "tools"}),
    "alpaca": frozenset({"instruction", "input", "output", "response", "system", "history"}),
    "trl_kto": frozenset({"prompt", "completion", "label", "system", "tools"}),
    "messages_kto": frozenset({"messages", "kto_tag", "label", "tools"}),
    "sharegpt_kto": frozenset({"conversations", "kto_tag", "label", "system", "tools"}),
    "openai_reinforcement": frozenset({"messages", "tools", "parallel_tool_calls"}),  # + any grader fields
}

# Known top-level fields that carry nothing to train on: accepted on any layout, listed as ignored in the
# report's warnings. Row identifiers and provenance (HF datasets' id/source columns, UltraFeedback's
# prompt_id), free-form metadata, and the scores DPO data carries (the DPO loss uses only the order).
_HARMLESS = {
    "id": "a row identifier",
    "idx": "a row identifier",
    "uuid": "a row identifier",
    "prompt_id": "a row identifier",
    "source": "where the row comes from",
    "metadata": "metadata",
    "score_chosen": "a score (DPO uses only which answer is preferred)",
    "score_rejected": "a score (DPO uses only which answer is preferred)",
}
# Fields that are part of a format but do not change training: accepted, listed as ignored.
_IGNORED = {"parallel_tool_calls": "it only matters when the model is served"}

# Keys (top level) and content part types that hold images, video or audio.
_MODALITY_KEYS = frozenset({"images", "image", "videos", "video", "audios", "audio"})
_MODALITY_PARTS = frozenset(
    {"image_url", "image", "input_image", "input_audio", "audio", "audio_url", "video", "video_url", "file"}
)
_TEXT_ONLY = "this model is text-only: ftserve cannot fine-tune on images, video or audio yet"

_BOM = b"\xef\xbb\xbf"
_BLANK = b" \t\r"
_WS = b" \t\r\n"
_ROLE_LIST = "system, developer, user, assistant, tool or function"
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
    line: int  # 1-based line (or array element); 0 for the whole file
    field: str | None
    code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ValidationWarning:
    """A known field that training ignores, once per field for the whole file."""

    field: str
    code: str
    line: int  # the first line (or element) that has it
    count: int  # how many valid examples have it
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
    layout: str | None = None  # the first valid example's layout (LAYOUTS)
    warnings: list[ValidationWarning] = field(default_factory=list)
    json_array: bool = False  # the upload was a JSON array (stored as JSON Lines, element N on line N)

    @property
    def ok(self) -> bool:
        # finish() records too_few_examples / empty_file as errors, so "no errors" covers min_examples.
        return self.error_count == 0

    def summary(self) -> str:
        if self.error_count == 0:
            fmt = self.data_format or "unknown"
            unit = "elements of a JSON array" if self.json_array else "lines"
            return (
                f"valid {fmt} training file: {self.example_count} examples "
                f"on {self.line_count} {unit} ({self.bytes} bytes)"
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
            "layout": self.layout,
            "example_count": self.example_count,
            "line_count": self.line_count,
            "errors": [e.to_dict() for e in self.errors],
            "error_count": self.error_count,
            "warnings": [w.to_dict() for w in self.warnings],
            "bytes": self.bytes,
            "longest_example_bytes": self.longest_example_bytes,
            "json_array": self.json_array,
            "ok": self.ok,
        }


def format_refusal(data_format: str | None, layout: str | None, method: str) -> str | None:
    """None when a `method` job (FORMATS_FOR_METHOD) trains on a file of this format; otherwise why not, in a
    sentence that names the layout seen and the method that would use the file."""
    if data_format in FORMATS_FOR_METHOD.get(method, ()):
        return None
    seen = LAYOUTS[layout][1] if layout in LAYOUTS else f"{data_format} data"
    if data_format == "reinforcement":
        return (
            f"it holds prompts without answers ({seen}), which method 'reinforcement' trains on with a "
            "grader. Create a 'reinforcement' job with it, or add the assistant's answers."
        )
    if method == "reinforcement":
        return (
            f"it holds {data_format} data ({seen}); a reinforcement job needs prompts the model answers while "
            "it trains: messages whose last one is not the assistant's, plus the fields the grader references."
        )
    if data_format == "kto":
        return (
            f"it holds KTO data ({seen}): answers labelled desirable or not one at a time, which method 'kto' "
            f"trains on; a {method} job cannot use the labels"
            + (" and would learn the undesirable answers too" if method == "supervised" else "")
            + ". Create a 'kto' job with it."
        )
    if data_format == "preference":
        why = (
            "a supervised job would learn the rejected answers too"
            if method == "supervised"
            else f"a {method} job needs answers labelled one at a time (prompt, completion, label)"
        )
        return (
            f"it holds preference data ({seen}): chosen and rejected answers, which methods {_PAIRED_METHODS} "
            f"train on; {why}. Create a 'dpo' (or 'orpo', 'simpo') job with it."
        )
    if method == "kto":
        return (
            f"it holds {data_format} data ({seen}), which method 'supervised' trains on; a kto job needs answers "
            "labelled desirable or not: prompt, completion and label (or LLaMA-Factory's kto_tag)."
        )
    if method in ("dpo", "orpo", "simpo"):
        return (
            f"it holds {data_format} data ({seen}), which method 'supervised' trains on; a {method} job needs "
            "preference data: a prompt with a chosen and a rejected answer."
        )
    return f"it holds {data_format} data ({seen}), which a {method} job cannot train on."


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


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _extra_keys(
    obj: dict[str, Any],
    allowed: frozenset[str],
    path: str = "",
    what: str = "",
    shown: frozenset[str] | None = None,
) -> _Err | None:
    """The first non-null key of `obj` that is neither in `allowed` nor (at the top level) harmless. `shown`: the
    keys to name as expected, when not all of `allowed`."""
    if obj.keys() <= allowed:
        return None
    for key, value in obj.items():
        if key in allowed or value is None or (not path and (key in _HARMLESS or key in _IGNORED)):
            continue
        where = _join(path, key)
        if key in _MODALITY_KEYS:
            return (
                where,
                "unsupported_modality",
                f"{_TEXT_ONLY} (remove {key!r}, or the examples that use it)",
            )
        expected = ", ".join(sorted(allowed if shown is None else shown))
        return (
            where,
            "unknown_field",
            f"unknown field {_show(key)}: ftserve would not train on it, and does not drop data silently; "
            f"remove it ({what or 'this layout'} uses {expected})",
        )
    return None


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
            if ptype in _MODALITY_PARTS:
                return (f"{path}[{j}].type", "unsupported_modality", f"{_TEXT_ONLY} (a {_show(ptype)} part)")
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
        if len(part) > 2:
            err = _extra_keys(part, _PART_KEYS, f"{path}[{j}]", "a text part")
            if err is not None:
                return err
    return None


_PART_KEYS = frozenset({"type", "text"})


def _check_content(content: Any, path: str) -> _Err | None:
    """Content that is not a str: a list of text parts, or an error."""
    if content is None:
        return (path, "missing_content", "content is missing or null")
    if type(content) is list:
        return _check_parts(content, path)
    return _wrong(path, "a string or a list of text parts", content)


def _check_function(fn: Any, p: str, what: str) -> _Err | None:
    """A called function: {"name": str, "arguments": JSON string or object}."""
    if type(fn) is not dict:
        if fn is None:
            return (p, "missing_field", f"{what} has no 'function'")
        return _wrong(p, "an object", fn)
    name = fn.get("name")
    if type(name) is not str:
        if name is None:
            return (f"{p}.name", "missing_field", f"{what} function has no 'name'")
        return _wrong(f"{p}.name", "a string", name)
    args = fn.get("arguments")
    if type(args) is not str and type(args) is not dict:
        if args is None:
            return (f"{p}.arguments", "missing_field", f"{what} function has no 'arguments'")
        return _wrong(f"{p}.arguments", "a JSON string or an object", args)
    return None


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
        err = _check_function(call.get("function"), f"{p}.function", "tool call")
        if err is not None:
            return err
    return None


def _check_tool_function(fn: Any, p: str, what: str) -> _Err | None:
    """A declared function: {"name": str, "description"?: str, "parameters"?: object}."""
    if type(fn) is not dict:
        if fn is None:
            return (p, "missing_field", f"{what} has no 'function'")
        return _wrong(p, "an object", fn)
    name = fn.get("name")
    if type(name) is not str:
        if name is None:
            return (f"{p}.name", "missing_field", f"{what} function has no 'name'")
        return _wrong(f"{p}.name", "a string", name)
    desc = fn.get("description")
    if desc is not None and type(desc) is not str:
        return _wrong(f"{p}.description", "a string", desc)
    params = fn.get("parameters")
    if params is not None and type(params) is not dict:
        return _wrong(f"{p}.parameters", "a JSON schema object", params)
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
        err = _check_tool_function(tool.get("function"), f"{p}.function", "tool")
        if err is not None:
            return err
    return None


def _check_functions(functions: Any, path: str) -> _Err | None:
    """OpenAI's legacy `functions`: a list of function definitions (each becomes a tool)."""
    if type(functions) is not list:
        return _wrong(path, "a list of function definitions", functions)
    for j, fn in enumerate(functions):
        err = _check_tool_function(fn, f"{path}[{j}]", "function")
        if err is not None:
            return err
    return None


def _loose_tools(tools: Any, path: str) -> _Err | list[dict[str, Any]]:
    """LLaMA-Factory's `tools`: a list, or a JSON string of one, of OpenAI tools or bare function definitions.
    Returns them as OpenAI tools."""
    if type(tools) is str:
        try:
            tools = orjson.loads(tools)
        except orjson.JSONDecodeError:
            return (path, "invalid_value", "tools is a string but not a JSON list of tools")
        if type(tools) is dict:
            tools = [tools]
    if type(tools) is not list:
        return _wrong(path, "a list of tools (or a JSON string of one)", tools)
    out = []
    for j, tool in enumerate(tools):
        p = f"{path}[{j}]"
        if type(tool) is not dict:
            return _wrong(p, "a tool object", tool)
        if "function" in tool or "type" in tool:
            err = _check_tools([tool], path)
            if err is not None:
                return (err[0].replace(f"{path}[0]", p, 1) if err[0] else err[0], err[1], err[2])
            out.append(tool)
        else:
            err = _check_tool_function(tool, p, "tool")
            if err is not None:
                return err
            out.append({"type": "function", "function": tool})
    return out


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


def _trained(m: dict[str, Any], path: str) -> _Err | int | None:
    """A message's `weight` (OpenAI) or `train` (axolotl) flag: 0, 1, or None when it has neither."""
    w = m.get("weight")
    t = m.get("train")
    if w is not None:
        err = _check_weight(w, f"{path}.weight")
        if err is not None:
            return err
        if t is not None:
            return (f"{path}.train", "invalid_weight", "give weight or train, not both")
        return int(w)
    if t is not None:
        if type(t) is not bool:
            return (f"{path}.train", "invalid_weight", f"train must be true or false, got {_kind(t)}")
        return int(t)
    return None


def _bad_role(role: Any, path: str) -> _Err:
    if role is None:
        return (f"{path}.role", "missing_field", "message has no 'role'")
    if type(role) is not str:
        return _wrong(f"{path}.role", "a string", role)
    return (f"{path}.role", "unknown_role", f"unknown role {_show(role)} (expected {_ROLE_LIST})")


_ASSISTANT_KEYS = frozenset(
    {"role", "content", "name", "weight", "train", "tool_calls", "function_call", "reasoning_content"}
)
_TOOL_KEYS = frozenset({"role", "content", "name", "tool_call_id", "weight", "train"})
_MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "train"})
_FLAGS = frozenset({"weight", "train"})  # allowed on other roles only as 0 / false


def _check_message(m: dict[str, Any], role: Any, content: Any, path: str) -> _Err | int:
    """One message, in full (the fast path in _check_messages handles plain {role, content: str}).
    Returns the error, or the assistant flags (0 for other roles)."""
    if role == "assistant":
        if content is None:
            calls = m.get("tool_calls")
            if (calls is None or (type(calls) is list and not calls)) and m.get("function_call") is None:
                return (
                    f"{path}.content",
                    "missing_content",
                    "assistant message has neither content nor tool_calls",
                )
        elif type(content) is not str:
            err = _check_content(content, f"{path}.content")
            if err is not None:
                return err
    elif role == "user" or role == "system" or role == "tool" or role == "developer" or role == "function":
        if type(content) is not str:
            err = _check_content(content, f"{path}.content")
            if err is not None:
                return err
    else:
        return _bad_role(role, path)
    name = m.get("name")
    if name is not None and type(name) is not str:
        return _wrong(f"{path}.name", "a string", name)
    trained = _trained(m, path)
    if isinstance(trained, tuple):
        return trained
    if role == "assistant":
        calls = m.get("tool_calls")
        if calls is not None:
            err = _check_tool_calls(calls, f"{path}.tool_calls")
            if err is not None:
                return err
        fcall = m.get("function_call")
        if fcall is not None:
            if calls:
                return (
                    f"{path}.function_call",
                    "invalid_value",
                    "give tool_calls or function_call, not both",
                )
            err = _check_function(fcall, f"{path}.function_call", "function_call")
            if err is not None:
                return err
        reasoning = m.get("reasoning_content")
        if reasoning is not None and type(reasoning) is not str:
            return _wrong(f"{path}.reasoning_content", "a string", reasoning)
        err = _extra_keys(m, _ASSISTANT_KEYS, path, "an assistant message")
        if err is not None:
            return err
        return _HAS_ASSISTANT | _HAS_TRAINABLE if trained is None or trained == 1 else _HAS_ASSISTANT
    if role == "function" and name is None:
        return (f"{path}.name", "missing_field", "a function message needs the 'name' of the function")
    allowed = _TOOL_KEYS if role == "tool" else _MESSAGE_KEYS
    err = _extra_keys(m, allowed, path, f"a {role} message", allowed - _FLAGS)
    if err is not None:
        return err
    tcid = m.get("tool_call_id")
    if tcid is not None and type(tcid) is not str:
        return _wrong(f"{path}.tool_call_id", "a string", tcid)
    if trained == 1:
        key = "weight" if m.get("weight") is not None else "train"
        return (
            f"{path}.{key}",
            "invalid_weight",
            f"only assistant messages are trained; a {role} message cannot be (remove {key!r})",
        )
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
        res = _check_message(m, role, content, f"{path}[{i}]")
        if isinstance(res, tuple):
            return res
        flags |= res
    return flags


_OUTPUT_KEYS = frozenset({"role", "content", "name"})


def _check_answer(m: Any, path: str) -> _Err | None:
    """A DPO answer: one assistant message with text content (no tool calls)."""
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
        return _extra_keys(m, _OUTPUT_KEYS, path, "a preference answer")
    return None


def _check_output(val: Any, key: str) -> _Err | None:
    """A DPO preferred/non-preferred output: a list of exactly one assistant message with text content."""
    if type(val) is not list:
        return _wrong(key, "a list holding one assistant message", val)
    if len(val) != 1:
        return (key, "wrong_length", f"expected exactly one assistant message, got {len(val)}")
    return _check_answer(val[0], f"{key}[0]")


# ------------------------------------------------------------------------- layouts: check and extract
#
# Each layout that is not already in canonical form has one function that checks a line *and* extracts what
# it means (OpenAI-shaped messages, not yet normalised): the checker calls it and keeps only the error, the
# normaliser calls it again and keeps the result. Errors name the user's own fields.


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
        functions = obj.get("functions")
        if functions is not None:
            if tools:
                return ("functions", "invalid_value", "give tools or the legacy functions, not both")
            err = _check_functions(functions, "functions")
            if err is not None:
                return err
        ptc = obj.get("parallel_tool_calls")
        if ptc is not None and type(ptc) is not bool:
            return _wrong("parallel_tool_calls", "a boolean", ptc)
        return _extra_keys(obj, _KEYS["openai_chat"], "", "OpenAI chat")
    return None


def _check_reinforcement(obj: dict[str, Any]) -> _Err | None:
    """A prompt for reinforcement training: messages without the answer, tools, and any grader fields."""
    msgs: Any = obj.get("messages")
    res = _check_messages(msgs, "messages")
    if isinstance(res, tuple):
        return res
    last = msgs[-1]  # checked: a non-empty list of messages
    if last.get("role") == "assistant":
        return (
            f"messages[{len(msgs) - 1}].role",
            "wrong_role",
            "the last message is the assistant's; a reinforcement prompt ends before the answer the model samples",
        )
    tools = obj.get("tools")
    if tools is not None:
        err = _check_tools(tools, "tools")
        if err is not None:
            return err
    ptc = obj.get("parallel_tool_calls")
    if ptc is not None and type(ptc) is not bool:
        return _wrong("parallel_tool_calls", "a boolean", ptc)
    for key in obj:
        if key in _MODALITY_KEYS:
            return (key, "unsupported_modality", _TEXT_ONLY)
    return None


def _prompt_only(obj: dict[str, Any]) -> bool:
    """A reinforcement prompt, by its shape: messages without an assistant message, or ending before the
    assistant's answer with fields beside them that chat does not have (a grader's). A chat conversation may
    end with a user or tool message too, so that alone does not say it."""
    msgs = obj.get("messages")
    if (
        type(msgs) is not list
        or not msgs
        or type(msgs[-1]) is not dict
        or msgs[-1].get("role") == "assistant"
    ):
        return False
    if not any(type(m) is dict and m.get("role") == "assistant" for m in msgs):
        return True
    return any(k not in _KEYS["openai_chat"] and k not in _HARMLESS for k in obj)


def _check_conversational_pc(obj: dict[str, Any]) -> _Err | None:
    res = _check_messages(obj.get("prompt"), "prompt")
    if isinstance(res, tuple):
        return res
    res = _check_messages(obj.get("completion"), "completion")
    if isinstance(res, tuple):
        return res
    if not res & _HAS_TRAINABLE:
        return (
            "completion",
            "missing_assistant_message",
            "the completion has no assistant message to train on",
        )
    tools = obj.get("tools")
    if tools is not None:
        err = _check_tools(tools, "tools")
        if err is not None:
            return err
    return _extra_keys(obj, _KEYS["trl_conversational_prompt_completion"], "", "TRL prompt-completion")


def _check_prompt_completion(obj: dict[str, Any]) -> _Err | None:
    for key in ("prompt", "completion"):
        v = obj.get(key)
        if type(v) is not str:
            if v is None:
                return (key, "missing_field", f"'{key}' is missing")
            return _wrong(key, "a string", v)
    if len(obj) > 2:
        return _extra_keys(obj, _KEYS["prompt_completion"], "", "prompt-completion")
    return None


def _check_text(obj: dict[str, Any]) -> _Err | None:
    text = obj.get("text")
    if type(text) is not str:
        if text is None:
            return ("text", "missing_field", "'text' is missing")
        return _wrong("text", "a string", text)
    if not text.strip():
        return ("text", "invalid_value", "the text is empty")
    if len(obj) > 1:
        return _extra_keys(obj, _KEYS["text"], "", "plain text")
    return None


_INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})


def _check_openai_preference(obj: dict[str, Any]) -> _Err | None:
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
    err = _extra_keys(inp, _INPUT_KEYS, "input", "input")
    if err is not None:
        return err
    for key, alias in _PREF_KEYS:
        name = key if obj.get(key) is not None else alias if obj.get(alias) is not None else None
        if name is None:
            return (key, "missing_field", f"'{key}' is missing")
        err = _check_output(obj[name], name)
        if err is not None:
            return err
    return _extra_keys(obj, _KEYS["openai_preference"], "", "OpenAI preference")


def _string_field(obj: dict[str, Any], key: str) -> _Err | str | None:
    v = obj.get(key)
    if v is not None and type(v) is not str:
        return _wrong(key, "a string", v)
    return v


# A preference example, extracted: {"prompt": [msg], "tools": [tool] | None, "chosen": msg, "rejected": msg}.
_Pref = dict[str, Any]


def _pref_trl(obj: dict[str, Any]) -> _Err | _Pref:
    """TRL's prompt/chosen/rejected: strings (standard) or message lists (conversational), the prompt explicit or
    (for message lists) implicit: the messages chosen and rejected start with."""
    system = _string_field(obj, "system")
    if isinstance(system, tuple):
        return system
    chosen: Any = obj.get("chosen")
    rejected: Any = obj.get("rejected")
    for key, v in (("chosen", chosen), ("rejected", rejected)):
        if v is None:
            return (key, "missing_field", f"'{key}' is missing")
        if type(v) is not str and type(v) is not list:
            return _wrong(key, "a string or a list of messages", v)
    if type(chosen) is not type(rejected):
        return (
            "rejected",
            "wrong_type",
            f"chosen is {_kind(chosen)} but rejected is {_kind(rejected)}: give both as strings or both as "
            "message lists",
        )
    prompt = obj.get("prompt")
    prompt_msgs: list[dict[str, Any]] | None
    if prompt is None:
        prompt_msgs = None
    elif type(prompt) is str:
        prompt_msgs = [{"role": "user", "content": prompt}]
    elif type(prompt) is list:
        res = _check_messages(prompt, "prompt")
        if isinstance(res, tuple):
            return res
        prompt_msgs = prompt
    else:
        return _wrong("prompt", "a string or a list of messages", prompt)
    tools = obj.get("tools")
    if tools is not None:
        err = _check_tools(tools, "tools")
        if err is not None:
            return err
    head = [{"role": "system", "content": system}] if system else []
    if type(chosen) is str:
        if prompt_msgs is None:
            return (
                "prompt",
                "missing_field",
                "'prompt' is missing (an implicit prompt works only with chosen and rejected as message lists)",
            )
        answers = [{"role": "assistant", "content": chosen}, {"role": "assistant", "content": rejected}]
    else:
        for key, v in (("chosen", chosen), ("rejected", rejected)):
            res = _check_messages(v, key)
            if isinstance(res, tuple):
                return res
        if chosen == rejected:
            return ("rejected", "invalid_value", "chosen and rejected are the same")
        k, n = 0, min(len(chosen), len(rejected))
        while k < n and chosen[k] == rejected[k]:
            k += 1
        shared = chosen[:k]
        if prompt_msgs is None:
            if not shared:
                return (
                    "prompt",
                    "missing_field",
                    "'prompt' is missing, and chosen and rejected do not start with a shared conversation to "
                    "take it from",
                )
            prompt_msgs = shared
        elif shared and shared != prompt_msgs:
            return (
                "chosen",
                "invalid_value",
                "chosen and rejected start with the same messages, but they are not the prompt: give the answers "
                "alone, or the prompt followed by the answer",
            )
        answers = []
        for key, v in (("chosen", chosen), ("rejected", rejected)):
            tail = v[k:]
            if len(tail) != 1:
                return (
                    key,
                    "wrong_length",
                    f"expected one assistant message after the prompt, got {len(tail)}",
                )
            err = _check_answer(tail[0], f"{key}[{k}]")
            if err is not None:
                return err
            answers.append(tail[0])
    return {"prompt": head + prompt_msgs, "tools": tools, "chosen": answers[0], "rejected": answers[1]}


_TURN_KEYS = {
    "from": frozenset({"from", "value", "train", "weight"}),
    "role": frozenset({"role", "content", "train", "weight"}),
}


def _parse_calls(value: str, path: str) -> _Err | list[dict[str, Any]]:
    """A ShareGPT function_call turn's value: a JSON object {"name", "arguments"}, or a list of them."""
    shape = 'a JSON object {"name": ..., "arguments": ...} (or a list of them)'
    try:
        calls = orjson.loads(value)
    except orjson.JSONDecodeError:
        return (path, "invalid_value", f"a function_call turn holds {shape}; this value is not JSON")
    if type(calls) is dict:
        calls = [calls]
    if type(calls) is not list or not calls:
        return (path, "invalid_value", f"a function_call turn holds {shape}, got {_kind(calls)}")
    for j, call in enumerate(calls):
        err = _check_function(call, f"call {j}", "function_call")
        if err is not None:
            return (path, err[1], f"a function_call turn holds {shape}; {err[0]}: {err[2]}")
    return calls


def _sharegpt_turns(convs: Any, path: str, system: str | None) -> _Err | dict[str, Any]:
    """ShareGPT turns as OpenAI messages ({"messages", "flags": the assistant flags}). Turns are {"from", "value"} (LLaMA-Factory,
    FastChat) or {"role", "content"} (axolotl), with an optional `train`/`weight` flag; function_call turns
    become tool calls and observation/tool turns their results."""
    if type(convs) is not list:
        if convs is None:
            return (path, "missing_field", f"'{path}' is missing")
        return _wrong(path, "a list of turns", convs)
    if not convs:
        return (path, "empty_messages", "the list of turns is empty")
    msgs: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    flags, ncalls = 0, 0
    pending: list[str] = []  # ids of tool calls still waiting for their results
    for i, turn in enumerate(convs):
        p = f"{path}[{i}]"
        if type(turn) is not dict:
            return _wrong(p, "a turn object", turn)
        skey, vkey = ("from", "value") if "from" in turn or "role" not in turn else ("role", "content")
        frm = turn.get(skey)
        if type(frm) is not str:
            if frm is None:
                return (f"{p}.{skey}", "missing_field", f"turn has no '{skey}'")
            return _wrong(f"{p}.{skey}", "a string", frm)
        role = _SHAREGPT_ROLES.get(frm)
        if role is None:
            return (
                f"{p}.{skey}",
                "unknown_role",
                f"unknown speaker {_show(frm)} (expected {_SHAREGPT_ROLE_LIST})",
            )
        value = turn.get(vkey)
        if type(value) is not str:
            if value is None:
                return (f"{p}.{vkey}", "missing_field", f"turn has no '{vkey}'")
            return _wrong(f"{p}.{vkey}", "a string", value)
        trained = _trained(turn, p)
        if isinstance(trained, tuple):
            return trained
        if len(turn) > 2:
            err = _extra_keys(turn, _TURN_KEYS[skey], p, "a ShareGPT turn")
            if err is not None:
                return err
        msg: dict[str, Any]
        if role == "assistant":
            if frm == "function_call":
                calls = _parse_calls(value, f"{p}.{vkey}")
                if isinstance(calls, tuple):
                    return calls
                pending = [f"call_{ncalls + j}" for j in range(len(calls))]
                ncalls += len(calls)
                msg = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": cid,
                            "type": "function",
                            "function": {"name": c["name"], "arguments": c["arguments"]},
                        }
                        for cid, c in zip(pending, calls, strict=True)
                    ],
                }
            else:
                msg = {"role": "assistant", "content": value}
            if trained is not None:
                msg["weight"] = trained
            flags |= _HAS_ASSISTANT | (_HAS_TRAINABLE if trained != 0 else 0)
        else:
            if trained == 1:
                return (
                    f"{p}.{'weight' if turn.get('weight') is not None else 'train'}",
                    "invalid_weight",
                    "only assistant turns are trained",
                )
            msg = {"role": role, "content": value}
            if role == "tool" and pending:
                msg["tool_call_id"] = pending.pop(0)
        msgs.append(msg)
    return {"messages": msgs, "flags": flags}


# A conversation, extracted: {"messages": [msg], "tools": [tool] | None}.
def _sharegpt(obj: dict[str, Any], layout: str = "sharegpt") -> _Err | dict[str, Any]:
    system = _string_field(obj, "system")
    if isinstance(system, tuple):
        return system
    tools = obj.get("tools")
    if tools is not None:
        tools = _loose_tools(tools, "tools")
        if isinstance(tools, tuple):
            return tools
    res = _sharegpt_turns(obj.get("conversations"), "conversations", system)
    if isinstance(res, tuple):
        return res
    msgs, flags = res["messages"], res["flags"]
    if layout == "sharegpt" and not flags & _HAS_TRAINABLE:
        if flags & _HAS_ASSISTANT:
            detail = "every gpt/assistant turn has train false; at least one must be trained on"
        else:
            detail = "no gpt/assistant turn; at least one is required"
        return ("conversations", "missing_assistant_message", detail)
    return {"messages": msgs, "tools": tools, "flags": flags}


def _pref_answer_turn(turn: Any, key: str) -> _Err | dict[str, Any]:
    """LLaMA-Factory's chosen/rejected: one gpt turn."""
    if type(turn) is not dict:
        if turn is None:
            return (key, "missing_field", f"'{key}' is missing")
        return _wrong(key, "a gpt turn object", turn)
    res = _sharegpt_turns([turn], key, None)
    if isinstance(res, tuple):
        return (res[0].replace(f"{key}[0]", key, 1) if res[0] else res[0], res[1], res[2])
    msg: dict[str, Any] = res["messages"][0]
    err = _check_answer(msg, key)
    if err is not None:
        where = err[0] or key
        if "from" in turn:  # name the turn's own keys
            where = where.replace(".role", ".from").replace(".content", ".value")
        return (where, err[1], err[2])
    return msg


def _pref_sharegpt(obj: dict[str, Any]) -> _Err | _Pref:
    conv = _sharegpt(obj, "sharegpt_preference")
    if isinstance(conv, tuple):
        return conv
    answers = []
    for key in ("chosen", "rejected"):
        msg = _pref_answer_turn(obj.get(key), key)
        if isinstance(msg, tuple):
            return msg
        answers.append(msg)
    return {"prompt": conv["messages"], "tools": conv["tools"], "chosen": answers[0], "rejected": answers[1]}


def _pref_messages(obj: dict[str, Any]) -> _Err | _Pref:
    """axolotl's chat_template preference: messages, and chosen/rejected as one message each."""
    res = _check_messages(obj.get("messages"), "messages")
    if isinstance(res, tuple):
        return res
    tools = obj.get("tools")
    if tools is not None:
        err = _check_tools(tools, "tools")
        if err is not None:
            return err
    for key in ("chosen", "rejected"):
        v = obj.get(key)
        if v is None:
            return (key, "missing_field", f"'{key}' is missing")
        err = _check_answer(v, key)
        if err is not None:
            return err
    return {"prompt": obj["messages"], "tools": tools, "chosen": obj["chosen"], "rejected": obj["rejected"]}


def _alpaca_prompt(obj: dict[str, Any]) -> _Err | list[dict[str, Any]]:
    """An Alpaca line's conversation up to (and with) its instruction: system, history, instruction + input."""
    instruction = obj.get("instruction")
    if type(instruction) is not str:
        if instruction is None:
            return ("instruction", "missing_field", "'instruction' is missing")
        return _wrong("instruction", "a string", instruction)
    msgs: list[dict[str, Any]] = []
    for key in ("input", "system"):
        v = obj.get(key)
        if v is not None and type(v) is not str:
            return _wrong(key, "a string", v)
    system = obj.get("system")
    if system:
        msgs.append({"role": "system", "content": system})
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
            msgs.append({"role": "user", "content": pair[0]})
            msgs.append({"role": "assistant", "content": pair[1]})
    extra = obj.get("input")
    prompt = f"{instruction}\n\n{extra}" if extra and instruction else extra or instruction
    msgs.append({"role": "user", "content": prompt})
    return msgs


def _alpaca(obj: dict[str, Any]) -> _Err | list[dict[str, Any]]:
    msgs = _alpaca_prompt(obj)
    if isinstance(msgs, tuple):
        return msgs
    output, response = obj.get("output"), obj.get("response")
    if output is not None and response is not None:
        return ("response", "invalid_value", "give output or response, not both")
    key = "response" if response is not None else "output"
    answer = obj.get(key)
    if type(answer) is not str:
        if answer is None:
            return ("output", "missing_field", "'output' is missing")
        return _wrong(key, "a string", answer)
    return [*msgs, {"role": "assistant", "content": answer}]


def _pref_alpaca(obj: dict[str, Any]) -> _Err | _Pref:
    """LLaMA-Factory's Alpaca preference: instruction (input, system, history) with chosen and rejected strings."""
    msgs = _alpaca_prompt(obj)
    if isinstance(msgs, tuple):
        return msgs
    answers = []
    for key in ("chosen", "rejected"):
        v = obj.get(key)
        if type(v) is not str:
            if v is None:
                return (key, "missing_field", f"'{key}' is missing")
            return _wrong(key, "a string", v)
        answers.append({"role": "assistant", "content": v})
    return {"prompt": msgs, "tools": None, "chosen": answers[0], "rejected": answers[1]}


def _pref_openai(obj: dict[str, Any]) -> _Err | _Pref:
    err = _check_openai_preference(obj)
    if err is not None:
        return err
    inp = obj["input"]
    out = [obj.get(key) or obj[alias] for key, alias in _PREF_KEYS]
    return {"prompt": inp["messages"], "tools": inp.get("tools"), "chosen": out[0][0], "rejected": out[1][0]}


_PREFERENCE = {
    "openai_preference": _pref_openai,
    "trl_preference": _pref_trl,
    "trl_conversational_preference": _pref_trl,
    "sharegpt_preference": _pref_sharegpt,
    "messages_preference": _pref_messages,
    "alpaca_preference": _pref_alpaca,
}


# A KTO example, extracted: {"prompt": [msg], "completion": [msg], "label": bool, "tools": [tool] | None}.
def _kto(obj: dict[str, Any], layout: str) -> _Err | dict[str, Any]:
    if layout == "trl_kto":
        label_key = "label"
    else:
        label_key = "kto_tag" if obj.get("kto_tag") is not None else "label"
        if label_key == "kto_tag" and obj.get("label") is not None:
            return ("label", "invalid_value", "give kto_tag or label, not both")
    label = obj.get(label_key)
    if type(label) is not bool:
        if label is None:
            return (label_key, "missing_field", f"'{label_key}' is missing")
        return (
            label_key,
            "wrong_type",
            f"expected true (a desirable answer) or false (an undesirable one), got {_kind(label)}",
        )
    tools = obj.get("tools")
    if layout == "trl_kto":
        system = _string_field(obj, "system")
        if isinstance(system, tuple):
            return system
        if tools is not None:
            err = _check_tools(tools, "tools")
            if err is not None:
                return err
        parts: list[list[dict[str, Any]]] = []
        for key, role in (("prompt", "user"), ("completion", "assistant")):
            v = obj.get(key)
            if type(v) is str:
                parts.append([{"role": role, "content": v}])
            elif type(v) is list:
                res = _check_messages(v, key)
                if isinstance(res, tuple):
                    return res
                if role == "assistant" and not res & _HAS_ASSISTANT:
                    return (key, "missing_assistant_message", "the completion has no assistant message")
                parts.append(v)
            elif v is None:
                return (key, "missing_field", f"'{key}' is missing")
            else:
                return _wrong(key, "a string or a list of messages", v)
        prompt = ([{"role": "system", "content": system}] if system else []) + parts[0]
        completion = parts[1]
    else:
        if layout == "sharegpt_kto":
            conv = _sharegpt(obj, layout)
            if isinstance(conv, tuple):
                return conv
            msgs, tools, path = conv["messages"], conv["tools"], "conversations"
        else:
            res = _check_messages(obj.get("messages"), "messages")
            if isinstance(res, tuple):
                return res
            if tools is not None:
                err = _check_tools(tools, "tools")
                if err is not None:
                    return err
            msgs, path = obj["messages"], "messages"
        if msgs[-1].get("role") != "assistant" or len(msgs) < 2:
            return (
                path,
                "missing_assistant_message",
                "a KTO conversation ends with the assistant answer it labels",
            )
        prompt, completion = msgs[:-1], msgs[-1:]
    return {"prompt": prompt, "completion": completion, "label": label, "tools": tools}


def _checker(extract: Callable[..., Any], layout: str, *args: Any) -> Callable[[dict[str, Any]], _Err | None]:
    """A layout's check: its extractor, then no top-level field it does not use. (The extractors, which the
    normaliser runs too, leave unknown top-level fields to this check: a file stored before it existed trains as
    it did.)"""
    allowed = _KEYS[layout]
    what = LAYOUTS[layout][1].partition(":")[0]

    def check(obj: dict[str, Any]) -> _Err | None:
        res = extract(obj, *args)
        if isinstance(res, tuple):
            return res
        return _extra_keys(obj, allowed, "", what)

    return check


_CHECKS: dict[str, Callable[[dict[str, Any]], _Err | None]] = {
    "openai_chat": _check_chat,
    "trl_conversational_prompt_completion": _check_conversational_pc,
    "prompt_completion": _check_prompt_completion,
    "text": _check_text,
    "openai_preference": _check_openai_preference,
    "trl_preference": _checker(_pref_trl, "trl_preference"),
    "trl_conversational_preference": _checker(_pref_trl, "trl_conversational_preference"),
    "sharegpt_preference": _checker(_pref_sharegpt, "sharegpt_preference"),
    "messages_preference": _checker(_pref_messages, "messages_preference"),
    "alpaca_preference": _checker(_pref_alpaca, "alpaca_preference"),
    "sharegpt": _checker(_sharegpt, "sharegpt"),
    "alpaca": _checker(_alpaca, "alpaca"),
    "trl_kto": _checker(_kto, "trl_kto", "trl_kto"),
    "messages_kto": _checker(_kto, "messages_kto", "messages_kto"),
    "sharegpt_kto": _checker(_kto, "sharegpt_kto", "sharegpt_kto"),
    "openai_reinforcement": _check_reinforcement,
}


def detect_layout(obj: dict[str, Any]) -> str | None:
    """The layout a line's content claims (LAYOUTS), whether or not the line is valid in it; None if none fits."""
    if type(obj) is not dict:
        return None
    if "kto_tag" in obj or type(obj.get("label")) is bool:
        if "conversations" in obj:
            return "sharegpt_kto"
        if "messages" in obj:
            return "messages_kto"
        return "trl_kto"
    if "chosen" in obj or "rejected" in obj:
        if "conversations" in obj:
            return "sharegpt_preference"
        if "messages" in obj:
            return "messages_preference"
        if "instruction" in obj:
            return "alpaca_preference"
        if "input" in obj and type(obj["input"]) is dict:
            return "openai_preference"
        answer = obj.get("chosen", obj.get("rejected"))
        if type(answer) is list or type(obj.get("prompt")) is list:
            return "trl_conversational_preference"
        return "trl_preference"
    for key, alias in _PREF_KEYS:
        if key in obj or alias in obj:
            return "openai_preference"
    if "label" in obj and ("prompt" in obj or "completion" in obj):
        return "trl_kto"
    if "messages" in obj:
        return "openai_reinforcement" if _prompt_only(obj) else "openai_chat"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj:
        return "alpaca"
    if "prompt" in obj or "completion" in obj:
        if type(obj.get("prompt")) is list or type(obj.get("completion")) is list:
            return "trl_conversational_prompt_completion"
        return "prompt_completion"
    if "text" in obj:
        return "text"
    if "input" in obj:
        return "openai_preference" if type(obj["input"]) is dict else "alpaca"
    if "output" in obj or "response" in obj:
        return "alpaca"
    return None


def detect_format(obj: dict[str, Any]) -> str | None:
    """The format a line's content claims (FORMATS), whether or not the line is valid in it; None if none fits."""
    layout = detect_layout(obj)
    return LAYOUTS[layout][0] if layout is not None else None


def _warned_fields(obj: dict[str, Any], layout: str) -> list[str]:
    """The known fields of a valid line that training ignores."""
    if layout == "openai_reinforcement":
        return []  # any field may be one a grader references
    found = [k for k in obj if (k in _HARMLESS or k in _IGNORED) and obj[k] is not None]
    if layout == "openai_preference" and obj["input"].get("parallel_tool_calls") is not None:
        found.append("input.parallel_tool_calls")
    return found


def _ignored_because(fieldname: str) -> str:
    key = fieldname.rpartition(".")[2]
    return _HARMLESS.get(key) or _IGNORED.get(key) or "not used"


# ----------------------------------------------------------------------------------------- validator

# The bytes a JSON array's splitter stops at: inside a string, at the top level of the array (where a comma
# ends an element), and deeper in an element.
_IN_STRING = re.compile(rb'["\\]')
_TOP = re.compile(rb'["\[\]{},]')
_DEEP = re.compile(rb'["\[\]{}]')
_QUOTE, _BACKSLASH, _COMMA = 0x22, 0x5C, 0x2C
_OPEN = (0x5B, 0x7B)  # [ {
_CLOSE = (0x5D, 0x7D)  # ] }
_UNDECIDED, _LINES, _ARRAY = 0, 1, 2
_MAX_HELD = 1 << 20  # leading whitespace held while a .json file might still turn out to be an array
_JSON_ARRAY = (
    "this is a JSON array, not JSON Lines: ftserve accepts a JSON array in a file named .json, or one JSON "
    "object per line in a .jsonl file"
)
_UNKNOWN_FORMAT = (
    "not a known training format (expected the keys of OpenAI chat: 'messages'; prompt and completion; "
    "'text'; a preference layout: 'input', 'preferred_output' and 'non_preferred_output', or 'prompt', "
    "'chosen' and 'rejected'; ShareGPT: 'conversations'; or Alpaca: 'instruction' and 'output')"
)


class StreamingValidator:
    """Validates an upload fed in arbitrary byte chunks. Never raises from feed() or finish().

    `filename`: the upload's name; one ending in ".json" may hold a JSON array (see the module docstring). It can
    also be given by :meth:`set_filename` before the first chunk."""

    def __init__(
        self,
        *,
        max_line_bytes: int = 8 * 1024 * 1024,
        min_examples: int = 10,
        max_errors: int = 100,
        filename: str | None = None,
    ) -> None:
        self.max_line_bytes = max_line_bytes
        self.min_examples = min_examples
        self.max_errors = max_errors
        self._mode = _LINES
        self._held = bytearray()  # _UNDECIDED: the leading bytes, a BOM and whitespace
        self._pending = bytearray()  # the current, incomplete line
        self._skipping = False  # inside an over-long line: discard until the next newline
        self._seen_line = False  # a non-blank line was seen
        self._ignoring = False  # the rest of the file is not validated (a JSON array in a JSON Lines file)
        self._lineno = 0  # number of completed physical lines (or array elements)
        self._bytes = 0
        self._line_count = 0
        self._examples = 0
        self._longest = 0  # bytes of the longest valid example line
        self._errors: list[LineError] = []
        self._error_count = 0
        self._format: str | None = None
        self._layout: str | None = None
        self._format_line = 0
        self._warned: dict[str, list[int]] = {}  # field -> [first line, count]
        # JSON array state
        self._depth = 0  # brackets open, the array's own included
        self._in_string = False
        self._escaped = False  # the chunk ended on a backslash inside a string
        self._element = bytearray()
        self._element_too_long = False
        self._array_done = False  # the array's closing bracket was seen
        self._out: list[bytes] = []
        self._finished: ValidationReport | None = None
        self.set_filename(filename)

    def set_filename(self, filename: str | None) -> None:
        """The upload's name, before the first chunk: a ".json" file may be a JSON array."""
        if self._bytes == 0:
            self._mode = _UNDECIDED if filename and filename.lower().endswith(".json") else _LINES

    # -- errors and warnings

    def _error(self, line: int, fieldname: str | None, code: str, detail: str) -> None:
        self._error_count += 1
        if len(self._errors) < self.max_errors:
            unit = "element" if self._mode == _ARRAY else "line"
            where = f"{unit} {line}" if line else "file"
            msg = f"{where}: {fieldname}: {detail}" if fieldname else f"{where}: {detail}"
            self._errors.append(LineError(line, fieldname, code, msg))

    def _too_long(self, line: int) -> None:
        self._line_count += 1
        self._seen_line = True
        unit = "element" if self._mode == _ARRAY else "line"
        self._error(line, None, "line_too_long", f"{unit} is longer than {self.max_line_bytes} bytes")

    def _warnings(self) -> list[ValidationWarning]:
        unit = "element" if self._mode == _ARRAY else "line"
        out = []
        for name, (first, count) in self._warned.items():
            examples = f"{count} example{'s' if count != 1 else ''}"
            out.append(
                ValidationWarning(
                    field=name,
                    code="ignored_field",
                    line=first,
                    count=count,
                    message=f"{name}: ignored, training does not use it ({_ignored_because(name)}); on {examples}, "
                    f"first on {unit} {first}",
                )
            )
        return out

    # -- one parsed line or element

    def _check(self, obj: Any, lineno: int, nbytes: int) -> None:
        if type(obj) is not dict:
            self._error(lineno, None, "not_an_object", f"expected a JSON object, got {_kind(obj)}")
            return
        layout = self._layout
        if layout == "openai_chat" and len(obj) == 1 and "messages" in obj:  # the hot path
            err = _check_chat(obj)
        else:
            line_layout = detect_layout(obj)
            if layout is None:
                if line_layout is None:
                    keys = ", ".join(_show(k) for k in list(obj)[:6]) or "none"
                    self._error(
                        lineno, None, "unknown_format", f"{_UNKNOWN_FORMAT}; this line's keys: {keys}"
                    )
                    return
                err = _CHECKS[line_layout](obj)
                if err is None:
                    self._layout = line_layout
                    self._format = LAYOUTS[line_layout][0]
                    self._format_line = lineno
            elif {line_layout, layout} == {"openai_chat", "openai_reinforcement"}:
                # one shape with or without the answer: judged by what the file holds
                line_layout = layout
                err = _CHECKS[layout](obj)
            elif line_layout is not None and LAYOUTS[line_layout][0] != self._format:
                self._error(
                    lineno,
                    None,
                    "mixed_formats",
                    f"line is in {LAYOUTS[line_layout][0]} format ({LAYOUTS[line_layout][1]}) but the file is in "
                    f"{self._format} format (set by line {self._format_line})",
                )
                return
            else:
                line_layout = line_layout or layout
                err = _CHECKS[line_layout](obj)
            if err is None and len(obj) > 1:
                for name in _warned_fields(obj, line_layout):
                    seen = self._warned.setdefault(name, [lineno, 0])
                    seen[1] += 1
        if err is None:
            self._examples += 1
            if nbytes > self._longest:
                self._longest = nbytes
        else:
            self._error(lineno, err[0], err[1], err[2])

    # -- feeding

    def feed(self, chunk: bytes | bytearray | memoryview) -> bytes:
        """Validate the next bytes of the upload. Returns the bytes to store for them: the chunk itself for JSON
        Lines; for a JSON array, its elements completed so far as JSON lines (b"" while a .json file's leading
        whitespace does not yet say which)."""
        try:
            return self._feed(chunk)
        except Exception as exc:  # noqa: BLE001 (a bug guard: the API relies on feed() not raising)  # pragma: no cover
            self._pending = bytearray()
            self._skipping = True
            self._error(self._lineno + 1, None, "internal_error", f"validator error: {type(exc).__name__}")
            return bytes(chunk)

    def _feed(self, chunk: bytes | bytearray | memoryview) -> bytes:
        if not chunk or self._finished is not None:
            return b""
        if type(chunk) is not bytes:  # bytearray, memoryview
            chunk = bytes(chunk)
        self._bytes += len(chunk)
        if self._mode == _LINES:
            self._feed_lines(chunk)
            return chunk
        if self._mode == _ARRAY:
            self._feed_array(chunk)
            return self._take_out()
        self._held += chunk
        held = bytes(self._held)
        if len(held) < 3 and _BOM.startswith(held):
            return b""  # the start of a BOM
        start = 3 if held.startswith(_BOM) else 0
        rest = held[start:].lstrip(_WS)
        if not rest and len(held) < _MAX_HELD:
            return b""  # only a BOM and whitespace so far
        self._held = bytearray()
        if rest[:1] == b"[":
            self._mode = _ARRAY
            self._depth = 1
            self._feed_array(rest[1:])
            return self._take_out()
        self._mode = _LINES
        self._feed_lines(held)
        return held

    def _take_out(self) -> bytes:
        out = b"".join(self._out)
        self._out = []
        return out

    def _feed_lines(self, chunk: bytes) -> None:
        if self._ignoring:
            return
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
        if tail and not self._ignoring:
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
        check = self._check
        lineno = self._lineno
        counted = 0
        try:
            for line in lines:
                lineno += 1
                if len(line) > max_len:
                    self._too_long(lineno)
                    continue
                try:
                    obj = loads(line)
                except decode_error:
                    if not self._seen_line and self._json_array(line, lineno):
                        counted += 1
                        return
                    obj = self._parse_slow(line, lineno)
                    if obj is _BLANK_LINE:
                        continue
                    counted += 1
                    self._seen_line = True
                    if obj is _BAD_LINE:
                        continue
                else:
                    counted += 1
                    if not self._seen_line:
                        self._seen_line = True
                        if type(obj) is list:
                            self._json_array(line, lineno)
                            return
                check(obj, lineno, len(line))
        finally:
            self._lineno = lineno
            self._line_count += counted

    def _json_array(self, line: bytes, lineno: int) -> bool:
        """The first non-blank line of a JSON Lines file starts a JSON array: one error, and the rest of the file
        is not validated (each of its lines would be an error too)."""
        start = line[3:] if lineno == 1 and line.startswith(_BOM) else line
        if not start.lstrip(b" \t\r").startswith(b"["):
            return False
        self._error(lineno, None, "json_array", _JSON_ARRAY)
        self._ignoring = True
        self._pending = bytearray()
        self._skipping = False
        return True

    def _parse_slow(self, line: bytes, lineno: int) -> Any:
        """The failing path of orjson.loads: a blank line, a first-line BOM, invalid UTF-8 or invalid JSON.
        Returns the parsed value, _BLANK_LINE, or _BAD_LINE after recording the line's error."""
        if not line.strip(_BLANK):
            return _BLANK_LINE
        if lineno == 1 and line.startswith(_BOM) and self._mode == _LINES:
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
            unit = "element" if self._mode == _ARRAY else "line"
            self._error(
                lineno, None, "invalid_utf8", f"not valid UTF-8 (at byte {exc.start + 1} of the {unit})"
            )
            return _BAD_LINE
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            self._error(lineno, None, "invalid_json", f"invalid JSON: {exc}")
        return _BAD_LINE

    # -- a JSON array, split into its elements as it streams

    def _feed_array(self, data: bytes) -> None:
        if self._array_done:
            self._after_array(data)
            return
        i, n, seg = 0, len(data), 0
        while i < n:
            if self._escaped:
                self._escaped = False
                i += 1
                continue
            if self._in_string:
                m = _IN_STRING.search(data, i)
                if m is None:
                    break
                j = m.start()
                if data[j] == _BACKSLASH:
                    if j + 1 >= n:
                        self._escaped = True
                        break
                    i = j + 2
                else:
                    self._in_string = False
                    i = j + 1
                continue
            m = (_TOP if self._depth == 1 else _DEEP).search(data, i)
            if m is None:
                break
            j = m.start()
            c = data[j]
            i = j + 1
            if c == _QUOTE:
                self._in_string = True
            elif c in _OPEN:
                self._depth += 1
            elif c in _CLOSE:
                self._depth -= 1
                if self._depth == 0:
                    self._add(data[seg:j])
                    self._end_element(last=True)
                    self._array_done = True
                    self._after_array(data[j + 1 :])
                    return
            elif c == _COMMA:  # only searched for at the array's top level
                self._add(data[seg:j])
                self._end_element(last=False)
                seg = j + 1
        self._add(data[seg:])

    def _after_array(self, data: bytes) -> None:
        if data.strip(_WS) and not self._ignoring:
            self._ignoring = True
            self._error(0, None, "invalid_json", "there is more after the JSON array's closing ']'")

    def _add(self, part: bytes) -> None:
        if self._element_too_long or not part:
            return
        if len(self._element) + len(part) > self.max_line_bytes:
            self._element_too_long = True
            self._element = bytearray()
        else:
            self._element += part

    def _end_element(self, *, last: bool) -> None:
        text = bytes(self._element).strip(_WS)
        too_long = self._element_too_long
        self._element = bytearray()
        self._element_too_long = False
        if not text and not too_long and last and self._lineno == 0:
            return  # [] holds no element
        self._lineno += 1
        number = self._lineno
        if too_long:
            self._too_long(number)
            return
        self._line_count += 1
        if not text:
            self._error(number, None, "invalid_json", "an empty element (a comma too many?)")
            return
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError:
            self._parse_slow(text, number)
            return
        line = orjson.dumps(obj)
        self._check(obj, number, len(line))
        self._out.append(line + b"\n")

    def finish(self) -> ValidationReport:
        if self._finished is not None:
            return self._finished
        try:
            if self._mode == _UNDECIDED:  # nothing but a BOM and whitespace (or less)
                self._mode = _LINES
                held, self._held = bytes(self._held), bytearray()
                self._feed_lines(held)
            if self._mode == _ARRAY:
                if not self._array_done:
                    self._error(
                        0, None, "invalid_json", "the JSON array is not closed: the file ends inside it"
                    )
            elif self._skipping:
                self._lineno += 1
            elif self._pending:
                last = bytes(self._pending)
                self._pending = bytearray()
                self._process([last])
            self._skipping = False
            if self._ignoring:
                pass  # one error says it all
            elif self._line_count == 0:
                self._error(0, None, "empty_file", "the file has no examples")
            elif self._examples < self.min_examples:
                n = self._examples
                self._error(
                    0,
                    None,
                    "too_few_examples",
                    f"the file has {n} valid example{'s' if n != 1 else ''}; at least {self.min_examples} are "
                    "required, because fine-tuning on fewer rarely teaches a model anything it keeps",
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
            layout=self._layout,
            warnings=self._warnings(),
            json_array=self._mode == _ARRAY,
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
    legacy: dict[
        str, str
    ] = {}  # OpenAI's legacy function calls: function name -> the id given to its last call
    last_legacy = ""
    for m in msgs:
        role = m["role"]
        if role == "function":  # legacy: a function's result is a tool message
            role = "tool"
        # developer stays developer: vLLM keeps it for a template that names the role and otherwise turns it
        # into system and merges the system messages, which depends on the template (the worker's job).
        nm: dict[str, Any] = {"role": role, "content": _flatten(m.get("content"), role)}
        name = m.get("name")
        if type(name) is str:
            nm["name"] = name
        if role == "assistant":
            calls = m.get("tool_calls")
            fcall = m.get("function_call")
            if calls:
                nm["tool_calls"] = _norm_tool_calls(calls)
            elif fcall is not None:
                last_legacy = f"call_{len(legacy)}"
                legacy[fcall["name"]] = last_legacy
                nm["tool_calls"] = _norm_tool_calls([{"id": last_legacy, "function": fcall}])
            w = m.get("weight")
            if w is None:
                w = m.get("train")
            if w is not None:
                nm["weight"] = int(w)
            reasoning = m.get("reasoning_content")
            if reasoning:
                nm["reasoning_content"] = reasoning
        elif role == "tool":
            tcid = m.get("tool_call_id")
            if type(tcid) is str:
                nm["tool_call_id"] = tcid
            elif m["role"] == "function" and (legacy.get(name or "") or last_legacy):
                nm["tool_call_id"] = legacy.get(name or "") or last_legacy
        out.append(nm)
    return out


def _norm_preference(p: _Pref) -> dict[str, Any]:
    inp: dict[str, Any] = {"messages": _norm_messages(p["prompt"])}
    if p["tools"] is not None:
        inp["tools"] = p["tools"]
    return {
        "input": inp,
        "preferred_output": [{"role": "assistant", "content": _flatten(p["chosen"].get("content"))}],
        "non_preferred_output": [{"role": "assistant", "content": _flatten(p["rejected"].get("content"))}],
    }


def _extracted(res: Any) -> Any:
    if isinstance(res, tuple):
        path, _, detail = res
        raise ValueError(f"{path}: {detail}" if path else detail)
    return res


def normalize_example(obj: dict[str, Any], data_format: str) -> dict[str, Any]:
    """The canonical form of one *valid* example of `data_format`, whatever its layout (detected again here, from
    the line itself). Raises ValueError for a line of another format, or one that does not validate.

    - chat: ``{"messages": [...], "tools"?: [...]}``; content becomes the string vLLM's chat completions give a
      template (text parts joined with "\\n", see :func:`_flatten`), assistant content is "" when it has only
      tool_calls, developer stays developer (``core.chat_messages.served_messages`` renders it as vLLM does),
      tool-call arguments given as objects become JSON strings, weight (or axolotl's train flag) becomes an int,
      reasoning_content stays on assistant messages, unknown keys are dropped. OpenAI's legacy functions become
      tools, a function_call a tool call (id ``call_N``, N counting the conversation's legacy calls) and a
      ``function`` message a ``tool`` message answering the last call of that function. TRL's conversational
      prompt-completion is the prompt's messages (assistant ones with weight 0) then the completion's.
    - sharegpt, alpaca: chat ``messages`` (and ``tools``) plus ``"original"``: the input object. ShareGPT
      function_call turns are assistant tool calls (ids ``call_N``), observation/tool turns tool messages
      answering them in order.
    - prompt_completion: ``{"prompt", "completion"}``; ``{"text"}`` is ``{"prompt": "", "completion": text}``.
    - preference: ``{"input": {"messages", "tools"?, "parallel_tool_calls"?}, "preferred_output": [msg],
      "non_preferred_output": [msg]}``, whatever the layout (a string prompt is one user message, a system field
      a system message first).
    - kto: ``{"prompt": [msg], "completion": [msg], "label": bool, "tools"?}``.
    """
    if data_format not in FORMATS:
        raise ValueError(f"unknown data format {data_format!r} (expected one of {', '.join(FORMATS)})")
    layout = detect_layout(obj)
    # one shape with or without the answer: normalised as the file's format says
    if data_format == "reinforcement" and layout == "openai_chat":
        layout = "openai_reinforcement"
    elif data_format == "chat" and layout == "openai_reinforcement":
        layout = "openai_chat"
    if layout is None or LAYOUTS[layout][0] != data_format:
        seen = f"{LAYOUTS[layout][0]} data ({LAYOUTS[layout][1]})" if layout else "no known format"
        raise ValueError(f"expected a {data_format} example, but this line is {seen}")
    if layout == "openai_chat":
        out: dict[str, Any] = {"messages": _norm_messages(obj["messages"])}
        if obj.get("tools") is not None:
            out["tools"] = obj["tools"]
        elif obj.get("functions") is not None:
            out["tools"] = [{"type": "function", "function": fn} for fn in obj["functions"]]
        return out
    if layout == "openai_reinforcement":
        # the grader fields stay as they are: {{ item.* }} references them
        return {**obj, "messages": _norm_messages(obj["messages"])}
    if layout == "trl_conversational_prompt_completion":
        prompt = [{**m, "weight": 0} if m.get("role") == "assistant" else m for m in obj["prompt"]]
        out = {"messages": _norm_messages(prompt + obj["completion"])}
        if obj.get("tools") is not None:
            out["tools"] = obj["tools"]
        return out
    if layout == "prompt_completion":
        return {"prompt": obj["prompt"], "completion": obj["completion"]}
    if layout == "text":
        return {"prompt": "", "completion": obj["text"]}
    if layout == "openai_preference":
        inp = obj["input"]
        out = _norm_preference(
            {
                "prompt": inp["messages"],
                "tools": inp.get("tools"),
                "chosen": (obj.get("preferred_output") or obj["preferred_completion"])[0],
                "rejected": (obj.get("non_preferred_output") or obj["non_preferred_completion"])[0],
            }
        )
        if inp.get("parallel_tool_calls") is not None:
            out["input"]["parallel_tool_calls"] = inp["parallel_tool_calls"]
        return out
    if data_format == "preference":
        return _norm_preference(_extracted(_PREFERENCE[layout](obj)))
    if layout == "sharegpt":
        conv = _extracted(_sharegpt(obj))
        out = {"messages": _norm_messages(conv["messages"])}
        if conv["tools"] is not None:
            out["tools"] = conv["tools"]
        out["original"] = obj
        return out
    if layout == "alpaca":
        return {"messages": _norm_messages(_extracted(_alpaca(obj))), "original": obj}
    kto = _extracted(_kto(obj, layout))
    out = {
        "prompt": _norm_messages(kto["prompt"]),
        "completion": _norm_messages(kto["completion"]),
        "label": kto["label"],
    }
    if kto["tools"] is not None:
        out["tools"] = kto["tools"]
    return out
