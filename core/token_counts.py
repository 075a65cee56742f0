"""Exact token counts of a training file for a base model, without torch or transformers.

The worker tokenises a file with the model's transformers tokenizer (`gpu_worker.data`); this module counts the
same tokens with the two libraries under it: `tokenizers` (the Rust tokenizer that a fast transformers tokenizer
wraps, loaded from the model's `tokenizer.json`) and `jinja2` (which renders chat templates). So the API and the
scheduler, which run without the ML stack, can tell a file's size in tokens before any job starts.

What is counted, per example (the length of the row the worker would train on):

- chat, sharegpt, alpaca: the conversation as vLLM would serve it (`core.chat_messages.served_messages`,
  `served_tools`), rendered with the model's chat template as transformers' `apply_chat_template` renders it
  (see `_jinja_env`) and tokenised without adding special tokens. Trained tokens are the assistant's, found as
  the worker finds them (`{% generation %}` markers, or prefix diffing). A conversation the worker would refuse
  (the template raises, drops tool use, or renders replies that cannot be found) raises TrainingDataError.
- prompt_completion: prompt + completion tokenised with the tokenizer's special tokens, plus eos unless it ends
  with one. Trained: the completion's tokens and eos. (Plain text, `{"text"}`, is a completion with an empty
  prompt: `core.training_data.normalize_example` maps every layout to its format's canonical form first.)
- preference: prompt + chosen and prompt + rejected, each rendered and tokenised as a chat; an example's length
  is the longer pair (what `max_seq_length` must hold), `total_tokens` adds both pairs (both run through the
  model), trained tokens are the two completions (as TRL splits them). The same for every method that trains
  it (dpo, orpo, simpo).
- kto: prompt + completion, rendered and tokenised as a chat; trained tokens are the completion's.
  `total_tokens` counts each example twice: KTO also runs its prompt with another example's answer (the
  mismatched pair its KL term is estimated from), counted here as this example's own length.

`count_file_tokens` reads a JSON-lines file as the worker's `load_examples` does (UTF-8 with an optional BOM,
blank lines skipped, physical line numbers), and `count_tokens` does the same for lines from anywhere else.

The tokenizer is loaded as transformers 5's AutoTokenizer loads a fast tokenizer (`load_tokenizer`): tokenizer.json
with truncation and padding off, the special and added tokens of tokenizer_config.json added on top as transformers
adds them, and the template kwargs of its `special_tokens_map`. Not reproduced: where tokenizer_config.json names a
model-specific class (LlamaTokenizer, Qwen2Tokenizer, ...), transformers 5 rebuilds the tokenizer from the
vocabulary and merges with that class's own normaliser and pre-tokeniser; this module keeps tokenizer.json's, so
the counts are exact only where the two agree (as for a tokenizer that class saved itself; demo-tiny and
GGUF-imported models name PreTrainedTokenizerFast). A slow-only tokenizer (no tokenizer.json) cannot be counted at
all. Checks the worker makes on whole files rather than on conversations (examples with nothing to train on) are
not made here.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.chat_messages import (
    GENERATION_TAG,
    TrainingDataError,
    assistant_span,
    check_nothing_dropped,
    mask_runs,
    served_messages,
    served_tools,
)
from core.training_data import normalize_example

__all__ = [
    "ExampleTokens",
    "ModelTokenizer",
    "TokenCounts",
    "TokenizerUnavailableError",
    "TrainingDataError",
    "cached_tokenizer",
    "count_example_tokens",
    "count_file_tokens",
    "count_stored_file",
    "count_tokens",
    "load_tokenizer",
    "longest_exact_tokens",
    "text_lines",
]

MAX_LISTED = 20  # over_limit_lines keeps at most this many lines
# tokenizer_config.json classes whose tokenizer.json transformers 5 uses as it is (TokenizersBackend is what it
# saves PreTrainedTokenizerFast as; checked: SmolLM2's files under
# these names count exactly, under LlamaTokenizer or Qwen2Tokenizer they do not, see the module docstring).
EXACT_TOKENIZER_CLASSES = frozenset(
    {None, "PreTrainedTokenizerFast", "TokenizersBackend", "GPT2Tokenizer", "GPT2TokenizerFast"}
)

# The special-token attributes of a transformers tokenizer, as tokenizer_config.json names them.
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class TokenizerUnavailableError(ValueError):
    """The base model cannot count tokens for this file: no tokenizer.json in its directory (a slow-only
    tokenizer, or a control plane that holds only the model's config.json), or no chat template for chat data."""


@dataclass(frozen=True)
class ExampleTokens:
    """One example's tokens, as the worker's row for it holds them."""

    tokens: int  # the row's length; preference: the longer of prompt+chosen and prompt+rejected
    trained: int  # loss-bearing tokens (labels that are not -100; preference: both completions)
    processed: int  # tokens run through the model: `tokens`, both pairs for preference, twice for kto


@dataclass(frozen=True)
class TokenCounts:
    """A file's token counts for one base model."""

    examples: int
    total_tokens: int  # every example's tokens (preference: both pairs of each)
    trained_tokens: int  # the loss-bearing ones among them, per epoch
    longest_example_tokens: int
    longest_example_line: int  # 1-based physical line of the (first) longest example
    over_limit: int  # examples longer than max_seq_length; 0 when it is None
    max_seq_length: int | None = None
    over_limit_lines: list[int] = field(default_factory=list)  # the first MAX_LISTED of them, in file order
    # False where transformers rebuilds this tokenizer from its class (EXACT_TOKENIZER_CLASSES): the counts are
    # then close but not guaranteed, and nothing is sized from them.
    exact: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- chat templates, rendered as transformers renders them ----------------------------------------------------


class _Tracker(threading.local):
    """Where `{% generation %}` blocks land in the text being rendered, for the thread rendering it."""

    blocks: list[str] | None = None  # what the template has yielded so far
    spans: list[tuple[int, int]] | None = None


def _jinja_env() -> Any:
    """The Jinja environment of transformers' `_compile_jinja_template` (transformers/utils/chat_template_utils.py):
    sandboxed and immutable, `trim_blocks` and `lstrip_blocks`, the loop controls (`break`, `continue`), a
    `{% generation %}` block that records where the assistant's text lands, a `tojson` that writes JSON as
    `json.dumps` does (no HTML escaping, non-ASCII kept), and the globals `raise_exception` and `strftime_now`."""
    import jinja2
    import jinja2.ext
    from jinja2 import nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    tracker = _Tracker()

    class GenerationBlock(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_generation"), [], [], body).set_lineno(lineno)

        def _generation(self, caller: Callable[[], str]) -> str:
            text = caller()
            if tracker.blocks is not None and tracker.spans is not None:
                start = len("".join(tracker.blocks))
                tracker.spans.append((start, start + len(text)))
            return text

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: Any = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.tracker = tracker  # type: ignore[attr-defined]
    return env


@lru_cache(maxsize=1)
def _environment() -> Any:
    return _jinja_env()


@lru_cache(maxsize=64)
def _compiled(template: str) -> Any:
    return _environment().from_string(template)


def _describe(messages: list[dict[str, Any]], tools: Any) -> str:
    roles = [m["role"] + (" with tool calls" if m.get("tool_calls") else "") for m in messages]
    return f"a conversation of ({', '.join(roles)}){' with tools' if tools else ''}"


# -- the tokenizer --------------------------------------------------------------------------------------------


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json holds it: a string, or an AddedToken dict with `content`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerUnavailableError(f"{path.parent.name}/{path.name} is not readable JSON: {e}") from e
    return data if isinstance(data, dict) else {}


def _chat_templates(model_dir: Path, config: dict[str, Any]) -> str | dict[str, str] | None:
    """The tokenizer's chat template(s), found as transformers' `from_pretrained` finds them: the files
    `chat_template.jinja` (the default) and `additional_chat_templates/NAME.jinja` win over tokenizer_config.json's
    `chat_template` (a string, or a list of {name, template}); several are named templates."""
    files = {}
    if (model_dir / "chat_template.jinja").is_file():
        files["default"] = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    extra_dir = model_dir / "additional_chat_templates"
    if extra_dir.is_dir():
        for path in sorted(extra_dir.glob("*.jinja")):
            files[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    if files:
        return files["default"] if list(files) == ["default"] else files
    value = config.get("chat_template")
    if isinstance(value, list):
        named = {
            t["name"]: t["template"]
            for t in value
            if isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str)
        }
        return named or None
    return value if isinstance(value, str) else None


def _special_tokens(model_dir: Path, config: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """The named special tokens (bos_token, ..., and a model's own `*_token` keys, as strings or AddedToken
    dicts) and the extra ones, read as transformers 5 reads them: from tokenizer_config.json, where a config
    without `added_tokens_decoder` (an old one) takes them from special_tokens_map.json."""
    config = dict(config)
    if "additional_special_tokens" in config:  # the v4 name
        config.setdefault("extra_special_tokens", config.pop("additional_special_tokens"))
    if "added_tokens_decoder" not in config:
        for key, value in _read_json(model_dir / "special_tokens_map.json").items():
            if key == "additional_special_tokens":
                key = "extra_special_tokens"
            if key == "extra_special_tokens" and isinstance(value, list):
                known = list(config.get("extra_special_tokens") or [])
                value = known + [t for t in value if t not in known]
            config[key] = value
    named: dict[str, Any] = {}
    for key, value in config.items():
        if key in _SPECIAL_KEYS and _token_text(value) is not None:
            named[key] = value
        elif key.endswith("_token") and isinstance(value, str):  # a model's own, e.g. Gemma 3's image_token
            named[key] = value
    extra = config.get("extra_special_tokens")
    if isinstance(extra, dict):
        named.update({k: v for k, v in extra.items() if _token_text(v) is not None})
        extra = []
    return named, [t for t in extra or [] if _token_text(t) is not None]


def _add_tokens_as_transformers_does(
    tokenizer: Any, config: dict[str, Any], named: dict[str, Any], extra: list[Any]
) -> None:
    """What `TokenizersBackend.__init__` adds to a tokenizer loaded from tokenizer.json: the tokens of
    tokenizer_config.json's `added_tokens_decoder` (again: their settings there win), then every special token
    the tokenizer does not have as an added token yet (atomic from then on)."""
    from tokenizers import AddedToken

    def added(value: Any, **defaults: Any) -> Any:
        if isinstance(value, str):
            return AddedToken(value, **defaults)
        keys = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")
        return AddedToken(**{k: value[k] for k in keys if k in value})

    to_add = []
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        for _, entry in sorted(((int(k), v) for k, v in decoder.items()), key=lambda kv: kv[0]):
            if isinstance(entry, dict) and _token_text(entry):
                to_add.append(added(entry))
    present = {t.content for t in tokenizer.get_added_tokens_decoder().values()} | {t.content for t in to_add}
    named_texts = {_token_text(v) for v in named.values()}
    for value in [*named.values(), *extra]:
        text = _token_text(value)
        if text is None or text in present:
            continue
        token = added(value, special=True)
        if not token.special and text in named_texts:
            token.special = True
        to_add.append(token)
        present.add(text)
    if to_add:
        tokenizer.add_tokens(to_add)


class ModelTokenizer:
    """A base model's tokenizer and chat template, used as its transformers tokenizer would use them."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        special_tokens: dict[str, Any],
        chat_template: str | dict[str, str] | None = None,
        name: str = "the base model",
        exact: bool = True,
    ) -> None:
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer, with truncation and padding off
        self.exact = exact  # whether transformers would tokenise with this very tokenizer.json
        # The named special tokens (bos_token, eos_token, ...: what a template sees, as `special_tokens_map`),
        # and `extra_special_tokens`, a list.
        self.special_tokens = special_tokens
        self.chat_template = chat_template
        self.name = name
        eos = special_tokens.get("eos_token")
        self.eos_token_id: int | None = tokenizer.token_to_id(eos) if isinstance(eos, str) else None
        self._specials: list[str] | None = None

    def encode(self, text: str, *, add_special_tokens: bool) -> Any:
        """The `tokenizers.Encoding` of a transformers tokenizer call on `text`."""
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def template_variables(self) -> dict[str, str]:
        """The special tokens a template is rendered with (transformers' `special_tokens_map`)."""
        return {k: v for k, v in self.special_tokens.items() if isinstance(v, str)}

    def special_strings(self) -> list[str]:
        """The special tokens' texts, longest first (the worker's `_special_strings`: the added tokens marked
        special, and every named and extra special token)."""
        if self._specials is None:
            found = {t.content for t in self.tokenizer.get_added_tokens_decoder().values() if t.special}
            found.update(self.template_variables().values())
            found.update(
                t for t in self.special_tokens.get("extra_special_tokens") or () if isinstance(t, str)
            )
            self._specials = sorted((s for s in found if s), key=len, reverse=True)
        return self._specials

    def template_for(self, tools: list[dict[str, Any]] | None) -> str:
        """The template a conversation is rendered with, picked as the worker picks it (transformers'
        `get_chat_template`: of named templates, `tool_use` for a conversation with tools, else `default`).
        Raises TokenizerUnavailableError when the model has none."""
        template = self.chat_template
        if not template:
            raise TokenizerUnavailableError(
                f"the base model ({self.name}) has no chat template, so chat examples cannot be rendered; give "
                "the model a chat_template in the model registry, or use a prompt_completion file"
            )
        if isinstance(template, str):
            return template
        if tools is not None and "tool_use" in template:
            return template["tool_use"]
        if "default" in template:
            return template["default"]
        raise TokenizerUnavailableError(
            f"the base model's chat template cannot be chosen: it has named templates ({', '.join(sorted(template))}) "
            "and none is called 'default'"
        )

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None,
        chat_template: str,
        add_generation_prompt: bool = False,
        spans: list[tuple[int, int]] | None = None,
    ) -> str:
        """The text of transformers' `apply_chat_template(messages, tools=tools, chat_template=chat_template,
        tokenize=False)`. `spans`, if given, receives the [start, end) of every `{% generation %}` block (what
        `return_assistant_tokens_mask` maps to tokens). Whatever the template raises becomes a TrainingDataError
        that names what it refused, as the worker words it."""
        import jinja2

        try:
            template = _compiled(chat_template)
        except jinja2.TemplateSyntaxError as e:
            raise TokenizerUnavailableError(
                f"the chat template of {self.name} is not valid Jinja: {e}"
            ) from e
        context = {
            **self.template_variables(),
            "messages": messages,
            "tools": tools,
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
        }
        try:
            if not messages:
                raise ValueError(
                    "Cannot apply chat template to an empty conversation. Provide at least one message."
                )
            if spans is None:
                return str(template.render(**context))
            tracker = _environment().tracker
            blocks: list[str] = []
            tracker.blocks, tracker.spans = blocks, spans
            try:
                for block in template.generate(**context):
                    blocks.append(block)
            finally:
                tracker.blocks = tracker.spans = None
            return "".join(blocks)
        except Exception as e:
            # A template's raise_exception(), or a Jinja/Python error on a role or a value it doesn't handle.
            reason = str(e) if type(e).__module__.startswith("jinja2") else f"{type(e).__name__}: {e}"
            raise TrainingDataError(
                f"the chat template refused {_describe(messages, tools)}: {reason}"
            ) from e


def load_tokenizer(model_dir: Path, *, chat_template: str | None = None) -> ModelTokenizer:
    """The tokenizer of the model in `model_dir` (a Hugging Face directory) as transformers 5's AutoTokenizer
    loads a fast tokenizer from it: `tokenizer.json`, the special tokens and added tokens of
    `tokenizer_config.json`, and the chat template of `chat_template.jinja` (where transformers 5 saves it) or
    `tokenizer_config.json`. `chat_template` (a model's custom training template from the registry) replaces the
    tokenizer's, as the worker sets it. Raises TokenizerUnavailableError."""
    from tokenizers import Tokenizer

    model_dir = Path(model_dir)
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise TokenizerUnavailableError(
            f"the model directory '{model_dir.name}' has no tokenizer.json (here): tokens are counted with a "
            "fast tokenizer's tokenizer.json"
        )
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust library raises a plain Exception for a file it cannot parse
        raise TokenizerUnavailableError(
            f"the tokenizer.json of '{model_dir.name}' cannot be loaded: {e}"
        ) from e
    config = _read_json(model_dir / "tokenizer_config.json")
    named, extra = _special_tokens(model_dir, config)
    _add_tokens_as_transformers_does(tokenizer, config, named, extra)
    # A tokenizer call without truncation or padding turns off whatever tokenizer.json sets.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tokenizer.encode_special_tokens = bool(config.get("split_special_tokens", False))
    specials: dict[str, Any] = {key: _token_text(value) for key, value in named.items()}
    specials["extra_special_tokens"] = [_token_text(t) for t in extra]
    template = chat_template or _chat_templates(model_dir, config)
    return ModelTokenizer(
        tokenizer, special_tokens=specials, chat_template=template, name=model_dir.name,
        exact=config.get("tokenizer_class") in EXACT_TOKENIZER_CLASSES,
    )  # fmt: skip


def _stamp(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


@lru_cache(maxsize=8)
def _cached(model_dir: str, chat_template: str | None, stamps: tuple[int | None, ...]) -> ModelTokenizer:
    return load_tokenizer(Path(model_dir), chat_template=chat_template)


def cached_tokenizer(model_dir: Path, *, chat_template: str | None = None) -> ModelTokenizer:
    """`load_tokenizer`, kept for the next call while the model's tokenizer files are unchanged (a long-running
    API answers many counts for the same few models; a large tokenizer.json takes a while to parse)."""
    model_dir = Path(model_dir)
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
    stamps = tuple(_stamp(model_dir / name) for name in names) + (
        _stamp(model_dir / "additional_chat_templates"),
    )
    return _cached(str(model_dir.resolve()), chat_template, stamps)


# -- counting -------------------------------------------------------------------------------------------------


def _chat_tokens(
    tok: ModelTokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> tuple[int, int]:
    """(tokens, trained tokens) of one normalised conversation: `gpu_worker.data.tokenize_chat`'s row."""
    served = served_tools(tools)
    template = tok.template_for(served)
    conversation = served_messages(messages, template)
    weights = [int(m.get("weight", 1)) for m in messages if m["role"] == "assistant"]

    def render(msgs: list[dict[str, Any]], generation_prompt: bool) -> str:
        return tok.render(msgs, tools=served, chat_template=template, add_generation_prompt=generation_prompt)

    def render_with(msgs: list[dict[str, Any]], with_tools: Any) -> str:
        return tok.render(msgs, tools=with_tools, chat_template=template)

    if GENERATION_TAG.search(template):
        check_nothing_dropped(render_with, conversation, served, None)
        marked: list[tuple[int, int]] = []
        text = tok.render(conversation, tools=served, chat_template=template, spans=marked)
        enc = tok.encode(text, add_special_tokens=False)
        mask = [0] * len(enc.ids)
        # transformers' return_assistant_tokens_mask: from the token holding a block's first character to the
        # one holding its last (to the end when that one has none).
        for start_char, end_char in marked:
            start = enc.char_to_token(start_char)
            end = enc.char_to_token(end_char - 1)
            if start is None:
                break
            for k in range(start, end + 1 if end else len(mask)):
                mask[k] = 1
        runs = mask_runs(mask)
        if len(runs) == len(weights):
            for (a, b), w in zip(runs, weights, strict=True):
                if w == 0:
                    mask[a:b] = [0] * (b - a)
        elif 0 in weights:
            raise TrainingDataError(
                f"found {len(runs)} assistant spans for {len(weights)} assistant messages, so weight 0 "
                "cannot be applied (are two assistant messages adjacent?)"
            )
        return len(mask), sum(mask)
    full = render(conversation, False)
    check_nothing_dropped(render_with, conversation, served, full)
    specials = tok.special_strings()
    reply_spans, cursor = [], 0
    for i, m in enumerate(conversation):
        if m["role"] == "assistant":
            reply_spans.append(assistant_span(render, conversation, i, full, cursor, specials))
            cursor = reply_spans[-1][1]
    enc = tok.encode(full, add_special_tokens=False)
    offsets = enc.offsets
    mask = [0] * len(enc.ids)
    for (a, b), w in zip(reply_spans, weights, strict=True):
        inside = [k for k, (s, e) in enumerate(offsets) if s < b and e > a]
        if w and inside:
            mask[inside[0] : inside[-1] + 1] = [1] * (inside[-1] + 1 - inside[0])
    return len(mask), sum(mask)


def _prompt_completion_tokens(tok: ModelTokenizer, prompt: str, completion: str) -> tuple[int, int]:
    """`gpu_worker.data.tokenize_prompt_completion`'s row: (tokens, trained tokens)."""
    prompt_ids = tok.encode(prompt, add_special_tokens=True).ids
    ids = list(tok.encode(prompt + completion, add_special_tokens=True).ids)
    if tok.eos_token_id is not None and (not ids or ids[-1] != tok.eos_token_id):
        ids.append(tok.eos_token_id)
    n = 0
    while n < min(len(prompt_ids), len(ids)) and prompt_ids[n] == ids[n]:
        n += 1
    return len(ids), len(ids) - n


def _preference_tokens(tok: ModelTokenizer, data: dict[str, Any]) -> ExampleTokens:
    """`gpu_worker.data.build_dpo_rows`' lengths: prompt+chosen, prompt+rejected, and the completions."""
    inp = data["input"]
    tools = served_tools(inp.get("tools"))
    template = tok.template_for(tools)
    prompt = served_messages(inp["messages"], template)
    chosen = served_messages(data["preferred_output"], template)
    rejected = served_messages(data["non_preferred_output"], template)

    def render_with(msgs: list[dict[str, Any]], with_tools: Any) -> str:
        return tok.render(msgs, tools=with_tools, chat_template=template)

    def n_tokens(messages: list[dict[str, Any]], generation_prompt: bool = False) -> int:
        text = tok.render(
            messages, tools=tools, chat_template=template, add_generation_prompt=generation_prompt
        )
        return len(tok.encode(text, add_special_tokens=False).ids)

    check_nothing_dropped(render_with, prompt, tools, None)
    prompt_len = n_tokens(prompt, generation_prompt=True)
    lengths = [n_tokens(prompt + answer) for answer in (chosen, rejected)]
    return ExampleTokens(
        tokens=max(lengths), trained=sum(max(0, n - prompt_len) for n in lengths), processed=sum(lengths)
    )


def _kto_tokens(tok: ModelTokenizer, data: dict[str, Any]) -> ExampleTokens:
    """`gpu_worker.data.build_kto_rows`' lengths: prompt+completion, and the completion."""
    tools = served_tools(data.get("tools"))
    template = tok.template_for(tools)
    prompt = served_messages(data["prompt"], template)
    completion = served_messages(data["completion"], template)

    def render_with(msgs: list[dict[str, Any]], with_tools: Any) -> str:
        return tok.render(msgs, tools=with_tools, chat_template=template)

    def n_tokens(messages: list[dict[str, Any]], generation_prompt: bool = False) -> int:
        text = tok.render(
            messages, tools=tools, chat_template=template, add_generation_prompt=generation_prompt
        )
        return len(tok.encode(text, add_special_tokens=False).ids)

    check_nothing_dropped(render_with, prompt + completion, tools, None)
    n = n_tokens(prompt + completion)
    return ExampleTokens(
        tokens=n, trained=max(0, n - n_tokens(prompt, generation_prompt=True)), processed=2 * n
    )


def _prompt_tokens(tok: ModelTokenizer, data: dict[str, Any]) -> ExampleTokens:
    """A reinforcement prompt: its tokens up to the generation prompt. The answers are sampled while training,
    so no token of the file is trained on as written (the estimate counts the sampled ones)."""
    tools = served_tools(data.get("tools"))
    template = tok.template_for(tools)
    prompt = served_messages(data["messages"], template)
    text = tok.render(prompt, tools=tools, chat_template=template, add_generation_prompt=True)
    n = len(tok.encode(text, add_special_tokens=False).ids)
    return ExampleTokens(tokens=n, trained=0, processed=n)


def count_example_tokens(tok: ModelTokenizer, data: dict[str, Any], data_format: str) -> ExampleTokens:
    """One normalised example's tokens (`core.training_data.normalize_example`'s output)."""
    if data_format == "prompt_completion":
        n, trained = _prompt_completion_tokens(tok, data["prompt"], data["completion"])
        return ExampleTokens(tokens=n, trained=trained, processed=n)
    if data_format == "preference":
        return _preference_tokens(tok, data)
    if data_format == "kto":
        return _kto_tokens(tok, data)
    if data_format == "reinforcement":
        return _prompt_tokens(tok, data)
    n, trained = _chat_tokens(tok, data["messages"], data.get("tools"))
    return ExampleTokens(tokens=n, trained=trained, processed=n)


def count_tokens(
    lines: Iterable[str],
    data_format: str,
    tokenizer: ModelTokenizer,
    *,
    max_seq_length: int | None = None,
) -> TokenCounts:
    """Count the examples of a JSON-lines file given as its text lines (as iterating over a file opened with
    encoding="utf-8-sig" gives them): blank lines are skipped, line numbers are physical. Raises
    TrainingDataError naming the line of an example the worker could not tokenise either, and
    TokenizerUnavailableError when chat data meets a model without a chat template."""
    if data_format not in ("prompt_completion", "preference", "kto"):
        tokenizer.template_for(None)  # no chat template at all: one error, not one per line
    examples = total = trained = longest = longest_line = over = 0
    over_lines: list[int] = []
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            data = normalize_example(json.loads(raw), data_format)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise TrainingDataError(f"line {lineno}: not a valid {data_format} example ({e})") from e
        try:
            counted = count_example_tokens(tokenizer, data, data_format)
        except TrainingDataError as e:
            raise TrainingDataError(f"line {lineno}: {e}") from e
        examples += 1
        total += counted.processed
        trained += counted.trained
        if counted.tokens > longest:
            longest, longest_line = counted.tokens, lineno
        if max_seq_length is not None and counted.tokens > max_seq_length:
            over += 1
            if len(over_lines) < MAX_LISTED:
                over_lines.append(lineno)
    if not examples:
        raise TrainingDataError("the file has no examples")
    return TokenCounts(
        examples=examples,
        total_tokens=total,
        trained_tokens=trained,
        longest_example_tokens=longest,
        longest_example_line=longest_line,
        over_limit=over,
        max_seq_length=max_seq_length,
        over_limit_lines=over_lines,
        exact=tokenizer.exact,
    )


def count_file_tokens(
    path: Path,
    data_format: str,
    model_dir: Path,
    *,
    chat_template: str | None = None,
    max_seq_length: int | None = None,
) -> TokenCounts:
    """The token counts of the JSON-lines training file at `path` for the model in `model_dir` (see
    `load_tokenizer`; `chat_template` is the registry's custom training template, if any)."""
    tokenizer = load_tokenizer(model_dir, chat_template=chat_template)
    with open(path, encoding="utf-8-sig") as f:  # as the worker's load_examples reads it
        return count_tokens(f, data_format, tokenizer, max_seq_length=max_seq_length)


class _ChunkReader(io.RawIOBase):
    """A readable stream over byte chunks (an object storage download)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._left = b""

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)  # a generator holding a file or a download open
        if close is not None:
            close()
        super().close()

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._left = chunk
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def text_lines(chunks: Iterable[bytes]) -> io.TextIOWrapper:
    """Byte chunks as the text lines the worker reads from a file of those bytes (UTF-8, optional BOM,
    universal newlines), for `count_tokens`. Closing it closes `chunks` if it can be closed."""
    return io.TextIOWrapper(io.BufferedReader(_ChunkReader(chunks)), encoding="utf-8-sig")


def count_stored_file(
    storage: Any, storage_key: str, data_format: str, base: Any, *, max_seq_length: int | None = None
) -> TokenCounts:
    """`count_tokens` over an uploaded file in `storage` (a `core.storage.Storage`), with the registry model
    `base`'s tokenizer and its custom chat template if it has one, as the worker will tokenise the file.
    Raises TokenizerUnavailableError or TrainingDataError."""
    tokenizer = cached_tokenizer(Path(base.path), chat_template=base.chat_template)
    with text_lines(storage.iter_chunks(storage_key)) as lines:
        return count_tokens(lines, data_format, tokenizer, max_seq_length=max_seq_length)


def longest_exact_tokens(token_counts: dict[str, Any] | None) -> int | None:
    """The longest example over a job's files, in tokens, where every count is exact; else None."""
    files = [(token_counts or {}).get(kind) for kind in ("training", "validation")]
    counted = [f for f in files if isinstance(f, dict)]
    if not counted or not all(f.get("exact") for f in counted):
        return None
    return max(int(f["longest_example_tokens"]) for f in counted)
