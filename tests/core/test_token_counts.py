"""core.token_counts counts exactly the tokens the worker's rows hold, without torch or transformers.

Each count is checked against the worker itself (gpu_worker.data with the transformers tokenizer that
AutoTokenizer loads from the same directory, as train.py loads it): every family's real chat template
(tests/support/chat_templates, with the small tokenizers of tests/support/chat_families.py saved to disk),
demo-tiny and SmolLM2-135M-Instruct, on chat (system, developer, multi-turn, weight 0, tool calls and results,
content parts), prompt_completion (plain text too), alpaca, sharegpt and preference files (TRL's and
LLaMA-Factory's layouts too). A fresh interpreter with torch and
transformers blocked counts the same.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.token_counts import (
    TokenizerUnavailableError,
    TrainingDataError,
    count_example_tokens,
    count_file_tokens,
    count_tokens,
    load_tokenizer,
    text_lines,
)

ROOT = Path(__file__).resolve().parents[2]
FORMATS = ["chat", "prompt_completion", "alpaca", "sharegpt", "preference"]
BIG = 10**9


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# -- datasets -------------------------------------------------------------------------------------------------


def datasets(*, conversation: dict[str, Any], system: bool, tools: bool) -> dict[str, list[Any]]:
    """One small file per format. `conversation`: a family's full chat example (system, multi-turn, weight 0, and
    tool use where the template renders it); `system`: the template accepts a system turn."""
    sys_msgs = [{"role": "system", "content": "You are terse."}] if system else []
    chat = [
        conversation,
        {
            "messages": [
                *sys_msgs,
                {"role": "user", "content": "Bonjour, ça va ? 日本語もどうぞ"},
                {"role": "assistant", "content": "Très bien, merci !  \n"},
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Part one."}, {"type": "text", "text": "Two."}],
                },
                {"role": "assistant", "content": "Both parts read.", "weight": 1},
                {"role": "user", "content": "Again?"},
                {"role": "assistant", "content": [{"type": "text", "text": "Yes, again."}]},
            ]
        },
    ]
    if system:  # made a system message (no tested template names the developer role)
        chat.append(
            {
                "messages": [
                    {"role": "system", "content": "Be kind."},
                    {"role": "developer", "content": "Answer in one word."},
                    {"role": "user", "content": "Colour of the sky?"},
                    {"role": "assistant", "content": "Blue."},
                ]
            }
        )
    prompt_completion = [
        {"prompt": "Q: What is 2+2?\nA:", "completion": " 4"},
        {"prompt": "Translate 'chat':", "completion": " cat, and a much longer completion than the prompt."},
        {"prompt": "", "completion": "no prompt at all"},
        {"prompt": "no completion", "completion": ""},
        {"text": "Plain text for continued pretraining: every token trained. Ça va ?"},  # an empty prompt
    ]
    alpaca = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {
            "instruction": "Say hello.",
            "output": "Hello!",
            "history": [["Hi", "Hey."], ["Who are you?", "A bot."]],
            **({"system": "Be brief."} if system else {}),
        },
    ]
    sharegpt = [
        {
            "conversations": [
                {"from": "human", "value": "What is the capital of France?"},
                {"from": "gpt", "value": "Paris."},
                {"from": "human", "value": "And of Italy?"},
                {"from": "gpt", "value": "Rome, a longer answer than the first one."},
            ],
            **({"system": "Geography tutor."} if system else {}),
        },
        {"conversations": [{"from": "user", "value": "hi"}, {"from": "assistant", "value": "hello"}]},
    ]
    preference = [
        {
            "input": {"messages": [*sys_msgs, {"role": "user", "content": "Say a colour."}]},
            "preferred_output": [{"role": "assistant", "content": "Blue."}],
            "non_preferred_output": [
                {"role": "assistant", "content": "I would rather not say any colour at all."}
            ],
        },
        {
            "input": {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."},
                    {"role": "user", "content": "Count to three."},
                ]
            },
            "preferred_output": [
                {"role": "assistant", "content": "1, 2, 3, and a few more words to be longer."}
            ],
            "non_preferred_output": [{"role": "assistant", "content": "No."}],
        },
    ]
    preference += [  # other layouts of the same format: TRL's (system included) and LLaMA-Factory's
        {"prompt": "Say a colour.", "chosen": "Blue.", "rejected": "I would rather not.", **(
            {"system": "You are terse."} if system else {})},
        {
            "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
            "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away, please."}],
        },
        {
            "conversations": [{"from": "human", "value": "Count to three."}],
            "chosen": {"from": "gpt", "value": "1, 2, 3."},
            "rejected": {"from": "gpt", "value": "No."},
        },
    ]  # fmt: skip
    if tools:
        messages = conversation["messages"][:-1]  # the prompt: up to the tool result
        preference.append(
            {
                "input": {"messages": messages, "tools": conversation["tools"]},
                "preferred_output": [{"role": "assistant", "content": "It is sunny."}],
                "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
            }
        )
    return {
        "chat": chat,
        "prompt_completion": prompt_completion,
        "alpaca": alpaca,
        "sharegpt": sharegpt,
        "preference": preference,
    }


# -- what the worker makes of a file --------------------------------------------------------------------------


def worker_lengths(path: Path, data_format: str, hf: Any) -> tuple[list[tuple[int, int]], int, int]:
    """(line, the worker's length) per example, the total tokens and the trained tokens, from gpu_worker.data."""
    from gpu_worker.data import (
        ExamplesTooLongError,
        build_dpo_rows,
        build_kto_rows,
        build_sft_rows,
        count_trainable_tokens,
        load_examples,
        served_messages,
        served_tools,
    )

    examples = load_examples(path, data_format)
    if data_format == "kto":
        with pytest.raises(ExamplesTooLongError) as too_long:
            build_kto_rows(examples, hf, max_seq_length=0)
        _, trained = build_kto_rows(examples, hf, max_seq_length=BIG)
        total = 0
        for ex in examples:  # the example, and as many tokens again for its KL pair
            messages = served_messages(ex.data["prompt"] + ex.data["completion"])
            tools = served_tools(ex.data.get("tools"))
            total += 2 * len(
                hf.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True)["input_ids"]
            )
        return list(too_long.value.too_long), total, trained
    if data_format == "preference":
        with pytest.raises(ExamplesTooLongError) as too_long:  # every example is over 0: all lengths listed
            build_dpo_rows(examples, hf, max_seq_length=0)
        _, trained = build_dpo_rows(examples, hf, max_seq_length=BIG)
        total = 0
        for ex in examples:  # both pairs, tokenised as apply_chat_template does
            tools = served_tools(ex.data["input"].get("tools"))
            for answer in ("preferred_output", "non_preferred_output"):
                messages = served_messages(ex.data["input"]["messages"] + ex.data[answer])
                ids = hf.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True)[
                    "input_ids"
                ]
                total += len(ids)
        return list(too_long.value.too_long), total, trained
    rows = build_sft_rows(examples, hf, data_format=data_format, max_seq_length=BIG)
    lengths = [(r["line"], len(r["input_ids"])) for r in rows]
    return lengths, sum(n for _, n in lengths), count_trainable_tokens(rows)


