"""`ftserve jobs follow`'s view of a reinforcement job: the mean reward per step as a sparkline, the last step's
mean ± std, and a multi grader's parts. Fed the metrics events the worker emits; no server needed."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from cli.follow import SPARK, JobView
from ftserve_client.types import FineTuningJob, FineTuningJobEvent


def _metrics(step: int, mean: float, std: float, **subs: float) -> FineTuningJobEvent:
    data: dict[str, Any] = {"step": step, "total_steps": 4, "train_loss": 0.01, "train_reward_mean": mean}
    data["train_reward_std"] = std
    for name, value in subs.items():
        data[f"train_reward_{name}_mean"] = value
        data[f"train_reward_{name}_std"] = 0.1
    return FineTuningJobEvent(
        id=f"ftevent-{step}", created_at=1_700_000_000 + step, level="info", type="metrics",
        message=f"Step {step}/4: reward {mean}", data=data,
    )  # fmt: skip


def test_follow_shows_the_reward_mean_and_std_per_step() -> None:
    job = FineTuningJob.model_validate(
        {
            "id": "ftjob-rl", "created_at": 1_700_000_000, "model": "demo-tiny", "organization_id": "org",
            "status": "running", "training_file": "file-1", "seed": 0,
            "method": {"type": "reinforcement", "reinforcement": {"grader": {
                "type": "multi", "calculate_output": "exact",
                "graders": {"exact": {"type": "string_check", "input": "a", "reference": "b", "operation": "eq"}},
            }}},
        }
    )  # fmt: skip
    view = JobView(job)
    for step, mean in enumerate((0.1, 0.2, 0.4, 0.8), start=1):
        view.add_event(_metrics(step, mean, std=mean / 2, exact=mean))
    assert view.reward == [(0.1, 0.05), (0.2, 0.1), (0.4, 0.2), (0.8, 0.4)]
    assert view.sub_rewards == {"exact": 0.8}
    console = Console(record=True, width=120, color_system=None)
    console.print(view)
    text = console.export_text()
    line = next(row for row in text.splitlines() if "reward" in row and "Step" not in row)
    assert "0.8000 ± 0.4000" in line and "(exact 0.800)" in line
    assert line.count(SPARK[-1]) == 1 and SPARK[0] in line  # rising: lowest first, highest last
    assert "4/4" in text


def test_a_reward_without_std_and_a_supervised_job_show_no_std() -> None:
    job = FineTuningJob.model_validate(
        {
            "id": "ftjob-sft", "created_at": 1, "model": "demo-tiny", "organization_id": "org",
            "status": "running", "training_file": "file-1", "seed": 0,
        }
    )  # fmt: skip
    view = JobView(job)
    event = _metrics(1, 0.5, 0.0)
    assert event.data is not None
    del event.data["train_reward_std"]
    view.add_event(event)
    console = Console(record=True, width=120, color_system=None)
    console.print(view)
    line = next(row for row in console.export_text().splitlines() if "0.5000" in row)
    assert "±" not in line
    plain = JobView(job)
    plain.add_event(FineTuningJobEvent(id="e", created_at=1, level="info", message="Step 1", type="metrics",
                                       data={"step": 1, "train_loss": 1.0}))  # fmt: skip
    console = Console(record=True, width=120, color_system=None)
    console.print(plain)
    assert "reward" not in console.export_text()
