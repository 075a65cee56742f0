"""How a training run talks to whoever started it.

`train.run_training` knows nothing of the DB, Redis or storage: it reports through a `TrainingReporter`. The
worker's implementation turns calls into job events, metrics rows and checkpoint uploads, and answers
`should_stop` from the job's status (cancel / pause requested). Tests use `RecordingReporter`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

StopRequest = Literal["cancel", "pause"]


@runtime_checkable
class TrainingReporter(Protocol):
    def event(self, message: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        """A human-readable job event ("Step 10/100: training loss=1.23", "Resumed from checkpoint ...")."""

    def metrics(self, data: dict[str, Any]) -> None:
        """One row of metrics at a logging step: step, total_steps, train_loss, train_mean_token_accuracy,
        and valid_loss / valid_mean_token_accuracy when evaluated, plus epoch and learning_rate."""

    def checkpoint(self, step: int, local_dir: Path, metrics: dict[str, Any]) -> None:
        """A complete checkpoint dir exists at `local_dir` (adapter, optimizer, scheduler, RNG, trainer
        state); the caller uploads it. The dir may be deleted locally after the next checkpoints."""

    def should_stop(self) -> StopRequest | None:
        """Polled after every optimizer step: None to go on, "cancel" or "pause" to stop."""


@dataclass
class RecordingReporter:
    """Keeps everything in lists. `stop` is a value, or a callable taking the number of polls so far
    (e.g. `lambda n: "pause" if n >= 3 else None`)."""

    stop: StopRequest | None | Callable[[int], StopRequest | None] = None
    events: list[dict[str, Any]] = field(default_factory=list)
    metric_rows: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[tuple[int, Path, dict[str, Any]]] = field(default_factory=list)
    polls: int = 0

    def event(self, message: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        self.events.append({"message": message, "level": level, "data": data or {}})

    def metrics(self, data: dict[str, Any]) -> None:
        self.metric_rows.append(dict(data))

    def checkpoint(self, step: int, local_dir: Path, metrics: dict[str, Any]) -> None:
        self.checkpoints.append((step, Path(local_dir), dict(metrics)))

    def should_stop(self) -> StopRequest | None:
        self.polls += 1
        return self.stop(self.polls) if callable(self.stop) else self.stop

    @property
    def messages(self) -> list[str]:
        return [e["message"] for e in self.events]