def assert_counts_match_the_worker(model_dir: Path, path: Path, data_format: str) -> None:
    from transformers import AutoTokenizer

    from gpu_worker.data import (
        ExamplesTooLongError,
        build_dpo_rows,
        build_kto_rows,
        build_sft_rows,
        load_examples,
    )

    hf = AutoTokenizer.from_pretrained(model_dir)  # as train.py loads the base model's tokenizer
    lengths, total, trained = worker_lengths(path, data_format, hf)

    tok = load_tokenizer(model_dir)
    examples = load_examples(path, data_format)
    mine = [(ex.line, count_example_tokens(tok, ex.data, data_format).tokens) for ex in examples]
    assert mine == lengths, (data_format, path.name)

    # The whole file against a limit that some examples pass and some don't, as the worker checks it.
    limit = sorted(n for _, n in lengths)[len(lengths) // 2]
    counts = count_file_tokens(path, data_format, model_dir, max_seq_length=limit)
    longest = max(n for _, n in lengths)
    expected_over = [line for line, n in lengths if n > limit]
    if expected_over:
        with pytest.raises(ExamplesTooLongError) as refused:
            if data_format == "preference":
                build_dpo_rows(examples, hf, max_seq_length=limit)
            elif data_format == "kto":
                build_kto_rows(examples, hf, max_seq_length=limit)
            else:
                build_sft_rows(examples, hf, data_format=data_format, max_seq_length=limit)
        assert refused.value.lines == expected_over
    assert counts.as_dict() == {
        "examples": len(lengths),
        "total_tokens": total,
        "trained_tokens": trained,
        "longest_example_tokens": longest,
        "longest_example_line": next(line for line, n in lengths if n == longest),
        "over_limit": len(expected_over),
        "max_seq_length": limit,
        "over_limit_lines": expected_over,
        "exact": True,
    }


# -- every family's real template ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each family's tokenizer of tests/support/chat_families.py (a small byte-level BPE with the family's
    special tokens, bos/eos, BOS post-processor and real template), saved as a model directory."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.support import chat_families as tct

    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    base.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=tct.SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [json.dumps(tct.conversation(tct.BY_NAME["qwen2_5"])), json.dumps(tct.TOOLS), "system user"] * 4
    base.train_from_iterator(corpus, trainer=trainer)
    out = {}
    for family in tct.FAMILIES:
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
        hf.add_tokens(tct.QWEN_ADDED)
        hf.chat_template = (tct.TEMPLATES / f"{family.name}.jinja").read_text()
        out[family.name] = tmp_path_factory.mktemp(family.name)
        hf.save_pretrained(out[family.name])
    return out


