"""Assistant-only loss on the real chat templates of every major family, rendered as vLLM serves them.

The templates are verbatim copies (tests/support/chat_templates/README.md says where each comes from); the
tokenizer is a small byte-level BPE with each family's special tokens added as special tokens, so they are atomic
as in the real tokenizers. No hub is needed.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("transformers")

from gpu_worker.data import (  # after the skip
    IGNORE_INDEX,
    TrainingDataError,
    build_dpo_rows,
    build_sft_rows,
    dpo_dataset,
    load_examples,
    render_chat,
    served_messages,
    served_tools,
    tokenize_chat,
    training_chat_template,
)
from tests.support.chat_families import (
    BY_NAME,
    CALL,
    FAMILIES,
    FINAL,
    MISTRAL_ID,
    QWEN_ADDED,
    SPECIAL_TOKENS,
    TEMPLATES,
    TOOLS,
    Family,
    conversation,
)
from tests.support.code_task import write_jsonl


def expected_replies(family: Family) -> list[str]:
    """The trained text, reply by reply, written out by hand from each template: the tool call (where the family
    has tools) and the final answer, each with its end-of-turn token; never the weight-0 reply."""
    call = json.dumps(CALL)  # {"name": "get_weather", "arguments": {"city": "Paris"}}: arguments as an object
    tool_call = {
        "qwen2_5": f"<tool_call>\n{call}\n</tool_call><|im_end|>",
        "qwen3": f"<tool_call>\n{call}\n</tool_call><|im_end|>",  # a middle reply: no <think> block
        "qwen3_v2": f"<tool_call>\n{call}\n</tool_call><|im_end|>",
        "llama3_1": '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
        "llama3_2": '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
        # Mistral's write the whole function out, keys in the order vLLM's request model puts them.
        "mistral_v0_3": f'[TOOL_CALLS] [{{"arguments": {{"city": "Paris"}}, "name": "get_weather", "id": "{MISTRAL_ID}"}}]</s>',
        "mistral_nemo": f'[TOOL_CALLS][{{"arguments": {{"city": "Paris"}}, "name": "get_weather", "id": "{MISTRAL_ID}"}}]</s>',
    }
    final = {
        "qwen3": f"<think>\n\n</think>\n\n{FINAL}<|im_end|>",  # the last reply gets an empty <think> block
        "qwen3_v2": f"<think>\n\n</think>\n\n{FINAL}<|im_end|>",
        "mistral_v0_3": f" {FINAL}</s>",  # v0.3 writes a space after [/INST]
    }.get(family.name, FINAL + family.eot)
    return [tool_call[family.name], final] if family.tools else [final]


# -- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One fast tokenizer per family (a byte-level BPE trained once on a little text), with the family's template,
    bos/eos, and a post-processor that adds BOS where the real one does (apply_chat_template must not)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    base.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [
        json.dumps(conversation(BY_NAME["qwen2_5"])),
        json.dumps(TOOLS),
        "system user assistant model",
    ] * 4
    base.train_from_iterator(corpus, trainer=trainer)
    out = {}
    for family in FAMILIES:
        tok = Tokenizer.from_str(base.to_str())
        if family.bos is not None:
            tok.post_processor = processors.TemplateProcessing(
                single=f"{family.bos} $A", special_tokens=[(family.bos, tok.token_to_id(family.bos))]
            )
        hf = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token=family.bos,
            eos_token=family.eos,
            clean_up_tokenization_spaces=False,
        )
        hf.add_tokens(QWEN_ADDED)
        hf.chat_template = (TEMPLATES / f"{family.name}.jinja").read_text()
        # vLLM caches per tokenizer path and looks for a processor there: give each its own (empty) dir.
        hf.name_or_path = str(tmp_path_factory.mktemp(family.name))
        out[family.name] = hf
    return out


@pytest.fixture(scope="session")
def vllm_render() -> Any:
    """vLLM's chat-completions rendering, called as its serving path calls it, without an engine: the request
    model (`ChatCompletionRequest`, tools dumped as `preprocess_chat` dumps them, `build_chat_params`), then what
    `HfRenderer.render_messages` does (`parse_chat_messages` with the detected content format, then
    `safe_apply_chat_template`). The model config is a stub with the few fields these read."""
    pytest.importorskip("vllm")
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.renderers.chat_utils import parse_chat_messages
    from vllm.renderers.hf import resolve_chat_template_content_format, safe_apply_chat_template

    def render(
        tokenizer: Any, messages: list[dict[str, Any]], tools: Any, add_generation_prompt: bool
    ) -> str:
        model_config: Any = SimpleNamespace(
            model=tokenizer.name_or_path, tokenizer=tokenizer.name_or_path, revision=None, tokenizer_revision=None,
            code_revision=None, trust_remote_code=False, multimodal_config=None, is_multimodal_model=False,
            enable_prompt_embeds=False, allowed_local_media_path="", hf_config=SimpleNamespace(model_type="llama"),
        )  # fmt: skip
        request = ChatCompletionRequest(
            model="m", messages=messages, tools=tools, add_generation_prompt=add_generation_prompt
        )
        tool_dicts = None if request.tools is None else [tool.model_dump() for tool in request.tools]
        params = request.build_chat_params(None, "auto").with_defaults(
            {"tools": tool_dicts, "tokenize": False}
        )
        content_format = resolve_chat_template_content_format(
            chat_template=params.chat_template,
            tools=params.chat_template_kwargs.get("tools"),
            given_format=params.chat_template_content_format,
            tokenizer=tokenizer,
            model_config=model_config,
        )
        conversation, _, _ = parse_chat_messages(
            request.messages, model_config, content_format=content_format
        )
        return str(
            safe_apply_chat_template(
                model_config, tokenizer, conversation, **params.get_apply_chat_template_kwargs()
            )
        )

    return render


# -- helpers --------------------------------------------------------------------------------------------------


def sft_rows(tokenizer: Any, tmp_path: Path, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    loaded = load_examples(write_jsonl(tmp_path / "train.jsonl", examples), "chat")
    return build_sft_rows(loaded, tokenizer, data_format="chat", max_seq_length=4096)


def trained_spans(tokenizer: Any, row: dict[str, list[int]]) -> list[str]:
    """The trained tokens, decoded run by run."""
    spans, run = [], []
    for token, label in zip(row["input_ids"], row["labels"], strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            spans.append(tokenizer.decode(run))
            run = []
    if run:
        spans.append(tokenizer.decode(run))
    return spans


def client_messages(example: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation as an OpenAI client sends it to vLLM: no weights, a tool call's content null and its
    arguments a JSON string."""
    out = []
    for m in example["messages"]:
        m = {k: v for k, v in m.items() if k != "weight"}
        if m.get("tool_calls"):
            m["content"] = None
        out.append(m)
    return out


