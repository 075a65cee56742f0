"""Reinforcement fine-tuning (OpenAI's `method: reinforcement`) with TRL's GRPOTrainer on LoRA.

GRPO samples `num_generations` answers to each prompt with the model being trained, scores each with the job's
grader (`core.graders`), and moves the model towards the answers that scored above their group's mean. The
grader is the only reward; there is no reference model (TRL's beta 0), so memory is the policy's alone.

Metrics: TRL logs the reward's mean and standard deviation per step (`reward`, `reward_std`); for a `multi`
grader this module adds each sub-grader's (`subgrader/<name>/mean`, `/std`). `train.py`'s bridge reports them as
`train_reward_mean`, `train_reward_std` and `train_reward_<name>_mean`/`_std`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import httpx

from core import graders
from core.errors import ServiceUnavailableError
from core.hyperparameters import ResolvedHyperparameters
from gpu_worker.data import TrainingDataError, load_examples

# TrainingArguments fields that train.py's common arguments set and GRPOConfig does not take
_NOT_GRPO = ("max_length", "train_sampling_strategy")
GRADER_TIMEOUT_S = 60.0
GRADER_RETRIES = 2
GRADER_RETRY_DELAY_S = 1.0


def prompt_dataset(path: Path, grader: graders.Grader, *, label: str = "training") -> tuple[Any, int]:
    """The file's prompts as a Dataset of {"prompt": messages, "item": the line as JSON} (the grader reads
    the line's fields), and the number of prompts. A line without a field the grader references fails the
    job, naming it (the API checks this at create time too)."""
    import datasets

    rows = []
    for example in load_examples(path, "reinforcement"):
        item = example.data
        missing = graders.missing_fields(grader, item)
        if missing:
            raise TrainingDataError(
                f"{label} file line {example.line}: no field '{missing[0]}', which the grader references"
            )
        prompt = [{"role": m["role"], "content": m["content"]} for m in item["messages"]]
        rows.append({"prompt": prompt, "item": json.dumps(item)})
    return datasets.Dataset.from_list(rows), len(rows)


class GraderModelUnavailable(ServiceUnavailableError):
    """A score_model grader's model that no vLLM of this deployment serves, or that stopped answering: the job
    fails with this (never a silent 0 reward)."""

    code = "grader_model_unavailable"


class ServedModelCall:
    """A score_model grader's call: the vLLM that serves the grader's model (found by the job runner). A
    connection error or a 5xx is retried GRADER_RETRIES times (a replica restarting), then fails the job."""

    def __init__(self, servers: dict[str, tuple[str, str | None]]) -> None:
        self.servers = servers

    def check(self, spec: dict[str, Any]) -> None:
        """Fail before training when a model the grader calls has no replica here."""
        missing = sorted(graders.score_model_names(spec) - set(self.servers))
        if missing:
            raise GraderModelUnavailable(
                f"No inference server of this deployment serves '{missing[0]}', which the reinforcement "
                "grader's score_model calls: during training a score_model grader must name a base model "
                "that a vLLM replica serves (inference enabled, FTSERVE_INFERENCE_ENABLED).",
                param="method.reinforcement.grader",
            )

    def __call__(self, model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> str:
        if model not in self.servers:
            self.check({"type": "score_model", "model": model})
        url, key = self.servers[model]
        headers = {"authorization": f"Bearer {key}"} if key else {}
        body: dict[str, Any] = {"model": model, "messages": messages, "temperature": 0.0}
        body.update(
            {k: v for k, v in sampling.items() if k in ("temperature", "top_p", "seed", "max_tokens")}
        )
        if sampling.get("max_completion_tokens") is not None:
            body["max_tokens"] = sampling["max_completion_tokens"]
        failure = ""
        for attempt in range(GRADER_RETRIES + 1):
            if attempt:
                time.sleep(GRADER_RETRY_DELAY_S * attempt)
            try:
                response = httpx.post(
                    f"{url.rstrip('/')}/v1/chat/completions",
                    json=body,
                    headers=headers,
                    timeout=GRADER_TIMEOUT_S,
                )
            except httpx.HTTPError as exc:
                failure = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code < 500:
                break
            failure = f"HTTP {response.status_code}: {response.text[:300]}"
        else:
            # raised outside the except block: a connection error in the chain would read as a database
            # outage to the job runner, which would hand the job back instead of failing it
            raise GraderModelUnavailable(
                f"The score_model grader's model '{model}' did not answer at {url}: {failure}",
                param="method.reinforcement.grader",
            )
        if response.status_code != 200:
            raise GraderModelUnavailable(
                f"The score_model grader's model '{model}' refused the grading request: HTTP "
                f"{response.status_code}: {response.text[:300]}",
                param="method.reinforcement.grader",
            )
        return str(response.json()["choices"][0]["message"].get("content") or "")


def model_call(servers: dict[str, tuple[str, str | None]]) -> ServedModelCall:
    """A score_model grader's call through the vLLM replicas in `servers` (model -> (URL, API key))."""
    return ServedModelCall(servers)