def _family_names() -> list[str]:
    return [p.stem for p in sorted((ROOT / "tests" / "support" / "chat_templates").glob("*.jinja"))]


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("family_name", _family_names())
def test_every_family_counts_what_the_worker_tokenises(
    family_name: str, data_format: str, family_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from tests.support import chat_families as tct

    family = tct.BY_NAME[family_name]
    rows = datasets(
        conversation=tct.conversation(family),
        system=family.system,
        tools=family.tools,
    )[data_format]
    path = write_jsonl(tmp_path / f"{data_format}.jsonl", rows)
    assert_counts_match_the_worker(family_dirs[family_name], path, data_format)


def test_a_template_that_drops_tool_use_is_refused_as_the_worker_refuses_it(
    family_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    from gpu_worker.data import build_sft_rows, load_examples
    from tests.support import chat_families as tct

    example = tct.conversation(tct.BY_NAME["smollm2"], tools=True)  # SmolLM2's template renders no tool use
    path = write_jsonl(tmp_path / "tools.jsonl", [{"messages": [{"role": "user", "content": "x"},
                                                                {"role": "assistant", "content": "y"}]}, example])  # fmt: skip
    with pytest.raises(TrainingDataError) as worker:
        build_sft_rows(
            load_examples(path, "chat"), AutoTokenizer.from_pretrained(family_dirs["smollm2"]),
            data_format="chat", max_seq_length=BIG,
        )  # fmt: skip
    with pytest.raises(TrainingDataError) as counter:
        count_file_tokens(path, "chat", family_dirs["smollm2"])
    assert str(counter.value) == str(worker.value).replace("training line", "line")
    assert str(counter.value).startswith("line 2: the chat template does not render the `tools` list")


def test_a_template_that_raises_names_the_line(family_dirs: dict[str, Path], tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "gemma.jsonl",
        [
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                          {"role": "assistant", "content": "b"}]},
        ],
    )  # fmt: skip
    with pytest.raises(
        TrainingDataError, match=r"^line 2: the chat template refused a conversation of \(system"
    ):
        count_file_tokens(path, "chat", family_dirs["gemma2"])  # Gemma 2 has no system role


# -- demo-tiny and SmolLM2 -------------------------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def _model_datasets(with_tools: bool) -> dict[str, list[Any]]:
    from tests.support.datasets import chat_example

    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Hi there!"},
        {"role": "assistant", "content": "Hello! Ask me about the weather.", "weight": 0},
        {"role": "user", "content": "What is the weather in Paris?"},
    ]
    if with_tools:
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
        messages += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "22 C and sunny"},
        ]
    messages.append({"role": "assistant", "content": "It is 22 C and sunny in Paris."})
    conversation = {"messages": messages, **({"tools": TOOLS} if with_tools else {})}
    out = datasets(conversation=conversation, system=True, tools=with_tools)
    out["chat"] += [chat_example(i) for i in range(5)]
    return out


