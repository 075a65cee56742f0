"""A reinforcement job's chart in headless Chromium, against the API over real HTTP (no `ftserve up`): the mean
reward per step is drawn with a band of mean ± std, and the summary line gives both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.db import make_engine, session_scope
from core.jobs import append_event
from core.model_registry import register_model
from core.settings import Settings
from ftserve_client import Client
from tests.support.dashboard import Shots
from tests.support.datasets import chat_jsonl
from tests.support.ftserve_process import REPO_ROOT
from tests.support.http_server import api_server
from tests.support.keys import make_key

pytestmark = pytest.mark.slow
OUTPUT_DIR = REPO_ROOT / "test-output" / "ui"
# step -> (mean, std) of the step's rewards, as a reinforcement worker reports them
REWARDS = {1: (0.25, 0.5), 2: (0.5, 0.25), 3: (0.75, 0.125)}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", min_examples=10)
    register_model(settings, "demo-tiny", tmp_path / "demo-tiny")
    return settings


@pytest.fixture
def root(settings: Settings) -> Iterator[str]:
    with api_server(settings) as url:
        yield url.removesuffix("/v1")


def test_the_job_chart_draws_the_reward_mean_with_its_std_band(
    browser: Any, settings: Settings, root: str
) -> None:
    key = make_key(settings, "ui-reward")
    sdk = Client(api_key=key, base_url=f"{root}/v1")
    job = sdk.fine_tuning.jobs.create(
        model="demo-tiny",
        training_file=sdk.files.create(file=("t.jsonl", chat_jsonl(12)), purpose="fine-tune").id,
    )
    engine = make_engine(settings.resolved_database_url)
    with session_scope(engine) as session:
        for step, (mean, std) in REWARDS.items():
            data = {"step": step, "total_steps": 3, "train_reward_mean": mean, "train_reward_std": std}
            append_event(session, job_id=job.id, message=f"Step {step}/3", type="metrics", data=data)
    engine.dispose()

    problems: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    page.goto(f"{root}/ui/jobs/{job.id}")
    page.fill("#api-key", key)
    page.click("form.signin button[type=submit]")
    page.wait_for_function("() => document.querySelector('#loss-chart')?.dataset.rewardPoints === '3'")
    assert page.get_attribute("#loss-chart", "data-reward-std-points") == "3"
    datasets = page.evaluate(
        "() => Chart.getChart('loss-chart').data.datasets.map((d) => ({label: d.label, hidden: !!d.hidden,"
        " ys: d.data.map((p) => p.y)}))"
    )
    by_label = {d["label"]: d for d in datasets}
    assert by_label["Mean reward"]["ys"] == [0.25, 0.5, 0.75]
    assert by_label["Reward − std"]["ys"] == [-0.25, 0.25, 0.625]
    assert by_label["Reward ± std"]["ys"] == [0.75, 0.75, 0.875]
    assert not any(by_label[label]["hidden"] for label in ("Mean reward", "Reward − std", "Reward ± std"))
    assert "reward 0.75 ± 0.125" in (page.text_content("#chart-summary") or "")
    Shots(OUTPUT_DIR / "test_reward_chart")(page, "reward-band")
    context.close()
    assert not problems, problems