class GraderReward:
    """The grader as a GRPO reward function: one score per sampled completion. It also counts the completion
    tokens it saw (the job's trained tokens) and logs each sub-grader of a `multi`."""

    def __init__(self, grader: graders.Grader, call: graders.ModelCall | None = None) -> None:
        self.grader = grader
        self.call = call
        if isinstance(call, ServedModelCall):
            call.check(grader.spec)  # a grader model no replica serves fails the job before training
        self.__name__ = grader.name  # TRL names the reward metrics after it
        self.completion_tokens = 0
        self.sub_names = list(grader.sub_graders())
        self.trainer: Any = None  # set once built: validation samples are not trained on, so not counted

    def __call__(
        self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], item: list[str],
        log_metric: Any = None, **_: Any,
    ) -> list[float | None]:  # fmt: skip
        if self.trainer is None or self.trainer.model.training:
            self.completion_tokens += sum(len(ids) for ids in completion_ids)
        rewards: list[float | None] = []
        subs: dict[str, list[float]] = {name: [] for name in self.sub_names}
        for completion, raw in zip(completions, item, strict=True):
            text = completion[-1]["content"] if isinstance(completion, list) else str(completion)
            result = graders.score(self.grader, json.loads(raw), text, model_call=self.call)
            rewards.append(result.reward)
            for name in self.sub_names:
                subs[name].append(result.sub_rewards.get(name, math.nan))
        if log_metric is not None:
            for name, values in subs.items():
                mean, std = _mean_std(values)
                log_metric(f"subgrader/{name}/mean", mean)
                log_metric(f"subgrader/{name}/std", std)
        return rewards


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)
    return mean, math.sqrt(var)


def grpo_trainer(
    *, model: Any, tokenizer: Any, hp: ResolvedHyperparameters, common: dict[str, Any], reward: GraderReward,
    train_ds: Any, eval_ds: Any, callbacks: list[Any],
) -> Any:  # fmt: skip
    """TRL's GRPOTrainer for a resolved reinforcement job. `batch_size` counts prompts: each optimizer step
    samples num_generations completions for each of batch_size prompts, micro_batch prompts (with their
    groups) per forward/backward pass."""
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer

    assert hp.num_generations is not None and hp.max_completion_tokens is not None
    groups = hp.num_generations
    eval_groups = hp.num_generations_eval or groups
    args = {k: v for k, v in common.items() if k not in _NOT_GRPO}
    args.update(
        per_device_train_batch_size=hp.micro_batch * groups,
        per_device_eval_batch_size=eval_groups,
        num_generations=groups,
        num_generations_eval=eval_groups,
        max_completion_length=hp.max_completion_tokens,
        beta=0.0,  # no reference model: the grader's reward alone
        temperature=1.0,
        remove_unused_columns=False,  # the reward reads the "item" column
        shuffle_dataset=True,
        log_completions=False,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=[reward], args=GRPOConfig(**args), train_dataset=train_ds,
        eval_dataset=eval_ds, processing_class=tokenizer, callbacks=callbacks,
    )  # fmt: skip
    reward.trainer = trainer
    return trainer


def reward_metrics(
    logs: dict[str, Any], reward: GraderReward | None, prefix: str = "train"
) -> dict[str, Any]:
    """Our metric names for TRL's reward logs: mean and std of the grader's score, and of each sub-grader's."""
    out: dict[str, Any] = {}
    key = "eval_" if prefix == "valid" else ""
    if f"{key}reward" in logs:
        out[f"{prefix}_reward_mean"] = logs[f"{key}reward"]
        out[f"{prefix}_reward_std"] = logs.get(f"{key}reward_std")
    if reward is not None:
        for name in reward.sub_names:
            for stat in ("mean", "std"):
                value = logs.get(f"{key}subgrader/{name}/{stat}")
                if value is not None:
                    out[f"{prefix}_reward_{name.replace('.', '_')}_{stat}"] = value
    return out