@pytest.fixture(params=["demo-tiny", "smollm2"])
def model_dir(request: pytest.FixtureRequest) -> Path:
    pytest.importorskip("transformers")
    return Path(request.getfixturevalue("demo_model_dir" if request.param == "demo-tiny" else "smollm2_dir"))


@pytest.mark.parametrize("data_format", FORMATS)
def test_demo_tiny_and_smollm2_count_what_the_worker_tokenises(
    model_dir: Path, data_format: str, tmp_path: Path
) -> None:
    with_tools = (model_dir / "demo_model_info.json").exists()  # demo-tiny renders tool use; SmolLM2 does not
    path = write_jsonl(tmp_path / f"{data_format}.jsonl", _model_datasets(with_tools)[data_format])
    assert_counts_match_the_worker(model_dir, path, data_format)


def test_a_custom_chat_template_replaces_the_tokenizers(demo_model_dir: Path, tmp_path: Path) -> None:
    """The registry's custom training template, which train.py sets on the tokenizer."""
    from transformers import AutoTokenizer

    from gpu_worker.data import build_sft_rows, load_examples

    custom = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    path = write_jsonl(tmp_path / "chat.jsonl", _model_datasets(False)["chat"])
    hf = AutoTokenizer.from_pretrained(demo_model_dir)
    hf.chat_template = custom
    rows = build_sft_rows(load_examples(path, "chat"), hf, data_format="chat", max_seq_length=BIG)
    counts = count_file_tokens(path, "chat", demo_model_dir, chat_template=custom)
    assert counts.total_tokens == sum(len(r["input_ids"]) for r in rows)
    assert counts.total_tokens != count_file_tokens(path, "chat", demo_model_dir).total_tokens


def test_counting_needs_neither_torch_nor_transformers(demo_model_dir: Path, tmp_path: Path) -> None:
    """A fresh interpreter that refuses every heavy import counts the same as this one."""
    path = write_jsonl(tmp_path / "chat.jsonl", _model_datasets(True)["chat"])
    code = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
HEAVY = {{"torch", "transformers", "trl", "peft", "vllm", "datasets", "accelerate", "unsloth"}}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from pathlib import Path
from core.token_counts import count_file_tokens
counts = count_file_tokens(Path({str(path)!r}), "chat", Path({str(demo_model_dir)!r}), max_seq_length=64)
assert not any(m.split(".")[0] in HEAVY for m in sys.modules)
print(json.dumps(counts.as_dict()))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = count_file_tokens(path, "chat", demo_model_dir, max_seq_length=64).as_dict()
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected
    assert expected["over_limit"] > 0 and expected["trained_tokens"] > 0


# -- reading files, loading tokenizers, errors ------------------------------------------------------------------


def test_lines_from_chunks_read_as_the_worker_reads_the_file(demo_model_dir: Path, tmp_path: Path) -> None:
    """A BOM, CRLF line endings and blank lines, split into chunks anywhere, even inside them."""
    rows = _model_datasets(False)["chat"]
    data = "\ufeff" + "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows[:3]) + "\r\n\r\n  \n"
    data += "\n".join(json.dumps(r, ensure_ascii=False) for r in rows[3:])
    raw = data.encode("utf-8")
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(raw)
    tok = load_tokenizer(demo_model_dir)
    whole = count_file_tokens(path, "chat", demo_model_dir)
    for size in (1, 2, 3, 7, 64, len(raw)):
        chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
        assert count_tokens(text_lines(chunks), "chat", tok) == whole
    assert whole.examples == len(rows)
    assert whole.longest_example_line > 0


