"""Chat messages as vLLM serves them, and where a chat template puts the assistant's replies. Pure Python.

Shared by the worker (`gpu_worker.data`, which tokenises training files with a transformers tokenizer) and the
token counter (`core.token_counts`, which needs neither torch nor transformers), so both render a conversation
from the same messages and find its replies the same way:

- `served_messages`, `served_tools`: normalised examples (`core.training_data.normalize_example`) as vLLM's chat
  completions hand them to a template.
- `assistant_span`, `check_nothing_dropped`: the prefix diffing that finds each reply in a rendering made by a
  template without `{% generation %}` markers (docs/chat_templates.md), given a function that renders.

Nothing here knows a tokenizer: a render function is passed in.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "GENERATION_TAG",
    "TrainingDataError",
    "assistant_span",
    "check_nothing_dropped",
    "consolidate_system_messages",
    "mask_runs",
    "names_developer",
    "served_messages",
    "served_tools",
    "split_reply",
    "tool_arguments",
]

# A template that marks the assistant's replies itself (transformers' `{% generation %}` extension).
GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")

# render(messages, add_generation_prompt) -> the text of the conversation.
Render = Callable[[list[dict[str, Any]], bool], str]


class TrainingDataError(ValueError):
    """The training file cannot be trained on as it is; the message names the lines."""


def served_messages(messages: list[dict[str, Any]], chat_template: str | None = None) -> list[dict[str, Any]]:
    """Normalised messages as vLLM's chat completions hand them to `chat_template` (the one the conversation is
    rendered with), so a model trains on the text it is served.

    vLLM json-decodes every tool call's `arguments` (templates expect a mapping: Qwen, Llama 3.1 and Mistral
    write it out with `tojson`), so we do too; rendered as the JSON string the file holds, the model would learn
    to emit escaped JSON. Keys come in the order vLLM's request model gives them, which templates that `tojson`
    a whole tool call (Mistral's) write out: a tool call is {id, function: {arguments, name}, type}. `weight` is
    ours, not the template's. An assistant message's `reasoning_content` goes to the template as vLLM passes it
    (Qwen3's and DeepSeek-R1's render it, as a <think> block, inside the reply, so it is trained).

    `developer` messages go as vLLM's `safe_apply_chat_template` (vllm/renderers/hf.py) sends them: kept, with
    `tools: None`, for a template that names the role (`_detect_developer_role_support`: the text holds
    "developer" in quotes); otherwise turned into system messages (`_convert_developer_to_system`) and every
    system message merged into one at the start, joined with blank lines (`_consolidate_system_messages`).
    """
    out = []
    for m in messages:
        msg: dict[str, Any] = {"role": m["role"], "content": m["content"]}
        if m.get("tool_calls"):
            msg["tool_calls"] = [
                {
                    "id": call["id"],
                    "function": {
                        "arguments": tool_arguments(call["function"]),
                        "name": call["function"]["name"],
                    },
                    "type": call.get("type", "function"),
                }
                for call in m["tool_calls"]
            ]
        for key in ("tool_call_id", "name", "reasoning_content"):
            if key in m:
                msg[key] = m[key]
        out.append(msg)
    if any(m["role"] == "developer" for m in out):
        if chat_template is not None and names_developer(chat_template):
            for msg in out:
                if msg["role"] == "developer":
                    msg["tools"] = None  # vLLM passes a developer message's own tools; a file has none
        else:
            for msg in out:
                if msg["role"] == "developer":
                    msg["role"] = "system"
            out = consolidate_system_messages(out)
    return out


def names_developer(chat_template: str) -> bool:
    """vLLM's `_detect_developer_role_support`: the template mentions the role as a string."""
    return '"developer"' in chat_template or "'developer'" in chat_template


def consolidate_system_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """vLLM's `_consolidate_system_messages`: once developer messages became system ones, every system message
    is merged into one at the start (non-empty contents joined with a blank line), unless the only one is
    already first."""
    contents: list[str] = []
    rest: list[dict[str, Any]] = []
    needed = False
    for i, m in enumerate(messages):
        if m["role"] == "system":
            if i > 0 or contents:
                needed = True
            if m["content"]:
                contents.append(m["content"])
        else:
            rest.append(m)
    if not needed:
        return messages
    return [{"role": "system", "content": "\n\n".join(contents)}, *rest]


def tool_arguments(function: dict[str, Any]) -> dict[str, Any]:
    """A tool call's arguments as vLLM hands them to a template: a JSON object, decoded."""
    args = function.get("arguments")
    if isinstance(args, dict):
        return args
    if not args:
        return {}  # as vLLM: missing or empty arguments render as {}
    try:
        parsed = json.loads(args)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        # vLLM would serve {} in its place; training on {} would teach the call without its arguments.
        shown = args if len(args) <= 60 else args[:57] + "..."
        raise TrainingDataError(
            f"tool call {function.get('name')!r} has arguments that are not a JSON object: {shown!r}"
        )
    return parsed


def served_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """`tools` as vLLM hands them to the template: each one passed through vLLM's request model, so a missing
    description or parameters renders as null, unknown keys are dropped, and keys come in vLLM's order."""
    if tools is None:
        return None
    out = []
    for tool in tools:
        fn = tool["function"]
        function = {
            "name": fn["name"],
            "description": fn.get("description"),
            "parameters": fn.get("parameters"),
        }
        for key in ("strict", "defer_loading"):
            if fn.get(key) is not None:
                function[key] = fn[key]
        out.append({"type": "function", "function": function})
    return out


# -- finding the assistant's replies in a rendering, for templates without {% generation %} markers -----------


def split_reply(text: str, specials: list[str]) -> tuple[str, str | None]:
    """A reply as rendered after its prompt, cut after its end-of-turn token, and that token. `specials`: the
    tokenizer's special tokens' texts, longest first.

    What a template writes after the end of turn (a newline, or Phi-3's <|endoftext|> closing the conversation)
    isn't generated, so isn't trained. The end of turn is the first special token after the content, once
    trailing whitespace and special tokens are set aside; without one, the reply is kept whole.
    """
    core = text
    while True:
        core = core.rstrip()
        closing = next((s for s in specials if core.endswith(s)), None)
        if closing is None:
            break
        core = core[: -len(closing)]
    rest = text[len(core) :]
    hits = [(rest.find(s), s) for s in specials if s in rest]
    if not hits:
        return text, None
    at, eot = min(hits, key=lambda h: (h[0], -len(h[1])))
    return text[: len(core) + at + len(eot)], eot


def _reply_start(render: Render, conversation: list[dict[str, Any]], i: int, alone: str) -> int:
    """Where assistant message i's reply starts in `alone` (messages[: i + 1] rendered)."""
    prompt = render(conversation[:i], True)
    if alone.startswith(prompt):
        return len(prompt)  # the reply is what it adds to the prompt vLLM would serve for it
    # The template renders the prompt differently once a reply follows it: Mistral's write the system prompt into
    # the last user turn only while that turn ends the conversation. The reply then starts where rendering it
    # and rendering an empty reply in its place part, provided everything before the reply is in that shared head.
    try:
        empty = render([*conversation[:i], {"role": "assistant", "content": ""}], False)
    except TrainingDataError:
        empty = ""
    start = len(os.path.commonprefix([alone, empty]))
    before = conversation[i - 1].get("content") if i else None
    if empty and isinstance(before, str) and before.strip() and before.strip() in alone[:start]:
        return start
    raise TrainingDataError(
        f"message {i + 1} (assistant): the chat template renders the conversation before this reply "
        "differently once the reply is added, so its tokens cannot be told apart from the prompt's"
    )


def assistant_span(
    render: Render, conversation: list[dict[str, Any]], i: int, full: str, cursor: int, specials: list[str]
) -> tuple[int, int]:
    """Where assistant message i sits in `full` (the whole conversation rendered): [start, end) in characters,
    found at or after `cursor` (the end of the previous reply). `render` raises TrainingDataError when the
    template refuses a conversation.

    The reply is what rendering messages[: i + 1] adds to the prompt vLLM would serve for it (messages[:i] with
    the generation prompt), cut after its end of turn. Some templates render a reply in the middle of a
    conversation differently from a last one (Qwen3 gives the replies after the last user turn an empty
    <think></think> block only while they are last), so the reply as followed by the next message is looked
    for first.
    """
    alone = render(conversation[: i + 1], False)
    head = alone[: _reply_start(render, conversation, i, alone)]
    reply, eot = split_reply(alone[len(head) :], specials)
    candidates = [reply]
    if i + 1 < len(conversation):
        try:
            followed = render(conversation[: i + 2], False)
        except TrainingDataError:
            followed = ""  # the template refuses the cut conversation; the reply as last will have to do
        if followed.startswith(head):
            tail = followed[len(head) :]
            cut = tail.find(eot) + len(eot) if eot and eot in tail else 0
            middle = tail[:cut] if cut else os.path.commonprefix([tail, reply])
            if middle and middle != reply:
                candidates.insert(0, middle)
    for text in candidates:
        start = full.find(text, cursor)
        if start >= 0:
            return start, start + len(text)
    raise TrainingDataError(
        f"message {i + 1} (assistant): the chat template renders this reply as {reply!r}, but the whole "
        "conversation does not contain it after the previous reply, so its tokens cannot be found"
    )


def check_nothing_dropped(
    render: Callable[[list[dict[str, Any]], Any], str],
    conversation: list[dict[str, Any]],
    tools: Any,
    full: str | None,
) -> None:
    """Refuse a conversation whose tools, tool calls or tool results the template silently leaves out (SmolLM2,
    Gemma and Phi-3 render no tool calls): the model would be trained on a conversation that isn't there. Likewise
    a conversation with `reasoning_content` that the template renders none of (one that renders only the latest
    replies' reasoning, as Qwen3's does, is rendering it as it is served).

    `render(messages, tools)` renders without the generation prompt, raising TrainingDataError when the template
    refuses; `full` is the whole conversation as rendered, or None to render it here."""
    variants: list[tuple[str, list[dict[str, Any]], Any]] = []
    if tools:
        variants.append(("the `tools` list", conversation, None))
    for i, m in enumerate(conversation):
        if m.get("tool_calls"):
            without = {k: v for k, v in m.items() if k != "tool_calls"}
            variants.append(
                (
                    f"the tool calls of message {i + 1}",
                    [*conversation[:i], without, *conversation[i + 1 :]],
                    tools,
                )
            )
        elif m["role"] == "tool":
            variants.append(
                (f"the tool result in message {i + 1}", conversation[:i] + conversation[i + 1 :], tools)
            )
    if any(m.get("reasoning_content") for m in conversation):
        variants.append(
            (
                "the reasoning_content of the assistant messages",
                [{k: v for k, v in m.items() if k != "reasoning_content"} for m in conversation],
                tools,
            )
        )
    if not variants:
        return
    if full is None:
        full = render(conversation, tools)
    for what, messages, with_tools in variants:
        try:
            other = render(messages, with_tools)
        except TrainingDataError:
            continue  # refused without it: the template does use it
        if other == full:
            use = "reasoning" if what.startswith("the reasoning") else "tool use"
            raise TrainingDataError(
                f"the chat template does not render {what}, so training would never show them to the model; use "
                f"a model (or a custom chat_template in the model registry) whose template renders {use}, or "
                f"remove the {use} from the file"
            )


def mask_runs(mask: list[int]) -> list[tuple[int, int]]:
    """[start, end) spans of consecutive 1s."""
    spans, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i))
            start = None
    return spans
