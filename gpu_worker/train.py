"""Train one LoRA adapter with TRL + PEFT, on CPU or one GPU: SFT, DPO, KTO, ORPO, SimPO, or reinforcement
(GRPO with a grader as the reward, `gpu_worker.rl`).

Reads top to bottom, nanoGPT-style: threads and seed, data (tokenised once and cached; fails fast, before the
model loads), batch layout (packed and padding-free when provably exact, see `gpu_worker.packing`), model and
LoRA (`gpu_worker.accel`: unsloth or transformers + peft, QLoRA, gradient checkpointing), trainer arguments, a
callback that bridges the HF Trainer to our `TrainingReporter`, train (or resume), then the final adapter and a
full validation pass.

    result = run_training(TrainJobConfig(...), reporter)

Stopping: the reporter's `should_stop()` is polled after every optimizer step. "cancel" stops within that step
and writes nothing more; "pause" writes a checkpoint at the current step first. A later attempt passes that
checkpoint as `resume_from_checkpoint` and continues at the same step, with optimizer, scheduler, RNG and data
order restored, so its losses match an uninterrupted run.

Continued training (`config.parent_adapter`: the job's `model` is a fine-tuned model or checkpoint): the parent
adapter is merged into the base weights before the new LoRA is attached, so training starts from the parent model
and DPO's/KTO's reference (the model under the fresh, zero LoRA) is the parent model too. Every checkpoint and the final
adapter are stored as one exact LoRA over the base (the parent's and the new one concatenated, rank r1 + r2), with
the new LoRA alone beside it for resuming (`gpu_worker.parent_adapter`, docs/training.md#continue-training).

Early stopping (`hp.early_stopping`, on for "auto" epochs): the loss on held-out examples (the validation
file's, else `hp.holdout_examples` training examples held out by the job's seed) and on as many trained-on ones,
before training and after every epoch, decides whether to go on, and which epoch's weights become the adapter
(`gpu_worker.early_stopping`, docs/training.md).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# TRL pings the Hugging Face Hub for every trainer it creates; a self-hosted service reports nothing.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# ORPO and CPO (SimPO) live in trl.experimental, which warns on import; the pinned TRL is what we test against.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

# isort: off
from gpu_worker import accel  # first: on CUDA workers with unsloth, it must be imported before transformers

accel.import_unsloth_first()
# isort: on

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer, TrainerCallback  # noqa: E402

from core import graders  # noqa: E402
from core.hyperparameters import ResolvedHyperparameters, holdout_indices  # noqa: E402
from gpu_worker import early_stopping, packing, parent_adapter, rl  # noqa: E402
from gpu_worker.config import TrainJobConfig  # noqa: E402
from gpu_worker.data import (  # noqa: E402
    TrainingDataError,
    build_dpo_rows,
    build_kto_rows,
    cached_sft_dataset,
    count_trainable_tokens,
    load_examples,
    preference_dataset,
)
from gpu_worker.reporting import StopRequest, TrainingReporter  # noqa: E402

MAX_LOGGED_STEPS = 500  # log every step up to this many steps, then throttle to ~this many rows per run


@dataclass
class TrainResult:
    stopped: StopRequest | None  # None: finished; "cancel" / "pause": stopped on request
    adapter_dir: Path | None  # final PEFT adapter (+ tokenizer and chat template); None unless finished
    global_step: int
    total_steps: int
    # Loss-bearing tokens actually trained on: unmasked label tokens per epoch (SFT), chosen+rejected
    # completion tokens (DPO, ORPO, SimPO) or completion tokens (KTO), times the epochs run (fractional when
    # stopped early).
    trained_tokens: int
    resolved_hyperparameters: ResolvedHyperparameters
    metrics: dict[str, Any] = field(default_factory=dict)  # last row, + full_valid_* when validated
    metrics_history: list[dict[str, Any]] = field(default_factory=list)  # one row per logging step
    # With early stopping, when finished: per-epoch losses, the epoch it stopped after and the epoch kept.
    early_stopping: dict[str, Any] | None = None


def run_training(config: TrainJobConfig, reporter: TrainingReporter) -> TrainResult:
    hp = config.hyperparameters
    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    try:
        return _run(config, reporter, hp, t0)
    finally:
        torch.set_num_threads(old_threads)  # tests and the worker run several jobs in one process


def _run(
    config: TrainJobConfig, reporter: TrainingReporter, hp: ResolvedHyperparameters, t0: float
) -> TrainResult:
    # -- device, dtype, threads ----------------------------------------------------------------------------
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    model_config = transformers.AutoConfig.from_pretrained(config.base_model_path, trust_remote_code=False)
    n_params_est = _estimate_params(model_config)
    if not cuda or config.max_threads:
        torch.set_num_threads(accel.cpu_threads(n_params_est, config.max_threads))

    # -- data: tokenise and check everything before the model is loaded (fail in seconds, not minutes) ------
    tokenizer = AutoTokenizer.from_pretrained(config.base_model_path, trust_remote_code=False)
    if config.chat_template is not None:
        # The model's custom training template: SFT masking, DPO and the tokenizer saved with the adapter use it.
        tokenizer.chat_template = config.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out of the loss, so eos is safe here
    sft = config.method == "supervised"
    import datasets  # heavy import; only the worker needs it

    datasets.disable_progress_bars()  # progress goes through `reporter`; bars would only clutter worker logs
    file_examples = (
        hp.n_examples + hp.holdout_examples
    )  # the validator's count the hyperparameters were resolved on
    holdout = holdout_indices(file_examples, hp.holdout_examples, config.seed) if hp.holdout_examples else []
    reward: rl.GraderReward | None = None
    valid_ds: Any = None
    if config.method == "reinforcement":  # prompts only: the answers are sampled while training
        assert config.grader is not None
        grader = graders.check_grader(config.grader)
        call = rl.model_call(config.grader_servers) if graders.score_model_names(config.grader) else None
        reward = rl.GraderReward(grader, call)
        train_ds, n_prompts = rl.prompt_dataset(config.training_file, grader)
        _check_count(n_prompts, file_examples)
        tokens_per_epoch, cached, held_ds = 0, False, None
        if config.validation_file is not None:
            valid_ds, _ = rl.prompt_dataset(config.validation_file, grader, label="validation")
    else:
        train_ds, tokens_per_epoch, cached, held_ds = _prepare(
            config, tokenizer, config.training_file, "training", expected=file_examples, holdout=holdout
        )
        if config.validation_file is not None:
            valid_ds, _, _, _ = _prepare(config, tokenizer, config.validation_file, "validation")
    eval_ds = valid_ds.select(range(min(len(valid_ds), config.max_eval_examples))) if valid_ds else held_ds
    if held_ds is not None:
        reporter.event(
            f"Held out {len(held_ds)} of the {file_examples} training examples to evaluate after every epoch for "
            f"early stopping (no validation file); training on the other {len(train_ds)}",
            data={
                "holdout_examples": len(held_ds),
                "trained_examples": len(train_ds),
                "lines": [i + 1 for i in holdout],
            },
        )
    max_len = packing.max_length(train_ds) if sft else hp.max_seq_length

    # -- batch layout: packed and padding-free where provably exact (SFT), else length-grouped ---------------
    batching: packing.Batching = "padded"
    why = (
        "packing turned off for this run" if sft else f"TRL's {config.method} trainer batches its rows itself"
    )
    if sft and config.packing is not False:
        batching, why = packing.preferred_batching(model_config, hp.max_seq_length)
    attn = packing.register_varlen_attention() if batching == "padding_free" else "sdpa"

    # -- model + LoRA (continued training: on the base with the parent adapter merged in) -------------------
    # Seed *before* LoRA is attached: adapter init consumes RNG, and a resumed run must see the same stream.
    transformers.set_seed(config.seed)
    loaded = accel.load_model_with_lora(
        config.base_model_path, hp, cuda=cuda, dtype=dtype, n_params=n_params_est, attn_implementation=attn,
        seed=config.seed, use_unsloth=config.use_unsloth, parent_adapter=config.parent_adapter,
    )  # fmt: skip
    peft_model = loaded.model
    for note in loaded.notes:
        reporter.event(f"Training backend: {note}", data={"backend": loaded.backend})
    if config.parent_adapter is not None:
        reporter.event(
            f"Continuing from the fine-tuned model's adapter (merged into the base weights); a new LoRA of rank "
            f"{hp.lora_rank} trains on top, stored together with it as one adapter",
            data={"lora_rank": hp.lora_rank},
        )
    if batching in ("padding_free", "bfd"):
        try:  # prove on this very model that packed rows give the logits of separate ones
            packing.packing_is_exact(peft_model, batching, tokenizer.pad_token_id)
        except Exception as exc:  # any failure: length-grouped batches are always correct
            if config.packing:
                raise
            batching, why = "length_grouped", f"packing check failed on this model ({exc})"
            if attn != "sdpa" and loaded.backend == "transformers":
                peft_model.get_base_model().set_attn_implementation("sdpa")
    collator = None
    if batching in ("padding_free", "bfd"):
        collator = packing.PackedCollator(
            tokenizer.pad_token_id, "one" if batching == "padding_free" else "bfd"
        )
    n_params = sum(p.numel() for p in peft_model.parameters())
    n_trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)

    # -- trainer arguments ---------------------------------------------------------------------------------
    log_every = max(1, math.ceil(hp.total_steps / MAX_LOGGED_STEPS))
    common: dict[str, Any] = {
        "output_dir": str(config.output_dir / "checkpoints"),
        # batch_size is the effective batch: micro-batches of micro_batch_size, accumulated per optimizer step
        "per_device_train_batch_size": hp.micro_batch,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "per_device_eval_batch_size": hp.micro_batch,
        "num_train_epochs": hp.n_epochs,
        "learning_rate": hp.learning_rate,
        "lr_scheduler_type": "linear",  # OpenAI-style linear decay after warmup
        "warmup_steps": hp.warmup_ratio,  # a float < 1 is a ratio of total steps (transformers 5)
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "seed": config.seed,
        "data_seed": config.seed,
        "logging_steps": log_every,
        "save_strategy": "steps",
        "save_steps": hp.checkpoint_every_steps,
        "save_total_limit": config.keep_local_checkpoints,
        "eval_strategy": "steps" if eval_ds is not None else "no",
        "eval_steps": hp.eval_every_steps,
        "bf16": dtype == torch.bfloat16,  # TRL defaults bf16=True, which on CPU means slow autocast
        # Models over 1B on CUDA: recompute activations in backward (~20-30% slower, far less memory).
        "gradient_checkpointing": loaded.gradient_checkpointing and loaded.backend != "unsloth",
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "train_sampling_strategy": "group_by_length" if batching == "length_grouped" else "random",
        "use_cpu": not cuda,
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "max_length": hp.max_seq_length,  # nothing is longer (checked above), so TRL truncates nothing
    }
    # Early stopping compares the loss on held-out examples with the loss on as many trained-on ones.
    stop_held_ds, seen_ds, stopping = held_ds, None, None
    if hp.early_stopping and valid_ds is not None:
        stop_held_ds = _not_trained_on(eval_ds, train_ds, reporter)
    if hp.early_stopping:
        if stop_held_ds is not None:
            seen_ds = early_stopping.seen_sample(train_ds, len(stop_held_ds), config.seed)
        stopping = early_stopping.EarlyStopping(held_out=seen_ds is not None)
    bridge = _ReporterBridge(
        reporter, hp.total_steps, tokens_per_epoch, stopping=stopping,
        held_ds=None if stop_held_ds is eval_ds else stop_held_ds, seen_ds=seen_ds, reward=reward,
        parent_adapter=config.parent_adapter,
    )  # fmt: skip
    trainer: Any
    if reward is not None:
        trainer = rl.grpo_trainer(
            model=peft_model, tokenizer=tokenizer, hp=hp, common=common, reward=reward, train_ds=train_ds,
            eval_ds=eval_ds, callbacks=[bridge],
        )  # fmt: skip
    elif not sft:
        config_class, trainer_class, own = _preference_trainer(config.method, hp)
        trainer = trainer_class(
            model=peft_model, args=config_class(**{**common, **own}), train_dataset=train_ds,
            eval_dataset=eval_ds, processing_class=tokenizer, callbacks=[bridge],
        )  # fmt: skip
        if config.method in ("orpo", "simpo"):
            _tokenise_in_evaluate(trainer)
    else:
        from trl.trainer.sft_config import SFTConfig

        # Our rows already carry input_ids and labels (assistant-only / completion-only, weight 0 masked).
        args = SFTConfig(**common, dataset_kwargs={"skip_prepare_dataset": True})
        step_logits = hp.micro_batch * max_len * int(model_config.get_text_config().vocab_size)
        plain_head = not cuda and step_logits <= accel.PLAIN_HEAD_MAX_LOGITS
        trainer = accel.sft_trainer_class(plain_head)(
            model=peft_model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
            processing_class=tokenizer, callbacks=[bridge], data_collator=collator,
        )  # fmt: skip
    bridge.trainer = trainer
    counter = packing.CountingCollator(trainer.data_collator) if sft else None
    trainer.data_collator = counter or trainer.data_collator
    trainer.remove_callback(transformers.PrinterCallback)  # we report through `reporter`, not stdout

    plan = ""
    if hp.early_stopping:
        held_out = "the validation file" if valid_ds is not None else "the held-out examples"
        plan = (
            f"; up to {hp.n_epochs} epochs, stopping early once the loss on {held_out} stops improving, or "
            "improves far less than on the examples trained on"
            if seen_ds is not None
            else f"; up to {hp.n_epochs} epochs, stopping early once the training loss has converged"
        )
    reporter.event(
        f"Fine-tuning started: {config.method}, {hp.n_examples} examples, {hp.n_epochs} epochs x "
        f"{hp.steps_per_epoch} steps of batch {hp.batch_size} = {hp.total_steps} steps, lr {hp.learning_rate:.3g}"
        + (
            f" (micro-batches of {hp.micro_batch} x {hp.gradient_accumulation_steps} accumulation steps)"
            if hp.gradient_accumulation_steps > 1
            else ""
        )
        + plan,
        data={
            "batch_size": hp.batch_size,
            "micro_batch_size": hp.micro_batch,
            "gradient_accumulation_steps": hp.gradient_accumulation_steps,
            "parameters": n_params,
            "trainable_parameters": n_trainable,
            "trainable_percent": round(100 * n_trainable / n_params, 3),
            "trainable_tokens_per_epoch": tokens_per_epoch,
            "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
            "dtype": str(dtype).removeprefix("torch."),
            "backend": loaded.backend,
            "quantization": loaded.quantization,
            "gradient_checkpointing": loaded.gradient_checkpointing,
            "batching": batching,
            "batching_reason": why,
            "tokenized_from_cache": cached,
            "log_every_steps": log_every,
            "early_stopping": hp.early_stopping,
        },
    )

    # -- train (or resume) ---------------------------------------------------------------------------------
    resume = None
    if config.resume_from_checkpoint is not None:
        state_file = config.resume_from_checkpoint / "trainer_state.json"
        if not state_file.is_file():
            raise FileNotFoundError(
                f"{config.resume_from_checkpoint} is not a complete checkpoint (no trainer_state.json)"
            )
        saved_state = json.loads(state_file.read_text())
        resumed_step = saved_state["global_step"]
        resume = str(config.resume_from_checkpoint)
        if config.parent_adapter is not None:  # resume the new LoRA, not the stored concatenation
            parent_adapter.restore_trained(config.resume_from_checkpoint)
        # TRL's DPO trainer keeps its reference as a second adapter, "ref" (a frozen copy of the seeded initial
        # one, which it makes again here), saved in a subdirectory; with one there, the HF Trainer would load
        # only the subdirectories' adapters and resume from an untrained "default".
        shutil.rmtree(config.resume_from_checkpoint / "ref", ignore_errors=True)
        if stopping is not None:
            stopping.load(config.resume_from_checkpoint)
        reporter.event(
            f"Resumed from checkpoint at step {resumed_step}",
            data={
                "step": resumed_step,
                "trained_tokens": round(tokens_per_epoch * (saved_state.get("epoch") or 0.0)),
            },
        )
    t_train, cpu_train = time.perf_counter(), time.process_time()
    trainer.train(resume_from_checkpoint=resume)
    train_s, train_cpu_s = time.perf_counter() - t_train, time.process_time() - cpu_train
    state = trainer.state
    trained_tokens = bridge.trained_tokens(state.epoch)
    result = TrainResult(
        stopped=bridge.stopped,
        adapter_dir=None,
        global_step=state.global_step,
        total_steps=hp.total_steps,
        trained_tokens=trained_tokens,
        resolved_hyperparameters=hp,
        metrics=dict(bridge.history[-1]) if bridge.history else {},
        metrics_history=bridge.history,
    )
    if bridge.stopped is not None:
        reporter.event(
            f"Training {'paused' if bridge.stopped == 'pause' else 'cancelled'} at step {state.global_step}"
        )
        return result

    # -- final adapter (with early stopping: the best epoch's) + full validation --------------------------
    if stopping is not None:
        message, result.early_stopping = stopping.finish(trainer.model, hp.n_epochs)
        reporter.event(message, data=result.early_stopping)
        result.metrics["epochs_trained"] = round(state.epoch or 0.0, 4)
        if result.early_stopping["kept_epoch"] is not None:
            result.metrics["kept_epoch"] = result.early_stopping["kept_epoch"]
    adapter_dir = config.output_dir / "adapter"
    trainer.model.save_pretrained(adapter_dir, safe_serialization=True)
    if config.parent_adapter is not None:  # one LoRA over the base: the parent's and the new one concatenated
        parent_adapter.make_servable(adapter_dir, config.parent_adapter)
    tokenizer.save_pretrained(adapter_dir)  # carries the chat template the adapter was trained with
    result.adapter_dir = adapter_dir
    if valid_ds is not None:
        bridge.final_eval = True
        trainer.evaluate(eval_dataset=valid_ds, metric_key_prefix="full_valid")
        result.metrics.update(bridge.full_valid)
    elapsed = time.perf_counter() - t0
    result.metrics["trained_tokens"] = trained_tokens
    result.metrics["train_s"] = round(train_s, 2)
    result.metrics["train_cpu_s"] = round(train_cpu_s, 2)  # CPU time of this process (all its threads)
    if counter is not None:
        result.metrics["padding_pct"] = counter.padding_pct  # share of processed tokens that were padding
        result.metrics["largest_batch_shape"] = list(counter.largest)
    result.metrics["elapsed_s"] = round(elapsed, 2)
    if cuda:
        result.metrics["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    reporter.event(
        f"Fine-tuning finished: {state.global_step} steps, {trained_tokens} trained tokens in {elapsed:.1f}s",
        data={k: v for k, v in result.metrics.items() if isinstance(v, int | float)},
    )
    return result


def _prepare(
    config: TrainJobConfig,
    tokenizer: Any,
    path: Path,
    label: str,
    *,
    expected: int | None = None,
    holdout: list[int] | None = None,
) -> tuple[Any, int, bool, Any]:
    """The file as a Dataset for the trainer, its loss-bearing tokens per epoch, whether it was cached, and the
    examples at the `holdout` indices as a Dataset of their own (None without), left out of the first and
    of the token count. `expected`: the examples the hyperparameters were resolved for."""

    hp = config.hyperparameters
    held = set(holdout or [])
    if config.method != "supervised":
        examples = load_examples(path, config.data_format)
        _check_count(len(examples), expected)
        build = build_kto_rows if config.method == "kto" else build_dpo_rows
        rows, tokens = build(examples, tokenizer, max_seq_length=hp.max_seq_length, file_label=label)

        def dataset(subset: list[dict[str, Any]]) -> Any:
            return preference_dataset(config.method, subset, tokenizer, seed=config.seed)

        if not held:
            return dataset(rows), tokens, False, None
        held_examples = [examples[i] for i in sorted(held)]
        _, held_tokens = build(held_examples, tokenizer, max_seq_length=hp.max_seq_length)
        trained = [row for i, row in enumerate(rows) if i not in held]
        return dataset(trained), tokens - held_tokens, False, dataset([rows[i] for i in sorted(held)])
    ds, tokens, cached = cached_sft_dataset(
        path, tokenizer, data_format=config.data_format, max_seq_length=hp.max_seq_length, file_label=label,
        cache_dir=config.cache_dir,
    )  # fmt: skip
    _check_count(len(ds), expected)
    if not held:
        return ds, tokens, cached, None
    held_ds = ds.select(sorted(held))
    held_tokens = count_trainable_tokens([{"labels": labels} for labels in held_ds["labels"]])
    return ds.select([i for i in range(len(ds)) if i not in held]), tokens - held_tokens, cached, held_ds


def _preference_trainer(method: str, hp: ResolvedHyperparameters) -> tuple[Any, Any, dict[str, Any]]:
    """TRL's config and trainer classes for a preference method, and the config fields of its own."""
    if method == "dpo":
        from trl.trainer.dpo_config import DPOConfig
        from trl.trainer.dpo_trainer import DPOTrainer

        # rows resolved before loss_type existed trained the sigmoid loss
        own: dict[str, Any] = {
            "beta": hp.beta,
            "loss_type": [hp.loss_type or "sigmoid"],
            "label_smoothing": hp.label_smoothing or 0.0,
        }
        return DPOConfig, DPOTrainer, own
    if method == "kto":
        from trl.trainer.kto_config import KTOConfig
        from trl.trainer.kto_trainer import KTOTrainer

        # Its KL term pairs each prompt with the next example's answer in a micro-batch read in order (the rows
        # were shuffled by the job's seed instead). Those mismatched pairs may run past max_length; TRL then
        # truncates them, which only affects the KL estimate.
        own = {"beta": hp.beta, "desirable_weight": hp.desirable_weight,
               "undesirable_weight": hp.undesirable_weight, "train_sampling_strategy": "sequential"}  # fmt: skip
        return KTOConfig, KTOTrainer, own
    # ORPO and CPO add eos to each answer and may add BOS to the prompt: room for both, so nothing is truncated.
    # Their collator needs the text columns too.
    room = {"max_length": hp.max_seq_length + 2, "remove_unused_columns": False}
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, ORPOTrainer, {**room, "beta": hp.beta}
    if method == "simpo":  # CPO's SimPO loss, without CPO's behaviour-cloning (SFT) term
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        own = {**room, "beta": hp.beta, "loss_type": "simpo", "simpo_gamma": hp.gamma, "cpo_alpha": 0.0}
        return CPOConfig, CPOTrainer, own
    raise ValueError(f"no preference trainer for method {method!r}")


