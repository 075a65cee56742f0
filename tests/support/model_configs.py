"""Published config.json shapes of real base models, for memory estimates without their weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LLAMA_3_1_8B: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
    "vocab_size": 128256, "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False,
    "max_position_embeddings": 131072, "hidden_act": "silu",
}  # fmt: skip
LLAMA_3_2_1B: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192,
    "vocab_size": 128256, "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": True,
    "max_position_embeddings": 131072, "head_dim": 64, "hidden_act": "silu",
}  # fmt: skip
LLAMA_2_13B: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 5120, "num_hidden_layers": 40, "intermediate_size": 13824,
    "vocab_size": 32000, "num_attention_heads": 40, "num_key_value_heads": 40, "tie_word_embeddings": False,
    "max_position_embeddings": 4096, "hidden_act": "silu",
}  # fmt: skip
DEMO_TINY: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 256,
    "vocab_size": 512, "num_attention_heads": 4, "num_key_value_heads": 4, "tie_word_embeddings": False,
    "max_position_embeddings": 1024, "hidden_act": "silu",
}  # fmt: skip


def write_config(directory: Path, config: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps(config))
    return path
