"""How much GPU memory one fine-tuning job needs: an estimate from the base model's config.json and the job.

    peak = weights + trainable state (adapters or master weights, optimizer states)
         + max(activations + logits, gradients) + optimizer workspace + fixed overhead
    reservation = peak x margin        (what the scheduler reserves on a GPU; shown as estimated_vram_mb)

Gradients and activations are counted as a max, not a sum: backward frees each layer's activations as it
produces that layer's gradients, so for a full fine-tune the peak is whichever is larger (this is what makes
torchtune's published full-fine-tune ladder come out right). For LoRA the gradients are tiny either way.

That is the whole formula (docs/scheduling.md says how it is held to published measurements). Every constant lives in `vram_calibration.json`, per
training stack ("profile"): `ftserve-cuda` is what our GPU worker runs, `ftserve-cpu` what it runs without
CUDA (checked against host RAM), and the others describe published measurements so that
`bench/vram_estimator.py` can hold the formula to them.

It lives in `core` because both the API (the pre-flight `POST /v1/fine_tuning/estimates`) and the scheduler
(placement) use it, and neither may import the other. Pure Python: no torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from core.hyperparameters import ResolvedHyperparameters
from core.settings import Settings

CALIBRATION_FILE = Path(__file__).with_name("vram_calibration.json")
MIB = 1024 * 1024

Method = Literal["lora", "qlora", "full"]
Loss = Literal["unfused", "chunked", "fused"]
Optimizer = Literal["adamw", "adamw_fp32", "adamw8bit", "paged_adamw8bit", "paged_adamw", "sgd"]
DEFAULT_PROFILE = "ftserve-cuda"
CPU_PROFILE = "ftserve-cpu"
# Methods whose step runs two sequences per example: chosen and rejected (dpo, orpo, simpo), or KTO's answer and
# the mismatched prompt/answer pair its KL term is estimated from. The reference model that DPO and KTO compare
# with costs no memory under LoRA: it is the base model with the adapter turned off.
TWO_SEQUENCE_METHODS = frozenset({"dpo", "kto", "orpo", "simpo"})

# Architectures whose MLP is a plain up/down projection (no gate): 2·h·I parameters instead of 3·h·I.
PLAIN_MLP_MODEL_TYPES = frozenset(
    {"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "gpt_bigcode", "starcoder2", "bert", "t5"}
)
# LoRA target names by role, across the common naming schemes.
TARGET_ALIASES = {
    "q": {"q_proj", "query", "wq", "q"},
    "k": {"k_proj", "key", "wk", "k"},
    "v": {"v_proj", "value", "wv", "v"},
    "o": {"o_proj", "out_proj", "output_proj", "dense", "wo", "o"},
    "gate": {"gate_proj", "w1"},
    "up": {"up_proj", "w3", "fc1", "c_fc", "dense_h_to_4h"},
    "down": {"down_proj", "w2", "fc2", "c_proj", "dense_4h_to_h"},
}


class EstimateError(ValueError):
    """The model's config cannot be read or describes no transformer we can size."""


@lru_cache(maxsize=4)
def _calibration_at(path: str, mtime: float) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


def calibration(path: Path = CALIBRATION_FILE) -> dict[str, Any]:
    """The calibration data; re-read when the file changes."""
    return _calibration_at(str(path), path.stat().st_mtime)


