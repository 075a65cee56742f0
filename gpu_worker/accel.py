"""How a run uses its hardware: CPU threads, and how the base model and its LoRA adapter are loaded.

On CUDA:
- bf16 where the GPU supports it (fp32 otherwise);
- `quantization="4bit"`: QLoRA, the frozen base in bitsandbytes NF4 with double quantization, bf16 compute
  (on CPU too, through bitsandbytes' CPU backend: fp32 compute, for RAM-bound CPU workers);
- gradient checkpointing for models over 1B parameters (below that, activations are cheap and the ~20-30%
  recompute isn't worth it);
- unsloth's `FastLanguageModel` when unsloth is installed and supports the architecture, else transformers + peft.
  Which one ran, and why, is returned as notes for the job's events.

On CPU: threads chosen by `cpu_threads` (see its docstring for the measurements behind the rule).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from gpu_worker.capabilities import BNB_MIN_VERSION, bnb_4bit_available, unsloth_installed

TINY_MODEL_PARAMS = 50_000_000  # below this, one CPU thread is fastest (measured: docs/training.md#threads)
GRADIENT_CHECKPOINTING_PARAMS = 1_000_000_000  # checkpoint activations for models above this size
# Exactly the model types unsloth 2026.10.9's FastLanguageModel.from_pretrained dispatches to its own fast models
# (unsloth/models/loader.py:1796-1858). qwen3_moe is commented out there, cohere and granite are disabled, and
# everything else (gemma3, falcon_h1, ...) goes to the generic FastModel path (loader.py:1860), not audited for us.
UNSLOTH_MODEL_TYPES = frozenset({"llama", "mistral", "gemma", "gemma2", "qwen2", "qwen3"})
# What "all-linear" means on those architectures: the attention and MLP projections (the same set peft's
# "all-linear" picks there, checked in tests/gpu_worker/test_accel_unsloth.py), all of them unsloth fast-path layers.
UNSLOTH_ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


_unsloth_import_decided = False  # the job runner decides for its model before train.py's import-time call


def import_unsloth_first(model_dir: Path | None = None, max_seq_length: int | None = None) -> None:
    """Import unsloth before transformers, trl and peft (it patches them at import), where it will be used.

    The job runner calls this with the job's model before it imports train.py, so unsloth is imported only when
    it will train that model: its import-time patches of TRL's trainers (no token-accuracy metrics, an error on
    untrained special tokens) would otherwise reach the plain transformers + peft fallback too. train.py's own
    call, at its import, is then a no-op; without a model (benchmarks, tests) it imports unsloth wherever it is
    installed and CUDA is present. FTSERVE_UNSLOTH=0 keeps unsloth out of the process entirely.
    """
    global _unsloth_import_decided
    # We lay out SFT batches ourselves (gpu_worker.packing). unsloth reads this switch once, when `import unsloth`
    # imports unsloth/trainer.py (trainer.py:193), so it must be set before the import; otherwise its patched
    # SFTTrainer turns on TRL's padding-free collation whenever we pass no collator (length-grouped batches).
    os.environ.setdefault("UNSLOTH_DISABLE_AUTO_PADDING_FREE", "1")
    if _unsloth_import_decided:
        return
    _unsloth_import_decided = model_dir is not None
    if not unsloth_installed() or not torch.cuda.is_available():
        return
    if model_dir is not None:
        config = SimpleNamespace(**json.loads((model_dir / "config.json").read_text()))
        if _unsloth_unusable(True, config, max_seq_length or 0) is not None:
            return  # load_model_with_lora reaches the same verdict and announces the fallback
    try:
        import unsloth  # noqa: F401
    except Exception:  # noqa: BLE001 (a broken unsloth must not stop plain training; load_model says why)
        pass


class AccelerationUnavailable(RuntimeError):
    """The job asks for something this worker cannot do (4-bit without bitsandbytes, unsloth forced)."""


def available_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, n)


def cpu_threads(n_params: int, requested: int | None = None) -> int:
    """Torch threads for CPU training.

    Below 50M parameters the matrices are so small that thread start-up and synchronisation cost more than the
    work they split: on a 2-core box demo-tiny (0.46M) trains ~1.4x faster on 1 thread than on 2, and a 25M model
    about the same on both (docs/training.md#threads has the figures). Above that, every usable core. torch's
    own default counts the host's cores, not a container's quota, which oversubscribes and is much slower.
    OMP_NUM_THREADS, where set, caps the count: a worker sharing its cores with other training (or vLLM) says so.
    """
    if requested:
        return requested
    n = 1 if n_params < TINY_MODEL_PARAMS else available_cpus()
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(n, int(cap)) if cap.isdigit() and int(cap) > 0 else n


@dataclass
class LoadedModel:
    model: Any  # a PeftModel with the LoRA adapter attached, trainable
    backend: str  # "unsloth" or "transformers"
    quantization: str  # "none" or "4bit"
    gradient_checkpointing: bool
    notes: list[str] = field(default_factory=list)  # what was chosen and why, for the job's events


def load_model_with_lora(
    path: Path,
    hp: Any,
    *,
    cuda: bool,
    dtype: torch.dtype,
    n_params: int,
    attn_implementation: str,
    seed: int,
    use_unsloth: bool | None,
    parent_adapter: Path | None = None,
) -> LoadedModel:
    """The base model with a fresh LoRA adapter, on the fastest path this worker has for it. With
    `parent_adapter` (continued training), that adapter is merged into the base weights first
    (`gpu_worker.parent_adapter.merge_into`), so the new LoRA trains on the parent model."""
    from transformers import AutoConfig

    quant = getattr(hp, "quantization", "none")
    if quant == "4bit" and parent_adapter is not None:
        raise AccelerationUnavailable("a parent adapter cannot be merged into 4-bit weights exactly")
    if quant == "4bit" and not bnb_4bit_available():
        raise AccelerationUnavailable(
            "quantization '4bit' (QLoRA) needs bitsandbytes >= {}.{}, which this worker lacks".format(
                *BNB_MIN_VERSION
            )
        )
    gc = cuda and n_params > GRADIENT_CHECKPOINTING_PARAMS
    model_config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    notes = []
    if use_unsloth is not False:
        why_not = _unsloth_unusable(cuda, model_config, hp.max_seq_length)
        if why_not is None:
            try:
                model = _load_unsloth(
                    path, hp, dtype=dtype, quant=quant, gc=gc, seed=seed, parent=parent_adapter
                )
                return LoadedModel(model, "unsloth", quant, gc, ["unsloth FastLanguageModel"])
            except Exception as exc:  # noqa: BLE001 (any unsloth failure: fall back, and say why)
                why_not = f"unsloth failed to load the model ({type(exc).__name__}: {str(exc)[:300]})"
        if use_unsloth:
            raise AccelerationUnavailable(f"use_unsloth=True but {why_not}")
        if cuda:
            notes.append(f"unsloth not used: {why_not}; training with transformers + peft")
    model = _load_transformers(
        path, hp, dtype=dtype, quant=quant, gc=gc, attn=attn_implementation, parent=parent_adapter
    )
    return LoadedModel(model, "transformers", quant, gc, notes)


def _unsloth_unusable(cuda: bool, model_config: Any, max_seq_length: int) -> str | None:
    """Why unsloth can't train this model here, or None when it can."""
    if not cuda:
        return "no CUDA device"
    if not unsloth_installed():
        return "unsloth is not installed (or FTSERVE_UNSLOTH=0)"
    model_type = getattr(model_config, "model_type", "")
    if model_type not in UNSLOTH_MODEL_TYPES:
        return f"unsloth has no fast path for model type {model_type!r}"
    # Past the model's positions unsloth silently switches on linear RoPE scaling (unsloth/models/llama.py:3782-3805),
    # so the adapter would learn positions that vLLM, serving the unscaled base, never uses.
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions and max_seq_length > positions:
        return (
            f"max_seq_length {max_seq_length} is over the model's {positions} positions, where unsloth would "
            "rescale RoPE and train an adapter for a different model than the one served"
        )
    return None


def _load_transformers(
    path: Path, hp: Any, *, dtype: torch.dtype, quant: str, gc: bool, attn: str, parent: Path | None = None
) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": False, "attn_implementation": attn}
    if quant == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,  # quantise the quantisation constants too: ~0.4 bit/param saved
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": torch.cuda.current_device() if torch.cuda.is_available() else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.config.use_cache = False  # no KV cache during training
    if parent is not None:
        from gpu_worker.parent_adapter import merge_into

        merge_into(model, parent)
    if quant == "4bit":
        # Norms and embeddings in fp32, inputs that require grad: the standard QLoRA preparation.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gc, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        _keep_4bit_weights_trainable_on_cpu(model)
    lora = LoraConfig(
        r=hp.lora_rank,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=hp.target_modules,
        bias="none",  # vLLM serves no LoRA biases
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _keep_4bit_weights_trainable_on_cpu(model: Any) -> None:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16, bitsandbytes 0.50.2's Linear4bit repacks its weight, for good, at the first forward
    in eval mode without grad (our packing check, every validation pass). Later training forwards then go through
    `gemv_4bit`, which has no backward: gradients stop flowing through the base layers silently (measured: the
    QLoRA test's loss fell from 5.2 to 3.1 instead of to ~0). Training must keep the layout that has a backward.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def unsloth_target_modules(targets: list[str] | str) -> list[str]:
    """hp.target_modules as the module names unsloth's get_peft_model takes ("all-linear" spelled out)."""
    return list(UNSLOTH_ALL_LINEAR) if targets == "all-linear" else list(targets)


def _load_unsloth(
    path: Path, hp: Any, *, dtype: torch.dtype, quant: str, gc: bool, seed: int, parent: Path | None = None
) -> Any:
    """unsloth 2026.10.9: keywords as in FastLanguageModel.from_pretrained (unsloth/models/loader.py:1241-1274)
    and FastLlamaModel.get_peft_model (unsloth/models/llama.py:4569-4592). Not yet run on a GPU: the unsloth test in
    tests/gpu_worker/test_cuda.py is its check."""
    from unsloth import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(
        model_name=os.path.abspath(path),
        # Load this directory as it is: no remapping of the name to an unsloth hub repo (loader.py:1431-1443),
        # which for an "org/name"-shaped relative path would also fetch unsloth's name map from GitHub.
        use_exact_model_name=True,
        max_seq_length=hp.max_seq_length,  # <= the model's positions (_unsloth_unusable), so RoPE is untouched
        dtype=dtype,
        load_in_4bit=quant == "4bit",  # NF4 + double quantization like ours (llama.py:4015-4021)
        fix_tokenizer=False,  # the data is already tokenised with the model's own tokenizer
        trust_remote_code=False,
        use_gradient_checkpointing="unsloth" if gc else False,
    )
    if parent is not None:
        from gpu_worker.parent_adapter import merge_into

        merge_into(model, parent)
    return FastLanguageModel.get_peft_model(
        model,
        r=hp.lora_rank,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=unsloth_target_modules(hp.target_modules),
        bias="none",
        use_gradient_checkpointing="unsloth" if gc else False,
        random_state=seed,
    )


PLAIN_HEAD_MAX_LOGITS = (
    1 << 27
)  # logits elements per step under which the plain LM head is used (512 MiB fp32)


def sft_trainer_class(plain_head: bool) -> Any:
    """TRL's SFTTrainer, or a subclass whose loss uses the model's plain LM head.

    TRL always computes the loss through its chunked fused LM head, which never materialises the logits: a big
    memory saving with 150k-token vocabularies on a GPU, but on CPU with small logits its Python tile loops cost
    ~15% of a small model's step (profiled on demo-tiny). So below PLAIN_HEAD_MAX_LOGITS the subclass takes the
    same loss (summed token NLL / label tokens in the step) and token accuracy from the full logits.
    """
    from trl.trainer.sft_trainer import SFTTrainer

    if not plain_head:
        return SFTTrainer

    class PlainHeadSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if model.training else "eval"
            labels = inputs["labels"][..., 1:]
            logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits
            logits = logits[..., :-1, :].float()
            mask = labels != -100
            n = mask.sum() if num_items_in_batch is None else num_items_in_batch
            nll = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
            )
            loss = nll / torch.as_tensor(n).clamp(min=1)
            with torch.no_grad():
                valid = int(mask.sum())
                correct = int(((logits.argmax(-1) == labels) & mask).sum())
            self._metrics[mode]["mean_token_accuracy"].append(correct / valid if valid else 0.0)
            if mode == "train":
                self._total_train_tokens += int(inputs["input_ids"].numel())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, {"logits": logits}) if return_outputs else loss

    return PlainHeadSFTTrainer
