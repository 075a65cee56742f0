"""core.hyperparameters: validation and the "auto" rules (pure Python, no torch)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.hyperparameters import (
    MIN_LOSS_IMPROVEMENT,
    TRAIN_LOSS_FLOOR,
    DpoHyperparameters,
    SupervisedHyperparameters,
    auto_batch_size,
    auto_holdout_examples,
    auto_micro_batch_size,
    auto_n_epochs,
    base_learning_rate,
    data_sized_max_seq_length,
    early_stopping_decision,
    holdout_indices,
    longest_example_bytes,
    resolve_hyperparameters,
    token_sized_max_seq_length,
)


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (SupervisedHyperparameters, "batch_size", 0),
        (SupervisedHyperparameters, "batch_size", 257),
        (SupervisedHyperparameters, "n_epochs", 51),
        (SupervisedHyperparameters, "n_epochs", 0),
        (SupervisedHyperparameters, "learning_rate_multiplier", 0),
        (SupervisedHyperparameters, "learning_rate_multiplier", -1.0),
        (SupervisedHyperparameters, "batch_size", "big"),
        (DpoHyperparameters, "beta", 0),
        (DpoHyperparameters, "beta", 2.5),
    ],
)
def test_bad_values_name_the_field(cls: type, field: str, value: object) -> None:
    with pytest.raises(ValidationError) as exc:
        cls(**{field: value})
    assert field in str(exc.value)


def test_unknown_keys_are_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        SupervisedHyperparameters(n_epoch=3)  # type: ignore[call-arg]
    assert "n_epoch" in str(exc.value)
    with pytest.raises(ValidationError):
        SupervisedHyperparameters(beta=0.1)  # type: ignore[call-arg]  # beta is DPO-only


def test_everything_defaults_to_auto_and_round_trips() -> None:
    hp = SupervisedHyperparameters()
    assert hp.model_dump()["batch_size"] == "auto"
    assert (
        SupervisedHyperparameters.model_validate({"n_epochs": 2, "target_modules": ["q_proj"]}).n_epochs == 2
    )
    assert DpoHyperparameters(beta=2).beta == 2


def test_openai_like_auto_for_real_models() -> None:
    # 8B model, 500 examples: OpenAI's 3 epochs, ~2e-4 LoRA lr, a modest batch.
    r = resolve_hyperparameters(
        "supervised", None, n_examples=500, base_model_params=8_000_000_000, has_validation_file=True
    )
    assert r.n_epochs == 3
    assert 1.5e-4 < r.learning_rate < 2.5e-4
    assert r.batch_size == 32 and r.steps_per_epoch == 16 and r.total_steps == 48
    assert (r.lora_rank, r.lora_alpha, r.lora_dropout, r.target_modules) == (16, 32.0, 0.0, "all-linear")
    # Tiny files get more epochs (>= 100 exposures), huge ones fewer (<= 25,000).
    assert auto_n_epochs(10, 8_000_000_000) == 10
    assert auto_n_epochs(100_000, 8_000_000_000) == 1
    assert auto_n_epochs(1000, 70_000_000_000) == 3
    # Bigger models take smaller steps; DPO 10x smaller than SFT.
    assert base_learning_rate("supervised", 70_000_000_000) < base_learning_rate("supervised", 1_000_000_000)
    assert base_learning_rate("dpo", 7_000_000_000) == pytest.approx(2e-5)


def test_small_models_get_more_exposures_and_larger_steps() -> None:
    toy = 460_000
    assert auto_n_epochs(100, toy) > 30  # ~4,600 exposures: what a 0.5M model needs to memorise 100 codes
    assert auto_n_epochs(100, 135_000_000) < auto_n_epochs(100, toy)
    assert 3e-3 < base_learning_rate("supervised", toy) < 6e-3
    assert auto_batch_size(100) == 8 and auto_batch_size(3) == 1 and auto_batch_size(10_000) == 32


def test_explicit_values_win() -> None:
    hp = SupervisedHyperparameters(batch_size=4, n_epochs=2, learning_rate=1e-3, checkpoint_every_steps=5)
    r = resolve_hyperparameters("supervised", hp, n_examples=20, base_model_params=7_000_000_000)
    assert (r.batch_size, r.n_epochs, r.learning_rate, r.checkpoint_every_steps) == (4, 2, 1e-3, 5)
    assert r.learning_rate_multiplier == pytest.approx(5.0)  # reported relative to the base rate (2e-4)
    r = resolve_hyperparameters(
        "supervised", SupervisedHyperparameters(learning_rate_multiplier=2), n_examples=20
    )
    assert r.learning_rate == pytest.approx(4e-4)
    r = resolve_hyperparameters("dpo", DpoHyperparameters(beta=0.5), n_examples=20)
    assert r.beta == 0.5 and r.openai_view()["beta"] == 0.5
    assert resolve_hyperparameters("dpo", None, n_examples=20).beta == 0.1


def test_each_method_resolves_its_own_fields() -> None:
    from core.hyperparameters import KtoHyperparameters, hyperparameters_model

    toy = 500_000
    sft = resolve_hyperparameters("supervised", None, n_examples=40, base_model_params=toy)
    resolved = {m: resolve_hyperparameters(m, None, n_examples=40, base_model_params=toy) for m in
                ("dpo", "kto", "orpo", "simpo")}  # fmt: skip
    assert sft.beta is None and sft.loss_type is None and sft.gamma is None
    dpo, kto, orpo, simpo = resolved.values()
    assert (dpo.beta, dpo.loss_type, dpo.label_smoothing) == (0.1, "sigmoid", 0.0)
    assert (kto.beta, kto.desirable_weight, kto.undesirable_weight) == (0.1, 1.0, 1.0)
    assert (orpo.beta, simpo.beta, simpo.gamma) == (0.1, 2.0, 1.0)
    # ORPO carries the SFT loss and starts from the base model: SFT's rate; the others a 10x smaller one
    assert orpo.learning_rate == sft.learning_rate
    assert (
        dpo.learning_rate == kto.learning_rate == simpo.learning_rate == pytest.approx(sft.learning_rate / 10)
    )
    robust = resolve_hyperparameters("dpo", DpoHyperparameters(loss_type="robust"), n_examples=40)
    assert robust.label_smoothing == 0.1
    with pytest.raises(ValidationError, match="label_smoothing applies to loss_type 'robust' only"):
        DpoHyperparameters(label_smoothing=0.2)
    # another method's fields: refused unless this method has them too
    with pytest.raises(ValueError, match="desirable_weight does not apply to method 'dpo'"):
        resolve_hyperparameters("dpo", KtoHyperparameters(desirable_weight=2), n_examples=40)
    assert resolve_hyperparameters("orpo", DpoHyperparameters(beta=0.5), n_examples=40).beta == 0.5
    assert hyperparameters_model("simpo").model_validate({"gamma": 0.5}).gamma == 0.5  # type: ignore[attr-defined]


def test_kto_trains_at_least_two_examples_per_micro_batch() -> None:
    from core.hyperparameters import KtoHyperparameters

    for field in ("batch_size", "micro_batch_size"):
        with pytest.raises(ValidationError, match=f"kto needs a {field} of at least 2"):
            KtoHyperparameters.model_validate({field: 1})
    # auto: a small file's batch, a micro-batch the scheduler lowered to 1, or a long sequence's
    assert resolve_hyperparameters("kto", None, n_examples=10).batch_size == 2
    r = resolve_hyperparameters("kto", KtoHyperparameters(batch_size=8), n_examples=40, max_micro_batch=1)
    assert (r.micro_batch_size, r.gradient_accumulation_steps) == (2, 4)
    r = resolve_hyperparameters(
        "kto", KtoHyperparameters(batch_size=6, max_seq_length=8192), n_examples=40, micro_batch_tokens=8192
    )
    assert r.micro_batch_size == 2


def test_batch_never_exceeds_the_data_and_bad_method_fails() -> None:
    assert (
        resolve_hyperparameters(
            "supervised", SupervisedHyperparameters(batch_size=64), n_examples=10
        ).batch_size
        == 10
    )
    with pytest.raises(ValueError):
        resolve_hyperparameters("rlhf", None, n_examples=10)


def test_max_seq_length_follows_the_model() -> None:
    assert (
        resolve_hyperparameters("supervised", None, n_examples=10, base_model_max_length=1024).max_seq_length
        == 1024
    )
    assert (
        resolve_hyperparameters(
            "supervised", None, n_examples=10, base_model_max_length=131072
        ).max_seq_length
        == 8192
    )
    assert resolve_hyperparameters("supervised", None, n_examples=10).max_seq_length == 2048


def test_auto_max_seq_length_is_sized_from_the_longest_example_not_the_context() -> None:
    def auto(longest: int | None, context: int | None = 8192) -> int:
        return resolve_hyperparameters(
            "supervised", None, n_examples=10, base_model_max_length=context, longest_example_bytes=longest
        ).max_seq_length

    # A line of N bytes holds at most N tokens; 512 more cover what the template adds; then a power of two.
    assert auto(265) == data_sized_max_seq_length(265) == 1024  # SmolLM2's 8,192 positions no longer count
    assert auto(10) == 1024 and auto(513) == 2048
    assert auto(3000) == 4096
    assert auto(3000, context=2048) == 2048  # never more than the model's context
    assert auto(100_000, context=131072) == 8192  # nor the cap
    assert auto(None) == 8192  # files validated before the count existed: the model's context, as before
    explicit = SupervisedHyperparameters(max_seq_length=300)
    assert (
        resolve_hyperparameters(
            "supervised", explicit, n_examples=10, longest_example_bytes=265
        ).max_seq_length
        == 300
    )


def test_an_exact_token_count_sizes_max_seq_length_tighter_than_bytes() -> None:
    def auto(tokens: int | None, longest_bytes: int | None = 1300, context: int = 131072) -> int:
        return resolve_hyperparameters(
            "supervised", None, n_examples=10, base_model_max_length=context,
            longest_example_bytes=longest_bytes, longest_example_tokens=tokens,
        ).max_seq_length  # fmt: skip

    assert auto(300) == token_sized_max_seq_length(300) == 320  # 300 + 5%, up to a multiple of 64
    assert auto(None) == 2048  # only the bytes: the power-of-two bound
    assert auto(60) == 64 and auto(61) == 128  # 61 * 1.05 + 1 > 64
    assert auto(9000, context=8192) == 8192  # never more than the model's context


def test_auto_micro_batch_is_the_largest_divisor_within_the_token_budget() -> None:
    assert auto_micro_batch_size(32, 2048) == 4  # 8192 tokens per pass, 8 passes per step
    assert auto_micro_batch_size(32, 8192) == 1
    assert auto_micro_batch_size(32, 320) == 16  # 25 would fit the budget but does not divide 32
    assert auto_micro_batch_size(8, 512) == 8  # short examples: no accumulation at all
    assert auto_micro_batch_size(6, 2048) == 3  # a divisor, so every step sees the whole batch
    assert auto_micro_batch_size(7, 4096) == 1
    assert auto_micro_batch_size(32, 2048, token_budget=65536) == 32

    r = resolve_hyperparameters(
        "supervised", None, n_examples=1000, base_model_max_length=131072, longest_example_tokens=300,
        has_validation_file=True,
    )  # fmt: skip
    assert (r.batch_size, r.micro_batch_size, r.gradient_accumulation_steps) == (32, 16, 2)
    assert r.steps_per_epoch == 32  # optimizer steps: the effective batch decides them, not the micro-batch
    # The scheduler lowers the ceiling where a device is too small for the micro-batch.
    low = resolve_hyperparameters(
        "supervised", None, n_examples=1000, base_model_max_length=131072, longest_example_tokens=300,
        max_micro_batch=5, has_validation_file=True,
    )  # fmt: skip
    assert (low.micro_batch_size, low.gradient_accumulation_steps, low.total_steps) == (4, 8, r.total_steps)


def test_an_explicit_micro_batch_must_divide_an_explicit_batch() -> None:
    with pytest.raises(ValidationError) as exc:
        SupervisedHyperparameters(batch_size=8, micro_batch_size=3)
    assert "micro_batch_size 3 must divide batch_size 8" in str(exc.value)
    with pytest.raises(ValidationError):
        SupervisedHyperparameters(batch_size=4, micro_batch_size=8)
    ok = resolve_hyperparameters(
        "supervised", SupervisedHyperparameters(batch_size=8, micro_batch_size=2), n_examples=100
    )
    assert (ok.micro_batch_size, ok.gradient_accumulation_steps) == (2, 4)
    # With an "auto" batch_size, an explicit micro-batch is a ceiling: the largest divisor not above it.
    ceiling = resolve_hyperparameters(
        "supervised", SupervisedHyperparameters(micro_batch_size=3), n_examples=100
    )
    assert (ceiling.batch_size, ceiling.micro_batch_size, ceiling.gradient_accumulation_steps) == (8, 2, 4)


def test_longest_example_bytes_over_a_jobs_files() -> None:
    class Row:
        def __init__(self, longest: int | None) -> None:
            self.longest_example_bytes = longest

    assert longest_example_bytes([Row(300), Row(900)]) == 900  # the validation file counts too
    assert longest_example_bytes([Row(300), Row(None)]) is None  # one unknown: no bound at all
    assert longest_example_bytes([]) is None


def test_import_needs_no_torch() -> None:
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, core.hyperparameters; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_auto_epochs_turn_early_stopping_on_with_a_seeded_carve_out() -> None:
    # No validation file: 10% of the file held out (2..256), none below 20 examples.
    assert [auto_holdout_examples(n) for n in (10, 19, 20, 30, 100, 2559, 5000, 100_000)] == [
        0, 0, 2, 3, 10, 256, 256, 256,
    ]  # fmt: skip
    r = resolve_hyperparameters("supervised", None, n_examples=30, base_model_params=135_000_000)
    assert r.early_stopping and r.holdout_examples == 3 and r.n_examples == 27
    # The batch is sized by the whole file (memory estimates need not know of the carve-out); the epoch
    # ceiling, steps and the once-per-epoch evaluation by the examples trained on.
    assert r.batch_size == auto_batch_size(30) == 2
    assert r.n_epochs == auto_n_epochs(27, 135_000_000) and r.steps_per_epoch == 14
    assert r.total_steps == 14 * r.n_epochs and r.eval_every_steps == 14
    # With a validation file: nothing is held out; small files: nothing either, early stopping stays on.
    v = resolve_hyperparameters("supervised", None, n_examples=30, has_validation_file=True)
    assert v.early_stopping and v.holdout_examples == 0 and v.n_examples == 30 and v.steps_per_epoch == 15
    small = resolve_hyperparameters("supervised", None, n_examples=12)
    assert small.early_stopping and small.holdout_examples == 0 and small.n_examples == 12
    # DPO the same.
    d = resolve_hyperparameters("dpo", None, n_examples=100)
    assert d.early_stopping and d.holdout_examples == 10 and d.n_examples == 90


def test_explicit_epochs_train_them_all_unless_early_stopping_is_asked_for() -> None:
    explicit = resolve_hyperparameters("supervised", SupervisedHyperparameters(n_epochs=4), n_examples=100)
    assert not explicit.early_stopping and explicit.holdout_examples == 0 and explicit.n_examples == 100
    assert (explicit.steps_per_epoch, explicit.total_steps, explicit.eval_every_steps) == (13, 52, 6)
    asked = resolve_hyperparameters(
        "supervised", SupervisedHyperparameters(n_epochs=4, early_stopping=True), n_examples=100
    )
    assert asked.early_stopping and asked.holdout_examples == 10 and asked.n_epochs == 4
    off = resolve_hyperparameters(
        "supervised", SupervisedHyperparameters(early_stopping=False), n_examples=100
    )
    assert not off.early_stopping and off.holdout_examples == 0 and off.n_examples == 100
    # An explicit evaluation interval is kept (early stopping evaluates at each epoch's end as well).
    every = resolve_hyperparameters(
        "supervised", SupervisedHyperparameters(eval_every_steps=5), n_examples=100
    )
    assert every.early_stopping and every.eval_every_steps == 5
    with pytest.raises(ValidationError):
        SupervisedHyperparameters(early_stopping="yes")  # type: ignore[arg-type]
    # Rows resolved before early stopping existed still load, with it off.
    old = explicit.model_dump()
    del old["early_stopping"], old["holdout_examples"]
    assert type(explicit).model_validate(old).early_stopping is False


def test_the_carve_out_is_seeded() -> None:
    held = holdout_indices(30, 3, seed=0)
    assert held == sorted(held) and len(set(held)) == 3 and all(0 <= i < 30 for i in held)
    assert holdout_indices(30, 3, seed=0) == held  # every attempt of a job holds out the same lines
    assert {tuple(holdout_indices(30, 3, seed=s)) for s in range(5)} != {tuple(held)}


def test_early_stopping_stops_when_an_epoch_memorises_and_keeps_the_one_before() -> None:
    # SmolLM2-135M on 27 narrow style examples (docs/training.md#early-stopping), epoch 0 = before training.
    held, seen = [5.34, 2.58, 2.50], [4.96, 1.98, 1.04]
    first = early_stopping_decision(held[:2], seen[:2], [None, 3.64])
    assert not first.stop and first.keep_epoch == 1  # both losses fell alike: it learnt the task
    second = early_stopping_decision(held, seen, [None, 3.64, 1.83])
    # the held-out loss still fell (0.08), but far less than half the trained-on examples' (0.94)
    assert second.stop and second.keep_epoch == 1 and second.reason.startswith("memorising")
    # At half or more, the epoch generalised.
    assert not early_stopping_decision([5.0, 3.0, 2.5], [5.0, 3.0, 2.0], [None, 1, 1]).stop
    assert early_stopping_decision([5.0, 3.0, 2.55], [5.0, 3.0, 2.0], [None, 1, 1]).stop
    # Already the first epoch: the adapter is still that epoch, never the untrained base.
    assert early_stopping_decision([5.0, 4.9], [5.0, 2.0], [None, 3.0]).keep_epoch == 1


def test_early_stopping_stops_when_the_held_out_loss_rises() -> None:
    rose = early_stopping_decision([5.0, 2.855, 2.878], [5.0, 2.0, 1.1], [None, 3.6, 1.8])
    assert rose.stop and rose.keep_epoch == 1 and rose.reason.startswith("held-out loss rose")
    # An epoch that made both losses worse is noise, not overfitting: go on, the best epoch still the one to keep.
    noisy = early_stopping_decision([5.0, 3.0, 2.0, 2.1], [5.0, 3.0, 2.0, 2.2], [None] * 4)
    assert not noisy.stop and noisy.keep_epoch == 2
    later = early_stopping_decision([5.0, 3.0, 2.0, 2.1, 2.05], [5.0, 3.0, 2.0, 2.2, 1.5], [None] * 5)
    assert later.stop and later.keep_epoch == 2  # the best earlier epoch, not merely the previous one


def test_early_stopping_stops_once_converged() -> None:
    # The held-out answers became less than 1% more likely per token: converged, keep this epoch.
    small = 0.9 * MIN_LOSS_IMPROVEMENT
    converged = early_stopping_decision([3.0, 1.0, 1.0 - small], [3.0, 1.0, 1.0 - small], [None, 2.0, 1.0])
    assert converged.stop and converged.keep_epoch == 2 and converged.reason.startswith("converged")
    going = 1.1 * MIN_LOSS_IMPROVEMENT
    assert not early_stopping_decision([3.0, 1.0, 1.0 - going], [3.0, 1.0, 1.0 - going], [None, 2, 1]).stop
    # Near zero a relative threshold would never fire; this one does.
    assert early_stopping_decision([1.0, 0.02, 0.012], [1.0, 0.02, 0.012], [None, 0.1, 0.05]).stop


def test_without_held_out_data_only_convergence_of_the_training_loss_stops() -> None:
    none = [None, None, None]
    assert not early_stopping_decision(none, none, [None, 1.0, 2 * TRAIN_LOSS_FLOOR]).stop
    floor = early_stopping_decision(none, none, [None, 1.0, 0.9 * TRAIN_LOSS_FLOOR])
    assert floor.stop and floor.keep_epoch is None and "no held-out data" in floor.reason
    assert not early_stopping_decision([None], [None], [None]).stop  # nothing trained yet