# -- the model ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelArch:
    """The shape of a decoder-only transformer, as far as memory is concerned."""

    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied_embeddings: bool = False
    gated_mlp: bool = True
    experts: int = 1  # MoE: every expert's weights are resident
    max_positions: int | None = None
    model_type: str = "llama"

    # One layer's linear matrices as (role, d_in, d_out).
    def linears(self) -> list[tuple[str, int, int]]:
        q_out, kv_out = self.heads * self.head_dim, self.kv_heads * self.head_dim
        mats = [
            ("q", self.hidden, q_out),
            ("k", self.hidden, kv_out),
            ("v", self.hidden, kv_out),
            ("o", q_out, self.hidden),
        ]
        mlp = [("up", self.hidden, self.intermediate), ("down", self.intermediate, self.hidden)]
        if self.gated_mlp:
            mlp.insert(0, ("gate", self.hidden, self.intermediate))
        return mats + mlp

    @property
    def params_linear(self) -> int:
        per_layer = 0
        for role, d_in, d_out in self.linears():
            per_layer += d_in * d_out * (self.experts if role in ("gate", "up", "down") else 1)
        return self.layers * per_layer

    @property
    def params_embedding(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def params(self) -> int:
        return self.params_linear + self.params_embedding

    @property
    def largest_tensor(self) -> int:
        biggest_linear = max(d_in * d_out for _role, d_in, d_out in self.linears())
        return max(self.vocab * self.hidden, biggest_linear)

    def lora_params(self, rank: int, targets: str | list[str] | tuple[str, ...]) -> int:
        """L x sum over targeted matrices of r x (d_in + d_out). 'all-linear' is every projection in the
        blocks (PEFT leaves the output head out). An unknown module name counts as the largest matrix."""
        by_role = {role: (d_in, d_out) for role, d_in, d_out in self.linears()}
        if targets == "all-linear":
            roles = list(by_role)
            unknown = 0
        else:
            names = [targets] if isinstance(targets, str) else list(targets)
            roles, unknown = [], 0
            for name in names:
                role = next((r for r, aliases in TARGET_ALIASES.items() if name in aliases), None)
                if role is None or role not in by_role:
                    unknown += 1
                elif role not in roles:
                    roles.append(role)
        per_layer = sum(
            rank * sum(by_role[role]) * (self.experts if role in ("gate", "up", "down") else 1)
            for role in roles
        )
        per_layer += unknown * rank * (self.hidden + self.intermediate)
        return self.layers * per_layer

    def lora_inputs(self, targets: str | list[str] | tuple[str, ...]) -> int:
        """Sum of d_in over the targeted matrices of one layer (what LoRA dropout keeps a copy of)."""
        by_role = {role: d_in for role, d_in, _ in self.linears()}
        if targets == "all-linear":
            return sum(by_role.values())
        names = [targets] if isinstance(targets, str) else list(targets)
        total = 0
        for name in names:
            role = next((r for r, aliases in TARGET_ALIASES.items() if name in aliases), None)
            total += by_role.get(role or "", self.hidden)
        return total

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelArch:
        """From a Hugging Face config.json (decoder-only; multimodal configs use their text model)."""
        cfg = config
        for nested in ("text_config", "llm_config", "language_config"):
            if isinstance(config.get(nested), dict):
                cfg = {
                    **config[nested],
                    "model_type": config[nested].get("model_type", config.get("model_type")),
                }
                break

        def pick(*names: str, default: Any = None) -> Any:
            for name in names:
                if cfg.get(name) is not None:
                    return cfg[name]
            return default

        hidden = pick("hidden_size", "n_embd", "d_model", "dim")
        layers = pick("num_hidden_layers", "n_layer", "num_layers", "n_layers")
        vocab = pick("vocab_size", "padded_vocab_size")
        heads = pick("num_attention_heads", "n_head", "num_heads", "n_heads")
        if not all(isinstance(v, int) and v > 0 for v in (hidden, layers, vocab, heads)):
            raise EstimateError(
                "config.json lacks hidden_size, num_hidden_layers, vocab_size or num_attention_heads"
            )
        model_type = str(cfg.get("model_type") or "llama")
        intermediate = pick("intermediate_size", "n_inner", "ffn_dim", "d_ff", "ffn_hidden_size")
        if not intermediate:
            intermediate = 4 * hidden
        kv_heads = pick(
            "num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num", default=heads
        )
        if cfg.get("multi_query") is True:
            kv_heads = 1
        head_dim = pick("head_dim", default=hidden // heads) or hidden // heads
        experts = int(pick("num_local_experts", "num_experts", "n_routed_experts", default=1) or 1)
        moe_intermediate = pick("moe_intermediate_size")
        if experts > 1 and moe_intermediate:
            intermediate = moe_intermediate
        act = str(pick("hidden_act", "activation_function", default="silu"))
        gated = model_type not in PLAIN_MLP_MODEL_TYPES and act not in ("gelu_new", "relu")
        return cls(
            hidden=int(hidden),
            layers=int(layers),
            intermediate=int(intermediate),
            vocab=int(vocab),
            heads=int(heads),
            kv_heads=int(kv_heads),
            head_dim=int(head_dim),
            tied_embeddings=bool(pick("tie_word_embeddings", default=model_type in ("gemma", "gemma2"))),
            gated_mlp=gated,
            experts=experts,
            max_positions=pick("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"),
            model_type=model_type,
        )

    @classmethod
    def from_config_file(cls, path: Path) -> ModelArch:
        try:
            config = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise EstimateError(f"cannot read the model config {path}: {exc}") from exc
        if not isinstance(config, dict):
            raise EstimateError(f"{path} is not a JSON object")
        return cls.from_config(config)


# -- the job -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSpec:
    """What the job does to memory. Stack flags left at None take the profile's value."""

    micro_batch: int
    seq_len: int
    method: Method = "lora"
    dpo: bool = False  # two sequences per example (TWO_SEQUENCE_METHODS)
    lora_rank: int = 16
    lora_targets: str | tuple[str, ...] = "all-linear"
    lora_dropout: float = 0.0
    double_quant: bool = True
    n_gpus: int = 1  # data parallel without sharding: each GPU holds a full copy
    # stack flags (None: the profile's default)
    weight_dtype: str | None = None
    adapter_dtype: str | None = None
    optimizer: Optimizer | None = None
    optimizer_in_backward: bool = False
    gradient_checkpointing: bool | None = None
    activation_offload: bool | None = None
    loss: Loss | None = None
    compile: bool | None = None
    fused_attention: bool | None = None
    kbit_upcast: bool | None = None
    # Reinforcement (GRPO): sequences sampled at once before a step (prompts x num_generations). Sampling runs
    # outside backward, so its KV cache and last-token logits compete with the activations, not add to them.
    generation_sequences: int = 0


@dataclass
class Estimate:
    """An estimate in MiB, itemised. `reservation_mb` is what the scheduler holds on a GPU for the job."""

    profile: str
    weights_mb: int
    trainable_state_mb: int  # adapters or master weights, plus optimizer states
    gradients_mb: int
    activations_mb: int
    logits_mb: int
    optimizer_workspace_mb: int
    overhead_mb: int
    peak_mb: int
    margin_mb: int
    reservation_mb: int
    elastic_mb: int = 0  # of trainable state, the part a paged optimizer moves to host memory under pressure
    parameters: int = 0
    trainable_parameters: int = 0
    tokens_per_micro_batch: int = 0
    notes: list[str] = field(default_factory=list)

    def breakdown(self) -> dict[str, int]:
        return {
            "weights_mb": self.weights_mb,
            "trainable_state_mb": self.trainable_state_mb,
            "gradients_mb": self.gradients_mb,
            "activations_mb": self.activations_mb,
            "logits_mb": self.logits_mb,
            "optimizer_workspace_mb": self.optimizer_workspace_mb,
            "overhead_mb": self.overhead_mb,
            "margin_mb": self.margin_mb,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _weight_bytes(cal: dict[str, Any], dtype: str) -> float:
    try:
        return float(cal["weight_bytes"][dtype])
    except KeyError:
        raise EstimateError(f"unknown dtype {dtype!r}") from None


def _optimizer_bytes(cal: dict[str, Any], optimizer: str, param_bytes: float) -> float:
    value = cal["optimizer_state_bytes"].get(optimizer)
    if value is None:
        raise EstimateError(f"unknown optimizer {optimizer!r}")
    if isinstance(value, str):  # "2 x param bytes": torch AdamW keeps m and v in the parameter's dtype
        return 2 * param_bytes
    return float(value)


def estimate(
    arch: ModelArch,
    spec: TrainSpec,
    *,
    profile: str = DEFAULT_PROFILE,
    elastic: bool = False,
    cal: dict[str, Any] | None = None,
) -> Estimate:
    """Peak GPU memory of one training step on one GPU. With `elastic`, paged optimizer states count as
    moved to host memory (the least the job can run in); without, they stay resident."""
    cal = cal or calibration()
    if profile not in cal["profiles"]:
        raise EstimateError(f"unknown profile {profile!r} (known: {', '.join(sorted(cal['profiles']))})")
    prof = cal["profiles"][profile]

    def flag(name: str) -> Any:
        value = getattr(spec, name)
        return prof[name] if value is None else value

    weight_dtype, adapter_dtype = str(flag("weight_dtype")), str(flag("adapter_dtype"))
    optimizer = str(flag("optimizer"))
    ckpt, offload = bool(flag("gradient_checkpointing")), bool(flag("activation_offload"))
    loss, compiled = str(flag("loss")), bool(flag("compile"))
    fused_attention, kbit_upcast = bool(flag("fused_attention")), bool(flag("kbit_upcast"))
    notes: list[str] = []

    h, layers, vocab = arch.hidden, arch.layers, arch.vocab
    tokens = spec.micro_batch * spec.seq_len * (2 if spec.dpo else 1)  # e.g. DPO: chosen + rejected
    w_bytes = _weight_bytes(cal, weight_dtype)

    # -- weights ------------------------------------------------------------------------------------------
    if spec.method == "qlora":
        nf4 = _weight_bytes(cal, "nf4" if spec.double_quant else "nf4_no_double_quant")
        emb_bytes = _weight_bytes(cal, "fp32") if kbit_upcast else w_bytes
        weights = nf4 * arch.params_linear + emb_bytes * arch.params_embedding
        if kbit_upcast:
            notes.append("non-4-bit parameters upcast to fp32 (PEFT prepare_model_for_kbit_training)")
    else:
        weights = w_bytes * arch.params

    # -- trainable state, gradients, optimizer workspace ----------------------------------------------------
    paged = optimizer.startswith("paged")
    eight_bit = "8bit" in optimizer
    if spec.method == "full":
        trainable = arch.params
        grad_bytes = w_bytes
        state = _optimizer_bytes(cal, optimizer, w_bytes) * trainable
        grads = grad_bytes * (arch.largest_tensor if spec.optimizer_in_backward else trainable)
        workspace = cal["eight_bit_optimizer_workspace_bytes"] * arch.largest_tensor if eight_bit else 0.0
    else:
        trainable = arch.lora_params(spec.lora_rank, spec.lora_targets)
        a_bytes = _weight_bytes(cal, adapter_dtype)
        state = (a_bytes + _optimizer_bytes(cal, optimizer, a_bytes)) * trainable
        grads = a_bytes * trainable
        largest_adapter = spec.lora_rank * (h + arch.intermediate)
        workspace = cal["eight_bit_optimizer_workspace_bytes"] * largest_adapter if eight_bit else 0.0
    elastic_bytes = 0.0
    if paged:
        opt_part = (
            _optimizer_bytes(cal, optimizer, w_bytes) * trainable
            if spec.method == "full"
            else (_optimizer_bytes(cal, optimizer, _weight_bytes(cal, adapter_dtype)) * trainable)
        )
        elastic_bytes = opt_part
        if elastic:
            state -= opt_part
            notes.append("paged optimizer states counted as moved to host memory")

    # -- activations ------------------------------------------------------------------------------------
    la = cal["layer_activation_bytes"]
    per_mlp = la["per_intermediate_ratio_gated"] if arch.gated_mlp else la["per_intermediate_ratio_plain"]
    c_layer = (
        la["base"] + la["per_kv_fraction"] * arch.kv_heads / arch.heads + per_mlp * arch.intermediate / h
    )
    c_layer *= prof["compiled_activation_scale"] if compiled else prof["activation_scale"]
    dtype_scale = prof["activation_dtype_bytes"] / 2.0  # the constants are for bf16 activations
    one_layer = tokens * h * c_layer
    if not fused_attention:
        one_layer += cal["attention_score_bytes_per_head"] * arch.heads * spec.seq_len * tokens
    if spec.lora_dropout > 0 and spec.method != "full":
        one_layer += cal["lora_dropout_bytes_per_input"] * tokens * arch.lora_inputs(spec.lora_targets)
    if ckpt:
        stored = 0.0 if offload else cal["checkpoint_bytes_per_hidden"] * tokens * h * layers
        activations = (stored + one_layer) * dtype_scale
    else:
        activations = one_layer * layers * dtype_scale
    if spec.generation_sequences:
        # K and V for every layer and position of every sampled sequence, plus one step's logits each
        kv_cache = 2 * layers * arch.kv_heads * arch.head_dim * spec.seq_len * spec.generation_sequences
        sampling = (kv_cache + spec.generation_sequences * vocab * 2) * prof["activation_dtype_bytes"]
        if sampling > activations:
            notes.append(f"sampling {spec.generation_sequences} sequences needs more than a training step")
        activations = max(activations, sampling)

    # -- logits and loss -----------------------------------------------------------------------------------
    logit_bytes = prof["logit_bytes"].get(loss)
    if logit_bytes is None:
        raise EstimateError(f"unknown loss {loss!r}")
    logits = tokens * vocab * float(logit_bytes)

    fixed = prof["fixed_mib"] * MIB
    if spec.method == "full":
        # Backward frees activations as it makes gradients: the peak is at its start (all activations and
        # the logits' gradient) or at its end (all gradients, one layer still live). An update inside
        # backward adds its workspace to the first; a separate step adds it to the second.
        live_layer = one_layer * dtype_scale
        if spec.optimizer_in_backward:
            dynamic = max(activations + logits + workspace, grads + live_layer + workspace)
        else:
            dynamic = max(activations + logits, grads + live_layer + workspace)
    else:  # LoRA: small gradients, kept whole (adapter gradients accumulate through all of backward)
        dynamic = activations + logits + grads + workspace
    peak = weights + state + dynamic + fixed
    margin = peak * (prof["margin"] - 1.0)

    def mb(value: float) -> int:
        return math.ceil(value / MIB)

    peak_mb = mb(peak)
    return Estimate(
        profile=profile,
        weights_mb=mb(weights),
        trainable_state_mb=mb(state),
        gradients_mb=mb(grads),
        activations_mb=mb(activations),
        logits_mb=mb(logits),
        optimizer_workspace_mb=mb(workspace),
        overhead_mb=mb(fixed),
        peak_mb=peak_mb,
        margin_mb=mb(margin),
        reservation_mb=mb(peak + margin),
        elastic_mb=mb(elastic_bytes),
        parameters=arch.params,
        trainable_parameters=trainable,
        tokens_per_micro_batch=tokens,
        notes=notes,
    )


def spec_for_job(method_type: str, hp: ResolvedHyperparameters) -> TrainSpec:
    """What an ftserve job (LoRA or QLoRA, any method) does, from its resolved hyperparameters. The worker
    runs micro-batches of `micro_batch_size` examples (accumulating `gradient_accumulation_steps` of them per
    optimizer step, which costs no activation memory), each at most `max_seq_length` tokens long: the
    estimate is for the longest micro-batch the job allows. Packed, padding-free batches hold at most that
    many real tokens, so the same bound covers them. Reinforcement: each prompt of a micro-batch is
    num_generations sequences of prompt + max_completion_tokens, and the whole batch is sampled at once
    (`TrainSpec.generation_sequences`)."""
    targets = hp.target_modules if isinstance(hp.target_modules, str) else tuple(hp.target_modules)
    group, completion = 1, 0
    if method_type == "reinforcement":  # each prompt trains as num_generations prompt+answer sequences
        group, completion = hp.num_generations or 1, hp.max_completion_tokens or 0
    return TrainSpec(
        micro_batch=hp.micro_batch * group,
        seq_len=hp.max_seq_length + completion,
        generation_sequences=hp.batch_size * group if method_type == "reinforcement" else 0,
        method="qlora" if getattr(hp, "quantization", "none") == "4bit" else "lora",
        dpo=method_type in TWO_SEQUENCE_METHODS,
        lora_rank=hp.lora_rank,
        lora_targets=targets,
        lora_dropout=hp.lora_dropout,
    )


def estimate_job(
    arch: ModelArch, method_type: str, hp: ResolvedHyperparameters, *, profile: str = DEFAULT_PROFILE
) -> Estimate:
    return estimate(arch, spec_for_job(method_type, hp), profile=profile)


def with_flags(spec: TrainSpec, **flags: Any) -> TrainSpec:
    return replace(spec, **flags)


# -- a job's estimates, from the model registry ----------------------------------------------------------------


@dataclass
class JobEstimates:
    """What the scheduler stores on a job (`vram_estimate`) and the pre-flight endpoint returns."""

    arch: ModelArch
    hyperparameters: ResolvedHyperparameters
    gpu: Estimate
    cpu: Estimate

    # Smaller micro-batches the job could fall back to where no device holds this one (same batch_size, more
    # accumulation): (micro_batch_size, GPU reservation MiB, CPU reservation MiB), largest first.
    fallbacks: list[tuple[int, int, int]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu.as_dict(),
            "cpu": self.cpu.as_dict(),
            "total_steps": self.hyperparameters.total_steps,
            "batch_size": self.hyperparameters.batch_size,
            "micro_batch_size": self.hyperparameters.micro_batch,
            "gradient_accumulation_steps": self.hyperparameters.gradient_accumulation_steps,
            "micro_batch_fallbacks": [list(f) for f in self.fallbacks],
            "max_seq_length": self.hyperparameters.max_seq_length,
            "lora_rank": self.hyperparameters.lora_rank,
            "quantization": getattr(self.hyperparameters, "quantization", "none"),
        }


def micro_batch_for_fleet(
    options: Sequence[tuple[int, int | None, int | None]], gpu_room_mb: int | None, cpu_room_mb: int | None
) -> tuple[int, int | None, int | None] | None:
    """Which micro-batch a job runs with on a fleet whose largest GPU and CPU devices hold `gpu_room_mb` and
    `cpu_room_mb` (None: no such device). `options` are (micro_batch_size, GPU MiB, CPU MiB): the job's own
    first, then the smaller ones it may fall back to. The job's own when some device holds it (it then waits
    for that device rather than train slower on a smaller one), else the largest that some device holds,
    else None. The scheduler places with this rule; the estimate endpoint reports it."""

    def held(gpu_mb: int | None, cpu_mb: int | None) -> bool:
        return (gpu_room_mb is not None and (gpu_mb is None or gpu_mb <= gpu_room_mb)) or (
            cpu_room_mb is not None and (cpu_mb is None or cpu_mb <= cpu_room_mb)
        )

    return next((option for option in options if held(option[1], option[2])), None)


def micro_batch_options(
    record: dict[str, Any], gpu_mb: int | None
) -> list[tuple[int, int | None, int | None]]:
    """A job's `vram_estimate` record as `micro_batch_for_fleet` options (`gpu_mb`: its own reservation)."""
    cpu = record.get("cpu")
    own = (int(record.get("micro_batch_size") or record.get("batch_size") or 1), gpu_mb,
           cpu.get("reservation_mb") if isinstance(cpu, dict) else None)  # fmt: skip
    return [own] + [(int(m), int(g), int(c)) for m, g, c in record.get("micro_batch_fallbacks") or []]


def estimate_request(
    settings: Settings,
    *,
    model: str,
    method_type: str,
    hyperparameters: dict[str, Any],
    n_examples: int,
    longest_example_bytes: int | None = None,
    longest_example_tokens: int | None = None,
    max_micro_batch: int | None = None,
    has_validation_file: bool = False,
) -> JobEstimates:
    """Resolve the job's "auto" hyperparameters the way the worker will (`longest_example_bytes`: of the job's
    files, which sizes an "auto" max_seq_length, or better `longest_example_tokens`, its exact token count;
    `max_micro_batch`: the placement's ceiling on an "auto"
    micro-batch; `has_validation_file`: early stopping then holds nothing out of the training file), then
    estimate it for a GPU and for a CPU-only worker, and for each smaller micro-batch an
    "auto" one could fall back to. Raises
    NotFoundError (unknown model) or EstimateError (unreadable config)."""
    from core.hyperparameters import hyperparameters_model, min_micro_batch, resolve_hyperparameters
    from core.model_registry import get_base_model

    base = get_base_model(settings, model)
    arch = ModelArch.from_config_file(base.config_file)
    requested = hyperparameters_model(method_type).model_validate(hyperparameters)
    resolved = resolve_hyperparameters(
        method_type,
        requested,
        n_examples=max(1, n_examples),
        base_model_params=arch.params,
        base_model_max_length=arch.max_positions,
        longest_example_bytes=longest_example_bytes,
        longest_example_tokens=longest_example_tokens,
        max_micro_batch=max_micro_batch,
        has_validation_file=has_validation_file,
    )
    fallbacks = []
    if requested.micro_batch_size == "auto":
        for micro in range(resolved.micro_batch - 1, min_micro_batch(method_type) - 1, -1):
            if resolved.batch_size % micro == 0:
                smaller = resolved.model_copy(
                    update={
                        "micro_batch_size": micro,
                        "gradient_accumulation_steps": resolved.batch_size // micro,
                    }
                )
                fallbacks.append(
                    (
                        micro,
                        estimate_job(arch, method_type, smaller, profile=DEFAULT_PROFILE).reservation_mb,
                        estimate_job(arch, method_type, smaller, profile=CPU_PROFILE).reservation_mb,
                    )
                )
    return JobEstimates(
        arch=arch,
        hyperparameters=resolved,
        gpu=estimate_job(arch, method_type, resolved, profile=DEFAULT_PROFILE),
        cpu=estimate_job(arch, method_type, resolved, profile=CPU_PROFILE),
        fallbacks=fallbacks,
    )
