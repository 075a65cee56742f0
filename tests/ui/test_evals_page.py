"""The dashboard's eval page in headless Chromium against the session's `ftserve up`: the shared secret eval
(tests/support/evals.py: base demo-tiny against demo-tiny fine-tuned on a secret) shows both runs in its chart,
the fine-tuned one higher on every criterion, and its runs' table links each report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.dashboard import Dashboard, Shots
from tests.support.evals import TESTING_CRITERIA, secret_eval
from tests.support.ftserve_process import FtserveProcess

pytestmark = pytest.mark.slow

AXE = "/ui/static/vendor/axe.min.js"
CHART_DATA = """() => {
  const chart = window.Chart && window.Chart.getChart(document.getElementById("eval-chart"));
  return chart ? {labels: chart.data.labels, datasets: chart.data.datasets.map((d) => ({label: d.label, data: d.data}))}
               : null;
}"""


def sign_in_with(page: Any, key: str) -> None:
    page.fill("#api-key", key)
    page.click("form.signin button[type=submit]")
    page.wait_for_selector("nav.nav:not([hidden])")


def assert_fits(page: Any) -> None:
    widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"the page is {widths[0]}px wide in a {widths[1]}px viewport"


def axe_violations(page: Any, dashboard: Dashboard) -> list[str]:
    """axe-core's moderate, serious and critical findings on the live page, as the dashboard tests check."""
    page.add_script_tag(url=dashboard.url(AXE))
    found = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
            .filter((v) => ["moderate", "serious", "critical"].includes(v.impact))
            .map((v) => `${v.impact} ${v.id}: ${v.help}`)"""
    )
    return list(found)


def test_eval_page_charts_base_and_fine_tuned_side_by_side(
    open_page: Callable[..., Any], ftserve_server: FtserveProcess, dashboard: Dashboard, shots: Shots
) -> None:
    compared = secret_eval(ftserve_server)
    page = open_page(f"/ui/evals/{compared.eval_id}?run={compared.tuned_run.id}", sign_in=False)
    sign_in_with(page, compared.key)
    page.wait_for_selector("#eval-runs tbody tr[data-run]")
    page.wait_for_function(f"() => ({CHART_DATA})() !== null")
    chart = page.evaluate(f"({CHART_DATA})()")
    assert chart["labels"] == [c["name"] for c in TESTING_CRITERIA]
    by_model = {d["label"]: d["data"] for d in chart["datasets"]}
    assert set(by_model) == {"demo-tiny", compared.tuned_model}
    for base, tuned in zip(by_model["demo-tiny"], by_model[compared.tuned_model], strict=True):
        assert tuned > base
    rows = page.locator("#eval-runs tbody tr")
    assert rows.count() == 2
    assert (
        page.locator(f'#eval-runs tr[data-run="{compared.tuned_run.id}"]').get_attribute("class")
        == "highlight"
    )
    assert page.locator("#eval-runs button", has_text="Report").count() == 2
    assert_fits(page)
    assert not axe_violations(page, dashboard), axe_violations(page, dashboard)
    shots(page, "eval-page")
    phone = open_page(f"/ui/evals/{compared.eval_id}", width=390, sign_in=False)
    sign_in_with(phone, compared.key)
    phone.wait_for_selector("#eval-runs tbody tr[data-run]")
    assert_fits(phone)
    shots(phone, "eval-page")
    page.click("nav a[data-nav=evals]")
    page.wait_for_selector(f'a[href$="/ui/evals/{compared.eval_id}"]')