def family_params(names: list[str] | None = None) -> pytest.MarkDecorator:
    chosen = [f for f in FAMILIES if names is None or f.name in names]
    return pytest.mark.parametrize("family", chosen, ids=[f.name for f in chosen])


# -- exactly the assistant replies are trained -----------------------------------------------------------------


@family_params()
def test_exactly_the_trained_replies_and_their_end_of_turn_are_trained(
    family: Family, tokenizers: dict[str, Any], tmp_path: Path
) -> None:
    tokenizer = tokenizers[family.name]
    (row,) = sft_rows(tokenizer, tmp_path, [conversation(family)])
    # Reply by reply: the tool call and the final answer, each through its end of turn; nothing of the system,
    # user or tool turns, of the weight-0 reply, of the role headers, or of the newline after an end of turn.
    assert trained_spans(tokenizer, row) == expected_replies(family)


@family_params()
def test_token_ids_are_apply_chat_templates_with_one_bos(
    family: Family, tokenizers: dict[str, Any], tmp_path: Path
) -> None:
    tokenizer = tokenizers[family.name]
    example = conversation(family)
    (row,) = sft_rows(tokenizer, tmp_path, [example])
    (loaded,) = load_examples(write_jsonl(tmp_path / "one.jsonl", [example]), "chat")
    expected = tokenizer.apply_chat_template(
        served_messages(loaded.data["messages"]), tools=served_tools(loaded.data.get("tools")), tokenize=True,
        return_dict=True,
    )["input_ids"]  # fmt: skip
    assert row["input_ids"] == list(expected)
    if family.bos is not None and "bos_token" in tokenizer.chat_template:
        assert row["input_ids"][0] == tokenizer.bos_token_id
        assert row["input_ids"].count(tokenizer.bos_token_id) == 1


