"""Padding-free SFT batches: packing, per-sequence attention, and the check that proves it changes nothing.

An optimizer step still trains on exactly `batch_size` examples (OpenAI's meaning of the number), drawn by the same
sampler as unpacked training. What changes is how those examples are laid out for the forward pass:

- "padding_free": a micro-batch's examples are concatenated into one row with no padding at all. `position_ids` restart
  at 0 for every example and `cu_seq_lens_*` mark the boundaries, so attention runs per example
  (`varlen_attention`: FlashAttention varlen on CUDA, one causal SDPA call per example elsewhere). Nothing attends
  across examples, and the first label of every example is masked, so no loss crosses a boundary either.
- "bfd": for attention backends that need a dense mask (sliding-window models), the examples are packed
  best-fit-decreasing into rows as long as the step's longest example; transformers builds a block-diagonal causal
  mask from the restarting `position_ids`. Padding is only what BFD leaves at the end of the rows.
- "length_grouped": the fallback when packing is not provably exact for a model: batches of similar lengths
  (Trainer's `group_by_length`), padded to the longest.

The loss is a mean over all label tokens of the step (all its accumulated micro-batches) in every layout, so packed and unpacked training give the
same loss and gradients up to float rounding. `packing_is_exact` checks that on the real model before training.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
ATTN_IMPLEMENTATION = "ftserve_varlen"  # registered with transformers by `register_varlen_attention`
Batching = Literal["padding_free", "bfd", "length_grouped", "padded"]

# Model types whose attention does something per-sequence positions can't express (hybrid SSM/linear attention,
# soft-capped or global/local mixes that transformers' packed masks don't cover): never pack these.
UNPACKABLE_MODEL_TYPES = frozenset(
    {"gemma2", "gpt_oss", "jamba", "mamba", "mamba2", "falcon_h1", "falcon_mamba", "zamba", "zamba2",
     "bamba", "granitemoehybrid", "nemotron_h", "qwen3_next", "lfm2", "recurrent_gemma", "rwkv"}
)  # fmt: skip


# -- best-fit decreasing ---------------------------------------------------------------------------------------


def bfd_pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of at most `capacity` tokens, best-fit decreasing.

    Longest first, each into the bin whose free space fits it most tightly (a sorted list of free spaces, so
    O(n log n)). An item longer than `capacity` gets a bin of its own.
    """
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, bin index), sorted
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        n = lengths[i]
        pos = bisect.bisect_left(free, (n, -1))
        if pos < len(free):
            space, b = free.pop(pos)
            bins[b].append(i)
            if space - n > 0:
                bisect.insort(free, (space - n, b))
        else:
            bins.append([i])
            if capacity - n > 0:
                bisect.insort(free, (capacity - n, len(bins) - 1))
    return bins


def max_length(dataset: Any) -> int:
    """The longest `input_ids` in a datasets.Dataset, computed in Arrow (no Python lists)."""
    import pyarrow.compute as pc

    return int(pc.max(pc.list_value_length(dataset.data.column("input_ids"))).as_py() or 0)


def padded_tokens(lengths: Sequence[int], batching: Batching) -> int:
    """Tokens a forward pass processes for one step's examples under `batching` (real + padding)."""
    if not lengths:
        return 0
    if batching == "padding_free":
        return sum(lengths)
    if batching == "bfd":
        return len(bfd_pack(lengths, max(lengths))) * max(lengths)
    return len(lengths) * max(lengths)  # padded to the longest ("length_grouped" only changes the grouping)


# -- the collator ----------------------------------------------------------------------------------------------


