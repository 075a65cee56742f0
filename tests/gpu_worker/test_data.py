"""gpu_worker.data: loss masks and length checks, on demo-tiny's real tokenizer and chat template."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from gpu_worker.data import (  # after the skip
    IGNORE_INDEX,
    ExamplesTooLongError,
    TrainingDataError,
    build_dpo_rows,
    build_sft_rows,
    load_examples,
)
from gpu_worker.reporting import RecordingReporter
from tests.support.code_task import chat_rows, code_task, write_jsonl


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model_dir)


def trained_text(tokenizer: Any, row: dict[str, list[int]]) -> str:
    return str(tokenizer.decode([t for t in row["labels"] if t != IGNORE_INDEX]))


def sft_rows(
    tokenizer: Any, tmp_path: Path, rows: list[dict[str, Any]], data_format: str = "chat"
) -> list[dict]:
    examples = load_examples(write_jsonl(tmp_path / "d.jsonl", rows), data_format)
    return build_sft_rows(examples, tokenizer, data_format=data_format, max_seq_length=1024)


MULTI_TURN: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello there, friend.", "weight": 0},
        {"role": "user", "content": "Now the code?"},
        {"role": "assistant", "content": "zq81kd"},
    ]
}


def test_only_weight_1_assistant_content_and_its_eos_are_trained(tokenizer: Any, tmp_path: Path) -> None:
    (row,) = sft_rows(tokenizer, tmp_path, [MULTI_TURN])
    assert trained_text(tokenizer, row) == "zq81kd" + tokenizer.eos_token
    # Every other token (system, users, the weight-0 answer, role headers) is masked, position by position.
    trained = [i for i, t in enumerate(row["labels"]) if t != IGNORE_INDEX]
    assert row["input_ids"][trained[-1]] == tokenizer.eos_token_id
    assert [row["input_ids"][i] for i in trained] == [row["labels"][i] for i in trained]
    assert trained == list(range(trained[0], len(row["input_ids"])))  # the final turn, through to the end


def test_without_weights_every_assistant_turn_is_trained(tokenizer: Any, tmp_path: Path) -> None:
    msgs = [{k: v for k, v in m.items() if k != "weight"} for m in MULTI_TURN["messages"]]
    (row,) = sft_rows(tokenizer, tmp_path, [{"messages": msgs}])
    eos = tokenizer.eos_token
    assert trained_text(tokenizer, row) == f"Hello there, friend.{eos}zq81kd{eos}"


def test_sharegpt_and_alpaca_are_masked_like_chat(tokenizer: Any, tmp_path: Path) -> None:
    sharegpt = {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Yo."}]}
    (row,) = sft_rows(tokenizer, tmp_path, [sharegpt], "sharegpt")
    assert trained_text(tokenizer, row) == "Yo." + tokenizer.eos_token
    alpaca = {"instruction": "Add", "input": "2 and 3", "output": "5"}
    (row,) = sft_rows(tokenizer, tmp_path, [alpaca], "alpaca")
    assert trained_text(tokenizer, row) == "5" + tokenizer.eos_token


def test_prompt_completion_trains_the_completion_only(tokenizer: Any, tmp_path: Path) -> None:
    (row,) = sft_rows(
        tokenizer, tmp_path, [{"prompt": "Capital of France:", "completion": " Paris"}], "prompt_completion"
    )
    assert trained_text(tokenizer, row) == " Paris" + tokenizer.eos_token
    assert row["input_ids"][-1] == tokenizer.eos_token_id


def test_line_numbers_survive_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": "d"}\n')
    assert [e.line for e in load_examples(path, "prompt_completion")] == [1, 3]


def test_too_long_examples_are_listed_by_line(tokenizer: Any, tmp_path: Path) -> None:
    rows = chat_rows(code_task(6))
    rows[1]["messages"][0]["content"] = "word " * 40
    rows[4]["messages"][1]["content"] = "x" * 300
    examples = load_examples(write_jsonl(tmp_path / "d.jsonl", rows), "chat")
    with pytest.raises(ExamplesTooLongError) as exc:
        build_sft_rows(examples, tokenizer, data_format="chat", max_seq_length=32)
    assert exc.value.lines == [2, 5]
    assert (
        "line 2 (" in str(exc.value)
        and "line 5 (" in str(exc.value)
        and "max_seq_length=32" in str(exc.value)
    )


def test_dpo_rows_check_lengths_and_count_completion_tokens(tokenizer: Any, tmp_path: Path) -> None:
    pref = {
        "input": {"messages": [{"role": "user", "content": "Pick one"}]},
        "preferred_output": [{"role": "assistant", "content": "good"}],
        "non_preferred_output": [{"role": "assistant", "content": "bad answer " * 30}],
    }
    examples = load_examples(write_jsonl(tmp_path / "p.jsonl", [pref, pref]), "preference")
    rows, tokens = build_dpo_rows(examples, tokenizer, max_seq_length=1024)
    assert rows[0]["prompt"][0]["content"] == "Pick one" and rows[0]["chosen"][0]["content"] == "good"
    assert tokens > 2 * 30
    with pytest.raises(ExamplesTooLongError) as exc:
        build_dpo_rows(examples, tokenizer, max_seq_length=20)
    assert exc.value.lines == [1, 2]


def test_run_training_rejects_too_long_examples_before_loading_the_model(
    make_config: Callable[..., Any], tmp_path: Path
) -> None:
    from gpu_worker.train import run_training

    rows = chat_rows(code_task(25))
    for i in (2, 9, 20):  # 0-based -> lines 3, 10, 21
        rows[i]["messages"][1]["content"] = "long answer " * 20
    config = make_config(rows, hp={"max_seq_length": 40})
    with pytest.raises(ExamplesTooLongError) as exc:
        run_training(config, RecordingReporter())
    assert exc.value.lines == [3, 10, 21]
    assert not (config.output_dir / "checkpoints").exists()


def test_validation_file_is_checked_too(make_config: Callable[..., Any]) -> None:
    from gpu_worker.train import run_training

    valid = chat_rows(code_task(3))
    valid[2]["messages"][0]["content"] = "very long question " * 20
    config = make_config(chat_rows(code_task(4)), validation_rows=valid, hp={"max_seq_length": 40})
    with pytest.raises(ExamplesTooLongError, match="validation") as exc:
        run_training(config, RecordingReporter())
    assert exc.value.lines == [3]


def test_adjacent_assistant_turns_with_weights_are_refused(tokenizer: Any, tmp_path: Path) -> None:
    # Not a real concern for demo-tiny's template (turns stay separate), but any template that merges two
    # adjacent assistant turns into one span must fail loudly rather than mis-apply weights.
    from gpu_worker.data import tokenize_chat

    msgs = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "weight": 0},
        {"role": "assistant", "content": "b"},
    ]
    row = tokenize_chat(tokenizer, msgs, chat_template=tokenizer.chat_template)
    assert trained_text(tokenizer, row) == "b" + tokenizer.eos_token
    merged = (
        "{% for m in messages %}{% if m.role == 'assistant' %}"
        "{% generation %}{{ m.content }}{% endgeneration %}"
        "{% else %}{{ m.content }}{% endif %}{% endfor %}"
    )
    with pytest.raises(TrainingDataError, match="weight 0"):
        tokenize_chat(tokenizer, msgs, chat_template=merged)


TOOL_CHAT = {
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C"},
        {"role": "assistant", "content": "22 C."},
    ],
    "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
}


def test_tool_call_arguments_train_as_the_object_vllm_renders(tokenizer: Any, tmp_path: Path) -> None:
    # vLLM json-decodes `arguments` before rendering; training does too, whether the file holds a string or an object.
    as_object = json.loads(json.dumps(TOOL_CHAT))
    as_object["messages"][1]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    (row,) = sft_rows(tokenizer, tmp_path, [TOOL_CHAT])
    assert sft_rows(tokenizer, tmp_path, [as_object]) == [row]
    call = '[{"id": "call_1", "function": {"arguments": {"city": "Paris"}, "name": "weather"}, "type": "function"}]'
    eos = tokenizer.eos_token
    assert trained_text(tokenizer, row) == f"{call}{eos}22 C.{eos}"


def test_a_file_that_trains_no_token_names_its_lines(tokenizer: Any, tmp_path: Path) -> None:
    untrained = {
        "messages": [{**m, "weight": 0} if m["role"] == "assistant" else m for m in MULTI_TURN["messages"]]
    }
    with pytest.raises(TrainingDataError, match=r"examples on lines 2, 4 have no tokens to train on"):
        sft_rows(tokenizer, tmp_path, [MULTI_TURN, untrained, MULTI_TURN, untrained])


def test_a_custom_chat_template_is_what_training_renders(make_config: Callable[..., Any]) -> None:
    from gpu_worker.train import run_training

    config = make_config(chat_rows(code_task(4)))
    config.chat_template = "{{ raise_exception('the custom training template') }}"
    with pytest.raises(TrainingDataError, match="refused a conversation of .*: the custom training template"):
        run_training(config, RecordingReporter())


# -- every peer's layout trains as its canonical form (docs/data.md) ------------------------------------------


def test_plain_text_trains_every_token_and_eos(tokenizer: Any, tmp_path: Path) -> None:
    # Continued pretraining: {"text"} is a prompt_completion example with an empty prompt.
    text = "Once upon a time, zq81kd."
    (row,) = sft_rows(tokenizer, tmp_path, [{"text": text}], "prompt_completion")
    assert trained_text(tokenizer, row) == text + tokenizer.eos_token
    plain = tokenizer(text, add_special_tokens=True)["input_ids"]
    assert row["input_ids"] == [*plain, tokenizer.eos_token_id]
    masked = [i for i, t in enumerate(row["labels"]) if t == IGNORE_INDEX]
    assert all(
        row["input_ids"][i] == tokenizer.bos_token_id for i in masked
    )  # at most a BOS the tokenizer adds


def test_axolotl_train_flags_are_weights(tokenizer: Any, tmp_path: Path) -> None:
    flagged = {
        "messages": [
            {k: v for k, v in m.items() if k != "weight"} | ({"train": False} if "weight" in m else {})
            for m in MULTI_TURN["messages"]
        ]
    }
    flagged["messages"][-1]["train"] = True
    assert sft_rows(tokenizer, tmp_path, [flagged]) == sft_rows(tokenizer, tmp_path, [MULTI_TURN])


def _with_ids(example: dict[str, Any], cid: str) -> dict[str, Any]:
    out = json.loads(json.dumps(example))
    out["messages"][1]["tool_calls"][0]["id"] = cid
    out["messages"][2]["tool_call_id"] = cid
    return out


def test_openai_legacy_functions_train_as_tool_calls(tokenizer: Any, tmp_path: Path) -> None:
    legacy = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "weather", "arguments": '{"city": "Paris"}'},
            },
            {"role": "function", "name": "weather", "content": "22 C"},
            {"role": "assistant", "content": "22 C."},
        ],
        "functions": [{"name": "weather", "parameters": {"type": "object"}}],
    }
    (row,) = sft_rows(tokenizer, tmp_path, [legacy])
    assert [row] == sft_rows(tokenizer, tmp_path, [_with_ids(TOOL_CHAT, "call_0")])
    assert '"name": "weather"' in trained_text(tokenizer, row)


def test_sharegpt_tool_calls_train_as_tool_calls_not_text(tokenizer: Any, tmp_path: Path) -> None:
    # LLaMA-Factory: a function_call turn holds {"name", "arguments"}, tools is a JSON string of bare functions.
    sharegpt = {
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": "22 C"},
            {"from": "gpt", "value": "22 C."},
        ],
        "tools": json.dumps([{"name": "weather", "parameters": {"type": "object"}}]),
    }
    (row,) = sft_rows(tokenizer, tmp_path, [sharegpt], "sharegpt")
    assert [row] == sft_rows(tokenizer, tmp_path, [_with_ids(TOOL_CHAT, "call_0")])


def test_trl_conversational_prompt_completion_trains_the_completion_only(
    tokenizer: Any, tmp_path: Path
) -> None:
    example = {
        "prompt": [
            {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": "Hello there, friend."},
            {"role": "user", "content": "Now the code?"},
        ],
        "completion": [{"role": "assistant", "content": "zq81kd"}],
    }
    (row,) = sft_rows(tokenizer, tmp_path, [example])
    assert trained_text(tokenizer, row) == "zq81kd" + tokenizer.eos_token


def test_reasoning_content_a_template_does_not_render_is_refused(tokenizer: Any, tmp_path: Path) -> None:
    # demo-tiny's template has no place for reasoning: training would silently lose it.
    example = {
        "messages": [
            {"role": "user", "content": "2 + 2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "Two and two make four."},
        ]
    }
    with pytest.raises(
        TrainingDataError, match="line 1: the chat template does not render the reasoning_content"
    ):
        sft_rows(tokenizer, tmp_path, [example])


PREFERENCE_LAYOUTS = [
    pytest.param({"prompt": "Pick one", "chosen": "good", "rejected": "bad"}, id="trl-standard"),
    pytest.param(
        {
            "prompt": [{"role": "user", "content": "Pick one"}],
            "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": "bad"}],
        },
        id="trl-conversational",
    ),
    pytest.param(
        {
            "chosen": [{"role": "user", "content": "Pick one"}, {"role": "assistant", "content": "good"}],
            "rejected": [{"role": "user", "content": "Pick one"}, {"role": "assistant", "content": "bad"}],
        },
        id="trl-implicit-prompt",
    ),
    pytest.param(
        {
            "conversations": [{"from": "human", "value": "Pick one"}],
            "chosen": {"from": "gpt", "value": "good"},
            "rejected": {"from": "gpt", "value": "bad"},
        },
        id="llamafactory-sharegpt",
    ),
    pytest.param({"instruction": "Pick one", "chosen": "good", "rejected": "bad"}, id="llamafactory-alpaca"),
    pytest.param(
        {
            "messages": [{"role": "user", "content": "Pick one"}],
            "chosen": {"role": "assistant", "content": "good"},
            "rejected": {"role": "assistant", "content": "bad"},
        },
        id="axolotl-chat-template",
    ),
]


@pytest.mark.parametrize("layout", PREFERENCE_LAYOUTS)
def test_every_preference_layout_builds_the_same_dpo_rows(
    tokenizer: Any, tmp_path: Path, layout: dict[str, Any]
) -> None:
    openai = {
        "input": {"messages": [{"role": "user", "content": "Pick one"}]},
        "preferred_output": [{"role": "assistant", "content": "good"}],
        "non_preferred_output": [{"role": "assistant", "content": "bad"}],
    }
    expected = build_dpo_rows(
        load_examples(write_jsonl(tmp_path / "o.jsonl", [openai]), "preference"),
        tokenizer,
        max_seq_length=1024,
    )
    got = build_dpo_rows(
        load_examples(write_jsonl(tmp_path / "l.jsonl", [layout]), "preference"),
        tokenizer,
        max_seq_length=1024,
    )
    assert got == expected


def test_a_kto_line_never_loads_as_sft(tmp_path: Path) -> None:
    kto = {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "kto_tag": False,
    }
    with pytest.raises(TrainingDataError, match=r"line 1: not a valid chat example .*kto data"):
        load_examples(write_jsonl(tmp_path / "k.jsonl", [kto]), "chat")


def test_continued_pretraining_on_plain_text_trains_end_to_end(
    make_config: Callable[..., Any], tokenizer: Any
) -> None:
    """{"text"} files (validated as prompt_completion, layout text) train a LoRA adapter on every token."""
    from core.training_data import validate_bytes
    from gpu_worker.train import run_training

    rows = [{"text": f"The code for {w} is {c}."} for w, c in code_task(12)]
    report = validate_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows))
    assert (report.ok, report.data_format, report.layout) == (True, "prompt_completion", "text")
    config = make_config(
        rows, data_format="prompt_completion", hp={"batch_size": 4, "n_epochs": 1}, name="text"
    )
    result = run_training(config, RecordingReporter())
    assert result.stopped is None and result.adapter_dir is not None
    per_epoch = sum(
        len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) + 1 for r in rows
    )  # + eos
    # Every text token and eos (a validation holdout, where one is taken, trains fewer).
    assert 0 < result.trained_tokens <= per_epoch