def test_the_generation_markers_path_and_the_diff_path_agree(
    tokenizers: dict[str, Any], tmp_path: Path
) -> None:
    """demo-tiny's template has {% generation %} markers; without them the same reply tokens come out of the diff."""
    from gpu_worker.demo_model import CHAT_TEMPLATE

    tokenizer = tokenizers["phi3"]  # its special tokens are demo-tiny's
    example = conversation(BY_NAME["qwen2_5"])  # tools, a tool call, its result
    (loaded,) = load_examples(write_jsonl(tmp_path / "one.jsonl", [example]), "chat")
    messages, tools = loaded.data["messages"], loaded.data["tools"]
    # Each tag becomes an empty expression, so the whitespace control around it keeps working as it did.
    unmarked = CHAT_TEMPLATE.replace("{% generation %}", "{{ '' }}").replace(
        "{% endgeneration %}", "{{ '' }}"
    )
    assert "{% generation %}" not in unmarked and "{% endgeneration %}" not in unmarked
    assert render_chat(tokenizer, served_messages(messages), chat_template=unmarked) == render_chat(
        tokenizer, served_messages(messages), chat_template=CHAT_TEMPLATE
    )
    marked_row = tokenize_chat(tokenizer, messages, tools=tools, chat_template=CHAT_TEMPLATE)
    diffed_row = tokenize_chat(tokenizer, messages, tools=tools, chat_template=unmarked)
    assert marked_row == diffed_row
    call = json.dumps(
        [
            {
                "id": "call_1",
                "function": {"arguments": {"city": "Paris"}, "name": "get_weather"},
                "type": "function",
            }
        ]
    )
    assert trained_spans(tokenizer, marked_row) == [f"{call}<|end|>", f"{FINAL}<|end|>"]


# -- training renders what vLLM serves ------------------------------------------------------------------------


@family_params()
def test_training_renders_the_text_vllm_serves(
    family: Family, tokenizers: dict[str, Any], vllm_render: Any, tmp_path: Path
) -> None:
    tokenizer = tokenizers[family.name]
    example = conversation(family)
    (row,) = sft_rows(tokenizer, tmp_path, [example])
    (loaded,) = load_examples(write_jsonl(tmp_path / "one.jsonl", [example]), "chat")
    messages, tools = served_messages(loaded.data["messages"]), served_tools(loaded.data.get("tools"))
    client = client_messages(example)

    # The whole conversation: the same text, and the same ids once vLLM tokenises it (no special tokens added).
    served = vllm_render(tokenizer, client, example.get("tools"), False)
    assert render_chat(tokenizer, messages, tools=tools) == served
    assert tokenizer(served, add_special_tokens=False)["input_ids"] == row["input_ids"]
    if family.tools:  # arguments are rendered as the object vLLM decodes them to, not as an escaped string
        assert '"city": "Paris"' in served and '\\"city\\"' not in served
    # And the prompt vLLM serves before each reply is the one the reply was diffed against.
    for i, m in enumerate(client):
        if m["role"] == "assistant":
            prompt = vllm_render(tokenizer, client[:i], example.get("tools"), True)
            assert render_chat(tokenizer, messages[:i], tools=tools, add_generation_prompt=True) == prompt


