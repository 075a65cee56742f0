"""Packing keeps training identical: same labels, same loss and gradients as padded batches, no attention or loss
across example boundaries, and a model that would mix examples is caught before it trains."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from gpu_worker import packing  # noqa: E402
from gpu_worker.data import IGNORE_INDEX  # noqa: E402
from tests.support.code_task import chat_rows, code_task  # noqa: E402

# -- best-fit decreasing -----------------------------------------------------------------------------------------


def test_bfd_packs_every_item_once_within_capacity() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(300)]
    bins = packing.bfd_pack(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(300))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    # BFD uses at most 11/9 OPT + 6/9 bins; OPT >= total / capacity.
    assert len(bins) <= 11 / 9 * (sum(lengths) / 128) + 1


def test_bfd_is_best_fit_not_first_fit() -> None:
    # Decreasing: 6, 5, 4, 3. Best fit puts 4 with 6 (free 4 -> 0), not with 5 (free 5 -> 1); then 3 goes with 5.
    assert packing.bfd_pack([5, 6, 3, 4], 10) == [[1, 3], [0, 2]]
    assert packing.bfd_pack([12, 3], 10) == [[0], [1]]  # too long for any bin: a bin of its own


def test_padding_arithmetic_matches_the_reference_spread() -> None:
    """The bench's spread (median 220, sigma 0.8, clipped 16-2048) wastes ~61% when padded per random batch."""
    from tests.support.datasets import lognormal_lengths

    lengths = lognormal_lengths(20_000, median=220, sigma=0.8, lo=16, hi=2048, seed=0)
    batches = [lengths[i : i + 8] for i in range(0, len(lengths), 8)]
    real = sum(lengths)
    padded = sum(packing.padded_tokens(b, "padded") for b in batches)
    bfd = sum(packing.padded_tokens(b, "bfd") for b in batches)
    assert 0.55 < 1 - real / padded < 0.66
    assert sum(packing.padded_tokens(b, "padding_free") for b in batches) == real
    assert real < bfd < padded


# -- the collator ------------------------------------------------------------------------------------------------


def _features(lengths: list[int]) -> list[dict[str, list[int]]]:
    out = []
    for n, length in enumerate(lengths):
        ids = [10 * n + k for k in range(length)]
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (length // 2) + ids[length // 2 :]})
    return out


def test_padding_free_row_keeps_every_label_and_restarts_positions() -> None:
    feats = _features([5, 3, 4])
    batch = packing.PackedCollator(pad_token_id=0, rows="one")(feats)
    assert batch["input_ids"].tolist() == [sum((f["input_ids"] for f in feats), [])]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 5, 8, 12] and batch["max_length_q"] == 5
    # Labels: each example's own, except its first token (nothing may predict it from the previous example).
    expected = sum(([IGNORE_INDEX, *f["labels"][1:]] for f in feats), [])
    assert batch["labels"].tolist() == [expected]
    assert "attention_mask" not in batch  # no padding at all


def test_bfd_rows_pad_only_the_tail_and_mask_it() -> None:
    batch = packing.PackedCollator(pad_token_id=0, rows="bfd")(_features([6, 2, 3, 4]))
    # Capacity = longest (6): [6], [4, 2], [3 + 3 padding]
    assert batch["input_ids"].shape == (3, 6)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 2]]
    assert batch["labels"][2, 3:].tolist() == [IGNORE_INDEX] * 3
    assert "cu_seq_lens_q" not in batch


# -- on the real model: same loss, same gradients, no cross-talk ------------------------------------------------


