"""Fine-tuning hyperparameters: OpenAI's wire shape, our LoRA extensions, and how "auto" resolves.

Pure pydantic (no torch), so the API can validate a job request and the scheduler can estimate memory from the
same numbers the worker will train with.

OpenAI's fields (`batch_size`, `learning_rate_multiplier`, `n_epochs`, and `beta` for DPO) accept `"auto"` or a
number. Our extensions (the LoRA and schedule fields, the methods `kto`, `orpo` and `simpo` with their own
fields, and DPO's `loss_type`) are optional and default to auto as well. Unknown keys are rejected
(`extra="forbid"`) so a typo such as `n_epoch` is reported instead of silently ignored.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_validator,
)

Auto = Literal["auto"]
Method = Literal["supervised", "dpo", "kto", "orpo", "simpo", "reinforcement"]
METHODS: tuple[str, ...] = ("supervised", "dpo", "kto", "orpo", "simpo", "reinforcement")
ReasoningEffort = Literal["default", "low", "medium", "high"]
DpoLoss = Literal["sigmoid", "ipo", "hinge", "robust"]
Quantization = Literal["none", "4bit"]

# -- the rules behind "auto" (see resolve_hyperparameters) ---------------------------------------------------
REFERENCE_PARAMS = 7e9  # the size the base LoRA learning rate below is tuned for (Llama/Qwen 7-8B)
REFERENCE_LORA_LR = 2e-4  # the widely used LoRA learning rate at that size (QLoRA, Unsloth, TRL guides)
DPO_LR_FACTOR = 0.1  # preference optimisation needs a ~10x smaller step than SFT (DPO paper, TRL defaults)
# ...for the methods that only move the model relative to where it is: DPO, KTO, SimPO. ORPO has the SFT loss in
# its objective and starts from the base model, as SFT does, so it takes SFT's rate.
SMALL_STEP_METHODS = frozenset({"dpo", "kto", "simpo", "reinforcement"})
# Method defaults: beta as the DPO paper and TRL set it (DPO, KTO; ORPO's lambda), SimPO's from its paper's
# Llama-3-base setup (beta 2, gamma 1: a target margin of gamma/beta = 0.5 nats per token).
DEFAULT_BETA = {"dpo": 0.1, "kto": 0.1, "orpo": 0.1, "simpo": 2.0}
DEFAULT_SIMPO_GAMMA = 1.0
DEFAULT_ROBUST_SMOOTHING = 0.1  # robust DPO's assumed share of flipped labels when none is given
# Reinforcement (GRPO): completions sampled per prompt (TRL's default group size; compute_multiplier scales
# it), and the longest completion sampled when max_completion_tokens is "auto".
DEFAULT_NUM_GENERATIONS = 8
MAX_NUM_GENERATIONS = 64
DEFAULT_MAX_COMPLETION_TOKENS = 256
MIN_LR, MAX_LR = 5e-6, 1e-2
TARGET_EPOCHS = 3  # OpenAI's default number of passes
MIN_TARGET_EXAMPLES = 100  # OpenAI: at least this many example exposures for a >=1B model...
MAX_TARGET_EXAMPLES = 25_000  # ...and at most this many before epochs are reduced
SAMPLE_EFFICIENT_PARAMS = 1e9  # below this size a model needs more exposures to learn the same data
MAX_AUTO_EPOCHS = 50
MIN_STEPS_PER_EPOCH = 8  # keep batches small enough for several optimizer steps per pass
MAX_AUTO_BATCH = 32
# Tokens one micro-batch may hold when micro_batch_size is "auto": 4 x 2048 or 1 x 8192 (Unsloth's default
# setup, micro-batch 2 of 2048 tokens, holds 4096). The rest of the effective batch is gradient accumulation; the
# scheduler lowers the micro-batch further where a device is too small for it.
MICRO_BATCH_TOKEN_BUDGET = 8_192
DEFAULT_MAX_SEQ_LENGTH = 2048  # when the model's context length is unknown
MAX_AUTO_SEQ_LENGTH = 8192  # longer examples are rare in fine-tuning sets and cost memory quadratically
# What a chat template adds that the JSON line does not hold: a default system prompt (Llama 3.1's dates, SmolLM2's
# "You are a helpful AI assistant named SmolLM...": 20-30 tokens), a tools preamble (~150), special tokens.
TEMPLATE_SLACK_TOKENS = 512
# Early stopping (on by default exactly when n_epochs is "auto": the auto epoch count is then a ceiling).
# Held-out data: the validation file, else a seeded carve-out of the training file of HOLDOUT_FRACTION of its
# examples (MIN_HOLDOUT..MAX_HOLDOUT), taken only from files of at least MIN_HOLDOUT_FILE examples.
HOLDOUT_FRACTION = 0.1
MIN_HOLDOUT, MAX_HOLDOUT = 2, 256
MIN_HOLDOUT_FILE = 20
# An epoch must make the held-out answers at least 1% more likely per token (lower their mean loss by
# ln(1.01) ~ 0.01 nats/token) to be worth another one; see `early_stopping_decision`.
MIN_LOSS_IMPROVEMENT = math.log(1.01)
# ...and at least half of what it gained on the examples it trained on must show on the held-out ones.
GENERALISATION_RATIO = 0.5
# Without held-out data: the training set counts as learnt once an epoch's mean training loss is below this
# (each training token predicted with ~95% probability on average).
TRAIN_LOSS_FLOOR = -math.log(0.95)
DEFAULT_N_CHECKPOINTS = 3  # checkpoints a job keeps (servable, exportable), as OpenAI keeps
MAX_N_CHECKPOINTS = 20


def longest_example_bytes(files: Iterable[Any]) -> int | None:
    """The longest example over a job's files (training and validation `File` rows), or None when any of them
    was validated before the count existed: then "auto" falls back to the model's context length."""
    values: list[int | None] = [getattr(f, "longest_example_bytes", None) for f in files]
    known = [v for v in values if v is not None]
    if not values or len(known) < len(values):
        return None
    return max(known)