def parts(*texts: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": t} for t in texts]


BILLING = "x-anthropic-billing-header: cch=1a2b3;"  # a line vLLM drops from a system message's text part
FINAL_PARTS = parts("It is 22 C and sunny", "", "in Paris.")  # vLLM drops an empty part


def developer_conversation(family: Family) -> dict[str, Any]:
    """`conversation(family)` with developer turns, one after the system turn and one before the last user turn,
    and text given as a list of parts in the system, developer, user and final assistant turns."""
    example = conversation(family)
    messages = example["messages"]
    messages[0]["content"] = parts(BILLING, "You are a weather bot.")
    messages.insert(1, {"role": "developer", "content": parts("Answer in English.", "Be brief.")})
    messages[2]["content"] = parts("Hi", "there!")
    messages.insert(4, {"role": "developer", "content": "Use Celsius."})
    messages[-1]["content"] = FINAL_PARTS
    return example


# Gemma 3's template loops over content parts, so vLLM gives it the parts themselves (content format "openai"),
# which it trims and writes without a separator; training joins them with "\n", as vLLM does for every other
# template (content format "string").
OPENAI_CONTENT_FORMAT = pytest.mark.xfail(
    reason="vLLM's 'openai' content format (templates that loop over content parts) is not mirrored",
    strict=True,
)


@pytest.mark.parametrize(
    "family",
    [pytest.param(f, marks=OPENAI_CONTENT_FORMAT) if f.name == "gemma3" else f for f in FAMILIES if f.system],
    ids=[f.name for f in FAMILIES if f.system],
)
def test_content_parts_and_developer_turns_render_as_vllm_serves_them(
    family: Family, tokenizers: dict[str, Any], vllm_render: Any, tmp_path: Path
) -> None:
    """No template here names the developer role, so vLLM makes developer turns system ones and merges every system
    turn into the first (`safe_apply_chat_template`); it joins text parts with "\\n" and drops a system part's
    billing header line (`parse_chat_messages`). Training must render the same text, the whole conversation and
    the prompt before each reply, and train the reply vLLM would have the model write."""
    tokenizer = tokenizers[family.name]
    example = developer_conversation(family)
    (row,) = sft_rows(tokenizer, tmp_path, [example])
    client = client_messages(example)

    served = vllm_render(tokenizer, client, example.get("tools"), False)
    assert tokenizer.decode(row["input_ids"]) == served
    assert tokenizer(served, add_special_tokens=False)["input_ids"] == row["input_ids"]
    assert "developer" not in served and BILLING not in served and "Hi\nthere!" in served
    final = "It is 22 C and sunny\nin Paris."
    assert trained_spans(tokenizer, row) == [r.replace(FINAL, final) for r in expected_replies(family)]
    # Each prompt as its own request: the prefix the client sends, normalised and served as training serves it.
    for i, m in enumerate(client):
        if m["role"] == "assistant":
            prompt = vllm_render(tokenizer, client[:i], example.get("tools"), True)
            (loaded,) = load_examples(
                write_jsonl(tmp_path / f"p{i}.jsonl", [{**example, "messages": client[:i]}]), "chat"
            )
            tools = served_tools(loaded.data.get("tools"))
            template = training_chat_template(tokenizer, tools)
            messages = served_messages(loaded.data["messages"], template)
            assert render_chat(tokenizer, messages, tools=tools, add_generation_prompt=True) == prompt


def test_developer_and_system_turns_merge_into_the_first_as_vllm_merges_them(
    tokenizers: dict[str, Any], vllm_render: Any, tmp_path: Path
) -> None:
    """The merged text written out for ChatML (SmolLM2), Qwen2.5 and Llama 3.1."""
    merged = "You are a weather bot.\n\nAnswer in English.\nBe brief.\n\nUse Celsius."
    heads = {
        "smollm2": f"<|im_start|>system\n{merged}<|im_end|>\n<|im_start|>user\nHi\nthere!<|im_end|>\n",
        "qwen2_5": f"<|im_start|>system\n{merged}\n\n# Tools\n",
        "llama3_1": f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
        f"Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n{merged}<|eot_id|>",
    }
    for name, head in heads.items():
        example = developer_conversation(BY_NAME[name])
        (row,) = sft_rows(tokenizers[name], tmp_path, [example])
        text = tokenizers[name].decode(row["input_ids"])
        assert text.startswith(head), (name, text)
        assert text == vllm_render(tokenizers[name], client_messages(example), example.get("tools"), False)


def test_a_template_that_names_the_developer_role_gets_developer_turns_as_they_are(
    tokenizers: dict[str, Any], vllm_render: Any, tmp_path: Path
) -> None:
    # vLLM keeps the role when the template holds 'developer' or "developer", with the turn's `tools` (None).
    template = CHATML.replace(
        "{{ m.role }}", "{{ m.role }}{{ ' (no tools)' if m.role == 'developer' and m.tools is none else '' }}"
    )
    tokenizer = copy.copy(tokenizers["smollm2"])
    tokenizer.chat_template = template
    tokenizer.name_or_path = str(tmp_path / "developer")  # vLLM caches what it detects per tokenizer path
    example = developer_conversation(BY_NAME["smollm2"])
    (row,) = sft_rows(tokenizer, tmp_path, [example])
    served = vllm_render(tokenizer, client_messages(example), None, False)
    assert tokenizer.decode(row["input_ids"]) == served
    assert served.startswith(
        "<|im_start|>system\nYou are a weather bot.<|im_end|>\n"
        "<|im_start|>developer (no tools)\nAnswer in English.\nBe brief.<|im_end|>\n"
    )
    assert "<|im_start|>developer (no tools)\nUse Celsius.<|im_end|>\n" in served
    assert trained_spans(tokenizer, row) == ["It is 22 C and sunny\nin Paris.<|im_end|>"]


def test_tool_call_arguments_train_the_same_given_as_a_string_or_an_object(
    tokenizers: dict[str, Any], tmp_path: Path
) -> None:
    tokenizer = tokenizers["qwen2_5"]
    as_string = conversation(BY_NAME["qwen2_5"])
    as_object = json.loads(json.dumps(as_string))
    as_object["messages"][4]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    assert sft_rows(tokenizer, tmp_path, [as_string]) == sft_rows(tokenizer, tmp_path, [as_object])


def test_tool_call_arguments_that_are_not_a_json_object_are_refused(
    tokenizers: dict[str, Any], tmp_path: Path
) -> None:
    example = conversation(BY_NAME["qwen2_5"])
    example["messages"][4]["tool_calls"][0]["function"]["arguments"] = "[1, 2]"
    with pytest.raises(
        TrainingDataError, match=r"line 1: tool call 'get_weather' has arguments that are not a JSON"
    ):
        sft_rows(tokenizers["qwen2_5"], tmp_path, [example])


# -- templates that refuse or leave out part of a conversation ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "tools", "system", "refusal"),
    [
        ("gemma2", False, True, "System role not supported"),
        ("gemma2", True, False, "Conversation roles must alternate"),  # no tool role
        ("gemma3", True, True, "Conversation roles must alternate"),
    ],
)
def test_a_template_that_refuses_a_role_fails_naming_the_line_and_the_reason(
    name: str, tools: bool, system: bool, refusal: str, tokenizers: dict[str, Any], tmp_path: Path
) -> None:
    ok = conversation(BY_NAME[name])
    refused = conversation(BY_NAME[name], tools=tools, system=system)
    with pytest.raises(TrainingDataError) as exc:
        sft_rows(tokenizers[name], tmp_path, [ok, refused])
    message = str(exc.value)
    assert message.startswith("training line 2: the chat template refused a conversation of (")
    assert refusal in message
    assert "Traceback" not in message