def _tokenise_in_evaluate(trainer: Any) -> None:
    """ORPO's and CPO's evaluate() takes only rows they tokenised at construction; early stopping and the final
    validation pass hand it others, so tokenise those first, as the trainer tokenised its own."""
    evaluate = trainer.evaluate

    def tokenising_evaluate(eval_dataset: Any = None, **kwargs: Any) -> Any:
        if eval_dataset is not None and "chosen_input_ids" not in eval_dataset.column_names:
            eval_dataset = eval_dataset.map(trainer.tokenize_row)
        return evaluate(eval_dataset=eval_dataset, **kwargs)

    trainer.evaluate = tokenising_evaluate


def _not_trained_on(eval_ds: Any, train_ds: Any, reporter: TrainingReporter) -> Any:
    """The validation examples early stopping can judge by: those not also in the training file (an example
    trained on measures memorising, not generalising). None when there are none; `eval_ds` itself when all."""
    fresh = early_stopping.rows_not_in(eval_ds, train_ds)
    if len(fresh) == len(eval_ds):
        return eval_ds
    if fresh:
        how = f"early stopping judges by the other {len(fresh)}"
    else:
        how = "no held-out data: early stopping stops once the training loss has converged"
    reporter.event(
        f"{len(eval_ds) - len(fresh)} of the {len(eval_ds)} validation examples evaluated are also in the "
        f"training file; {how}",
        data={"validation_examples_trained_on": len(eval_ds) - len(fresh)},
    )
    return eval_ds.select(fresh) if fresh else None