def data_sized_max_seq_length(longest_example_bytes: int) -> int:
    """An "auto" max_seq_length that surely holds the file's longest example, from its JSONL line's bytes.

    No tokenizer makes more tokens than UTF-8 bytes: a byte-level BPE token (GPT-2, Llama 3, Qwen, SmolLM) or a
    SentencePiece piece or byte-fallback token (Llama 2, Mistral, Gemma) covers at least one byte. The line's
    bytes (which also count the JSON keys and quotes) plus TEMPLATE_SLACK_TOKENS, rounded up to a power of two,
    therefore bound the rendered example. It over-counts English about 4x; exact token counts would be tighter.
    """
    return 1 << (longest_example_bytes + TEMPLATE_SLACK_TOKENS - 1).bit_length()


def token_sized_max_seq_length(longest_example_tokens: int) -> int:
    """An "auto" max_seq_length from the files' exact longest example (counted with the model's tokenizer and
    chat template, `core.token_counts`): that length plus a 5% allowance, rounded up to a multiple of 64."""
    return 64 * math.ceil((longest_example_tokens * 1.05 + 1) / 64)


class _Hyperparameters(BaseModel):
    """Fields shared by every method. Every field may be omitted; omitted means "auto"."""

    model_config = ConfigDict(extra="forbid")

    # OpenAI's fields
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = "auto"  # the effective batch, OpenAI's meaning
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=100)] = "auto"
    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = "auto"

    # ftserve extensions: LoRA shape
    lora_rank: Auto | Annotated[int, Field(ge=1, le=512)] = "auto"
    lora_alpha: Auto | Annotated[int, Field(ge=1, le=4096)] = "auto"
    lora_dropout: Auto | Annotated[float, Field(ge=0, lt=1)] = "auto"
    target_modules: Auto | Literal["all-linear"] | Annotated[list[str], Field(min_length=1)] = "auto"
    # ftserve extensions: training
    # Examples per forward/backward pass; batch_size / micro_batch_size passes are accumulated per step.
    micro_batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = "auto"
    max_seq_length: Auto | Annotated[int, Field(ge=16, le=1_048_576)] = "auto"
    learning_rate: Auto | Annotated[float, Field(gt=0, le=1)] = "auto"  # absolute; overrides the multiplier
    warmup_ratio: Auto | Annotated[float, Field(ge=0, le=0.5)] = "auto"
    eval_every_steps: Auto | Annotated[int, Field(ge=1)] = "auto"
    checkpoint_every_steps: Auto | Annotated[int, Field(ge=1)] = "auto"
    # ftserve extension: how many of the newest checkpoints the job keeps (older ones are deleted)
    n_checkpoints: Auto | Annotated[int, Field(ge=1, le=MAX_N_CHECKPOINTS)] = "auto"
    # ftserve extension: "4bit" = QLoRA (bitsandbytes NF4 + double quantization; workers with bitsandbytes)
    quantization: Auto | Quantization = "auto"
    # ftserve extension: evaluate held-out loss after every epoch, stop when it rises or stops improving, and
    # keep the best epoch. "auto": on exactly when n_epochs is "auto" (then a ceiling).
    early_stopping: Auto | StrictBool = "auto"

    @model_validator(mode="after")
    def _micro_batch_divides_batch(self) -> _Hyperparameters:
        if isinstance(self.batch_size, int) and isinstance(self.micro_batch_size, int):
            if self.micro_batch_size > self.batch_size or self.batch_size % self.micro_batch_size:
                raise ValueError(
                    f"micro_batch_size {self.micro_batch_size} must divide batch_size {self.batch_size}: each "
                    "optimizer step accumulates batch_size / micro_batch_size micro-batches"
                )
        return self