@pytest.mark.parametrize("name", ["smollm2", "phi3", "phi3_5"])
def test_a_template_that_leaves_out_tools_or_tool_calls_fails(
    name: str, tokenizers: dict[str, Any], tmp_path: Path
) -> None:
    example = conversation(BY_NAME[name], tools=True)
    with pytest.raises(
        TrainingDataError, match=r"line 1: the chat template does not render the `tools` list"
    ):
        sft_rows(tokenizers[name], tmp_path, [example])
    del example["tools"]
    with pytest.raises(
        TrainingDataError, match=r"line 1: the chat template does not render the tool calls of message 5"
    ):
        sft_rows(tokenizers[name], tmp_path, [example])


def test_mistral_refuses_tool_call_ids_that_are_not_nine_characters(
    tokenizers: dict[str, Any], tmp_path: Path
) -> None:
    example = conversation(BY_NAME["mistral_nemo"])
    example["messages"][4]["tool_calls"][0]["id"] = example["messages"][5]["tool_call_id"] = "call_1"
    with pytest.raises(TrainingDataError, match="Tool call IDs should be alphanumeric strings with length 9"):
        sft_rows(tokenizers["mistral_nemo"], tmp_path, [example])


def test_llama_refuses_parallel_tool_calls(tokenizers: dict[str, Any], tmp_path: Path) -> None:
    example = conversation(BY_NAME["llama3_1"])
    call = example["messages"][4]["tool_calls"][0]
    example["messages"][4]["tool_calls"] = [call, {**call, "id": "call_2"}]
    with pytest.raises(TrainingDataError, match="only supports single tool-calls"):
        sft_rows(tokenizers["llama3_1"], tmp_path, [example])


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize(
    ("template", "error"),
    [
        # A reply that renders differently wherever it stands: it can't be found in the whole conversation.
        (
            CHATML.replace("{{ m.content }}", "{{ m.content }} ({{ messages | length }})"),
            "does not contain it",
        ),
        # The prompt changes once the reply follows, and an empty reply is refused: no way to tell them apart.
        (
            "{{ messages | length }}{% for m in messages %}{% if not m.content %}{{ raise_exception('empty') }}"
            "{% endif %}{% endfor %}" + CHATML,
            "renders the conversation before this reply differently",
        ),
    ],
)
def test_what_a_prefix_diff_cannot_explain_is_refused(
    template: str, error: str, tokenizers: dict[str, Any]
) -> None:
    messages = conversation(BY_NAME["smollm2"])["messages"]
    with pytest.raises(TrainingDataError, match=rf"message 3 \(assistant\): .*{error}"):
        tokenize_chat(tokenizers["qwen2_5"], messages, chat_template=template)


