"""Prices and measured training throughput: what a job or a request costs, and how long a job would take.

Prices come from the operator's settings (FTSERVE_PRICE_*; 0 means "not priced"). Throughput is in
parameter-tokens per second: tokens processed per second times the base model's parameters. LoRA training costs
about the same FLOPs per parameter-token across model sizes, so one figure per GPU class covers every model
(on the 2-core CPU the measured figures of a 0.46M and a 135M model agree within 2x). The table and its sources
are in docs/usage.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.settings import Settings

CPU_CLASS = "cpu"
# Measured (docs/benchmarks.md, docs/usage.md): parameter-tokens per second of our trainer, LoRA r16, all linear.
MEASURED_THROUGHPUT: dict[str, float] = {
    # demo-tiny (459,392 parameters) at 12,539 processed tokens/s on 2 x86_64 cores, 1 thread.
    CPU_CLASS: 5.76e9,
    # A 0.60B Llama, bf16, at 9,532 processed tokens/s on an NVIDIA H200 (transformers + peft).
    "H200": 5.72e12,
}


def _match(table: dict[str, float], gpu_class: str) -> tuple[str, float] | None:
    """The entry for `gpu_class`: an exact key, else the longest key it contains (case-insensitive), else "*"."""
    name = gpu_class.lower()
    if gpu_class in table:
        return gpu_class, table[gpu_class]
    found = [(key, value) for key, value in table.items() if key != "*" and key.lower() in name]
    if found:
        return max(found, key=lambda kv: len(kv[0]))
    if "*" in table and gpu_class != CPU_CLASS:
        return "*", table["*"]
    return None


def gpu_hour_price(settings: Settings, gpu_class: str) -> float:
    found = _match(settings.price_per_gpu_hour, gpu_class)
    return found[1] if found else 0.0


def throughput(settings: Settings, gpu_class: str) -> tuple[str, float] | None:
    """(the table key that matched, parameter-tokens per second) for `gpu_class`, or None if never measured."""
    return _match({**MEASURED_THROUGHPUT, **settings.training_throughput}, gpu_class)


def training_cost(settings: Settings, *, trained_tokens: int, gpu_seconds: float, gpu_class: str) -> float:
    tokens = trained_tokens * settings.price_per_million_trained_tokens / 1e6
    return tokens + gpu_seconds * gpu_hour_price(settings, gpu_class) / 3600.0


def inference_cost(settings: Settings, *, input_tokens: int, output_tokens: int) -> float:
    return (
        input_tokens * settings.price_per_million_input_tokens
        + output_tokens * settings.price_per_million_output_tokens
    ) / 1e6


@dataclass(frozen=True)
class CostEstimate:
    currency: str
    trained_tokens: int | None
    trained_tokens_cost: float | None
    gpu_class: str | None
    gpu_seconds: float | None
    gpu_cost: float | None
    throughput_class: str | None  # the table entry the time came from
    throughput_param_tokens_per_s: float | None
    value: float | None  # the sum of the parts that are known
    notes: list[str]


def estimate_cost(
    settings: Settings,
    *,
    trained_tokens: int | None,
    processed_tokens: int | None,
    parameters: int,
    gpu_class: str | None,
) -> CostEstimate:
    """Trained tokens x their price, plus the GPU time that `processed_tokens` take on `gpu_class` x its hourly
    price. A part that cannot be known (no token count, no measured throughput) is None and said in `notes`."""
    notes: list[str] = []
    token_cost = (
        trained_tokens * settings.price_per_million_trained_tokens / 1e6
        if trained_tokens is not None
        else None
    )
    if trained_tokens is None:
        notes.append(
            "Trained tokens unknown (no countable training_file): the token part of the cost is left out."
        )
    seconds = gpu_cost = rate = None
    matched = None
    if gpu_class is None:
        notes.append("No live worker to run the job on: the GPU-time part of the cost is left out.")
    elif processed_tokens is None:
        notes.append("Tokens not counted: the GPU-time part of the cost is left out.")
    else:
        found = throughput(settings, gpu_class)
        if found is None:
            notes.append(
                f"No measured training throughput for GPU class {gpu_class!r}: set FTSERVE_TRAINING_THROUGHPUT "
                "to price its time."
            )
        else:
            matched, rate = found
            seconds = processed_tokens * parameters / rate
            gpu_cost = seconds * gpu_hour_price(settings, gpu_class) / 3600.0
    if not settings.price_per_million_trained_tokens and not settings.price_per_gpu_hour:
        notes.append("No prices are set on this server (FTSERVE_PRICE_*): every cost is 0.")
    parts = [p for p in (token_cost, gpu_cost) if p is not None]
    return CostEstimate(
        currency=settings.price_currency,
        trained_tokens=trained_tokens,
        trained_tokens_cost=_round(token_cost),
        gpu_class=gpu_class,
        gpu_seconds=round(seconds, 1) if seconds is not None else None,
        gpu_cost=_round(gpu_cost),
        throughput_class=matched,
        throughput_param_tokens_per_s=rate,
        value=_round(sum(parts)) if parts else None,
        notes=notes,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
