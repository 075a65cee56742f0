"""Follow a fine-tuning job in the terminal: status, step/total with ETA, a loss sparkline, the last events.

On a terminal the view redraws in place (rich Live). Elsewhere (CI logs, pipes) each event is printed as a
line as it arrives, and the view is printed once at the end. `--json` prints events as JSON lines instead.
"""

from __future__ import annotations

import time
from collections import deque

from rich.console import Console, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from cli.user_common import print_json_line
from ftserve_client import Client
from ftserve_client.types import FineTuningJob, FineTuningJobEvent

SPARK = "▁▂▃▄▅▆▇█"
STATUS_STYLE = {
    "succeeded": "bold green",
    "failed": "bold red",
    "cancelled": "bold yellow",
    "paused": "yellow",
    "running": "bold cyan",
}


def sparkline(values: list[float], width: int = 40) -> str:
    """Unicode block sparkline of the last values; longer series are averaged into `width` buckets."""
    if not values:
        return ""
    if len(values) > width:
        size = len(values) / width
        values = [
            sum(chunk) / len(chunk)
            for i in range(width)
            if (chunk := values[int(i * size) : max(int((i + 1) * size), int(i * size) + 1)])
        ]
    low, high = min(values), max(values)
    span = high - low
    if span <= 0:
        return SPARK[len(SPARK) // 2] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int((v - low) / span * (len(SPARK) - 1) + 0.5))] for v in values)


def clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class JobView:
    """The state of the live view, fed with job snapshots and events; renders itself on every refresh."""

    def __init__(self, job: FineTuningJob, *, max_events: int = 6) -> None:
        self.job = job
        self.events: deque[FineTuningJobEvent] = deque(maxlen=max_events)
        self.train_loss: list[float] = []
        self.valid_loss: list[float] = []
        self.reward: list[tuple[float, float | None]] = []  # reinforcement: (mean, std) per step
        self.sub_rewards: dict[str, float] = {}  # a multi grader's parts, latest step
        self.step: int | None = job.step
        self.total: int | None = job.total_steps
        self.started = time.monotonic()
        self._rate_start: tuple[float, int] | None = None
        self._rate_last: tuple[float, int] | None = None

    def update_job(self, job: FineTuningJob) -> None:
        self.job = job
        if job.step is not None and (self.step is None or job.step >= self.step):
            self.step = job.step
        if job.total_steps:
            self.total = job.total_steps

    def add_event(self, event: FineTuningJobEvent) -> None:
        self.events.append(event)
        data = event.data or {}
        if event.type != "metrics":
            return
        step = data.get("step")
        if isinstance(step, int):
            self.step = max(step, self.step or 0)
            now = time.monotonic()
            if self._rate_start is None:
                self._rate_start = (now, step)
            self._rate_last = (now, step)
        if isinstance(data.get("total_steps"), int):
            self.total = data["total_steps"]
        if isinstance(data.get("train_loss"), (int, float)):
            self.train_loss.append(float(data["train_loss"]))
        if isinstance(data.get("valid_loss"), (int, float)):
            self.valid_loss.append(float(data["valid_loss"]))
        if isinstance(data.get("train_reward_mean"), (int, float)):
            std = data.get("train_reward_std")
            self.reward.append(
                (float(data["train_reward_mean"]), float(std) if isinstance(std, (int, float)) else None)
            )
            self.sub_rewards = {
                key.removeprefix("train_reward_").removesuffix("_mean"): float(value)
                for key, value in data.items()
                if key.startswith("train_reward_") and key.endswith("_mean") and key != "train_reward_mean"
                and isinstance(value, (int, float))
            }  # fmt: skip

    def eta_seconds(self) -> float | None:
        if self.job.done or not self.total or self.step is None:
            return None
        if self.job.estimated_finish:
            return max(0.0, self.job.estimated_finish - time.time())
        if self._rate_start and self._rate_last and self._rate_last[1] > self._rate_start[1]:
            (t0, s0), (t1, s1) = self._rate_start, self._rate_last
            return (self.total - self.step) * (t1 - t0) / (s1 - s0)
        return None

    def __rich__(self) -> RenderableType:
        job = self.job
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column()
        status = Text(job.status, style=STATUS_STYLE.get(job.status, "bold"))
        if job.attempt > 1:
            status.append(f"  (attempt {job.attempt})", style="dim")
        status.append(f"   elapsed {clock(time.monotonic() - self.started)}", style="dim")
        grid.add_row("status", status)
        if self.total:
            step = self.step or 0
            bar = Table.grid(padding=(0, 1))
            bar.add_row(
                Text(f"{step}/{self.total}"),
                ProgressBar(total=self.total, completed=step, width=30),
                Text(f"{100 * step // self.total:3d}%"),
                Text(f"ETA {clock(eta)}" if (eta := self.eta_seconds()) is not None else ""),
            )
            grid.add_row("step", bar)
        if self.train_loss:
            loss = Text(sparkline(self.train_loss), style="cyan")
            loss.append(f"  {self.train_loss[-1]:.4f}")
            if self.valid_loss:
                loss.append(f"  (valid {self.valid_loss[-1]:.4f})", style="dim")
            grid.add_row("loss", loss)
        if self.reward:
            mean, std = self.reward[-1]
            reward = Text(sparkline([m for m, _ in self.reward]), style="green")
            reward.append(f"  {mean:.4f}" + (f" ± {std:.4f}" if std is not None else ""))
            if self.sub_rewards:
                parts = ", ".join(f"{name} {value:.3f}" for name, value in self.sub_rewards.items())
                reward.append(f"  ({parts})", style="dim")
            grid.add_row("reward", reward)
        for event in self.events:
            style = {"error": "red", "warn": "yellow"}.get(event.level, "")
            grid.add_row(
                time.strftime("%H:%M:%S", time.localtime(event.created_at)), Text(event.message, style=style)
            )
        if job.fine_tuned_model:
            grid.add_row("model", Text(job.fine_tuned_model, style="bold green"))
        if job.error:
            grid.add_row("error", Text(job.error.message, style="red"))
        return Panel(grid, title=f"{job.id} · {job.model}", title_align="left", expand=False)


def follow_job(
    client: Client,
    job: FineTuningJob,
    *,
    console: Console,
    as_json: bool = False,
    poll_interval: float = 0.5,
) -> FineTuningJob:
    """Follow until the job is done and return its final state. Ctrl-C stops following, not the job."""
    follower = client.fine_tuning.jobs.follow(job.id, poll_interval=poll_interval)
    if as_json:
        for event in follower:
            print_json_line(event)
        assert follower.job is not None
        return follower.job
    view = JobView(job)
    if console.is_terminal:
        with Live(view, console=console, refresh_per_second=4, transient=False):
            for event in follower:
                view.add_event(event)
                if follower.job is not None:
                    view.update_job(follower.job)
            if follower.job is not None:
                view.update_job(follower.job)
    else:
        for event in follower:
            view.add_event(event)
            if follower.job is not None:
                view.update_job(follower.job)
            stamp = time.strftime("%H:%M:%S", time.localtime(event.created_at))
            console.print(f"{stamp}  {event.message}", markup=False, soft_wrap=True)
        if follower.job is not None:
            view.update_job(follower.job)
        console.print(view)
    assert follower.job is not None
    return follower.job