def test_a_reply_whose_prompt_changes_once_it_is_followed_is_still_found(tokenizers: dict[str, Any]) -> None:
    # As Mistral's system prompt, which only the last user turn carries: the reply is found by diffing it with
    # an empty reply in its place.
    template = "{% for m in messages %}{% if loop.last %}LAST {% endif %}" + CHATML.removeprefix(
        "{% for m in messages %}"
    )
    tokenizer = tokenizers["qwen2_5"]
    row = tokenize_chat(tokenizer, conversation(BY_NAME["smollm2"])["messages"], chat_template=template)
    assert trained_spans(tokenizer, row) == [f"{FINAL}<|im_end|>"]


@pytest.mark.parametrize("name", ["qwen2_5", "llama3_1", "gemma2"])
def test_a_file_that_trains_no_token_names_its_lines(
    name: str, tokenizers: dict[str, Any], tmp_path: Path
) -> None:
    def untrained(family: Family) -> dict[str, Any]:
        example = conversation(family)
        for m in example["messages"]:
            if m["role"] == "assistant":
                m["weight"] = 0
        return example

    family = BY_NAME[name]
    with pytest.raises(TrainingDataError, match=r"examples on lines 2, 3 have no tokens to train on"):
        sft_rows(tokenizers[name], tmp_path, [conversation(family), untrained(family), untrained(family)])


# -- DPO ------------------------------------------------------------------------------------------------------


def test_dpo_rows_are_served_messages_and_survive_the_dataset(
    tokenizers: dict[str, Any], tmp_path: Path
) -> None:
    tokenizer = tokenizers["llama3_1"]
    prefs = []
    for city, extra in (("Paris", {}), ("Oslo", {"unit": "C"})):
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city, **extra})},
        }
        messages = [
            {"role": "user", "content": f"Weather in {city}?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "22 C"},
        ]
        prefs.append(
            {
                "input": {"messages": messages, "tools": TOOLS},
                "preferred_output": [{"role": "assistant", "content": f"22 C in {city}."}],
                "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
            }
        )
    examples = load_examples(write_jsonl(tmp_path / "p.jsonl", prefs), "preference")
    rows, _ = build_dpo_rows(examples, tokenizer, max_seq_length=4096)
    assert rows[1]["prompt"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo", "unit": "C"}
    assert json.loads(rows[0]["tools"]) == served_tools(TOOLS)
    # Arrow would give the first call a null "unit" and every user turn "tool_calls": None (which Llama 3.1 takes
    # for a tool call); stored as JSON, every row comes back as it went in.
    ds = dpo_dataset(rows)
    assert [dict(ds[i]) for i in range(len(rows))] == rows
    text = render_chat(
        tokenizer, ds[0]["prompt"], tools=json.loads(ds[0]["tools"]), add_generation_prompt=True
    )
    assert '"parameters": {"city": "Paris"}' in text and "unit" not in text


def test_dpo_prompts_get_developer_turns_and_content_parts_as_vllm_serves_them(
    tokenizers: dict[str, Any], tmp_path: Path
) -> None:
    pref = {
        "input": {
            "messages": [
                {"role": "system", "content": "Be kind."},
                {"role": "user", "content": parts("Weather", "in Paris?")},
                {"role": "developer", "content": parts("Use Celsius.", "Be brief.")},
            ]
        },
        "preferred_output": [{"role": "assistant", "content": parts("22 C,", "sunny.")}],
        "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
    }
    examples = load_examples(write_jsonl(tmp_path / "p.jsonl", [pref]), "preference")
    rows, _ = build_dpo_rows(examples, tokenizers["llama3_1"], max_seq_length=4096)
    assert rows[0]["prompt"] == [
        {"role": "system", "content": "Be kind.\n\nUse Celsius.\nBe brief."},
        {"role": "user", "content": "Weather\nin Paris?"},
    ]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "22 C,\nsunny."}]


