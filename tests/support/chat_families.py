"""The chat-template families the template tests train and serve: each real template (tests/support/chat_templates),
its special tokens, and a conversation that exercises what it renders (system turns, tools, tool calls)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).parent / "chat_templates"

# Every family's special tokens, special (atomic, never split) as in the real tokenizers.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",  # ChatML (SmolLM2, Qwen)
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<|eom_id|>", "<|python_tag|>",  # Llama 3
    "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]",  # Mistral
    "<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>",  # Gemma
    "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|tool|>",  # Phi-3 (and demo-tiny)
]  # fmt: skip
# Added but not special in Qwen's tokenizer: decoded as text, never taken for an end of turn.
QWEN_ADDED = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]


@dataclass(frozen=True)
class Family:
    name: str  # tests/support/chat_templates/<name>.jinja
    bos: str | None  # as the real tokenizer sets them
    eos: str
    eot: str  # what closes an assistant turn
    tools: bool = True  # renders tools, tool calls and tool results
    system: bool = True  # accepts a system turn
    call_id: str = "call_1"


MISTRAL_ID = "a1B2c3D4e"  # Mistral's templates want 9 alphanumeric characters
FAMILIES = [
    Family("smollm2", "<|im_start|>", "<|im_end|>", "<|im_end|>", tools=False),
    Family("qwen2_5", None, "<|im_end|>", "<|im_end|>"),
    Family("qwen3", None, "<|im_end|>", "<|im_end|>"),
    Family("qwen3_v2", None, "<|im_end|>", "<|im_end|>"),
    Family("llama3_1", "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"),
    Family("llama3_2", "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"),
    Family("mistral_v0_3", "<s>", "</s>", "</s>", call_id=MISTRAL_ID),
    Family("mistral_nemo", "<s>", "</s>", "</s>", call_id=MISTRAL_ID),
    Family("gemma2", "<bos>", "<eos>", "<end_of_turn>", tools=False, system=False),
    Family("gemma3", "<bos>", "<eos>", "<end_of_turn>", tools=False),
    Family("phi3", "<s>", "<|endoftext|>", "<|end|>", tools=False),
    Family("phi3_5", "<s>", "<|endoftext|>", "<|end|>", tools=False),
]
BY_NAME = {f.name: f for f in FAMILIES}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
FINAL = "It is 22 C and sunny in Paris."
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}


def conversation(family: Family, *, tools: bool | None = None, system: bool | None = None) -> dict[str, Any]:
    """A system turn, two user turns, a weight-0 reply, a tool call, its result and a trained final reply; without
    the parts the family's template refuses or leaves out (each refusal has its own test below)."""
    tools = family.tools if tools is None else tools
    system = family.system if system is None else system
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Hi there!"},
        {"role": "assistant", "content": "Hello! Ask me about the weather.", "weight": 0},
        {"role": "user", "content": "What is the weather in Paris?"},
    ]
    if tools:
        call = {
            "id": family.call_id,
            "type": "function",
            "function": {**CALL, "arguments": '{"city": "Paris"}'},
        }
        messages += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": family.call_id, "content": "22 C and sunny"},
        ]
    messages.append({"role": "assistant", "content": FINAL})
    if not system:
        messages = messages[1:]
    return {"messages": messages, **({"tools": TOOLS} if tools else {})}