@dataclass
class PackedCollator:
    """Turns a step's tokenised examples ({input_ids, labels}) into one packed batch.

    `rows="one"`: a single padding-free row for `varlen_attention`. `rows="bfd"`: best-fit-decreasing rows as long as
    the longest example, padded at the end (position ids keep counting there, labels are masked), for backends that
    build a block-diagonal mask from `position_ids`.
    """

    pad_token_id: int
    rows: Literal["one", "bfd"] = "one"

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        seqs = [list(f["input_ids"]) for f in features]
        labels = [list(f["labels"]) for f in features]
        lengths = [len(s) for s in seqs]
        groups = [list(range(len(seqs)))] if self.rows == "one" else bfd_pack(lengths, max(lengths))
        width = max(sum(lengths[i] for i in g) for g in groups)
        ids_rows, label_rows, pos_rows, cu = [], [], [], [0]
        for g in groups:
            ids: list[int] = []
            lab: list[int] = []
            pos: list[int] = []
            for i in g:
                ids += seqs[i]
                lab += [
                    IGNORE_INDEX,
                    *labels[i][1:],
                ]  # nothing predicts an example's first token from the last one
                pos += range(lengths[i])
                cu.append(cu[-1] + lengths[i])
            pad = width - len(ids)
            if pad:  # the padding tail is its own "sequence": fresh positions, no labels
                ids += [self.pad_token_id] * pad
                lab += [IGNORE_INDEX] * pad
                pos += range(pad)
                cu.append(cu[-1] + pad)
            ids_rows.append(ids)
            label_rows.append(lab)
            pos_rows.append(pos)
        batch: dict[str, Any] = {
            "input_ids": torch.tensor(ids_rows),
            "labels": torch.tensor(label_rows),
            "position_ids": torch.tensor(pos_rows),
        }
        if self.rows == "one":  # FlashAttention-style boundaries, for varlen_attention
            cu_t = torch.tensor(cu, dtype=torch.int32)
            batch.update(
                cu_seq_lens_q=cu_t, cu_seq_lens_k=cu_t, max_length_q=max(lengths), max_length_k=max(lengths)
            )
        return batch


# -- attention that never crosses a sequence boundary ------------------------------------------------------------


_FLASH_VARLEN: Any = None  # resolved on first use: a callable, or False where torch has no varlen kernel


def _flash_varlen() -> Any:
    """torch's FlashAttention varlen kernel as f(q, k, v, cu, max_len, scale) on (T, H, D), or False.

    Its causal switch moved between torch releases (`is_causal=True` in 2.10, `window_size=(-1, 0)` later).
    """
    global _FLASH_VARLEN
    if _FLASH_VARLEN is None:
        _FLASH_VARLEN = False
        try:
            import inspect

            from torch.nn.attention.varlen import varlen_attn

            params = inspect.signature(varlen_attn).parameters
            causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
            if "is_causal" not in params and "window_size" not in params:
                raise ImportError("varlen_attn has no causal switch")
            has_scale = "scale" in params

            def run(
                q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, n: int, scale: Any
            ) -> Any:
                extra = {"scale": scale} if has_scale else {}
                return varlen_attn(q, k, v, cu, cu, n, n, **causal, **extra)

            _FLASH_VARLEN = run
        except ImportError:
            pass
    return _FLASH_VARLEN


def varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A transformers attention function for one packed row: causal attention within each `cu_seq_lens_q` span.

    Inputs are (1, heads, tokens, head_dim); output is (1, tokens, heads, head_dim), as transformers expects.
    Anything that is not a packed row (generation, a padded batch) goes to plain SDPA.
    """
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1 or attention_mask is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and dropout == 0.0:
        q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # (T, H, D)
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        flash = _flash_varlen()
        if flash:
            cu32 = cu.to(device=q.device, dtype=torch.int32)
            try:
                out = flash(q, k, v, cu32, int(kwargs.get("max_length_q") or query.shape[2]), scaling)
                return out.unsqueeze(0), None
            except RuntimeError:  # e.g. a head size the kernel lacks: per-example SDPA from now on
                global _FLASH_VARLEN
                _FLASH_VARLEN = False
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    bounds = cu.tolist()
    parts = [
        F.scaled_dot_product_attention(
            query[:, :, s:e],
            key[:, :, s:e],
            value[:, :, s:e],
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
        )
        for s, e in itertools.pairwise(bounds)
        if e > s
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def _varlen_mask(**kwargs: Any) -> Any:
    """No mask for packed rows (the boundaries travel as cu_seq_lens); SDPA's mask for padded batches."""
    from transformers.masking_utils import sdpa_mask

    return None if kwargs.get("attention_mask") is None else sdpa_mask(**kwargs)