# -- reasoning_content, and tool calls that come in other layouts ---------------------------------------------


REASONING = "Paris is in France; the tool said 22 C."


@family_params(["qwen3", "qwen3_v2"])
def test_reasoning_content_is_trained_where_the_template_renders_it(
    family: Family, tokenizers: dict[str, Any], tmp_path: Path
) -> None:
    tokenizer = tokenizers[family.name]
    example = conversation(family)
    example["messages"][-1]["reasoning_content"] = REASONING
    (row,) = sft_rows(tokenizer, tmp_path, [example])
    *_, last = trained_spans(tokenizer, row)
    assert last == f"<think>\n{REASONING}\n</think>\n\n{FINAL}<|im_end|>"


@pytest.mark.parametrize("name", ["smollm2", "qwen2_5", "llama3_1"])
def test_reasoning_content_a_template_leaves_out_is_refused(
    name: str, tokenizers: dict[str, Any], tmp_path: Path
) -> None:
    example = conversation(BY_NAME[name])
    example["messages"][-1]["reasoning_content"] = REASONING
    with pytest.raises(
        TrainingDataError,
        match=r"line 1: the chat template does not render the reasoning_content .* renders reasoning",
    ):
        sft_rows(tokenizers[name], tmp_path, [example])


@family_params(["qwen2_5", "qwen3", "llama3_1"])
def test_sharegpt_and_legacy_function_calls_train_as_tool_calls(
    family: Family, tokenizers: dict[str, Any], tmp_path: Path
) -> None:
    tokenizer = tokenizers[family.name]
    chat = conversation(family)
    chat["messages"][4]["tool_calls"][0]["id"] = "call_0"  # the id the other layouts' calls get
    chat["messages"][5]["tool_call_id"] = "call_0"
    turns = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}
    sharegpt = {
        "conversations": [
            {"from": "function_call", "value": json.dumps(CALL)}
            if m.get("tool_calls")
            else {
                "from": turns[m["role"]],
                "value": m["content"],
                **({"train": False} if "weight" in m else {}),
            }
            for m in chat["messages"]
        ],
        "tools": json.dumps(
            [t["function"] for t in TOOLS]
        ),  # LLaMA-Factory's: a JSON string of bare functions
    }
    legacy = {
        "messages": [
            {"role": "assistant", "content": None, "function_call": m["tool_calls"][0]["function"]}
            if m.get("tool_calls")
            else {"role": "function", "name": CALL["name"], "content": m["content"]}
            if m["role"] == "tool"
            else m
            for m in chat["messages"]
        ],
        "functions": [t["function"] for t in TOOLS],
    }
    (expected,) = sft_rows(tokenizer, tmp_path, [chat])
    loaded = load_examples(write_jsonl(tmp_path / "sharegpt.jsonl", [sharegpt]), "sharegpt")
    assert build_sft_rows(loaded, tokenizer, data_format="sharegpt", max_seq_length=4096) == [expected]
    assert sft_rows(tokenizer, tmp_path, [legacy]) == [expected]