class SupervisedHyperparameters(_Hyperparameters):
    """`method.supervised.hyperparameters` (and the legacy top-level `hyperparameters`)."""


class DpoHyperparameters(_Hyperparameters):
    """`method.dpo.hyperparameters`: adds `beta`, the strength of the pull towards the reference model, and our
    `loss_type` (TRL's DPO loss variants) and `label_smoothing` (robust DPO's share of flipped labels)."""

    beta: Auto | Annotated[float, Field(gt=0, le=2)] = "auto"
    loss_type: Auto | DpoLoss = "auto"
    label_smoothing: Auto | Annotated[float, Field(ge=0, lt=0.5)] = "auto"

    @field_validator("label_smoothing")
    @classmethod
    def _smoothing_is_robust(cls, value: Any, info: ValidationInfo) -> Any:
        # TRL's other DPO losses ignore it; a value that changes nothing is refused, not ignored
        if value != "auto" and info.data.get("loss_type") != "robust":
            raise ValueError("label_smoothing applies to loss_type 'robust' only")
        return value


class KtoHyperparameters(_Hyperparameters):
    """`method.kto.hyperparameters` (extension): `beta` as DPO's, and the weights of the desirable and the
    undesirable examples' losses (to balance a file with more of one kind)."""

    beta: Auto | Annotated[float, Field(gt=0, le=2)] = "auto"
    desirable_weight: Auto | Annotated[float, Field(gt=0, le=100)] = "auto"
    undesirable_weight: Auto | Annotated[float, Field(gt=0, le=100)] = "auto"

    @field_validator("batch_size", "micro_batch_size")
    @classmethod
    def _at_least_two(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, int) and value < 2:
            raise ValueError(
                f"kto needs a {info.field_name} of at least 2: it estimates its KL term from the other examples "
                "of the same micro-batch"
            )
        return value


class OrpoHyperparameters(_Hyperparameters):
    """`method.orpo.hyperparameters` (extension): `beta` is ORPO's lambda, the weight of the odds-ratio term next
    to the SFT loss on the chosen answers."""

    beta: Auto | Annotated[float, Field(gt=0, le=10)] = "auto"


class SimpoHyperparameters(_Hyperparameters):
    """`method.simpo.hyperparameters` (extension): `beta` scales the length-normalised reward, `gamma` is the
    target reward margin between the chosen and the rejected answer."""

    beta: Auto | Annotated[float, Field(gt=0, le=20)] = "auto"
    gamma: Auto | Annotated[float, Field(ge=0, le=20)] = "auto"


class ReinforcementHyperparameters(_Hyperparameters):
    """`method.reinforcement.hyperparameters` (OpenAI's RFT fields, trained with GRPO). `batch_size` counts
    prompts per optimizer step; each is sampled `num_generations` times (extension; auto: 8 x
    compute_multiplier, even, 2..64). `compute_multiplier` scales that group size. `eval_interval`: steps between
    validation passes (the validation file's mean reward); `eval_samples`: completions per validation prompt.
    `reasoning_effort` is accepted and echoed; it changes nothing for a model without a reasoning mode.
    `max_completion_tokens` (extension): the longest sampled answer. `grader` is set by the API from
    `method.reinforcement.grader`, never by the user."""

    reasoning_effort: ReasoningEffort = "default"
    compute_multiplier: Auto | Annotated[float, Field(gt=0.00001, le=10)] = "auto"
    eval_interval: Auto | Annotated[int, Field(ge=1)] = "auto"
    eval_samples: Auto | Annotated[int, Field(ge=1, le=MAX_NUM_GENERATIONS)] = "auto"
    num_generations: Auto | Annotated[int, Field(ge=2, le=MAX_NUM_GENERATIONS)] = "auto"
    max_completion_tokens: Auto | Annotated[int, Field(ge=1, le=32_768)] = "auto"
    grader: dict[str, Any] | None = None

    @field_validator("early_stopping")
    @classmethod
    def _no_early_stopping(cls, value: Any) -> Any:
        if value is True:
            raise ValueError(
                "early stopping judges held-out loss, which reinforcement training does not have"
            )
        return value


HYPERPARAMETERS: dict[str, type[_Hyperparameters]] = {
    "supervised": SupervisedHyperparameters,
    "dpo": DpoHyperparameters,
    "kto": KtoHyperparameters,
    "orpo": OrpoHyperparameters,
    "simpo": SimpoHyperparameters,
    "reinforcement": ReinforcementHyperparameters,
}