def _check_count(n: int, expected: int | None) -> None:
    if expected is not None and n != expected:
        # The hyperparameters were resolved on the validator's count; a mismatch means a different file.
        raise TrainingDataError(f"training file has {n} examples, hyperparameters expect {expected}")


def _estimate_params(model_config: Any) -> int:
    """Rough parameter count from the config alone (12 d^2 per layer + embeddings), to pick threads early."""
    cfg = getattr(model_config, "text_config", None) or model_config
    d = int(getattr(cfg, "hidden_size", 4096))
    layers = int(getattr(cfg, "num_hidden_layers", 32))
    vocab = int(getattr(cfg, "vocab_size", 32000))
    return 12 * d * d * layers + 2 * vocab * d


class _ReporterBridge(TrainerCallback):
    """Turns Trainer callbacks into reporter calls, and reporter stop requests into Trainer control flags.

    With early stopping (`stopping`) it also evaluates at every epoch's end (and once before training) on the
    held-out examples (`held_ds`; None: the trainer's eval set) and on as many trained-on ones (`seen_ds`), and
    stops training when `stopping` says so."""

    def __init__(
        self, reporter: TrainingReporter, total_steps: int, tokens_per_epoch: int, *,
        stopping: early_stopping.EarlyStopping | None = None, held_ds: Any = None, seen_ds: Any = None,
        reward: rl.GraderReward | None = None, parent_adapter: Path | None = None,
    ) -> None:  # fmt: skip
        self.reporter = reporter
        self.total_steps = total_steps
        self.tokens_per_epoch = tokens_per_epoch
        self.trainer: Any = None
        self.history: list[dict[str, Any]] = []
        self.pending: dict[str, Any] | None = None  # a train row waiting for this step's validation numbers
        self.stopped: StopRequest | None = None
        self.final_eval = False
        self.full_valid: dict[str, Any] = {}
        self.stopping = stopping
        self.held_ds = held_ds
        self.seen_ds = seen_ds
        self.steps_per_epoch = 0
        self.inner = False  # inside our own evaluation: its callbacks are not the run's
        self.reward = reward  # reinforcement: the grader, which counts the sampled (trained) tokens
        self.parent_adapter = parent_adapter  # continued training: checkpoints store the parent's LoRA too

    def trained_tokens(self, epoch: float | None) -> int:
        """So far in the whole job: the sampled completion tokens (reinforcement), else the file's loss-bearing
        tokens per epoch times the epochs run."""
        if self.reward is not None:
            return self.reward.completion_tokens
        return round(self.tokens_per_epoch * (epoch or 0.0))

    @property
    def held_out(self) -> bool:
        return self.stopping is not None and self.stopping.held_out

    def on_train_begin(self, args, state, control, **kwargs):
        self.steps_per_epoch = max(1, state.max_steps // max(1, math.ceil(args.num_train_epochs)))
        if self.stopping is not None:
            self.stopping.last_logged_step = state.global_step
            if state.global_step == 0:
                self.stopping.baseline(lambda: (self._loss(self.held_ds), self._loss(self.seen_ds)))
        return control

    def _loss(self, dataset: Any) -> float:
        """The mean loss on `dataset` (None: the trainer's eval set), outside the run's metrics."""
        self.inner = True
        try:
            metrics = self.trainer.evaluate(eval_dataset=dataset, metric_key_prefix="early_stopping")
        finally:
            self.inner = False
        return float(metrics["early_stopping_loss"])

    def _epoch_end(self, state: Any) -> bool:
        return (
            self.stopping is not None
            and state.global_step > 0
            and state.global_step % self.steps_per_epoch == 0
        )

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True  # always checkpoint the final step: it is the finished model
            control.should_log = True  # and report its numbers even when logging is throttled
        epoch_end = self._epoch_end(state)
        if epoch_end:  # the epoch's training loss, and its held-out loss, decide whether to go on
            control.should_log = True
            control.should_evaluate = control.should_evaluate or self.held_out
        request = self.reporter.should_stop()
        if request == "cancel":
            self.stopped = "cancel"
            control.should_training_stop = True
            control.should_save = False
        elif request == "pause":
            self.stopped = "pause"
            control.should_training_stop = True
            control.should_save = True  # the checkpoint that the resumed attempt will start from
            # at an epoch's end, still evaluate: the checkpoint then holds that epoch's early-stopping verdict
            control.should_evaluate = epoch_end and self.held_out
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.inner or self.final_eval or not self.held_out or self.stopped == "cancel":
            return control
        assert self.stopping is not None
        if (
            self._epoch_end(state)
            and self.stopping.awaits_losses(state.global_step)
            and "eval_loss" in (metrics or {})
        ):
            held = self._loss(self.held_ds) if self.held_ds is not None else float(metrics["eval_loss"])
            self.stopping.set_losses(held, self._loss(self.seen_ds))
            self._decide(control)
        return control

    def _decide(self, control: Any) -> None:
        assert self.stopping is not None
        if self.stopping.decide(self.trainer.model):
            control.should_training_stop = True
            if self.stopped == "pause":  # paused at the very epoch training ends after: it is finished
                self.stopped = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if self.final_eval:
            if "full_valid_loss" in logs:
                self.full_valid = {
                    "full_valid_loss": logs["full_valid_loss"],
                    "full_valid_mean_token_accuracy": logs.get("eval_mean_token_accuracy"),
                }
                self.full_valid.update(
                    {f"full_{k}": v for k, v in rl.reward_metrics(logs, self.reward, "valid").items()}
                )
            return
        if self.inner:
            return
        if self.stopping is not None and "loss" in logs and self.stopped != "cancel":
            self.stopping.log_train_loss(state.global_step, float(logs["loss"]))
            if self._epoch_end(state):
                self.stopping.end_epoch(state.global_step // self.steps_per_epoch, state.global_step)
                if not self.held_out:  # no held-out losses to wait for: the training loss decides
                    self._decide(control)
        if "eval_loss" in logs:
            if self.pending is None or self.pending["step"] != state.global_step:
                self._flush()  # this step had no training log (throttled): a validation-only row
                self.pending = {"step": state.global_step, "total_steps": self.total_steps}
            self.pending["valid_loss"] = logs["eval_loss"]
            self.pending["valid_mean_token_accuracy"] = logs.get("eval_mean_token_accuracy")
            self.pending.update(rl.reward_metrics(logs, self.reward, "valid"))
            self._flush()
        elif "loss" in logs:  # a training log (the end-of-run summary has train_loss instead)
            self._flush()
            self.pending = {
                "step": state.global_step,
                "total_steps": self.total_steps,
                "epoch": round(state.epoch or 0.0, 4),
                "learning_rate": logs.get("learning_rate"),
                "train_loss": logs["loss"],
                "train_mean_token_accuracy": logs.get("mean_token_accuracy"),
                # So far in the whole job, as TrainResult counts them; the worker's token metrics come from it.
                "trained_tokens": self.trained_tokens(state.epoch),
            }
            self.pending.update(rl.reward_metrics(logs, self.reward))  # GRPO: the grader's reward
            if "rewards/accuracies" in logs:  # DPO: how often chosen outscores rejected, and by how much
                self.pending["train_reward_accuracy"] = logs["rewards/accuracies"]
                self.pending["train_reward_margin"] = logs.get("rewards/margins")
            if "kl" in logs:  # KTO: its estimate of the policy's KL divergence from the reference
                self.pending["train_kl"] = logs["kl"]
            if not control.should_evaluate:  # no validation pass follows this log: report now
                self._flush()

    def on_save(self, args, state, control, **kwargs):
        self._flush()
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.stopping is not None:
            self.stopping.save(ckpt)
        if self.parent_adapter is not None:  # servable and exportable like any checkpoint
            parent_adapter.make_servable(ckpt, self.parent_adapter)
        metrics = dict(self.history[-1]) if self.history else {"step": state.global_step}
        self.reporter.checkpoint(state.global_step, ckpt, metrics)

    def on_train_end(self, args, state, control, **kwargs):
        self._flush()

    def _flush(self) -> None:
        if self.pending is not None:
            self.history.append(self.pending)
            self.reporter.metrics(self.pending)
            self.pending = None