def register_varlen_attention() -> str:
    """Make `attn_implementation=ATTN_IMPLEMENTATION` available to transformers models (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, varlen_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _varlen_mask)
    return ATTN_IMPLEMENTATION


# -- choosing, and proving, the layout ---------------------------------------------------------------------------


def preferred_batching(model_config: Any, max_seq_length: int) -> tuple[Batching, str]:
    """The layout to try for this architecture, and why (the proof comes from `packing_is_exact`)."""
    cfg = getattr(model_config, "text_config", None) or model_config
    model_type = getattr(cfg, "model_type", "")
    if model_type in UNPACKABLE_MODEL_TYPES:
        return "length_grouped", f"{model_type} mixes attention kinds that packed sequences would break"
    window = getattr(cfg, "sliding_window", None)
    if window and window < max_seq_length and getattr(cfg, "use_sliding_window", True) is not False:
        return "bfd", "sliding-window attention needs a dense block-diagonal mask"
    return "padding_free", "per-sequence attention over one unpadded row"


def packing_is_exact(model: Any, batching: Batching, pad_token_id: int, *, tol: float = 2e-2) -> float:
    """Run three short sequences packed and one by one; return the largest relative logit difference.

    Raises `PackingMismatch` over `tol`: a model that ignores the restarting positions, or attends across a
    boundary, changes the later sequences' logits by O(1), far above float noise (bf16 noise is ~1e-2 relative).
    One backward pass through the packed batch proves the attention kernel's backward runs too. Uses no global RNG
    and leaves no gradients behind, so the run's determinism and resume are untouched.
    """
    device = next(p.device for p in model.parameters())
    vocab = int(model.get_input_embeddings().weight.shape[0])
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (11, 6, 5)]  # bfd: [11], [6, 5]
    rows: Literal["one", "bfd"] = "one" if batching == "padding_free" else "bfd"
    batch = PackedCollator(pad_token_id, rows)([{"input_ids": s, "labels": s} for s in seqs])
    inputs = {
        k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items() if k != "labels"
    }
    inputs["use_cache"] = (
        False  # with a KV cache transformers builds no packed mask (training has none either)
    )
    was_training = model.training
    model.eval()
    try:
        packed = model(**inputs).logits.float()
        packed.square().mean().backward()
        worst = 0.0
        with torch.no_grad():
            for i, s in enumerate(seqs):
                alone = model(input_ids=torch.tensor([s], device=device), use_cache=False).logits.float()[0]
                found = _locate(packed.detach(), seqs, i, rows)
                scale = alone.abs().max().clamp(min=1.0)
                worst = max(worst, float(((found - alone).abs().max() / scale).item()))
    finally:
        model.train(was_training)
        for p in model.parameters():
            p.grad = None
    if worst > tol:
        raise PackingMismatch(worst)
    return worst


def _locate(packed: torch.Tensor, seqs: list[list[int]], i: int, rows: str) -> torch.Tensor:
    """The packed logits of sequence i: where it sits in the row(s) the collator built."""
    lengths = [len(s) for s in seqs]
    groups = [list(range(len(seqs)))] if rows == "one" else bfd_pack(lengths, max(lengths))
    for r, grp in enumerate(groups):
        start = 0
        for j in grp:
            if j == i:
                return packed[r, start : start + lengths[i]]
            start += lengths[j]
    raise AssertionError("sequence not in any row")  # pragma: no cover


class PackingMismatch(RuntimeError):
    def __init__(self, worst: float) -> None:
        self.worst = worst
        super().__init__(f"packed and unpacked logits differ by {worst:.3g} (relative)")


class CountingCollator:
    """Wraps a collator and counts the tokens its batches carry: real ones and padding (for `padding_pct`)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.real = 0
        self.total = 0
        self.largest: tuple[int, ...] = ()  # shape of the biggest input_ids batch (what peak memory follows)

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        batch = self.inner(features)
        self.real += sum(len(f["input_ids"]) for f in features)
        self.total += int(batch["input_ids"].numel())
        if batch["input_ids"].numel() > (math.prod(self.largest) if self.largest else 0):
            self.largest = tuple(batch["input_ids"].shape)
        return batch

    @property
    def padding_pct(self) -> float:
        return round(100 * (self.total - self.real) / self.total, 2) if self.total else 0.0