@pytest.fixture(scope="module")
def lora_model(demo_model_dir: Path) -> Callable[[str], Any]:
    """demo-tiny + a LoRA adapter with non-zero B (so the adapter really changes the output), per attention."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def make(attn: str) -> Any:
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(demo_model_dir, attn_implementation=attn)
        base.config.use_cache = False  # as in training (with a KV cache, transformers builds no packed masks)
        model = get_peft_model(
            base, LoraConfig(r=8, target_modules="all-linear", init_lora_weights="gaussian")
        )
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        return model

    packing.register_varlen_attention()
    return make


@pytest.fixture(scope="module")
def rows(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, list[int]]]:
    """Tokenised chat examples of very different lengths (2-5x apart), as the trainer sees them."""
    from transformers import AutoTokenizer

    from gpu_worker.data import build_sft_rows, load_examples

    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    raw = chat_rows(code_task(6, seed=9))
    for k, r in enumerate(raw):
        r["messages"][0]["content"] += " and more words" * (3 * k)
        r["messages"][1]["content"] += " " + "abc " * k
    path = tmp_path_factory.mktemp("packing") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in raw))
    built = build_sft_rows(load_examples(path, "chat"), tok, data_format="chat", max_seq_length=1024)
    return [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in built]


def _padded(rows: list[dict[str, list[int]]]) -> dict[str, Any]:
    width = max(len(r["input_ids"]) for r in rows)
    pad = [width - len(r["input_ids"]) for r in rows]
    return {
        "input_ids": torch.tensor([r["input_ids"] + [0] * p for r, p in zip(rows, pad, strict=True)]),
        "labels": torch.tensor([r["labels"] + [IGNORE_INDEX] * p for r, p in zip(rows, pad, strict=True)]),
        "attention_mask": torch.tensor(
            [[1] * len(r["input_ids"]) + [0] * p for r, p in zip(rows, pad, strict=True)]
        ),
    }


def _loss_and_grads(model: Any, batch: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads


@pytest.mark.parametrize(("attn", "rows_mode"), [(packing.ATTN_IMPLEMENTATION, "one"), ("sdpa", "bfd")])
def test_packed_loss_and_gradients_equal_padded(
    lora_model: Callable[[str], Any], rows: list[dict[str, list[int]]], attn: str, rows_mode: str
) -> None:
    lengths = [len(r["input_ids"]) for r in rows]
    assert max(lengths) > 2 * min(lengths)  # a spread where padding matters
    model = lora_model(attn)
    padded_loss, padded_grads = _loss_and_grads(model, _padded(rows))
    batch = packing.PackedCollator(pad_token_id=0, rows=rows_mode)(rows)  # type: ignore[arg-type]
    packed_loss, packed_grads = _loss_and_grads(model, batch)
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    for name, g in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    # And the label tokens counted are the same: nothing gained or lost at the boundaries.
    assert int((batch["labels"][..., 1:] != IGNORE_INDEX).sum()) == sum(
        sum(t != IGNORE_INDEX for t in r["labels"][1:]) for r in rows
    )


@pytest.mark.parametrize(("attn", "rows_mode"), [(packing.ATTN_IMPLEMENTATION, "one"), ("sdpa", "bfd")])
def test_no_cross_contamination_between_packed_examples(
    lora_model: Callable[[str], Any], rows: list[dict[str, list[int]]], attn: str, rows_mode: str
) -> None:
    """Rewriting every token of one example leaves the logits of all the others unchanged, bit for bit."""
    model = lora_model(attn).eval()
    collate = packing.PackedCollator(pad_token_id=0, rows=rows_mode)  # type: ignore[arg-type]
    changed = [dict(r) for r in rows]
    victim = 2
    changed[victim] = {**rows[victim], "input_ids": [(t * 7 + 3) % 500 for t in rows[victim]["input_ids"]]}
    with torch.no_grad():
        a = collate(rows)
        b = collate(changed)
        out_a = model(**{k: v for k, v in a.items() if k != "labels"}).logits
        out_b = model(**{k: v for k, v in b.items() if k != "labels"}).logits
    # Where each example sits: pack "example number + 1" in place of its tokens (padding stays 0).
    where = collate(
        [{"input_ids": [k + 1] * len(r["input_ids"]), "labels": r["labels"]} for k, r in enumerate(rows)]
    )
    others = (where["input_ids"] != victim + 1) & (where["input_ids"] != 0)
    assert (a["input_ids"] != b["input_ids"]).any()  # the victim really changed...
    assert not (
        out_a[~others & (where["input_ids"] != 0)] == out_b[~others & (where["input_ids"] != 0)]
    ).all()
    torch.testing.assert_close(out_a[others], out_b[others], rtol=0, atol=1e-6)  # ...and nobody else noticed


def test_the_check_catches_a_model_that_attends_across_examples(lora_model: Callable[[str], Any]) -> None:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    def leaky(module: Any, q: Any, k: Any, v: Any, mask: Any, **kwargs: Any) -> Any:
        kwargs.pop("cu_seq_lens_q", None)  # ignores the boundaries: plain causal attention over the whole row
        return sdpa_attention_forward(module, q, k, v, None, **kwargs)

    AttentionInterface.register("leaky_test", leaky)
    AttentionMaskInterface.register("leaky_test", flash_attention_mask)
    assert packing.packing_is_exact(lora_model(packing.ATTN_IMPLEMENTATION), "padding_free", 0) < 1e-4
    with pytest.raises(packing.PackingMismatch):
        packing.packing_is_exact(lora_model("leaky_test"), "padding_free", 0)


def test_the_check_leaves_no_gradients_and_no_rng_trace(lora_model: Callable[[str], Any]) -> None:
    model = lora_model(packing.ATTN_IMPLEMENTATION)
    state = torch.get_rng_state()
    packing.packing_is_exact(model, "padding_free", 0)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.grad is None for p in model.parameters())
    assert model.training


# -- in the trainer ----------------------------------------------------------------------------------------------

SMALL = {"batch_size": 4, "n_epochs": 1, "checkpoint_every_steps": 100, "eval_every_steps": 100}


def _varied_rows(n: int) -> list[dict[str, Any]]:
    rows = chat_rows(code_task(n, seed=21))
    for k, r in enumerate(rows):
        r["messages"][0]["content"] += " please" * (k % 7) * 4
    return rows


def _train(make_config: Callable[..., Any], name: str, **overrides: Any) -> tuple[Any, Any]:
    from gpu_worker.reporting import RecordingReporter
    from gpu_worker.train import run_training

    config = make_config(_varied_rows(16), hp=SMALL, name=name)
    for key, value in overrides.items():
        setattr(config, key, value)
    reporter = RecordingReporter()
    return run_training(config, reporter), reporter


def _started(reporter: Any) -> dict[str, Any]:
    return next(e["data"] for e in reporter.events if e["message"].startswith("Fine-tuning started"))


def test_packed_training_matches_padded_training_step_by_step(make_config: Callable[..., Any]) -> None:
    packed, packed_rep = _train(make_config, "packed")
    padded, padded_rep = _train(make_config, "padded", packing=False)
    assert _started(packed_rep)["batching"] == "padding_free"
    assert _started(padded_rep)["batching"] == "padded"
    assert packed.metrics["padding_pct"] == 0.0 < padded.metrics["padding_pct"]
    assert len(packed.metrics_history) == len(padded.metrics_history) == 4
    for a, b in zip(packed.metrics_history, padded.metrics_history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["train_mean_token_accuracy"] == pytest.approx(b["train_mean_token_accuracy"], abs=1e-6)
    assert packed.trained_tokens == padded.trained_tokens


def test_falls_back_to_length_grouped_batches_when_the_check_fails(
    make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(*args: Any, **kwargs: Any) -> float:
        raise packing.PackingMismatch(0.5)

    monkeypatch.setattr(packing, "packing_is_exact", fails)
    result, reporter = _train(make_config, "fallback")
    started = _started(reporter)
    assert started["batching"] == "length_grouped"
    assert "packing check failed" in started["batching_reason"]
    assert result.stopped is None and result.adapter_dir is not None
    assert result.metrics["padding_pct"] > 0  # padded, but grouped: batches of similar lengths
    with pytest.raises(packing.PackingMismatch):  # packing=True means: packed or not at all
        _train(make_config, "forced", packing=True)


def test_tokenised_data_is_cached_by_file_tokenizer_and_length(
    make_config: Callable[..., Any], demo_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer

    from gpu_worker import data

    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _varied_rows(8)))
    cache = tmp_path / "cache"

    def load(max_len: int = 1024) -> tuple[Any, int, bool]:
        return data.cached_sft_dataset(
            path, tok, data_format="chat", max_seq_length=max_len, file_label="training", cache_dir=cache
        )

    first, tokens, hit = load()
    assert not hit and len(first) == 8 and tokens > 0
    real_build = data.build_sft_rows
    monkeypatch.setattr(data, "build_sft_rows", lambda *a, **k: pytest.fail("re-tokenised a cached file"))
    again, tokens_again, hit = load()
    assert hit and tokens_again == tokens and again["input_ids"] == first["input_ids"]
    assert again["labels"] == first["labels"]
    monkeypatch.setattr(data, "build_sft_rows", real_build)
    assert not load(max_len=512)[2]  # another max_seq_length: another entry
    path.write_text(path.read_text() + json.dumps(_varied_rows(9)[-1]) + "\n")
    changed, _, hit = load()
    assert not hit and len(changed) == 9  # the file changed: its hash did
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 3


def test_cpu_threads_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpu_worker import accel

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # `make test` sets it for its two workers
    assert accel.cpu_threads(459_392) == 1  # demo-tiny: one thread (measured faster)
    assert accel.cpu_threads(7_000_000_000) == accel.available_cpus() >= 1
    assert accel.cpu_threads(7_000_000_000, requested=3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # an operator's cap holds, unless the job asks for a count
    assert accel.cpu_threads(7_000_000_000) == 1
    assert accel.cpu_threads(7_000_000_000, requested=3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert accel.cpu_threads(7_000_000_000) == accel.available_cpus()