def hyperparameters_model(method: str) -> type[_Hyperparameters]:
    """The request model of `method.<method>.hyperparameters`."""
    if method not in HYPERPARAMETERS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return HYPERPARAMETERS[method]


def min_micro_batch(method: str) -> int:
    """The smallest micro-batch a method trains with: KTO's KL estimate needs another example beside each."""
    return 2 if method == "kto" else 1


class ResolvedHyperparameters(BaseModel):
    """Every value concrete: what the worker trains with, echoed back on the job."""

    model_config = ConfigDict(extra="forbid")

    method: Method
    batch_size: int  # the effective batch: examples per optimizer step
    learning_rate_multiplier: float
    learning_rate: float  # the absolute rate the optimizer uses
    n_epochs: int
    beta: float | None = None  # dpo, kto, orpo, simpo
    loss_type: DpoLoss | None = None  # dpo
    label_smoothing: float | None = None  # dpo
    desirable_weight: float | None = None  # kto
    undesirable_weight: float | None = None  # kto
    gamma: float | None = None  # simpo
    # reinforcement (GRPO): completions per prompt, their length, the OpenAI fields echoed back
    num_generations: int | None = None
    num_generations_eval: int | None = None
    max_completion_tokens: int | None = None
    compute_multiplier: float | None = None
    reasoning_effort: ReasoningEffort | None = None
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    target_modules: list[str] | Literal["all-linear"]
    max_seq_length: int
    warmup_ratio: float
    eval_every_steps: int
    checkpoint_every_steps: int
    n_checkpoints: int = DEFAULT_N_CHECKPOINTS  # defaulted: rows resolved before the field existed still load
    quantization: Quantization = "none"  # defaulted: rows resolved before the field existed still load
    # batch_size = micro_batch_size x gradient_accumulation_steps (defaulted for rows resolved before them)
    micro_batch_size: int = 0
    gradient_accumulation_steps: int = 1
    # n_epochs is a ceiling: stop once the held-out loss rises or stops improving, keep the best epoch
    early_stopping: bool = False
    # Training examples carved out (seeded by the job's seed) as held-out data for early stopping; 0 when the
    # job has a validation file, the file is small, or early stopping is off. Not counted in n_examples.
    holdout_examples: int = 0
    # Derived, for progress reporting and memory estimates (n_examples: the examples trained on)
    n_examples: int
    steps_per_epoch: int
    total_steps: int

    def openai_view(self) -> dict[str, Any]:
        """The three (four with beta) fields OpenAI's job object shows."""
        out: dict[str, Any] = {
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
            "n_epochs": self.n_epochs,
        }
        if self.beta is not None:
            out["beta"] = self.beta
        if self.method == "reinforcement":
            out.update(
                compute_multiplier=self.compute_multiplier,
                eval_interval=self.eval_every_steps,
                eval_samples=self.num_generations_eval,
                reasoning_effort=self.reasoning_effort,
            )
        return out

    @property
    def micro_batch(self) -> int:
        """Examples per forward/backward pass (rows resolved before micro-batches existed: the whole batch)."""
        return self.micro_batch_size or self.batch_size


def base_learning_rate(method: str, base_model_params: int | None) -> float:
    """The LoRA learning rate that a multiplier of 1.0 means, for a model of this size.

    Adam's best step size shrinks roughly as 1/width (muP), and a transformer's width grows roughly as the
    cube root of its parameter count, so we scale a known-good rate at 7B by (7B / params) ** (1/3):
    70B -> 9e-5, 8B -> 1.9e-4, 1B -> 3.8e-4, 135M -> 7.5e-4, a 0.5M toy -> 5e-3. Unknown size: the 7B rate.
    """
    params = base_model_params or REFERENCE_PARAMS
    lr = REFERENCE_LORA_LR * float(REFERENCE_PARAMS / params) ** (1 / 3)
    if method in SMALL_STEP_METHODS:
        lr *= DPO_LR_FACTOR
    return float(min(MAX_LR, max(MIN_LR, lr)))


def auto_n_epochs(n_examples: int, base_model_params: int | None) -> int:
    """OpenAI's epoch rule, with a floor on exposures that rises for small models.

    OpenAI trains 3 epochs, raised so that a small file gets at least 100 example exposures in total (capped
    at 25 epochs there, 50 here) and lowered so that a huge one gets at most 25,000. That floor suits models
    of 1B parameters and up. Smaller models are less sample-efficient (loss per token seen falls more slowly
    as models shrink: Kaplan et al. 2020; memorisation takes more repetitions in smaller models: Tirumala et
    al. 2022), so below 1B the floor grows as sqrt(1B / params): 100 exposures at >=1B, ~270 at 135M,
    ~1,000 at 10M, ~4,700 at demo-tiny's 0.46M (measured: it memorises 100 random codes only after
    ~3,000 exposures; at ~1,500 it gets about half of them).
    """
    params = base_model_params or SAMPLE_EFFICIENT_PARAMS
    min_exposures = MIN_TARGET_EXAMPLES * max(1.0, math.sqrt(SAMPLE_EFFICIENT_PARAMS / params))
    if n_examples * TARGET_EPOCHS < min_exposures:
        return min(MAX_AUTO_EPOCHS, math.ceil(min_exposures / n_examples))
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


