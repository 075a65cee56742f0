"""The dashboard's Usage page in headless Chromium, against the API over real HTTP (no `ftserve up`): its chart and
tables show the metered usage, the cost view follows the prices, and a key without `admin` gets a note."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.db import make_engine, session_scope
from core.keys import create_key
from core.model_registry import register_model
from core.settings import Settings
from core.usage import record_inference_usage, record_training_usage
from ftserve_client import Client
from tests.support.dashboard import Shots
from tests.support.datasets import chat_jsonl
from tests.support.ftserve_process import REPO_ROOT
from tests.support.http_server import api_server
from tests.support.keys import make_key

pytestmark = pytest.mark.slow
OUTPUT_DIR = REPO_ROOT / "test-output" / "ui"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", min_examples=10, price_per_million_trained_tokens=1000.0)
    register_model(settings, "demo-tiny", tmp_path / "demo-tiny")
    return settings


@pytest.fixture
def root(settings: Settings) -> Iterator[str]:
    with api_server(settings) as url:
        yield url.removesuffix("/v1")


def _page(browser: Any, root: str, key: str, problems: list[str]) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    page.on(
        "console",
        lambda m: problems.append(m.text) if m.type == "error" and "Failed to load" not in m.text else None,
    )
    page.goto(f"{root}/ui/usage")
    page.fill("#api-key", key)
    page.click("form.signin button[type=submit]")
    page.wait_for_selector("nav.nav:not([hidden])")
    return page


def test_the_usage_page_charts_tokens_and_cost_and_lists_jobs(
    browser: Any, settings: Settings, root: str
) -> None:
    admin = make_key(settings, "ui-usage")
    sdk = Client(api_key=admin, base_url=f"{root}/v1")
    job = sdk.fine_tuning.jobs.create(
        model="demo-tiny",
        training_file=sdk.files.create(file=("t.jsonl", chat_jsonl(12)), purpose="fine-tune").id,
    )
    engine = make_engine(settings.resolved_database_url)
    with session_scope(engine) as session:
        record_training_usage(
            session, settings, organization_id=job.organization_id, job_id=job.id, attempt=1, model="demo-tiny",
            gpu_class="cpu", trained_tokens=4321, gpu_seconds=90.0,
        )  # fmt: skip
        record_inference_usage(
            session, settings, organization_id=job.organization_id, api_key_id="key-x", model="demo-tiny",
            input_tokens=120, output_tokens=30,
        )  # fmt: skip
        _row, inference_only = create_key(session, org_name="ui-usage", scopes=["inference"])
    engine.dispose()
    shots = Shots(OUTPUT_DIR / "test_usage_page")
    problems: list[str] = []

    page = _page(browser, root, admin, problems)
    page.wait_for_selector(f"#main a[href$='/ui/jobs/{job.id}']")
    summary = page.text_content("#usage-summary") or ""
    assert "Trained tokens: 4,321" in summary and "Prompt tokens: 120" in summary, summary
    assert "Completion tokens: 30" in summary
    assert page.evaluate("() => !!window.Chart && !!Chart.getChart('usage-chart')")
    assert page.evaluate("() => Chart.getChart('usage-chart').data.datasets[0].data.at(-1)") == 4321
    rows = page.locator("#main table").first.locator("tbody tr")
    assert (
        rows.count() == 1
        and "1.5 min" in rows.first.text_content()
        and "4.3210 USD" in rows.first.text_content()
    )
    assert page.get_attribute("nav a[data-nav='usage']", "aria-current") == "page"
    shots(page, "tokens")

    page.add_script_tag(url=f"{root}/ui/static/vendor/axe.min.js")
    violations = page.evaluate(
        """async () => (await axe.run(document, { resultTypes: ["violations"] })).violations
            .filter((v) => ["moderate", "serious", "critical"].includes(v.impact)).map((v) => `${v.id}: ${v.help}`)"""
    )
    assert violations == []
    page.click("#usage-metric label:has-text('Cost')")
    page.wait_for_function("() => document.querySelector('#usage-summary').textContent.includes('cost')")
    assert "Fine-tuning cost (USD): 4.3210" in (page.text_content("#usage-summary") or "")
    assert "metric=cost" in page.url
    page.click("#usage-range label:has-text('30 days')")
    page.wait_for_function("() => Chart.getChart('usage-chart').data.labels.length === 30")
    shots(page, "cost-30-days")
    page.context.close()

    other = _page(browser, root, inference_only, problems)
    other.wait_for_selector("#main .alert")
    assert "needs an admin key" in (other.text_content("#main .alert") or "")
    shots(other, "not-admin")
    other.context.close()
    assert not problems, problems