def test_special_and_added_tokens_are_loaded_as_transformers_loads_them(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    """Special tokens the config names but tokenizer.json lacks become atomic tokens, and the config's
    added_tokens_decoder settings win, as in transformers; so ids and templates' bos_token agree."""
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(demo_model_dir / "tokenizer.json", model / "tokenizer.json")
    end_id = json.loads((demo_model_dir / "tokenizer.json").read_text())["added_tokens"]
    end = next(t for t in end_id if t["content"] == "<|end|>")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>",  # not in tokenizer.json
        "eos_token": "<|end|>",
        "extra_special_tokens": ["<|newtok|>"],  # not in tokenizer.json either
        "added_tokens_decoder": {
            str(end["id"]): {**{k: v for k, v in end.items() if k != "id"}, "lstrip": True}
        },
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}",
    }
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    hf = AutoTokenizer.from_pretrained(model)
    tok = load_tokenizer(model)
    for text in ["<|bos|>hello <|end|> world<|newtok|>x", "plain text", " <|end|><|end|>  <|newtok|> "]:
        for special in (True, False):
            assert (
                tok.encode(text, add_special_tokens=special).ids
                == hf(text, add_special_tokens=special)["input_ids"]
            )
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    template = tok.template_for(None)
    assert tok.render(messages, tools=None, chat_template=template) == hf.apply_chat_template(
        messages, tokenize=False
    )
    assert set(tok.special_strings()) >= {"<|bos|>", "<|end|>", "<|newtok|>"}


def test_a_model_without_tokenizer_json_or_chat_template(demo_model_dir: Path, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", _model_datasets(False)["chat"])
    with pytest.raises(TokenizerUnavailableError, match="has no tokenizer.json"):
        count_file_tokens(path, "chat", tmp_path)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(demo_model_dir / "tokenizer.json", bare / "tokenizer.json")  # no config, no template
    with pytest.raises(TokenizerUnavailableError, match="has no chat template"):
        count_file_tokens(path, "chat", bare)
    pc = write_jsonl(tmp_path / "pc.jsonl", _model_datasets(False)["prompt_completion"])
    assert count_file_tokens(pc, "prompt_completion", bare).examples == 5  # needs no template


def test_a_line_that_is_not_an_example_is_named(demo_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "a"}\n')
    with pytest.raises(TrainingDataError, match=r"^line 3: not a valid prompt_completion example"):
        count_file_tokens(path, "prompt_completion", demo_model_dir)
    (tmp_path / "empty.jsonl").write_text("\n \n")
    with pytest.raises(TrainingDataError, match="no examples"):
        count_file_tokens(tmp_path / "empty.jsonl", "prompt_completion", demo_model_dir)


def test_the_cached_tokenizer_is_reloaded_when_its_files_change(demo_model_dir: Path, tmp_path: Path) -> None:
    from core.token_counts import cached_tokenizer

    model = tmp_path / "model"
    shutil.copytree(demo_model_dir, model)
    first = cached_tokenizer(model)
    assert cached_tokenizer(model) is first
    assert cached_tokenizer(model, chat_template="{{ messages }}") is not first
    (model / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    again = cached_tokenizer(model)
    assert (
        again is not first and again.chat_template == "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )


def test_counts_are_marked_inexact_where_transformers_would_rebuild_the_tokenizer(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    """A tokenizer_config.json naming a model-specific class makes transformers 5 rebuild the tokenizer from
    its vocabulary: our tokenizer.json count is then not guaranteed, so nothing may be sized from it."""
    path = write_jsonl(tmp_path / "chat.jsonl", _model_datasets(False)["chat"])
    assert count_file_tokens(path, "chat", demo_model_dir).exact
    relabelled = tmp_path / "relabelled"
    shutil.copytree(demo_model_dir, relabelled)
    config_path = relabelled / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "LlamaTokenizer"
    config_path.write_text(json.dumps(config))
    assert not count_file_tokens(path, "chat", relabelled).exact


def test_kto_data_counts_what_the_worker_tokenises(demo_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    tools = _model_datasets(True)["chat"][0]  # demo-tiny renders tool use
    rows = [
        {"prompt": "Say a colour.", "completion": "Blue.", "label": True, "system": "Be terse."},
        {
            "prompt": "Say a colour.",
            "completion": "I would rather not say any colour at all.",
            "label": False,
        },
        {"messages": tools["messages"], "tools": tools["tools"], "kto_tag": True},
        {
            "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Go away."}],
            "kto_tag": False,
        },
    ]
    assert_counts_match_the_worker(demo_model_dir, write_jsonl(tmp_path / "kto.jsonl", rows), "kto")