def auto_holdout_examples(n_examples: int) -> int:
    """How many training examples an early-stopping job without a validation file holds out: 10% of the
    file (the usual small validation split), at least 2 (one example's loss is too noisy to compare epochs
    by), at most 256 (what periodic validation evaluates at most, `TrainJobConfig.max_eval_examples`), and
    none from files under 20 examples, where each example is worth more as training data than as a noisy
    signal (training-loss convergence applies there). 20 -> 2, 30 -> 3, 100 -> 10, 5,000 -> 256."""
    if n_examples < MIN_HOLDOUT_FILE:
        return 0
    return min(MAX_HOLDOUT, max(MIN_HOLDOUT, round(HOLDOUT_FRACTION * n_examples)))


def holdout_indices(n_examples: int, holdout: int, seed: int) -> list[int]:
    """The (0-based, sorted) lines of the file held out: a sample seeded by the job's seed, so every attempt
    of a job (and a resumed one) holds out the same examples."""
    return sorted(random.Random(f"holdout-{seed}").sample(range(n_examples), holdout))


@dataclass(frozen=True)
class EarlyStoppingDecision:
    stop: bool
    keep_epoch: int | None  # the best epoch so far, whose weights a stop hands back; None: the last
    reason: str  # why it stops ("" when it goes on)


def early_stopping_decision(
    held_out: Sequence[float | None], seen: Sequence[float | None], train: Sequence[float | None]
) -> EarlyStoppingDecision:
    """After epoch e = len(held_out) - 1: stop or go on, and which epoch to keep.

    `held_out[i]` and `seen[i]`: the mean loss (nats per token) after epoch i (i = 0: before training) on the
    held-out examples and on as many of the examples trained on; None without held-out data. `train[i]`:
    epoch i's mean training loss as logged. Each epoch is judged by what it changed:

    - overfitting (patience 1): the loss on the trained-on examples fell, and the held-out loss rose, or fell
      by less than GENERALISATION_RATIO (half) as much. Most of the epoch's learning was then memorising its
      own examples, not learning the task, and on a narrow set that is what overwrites the base model's
      answers to everything else, even while the held-out loss still falls a little (measured:
      docs/training.md#early-stopping). Stop and keep the best earlier epoch. An epoch that made both losses
      worse is noise, not overfitting: go on.
    - converged: the held-out loss fell by less than MIN_LOSS_IMPROVEMENT (ln 1.01: the held-out answers
      became < 1% more likely per token). Stop and keep the best epoch, this one included.
    "Best": the lowest held-out loss among the epochs from 1 on (never the untrained base model).
    Without held-out data there is no overfitting signal: stop once an epoch's mean training loss is below
    TRAIN_LOSS_FLOOR (-ln 0.95: training tokens predicted with ~95% probability), keeping the last epoch.
    """
    e = len(held_out) - 1
    if e < 1:
        return EarlyStoppingDecision(False, None, "")
    now, before = held_out[e], held_out[e - 1]
    if now is None or before is None:
        loss = train[e] if len(train) > e else None
        if now is None and loss is not None and loss < TRAIN_LOSS_FLOOR:
            return EarlyStoppingDecision(
                True, None, f"converged: training loss {loss:.4g} < {TRAIN_LOSS_FLOOR:.3g} (no held-out data)"
            )
        return EarlyStoppingDecision(False, None, "")

    def best(last: int) -> int:  # the lowest held-out loss among epochs 1..last
        return min(
            range(1, last + 1), key=lambda i: (held_out[i] if held_out[i] is not None else math.inf, i)
        )

    held_gain = before - now
    seen_now, seen_before = (seen[e], seen[e - 1]) if len(seen) > e else (None, None)
    seen_gain = seen_before - seen_now if seen_now is not None and seen_before is not None else None
    if seen_gain is not None and seen_gain > 0 and held_gain < GENERALISATION_RATIO * seen_gain:
        what = (
            f"held-out loss rose: {before:.4g} -> {now:.4g}"
            if held_gain < 0
            else f"memorising: held-out loss fell {held_gain:.3g} ({before:.4g} -> {now:.4g})"
        )
        return EarlyStoppingDecision(
            True, best(max(1, e - 1)),
            f"{what}, less than half the {seen_gain:.3g} on trained-on examples ({seen_before:.4g} -> {seen_now:.4g})",
        )  # fmt: skip
    if 0 <= held_gain < MIN_LOSS_IMPROVEMENT:
        return EarlyStoppingDecision(
            True, best(e), f"converged: held-out loss fell only {held_gain:.3g} ({before:.4g} -> {now:.4g})"
        )
    return EarlyStoppingDecision(False, best(e), "")


def auto_batch_size(n_examples: int) -> int:
    """A power of two giving at least MIN_STEPS_PER_EPOCH steps per epoch, capped at MAX_AUTO_BATCH.

    Like OpenAI, batches grow with the dataset (more examples -> less gradient noise needed per step) but stay
    small in absolute terms: fine-tuning sets are small, and several updates per pass matter more than GPU
    utilisation. 100 examples -> 8, 500 -> 32.
    """
    target = max(1, n_examples // MIN_STEPS_PER_EPOCH)
    return min(MAX_AUTO_BATCH, 1 << (target.bit_length() - 1))


def auto_micro_batch_size(
    batch_size: int, max_seq_length: int, token_budget: int = MICRO_BATCH_TOKEN_BUDGET
) -> int:
    """The largest divisor of `batch_size` whose micro-batch of `max_seq_length`-token examples stays within
    `token_budget` tokens (at least 1). A divisor, so that every optimizer step sees exactly `batch_size`
    examples: 32 examples of 2048 tokens -> 4 x 8 accumulation steps; of 8192 -> 1 x 32; 8 of 512 -> 8 x 1."""
    fits = max(1, token_budget // max(1, max_seq_length))
    return max(d for d in range(1, batch_size + 1) if batch_size % d == 0 and d <= fits)


def resolve_hyperparameters(
    method: str,
    hp: _Hyperparameters | None,
    *,
    n_examples: int,
    base_model_params: int | None = None,
    base_model_max_length: int | None = None,
    longest_example_bytes: int | None = None,
    longest_example_tokens: int | None = None,
    micro_batch_tokens: int = MICRO_BATCH_TOKEN_BUDGET,
    max_micro_batch: int | None = None,
    has_validation_file: bool = False,
) -> ResolvedHyperparameters:
    """Turn every "auto" into a number, the way OpenAI does, sized by the data and (where it matters) the model.

    - `batch_size`: `auto_batch_size(n_examples)` (a power of two, >= 8 steps per epoch, at most 32).
    - `n_epochs`: `auto_n_epochs(n_examples, base_model_params)`: 3, more for small files (>= 100 exposures at
      >= 1B params, more for smaller models), fewer for huge ones (<= 25,000 exposures). A ceiling: "auto"
      turns early stopping on (below).
    - `learning_rate`: explicit `learning_rate` wins; else `base_learning_rate(method, params)` times
      `learning_rate_multiplier` (auto = 1.0). DPO, KTO and SimPO use a 10x smaller base. Unlike OpenAI's
      (relative to the pretraining rate), our multiplier is relative to this base LoRA rate; with an explicit
      `learning_rate` the reported multiplier is learning_rate / base.
    - `beta`: 0.1 for DPO, KTO and ORPO (their papers' and TRL's default), 2.0 for SimPO. DPO's `loss_type`:
      "sigmoid" (the DPO paper's); its `label_smoothing`: 0.1 for "robust". KTO's weights: 1.0 each. SimPO's
      `gamma`: 1.0.
    - KTO: `batch_size` and the micro-batch are at least 2 (its KL estimate pairs each prompt with another
      example's answer from the same micro-batch).
    - LoRA: rank 16, alpha = 2 x rank, dropout 0, all linear layers: the common QLoRA/"LoRA without regret"
      setting, which vLLM serves (rank <= its max_lora_rank).
    - `max_seq_length`: sized from the data when the files' longest example is known: from its exact token
      count (`token_sized_max_seq_length`), else from its bytes (`data_sized_max_seq_length`: a power of two
      that surely holds it), never more than
      the model's context length, capped at 8192; else the model's context length (capped), 2048 when unknown.
      Longer examples fail the job with their line numbers rather than being truncated.
    - `micro_batch_size` (examples per forward/backward pass): the largest divisor of `batch_size` whose
      micro-batch holds at most `micro_batch_tokens` tokens of `max_seq_length` (`auto_micro_batch_size`), and
      at most `max_micro_batch` (what the scheduler found room for on the GPU it placed the job on). The rest
      is gradient accumulation: `gradient_accumulation_steps` = batch_size / micro_batch_size, so the update
      is the one a batch of `batch_size` would make. An explicit value must divide an explicit `batch_size`;
      with an "auto" batch_size it is a ceiling (the largest divisor of the resolved batch not above it).
    - reinforcement (GRPO): `batch_size` counts prompts, each sampled `num_generations` times
      (`_resolve_reinforcement`); a micro-batch's tokens count the whole group at prompt + max_completion_tokens;
      no early stopping; an epoch is the whole batches of prompts (GRPO's sampler drops a partial one).
    - `warmup_ratio`: 0.03 (3% of steps, at least one step in practice); linear decay follows.
    - `eval_every_steps` / `checkpoint_every_steps`: ~10 evaluations and ~10 checkpoints per run (with early
      stopping, one evaluation per epoch). `n_checkpoints`: the newest 3 are kept, as OpenAI keeps.
    - `quantization`: "none" (auto). "4bit" loads the frozen base in NF4 (QLoRA), on workers with bitsandbytes.
    - `early_stopping`: on exactly when `n_epochs` is "auto" (then its value is a ceiling). The held-out loss
      is evaluated after every epoch (`eval_every_steps` auto = one epoch) and `early_stopping_decision`
      stops training and picks the epoch kept. Without a validation file (`has_validation_file`),
      `auto_holdout_examples(n_examples)` examples are held out of the training file (`holdout_examples`;
      `n_examples`, the epochs, steps_per_epoch and total_steps count the rest). `batch_size` is sized by the
      whole file, so an estimate made without knowing about a validation file reserves the same memory.

    `base_model_params` (from the model registry or the model's config) sizes the lr and epochs; None means
    "a real model" (>= 1B) and gives OpenAI's rules with a 7B-class learning rate.
    """
    model = hyperparameters_model(method)
    if n_examples < 1:
        raise ValueError("n_examples must be at least 1")
    if hp is None:
        hp = model()
    elif type(hp) is not model:  # another method's fields: only those this method has may be set
        set_values = {k: v for k, v in hp.model_dump().items() if v != "auto"}
        foreign = sorted(set(set_values) - set(model.model_fields))
        if foreign:
            raise ValueError(f"{', '.join(foreign)} does not apply to method {method!r}")
        hp = model.model_validate(set_values)
    least = min_micro_batch(method)

    early_stopping = hp.n_epochs == "auto" if hp.early_stopping == "auto" else hp.early_stopping
    rl = isinstance(hp, ReinforcementHyperparameters)
    early_stopping = early_stopping and not rl  # no loss to judge epochs by
    holdout = auto_holdout_examples(n_examples) if early_stopping and not has_validation_file else 0
    file_examples, n_examples = n_examples, n_examples - holdout  # from here on: the examples trained on

    batch_size = auto_batch_size(file_examples) if hp.batch_size == "auto" else hp.batch_size
    batch_size = max(least, min(batch_size, n_examples))  # a batch holds at most the examples trained on
    n_epochs = auto_n_epochs(n_examples, base_model_params) if hp.n_epochs == "auto" else hp.n_epochs
    multiplier = 1.0 if hp.learning_rate_multiplier == "auto" else float(hp.learning_rate_multiplier)
    base_lr = base_learning_rate(method, base_model_params)
    lr = float(hp.learning_rate) if hp.learning_rate != "auto" else base_lr * multiplier
    if hp.learning_rate != "auto":
        multiplier = lr / base_lr  # keep the OpenAI-visible multiplier consistent with what actually runs

    rank = 16 if hp.lora_rank == "auto" else hp.lora_rank
    alpha = 2 * rank if hp.lora_alpha == "auto" else hp.lora_alpha
    dropout = 0.0 if hp.lora_dropout == "auto" else float(hp.lora_dropout)
    targets: list[str] | Literal["all-linear"] = (
        "all-linear" if hp.target_modules == "auto" else hp.target_modules
    )

    if hp.max_seq_length != "auto":
        max_seq_length = hp.max_seq_length
    else:
        context = min(base_model_max_length or DEFAULT_MAX_SEQ_LENGTH, MAX_AUTO_SEQ_LENGTH)
        if longest_example_tokens:
            max_seq_length = min(context, token_sized_max_seq_length(longest_example_tokens))
        elif longest_example_bytes:
            max_seq_length = min(context, data_sized_max_seq_length(longest_example_bytes))
        else:
            max_seq_length = context

    rl_extra: dict[str, Any] = {}
    tokens_per_example = max_seq_length
    if isinstance(hp, ReinforcementHyperparameters):
        rl_extra = _resolve_reinforcement(hp, max_seq_length, base_model_max_length)
        # each prompt carries its whole group of sampled completions through the forward pass
        tokens_per_example = (max_seq_length + rl_extra["max_completion_tokens"]) * rl_extra[
            "num_generations"
        ]
    if hp.micro_batch_size == "auto":
        micro = auto_micro_batch_size(batch_size, tokens_per_example, micro_batch_tokens)
        if max_micro_batch is not None:
            micro = max(
                d for d in range(1, micro + 1) if batch_size % d == 0 and d <= max(1, max_micro_batch)
            )
    else:  # explicit: at most that many (with an "auto" batch_size, the largest divisor of it not above)
        micro = max(d for d in range(1, batch_size + 1) if batch_size % d == 0 and d <= hp.micro_batch_size)
    if micro < least:  # the smallest divisor of the batch the method can train with
        micro = min(d for d in range(least, batch_size + 1) if batch_size % d == 0)

    # GRPO drops a last partial batch of prompts (its sampler deals whole groups)
    steps_per_epoch = n_examples // batch_size if rl else math.ceil(n_examples / batch_size)
    total_steps = steps_per_epoch * n_epochs
    every_tenth = max(1, math.ceil(total_steps / 10))
    # early stopping evaluates after every epoch anyway; by default not more often than that
    auto_eval_every = steps_per_epoch if early_stopping else every_tenth

    def given(name: str, auto: Any) -> Any:
        value = getattr(hp, name, "auto")
        return auto if value == "auto" else value

    extra: dict[str, Any] = {}  # the method's own fields
    if method in DEFAULT_BETA:
        extra["beta"] = float(given("beta", DEFAULT_BETA[method]))
    if method == "dpo":
        extra["loss_type"] = given("loss_type", "sigmoid")
        robust = extra["loss_type"] == "robust"
        extra["label_smoothing"] = float(
            given("label_smoothing", DEFAULT_ROBUST_SMOOTHING if robust else 0.0)
        )
    elif method == "kto":
        extra["desirable_weight"] = float(given("desirable_weight", 1.0))
        extra["undesirable_weight"] = float(given("undesirable_weight", 1.0))
    elif method == "simpo":
        extra["gamma"] = float(given("gamma", DEFAULT_SIMPO_GAMMA))
    extra.update(rl_extra)
    extra_eval: int | None = None  # OpenAI's eval_interval, unless our eval_every_steps says otherwise
    if isinstance(hp, ReinforcementHyperparameters) and hp.eval_interval != "auto":
        extra_eval = None if hp.eval_every_steps != "auto" else int(hp.eval_interval)

    return ResolvedHyperparameters(
        method=method,  # checked above
        batch_size=batch_size,
        learning_rate_multiplier=round(multiplier, 6),
        learning_rate=lr,
        n_epochs=n_epochs,
        **extra,
        lora_rank=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        max_seq_length=max_seq_length,
        warmup_ratio=0.03 if hp.warmup_ratio == "auto" else float(hp.warmup_ratio),
        eval_every_steps=extra_eval
        or (auto_eval_every if hp.eval_every_steps == "auto" else hp.eval_every_steps),
        checkpoint_every_steps=every_tenth
        if hp.checkpoint_every_steps == "auto"
        else hp.checkpoint_every_steps,
        n_checkpoints=DEFAULT_N_CHECKPOINTS if hp.n_checkpoints == "auto" else hp.n_checkpoints,
        quantization="none" if hp.quantization == "auto" else hp.quantization,
        micro_batch_size=micro,
        gradient_accumulation_steps=batch_size // micro,
        early_stopping=early_stopping,
        holdout_examples=holdout,
        n_examples=n_examples,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
    )


def _resolve_reinforcement(
    hp: ReinforcementHyperparameters, max_seq_length: int, base_model_max_length: int | None
) -> dict[str, Any]:
    """GRPO's numbers: the group size (auto: 8 x compute_multiplier, even, 2..64), completions per validation
    prompt (auto: the group size), and the longest completion (auto: 256, within the model's context after
    the longest prompt)."""
    multiplier = 1.0 if hp.compute_multiplier == "auto" else float(hp.compute_multiplier)
    if hp.num_generations == "auto":
        group = 2 * round(DEFAULT_NUM_GENERATIONS * multiplier / 2)
        num_generations = min(MAX_NUM_GENERATIONS, max(2, group))
    else:
        num_generations = hp.num_generations
    if hp.max_completion_tokens == "auto":
        room = (base_model_max_length or DEFAULT_MAX_SEQ_LENGTH) - max_seq_length
        max_completion = max(16, min(DEFAULT_MAX_COMPLETION_TOKENS, room))
    else:
        max_completion = hp.max_completion_tokens
    return {
        "num_generations": num_generations,
        "num_generations_eval": num_generations if hp.eval_samples == "auto" else max(2, hp.eval_samples),
        "max_completion_tokens": max_completion,
        "compute_multiplier": multiplier,
        "reasoning_effort": hp.reasoning_effort,
    }
