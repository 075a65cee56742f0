"""End to end: headless Debian Chromium drives the /ui dashboard of the session's real `ftserve up`.

Each test saves its screenshots under test-output/ui/<test>/. The flows are the issue's: upload a good and a
broken file and read the bad lines; create a job in the form and watch its loss chart grow without a reload;
pause, resume and cancel from the buttons; get a streamed answer from the fine-tuned model in the playground;
every page at 1280 and 390 px wide with no serious accessibility violations; no key in any HTML.
"""

from __future__ import annotations

import json
import re
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.dashboard import Dashboard, Shots
from tests.support.datasets import chat_example, chat_jsonl

pytestmark = pytest.mark.slow

TRAIN_EXAMPLES = 40
TERMINAL = {"succeeded", "failed", "cancelled"}
AXE = "/ui/static/vendor/axe.min.js"


def broken_jsonl() -> bytes:
    """Fourteen chat lines, four of them bad in different ways (the validator reports them all)."""
    lines = [json.dumps(chat_example(i)) for i in range(14)]
    bad = chat_example(2)
    bad["messages"][1]["role"] = "bot"  # type: ignore[index]
    lines[2] = json.dumps(bad)
    lines[6] = '{"messages": [{"role": "user", "content": "unterminated'
    bad = chat_example(9)
    bad["messages"] = bad["messages"][:2]  # type: ignore[index]
    lines[9] = json.dumps(bad)
    bad = chat_example(11)
    bad["messages"][2]["content"] = 42  # type: ignore[index]
    lines[11] = json.dumps(bad)
    return ("\n".join(lines) + "\n").encode()


def validation_jsonl() -> bytes:
    return b"".join(json.dumps(chat_example(i)).encode() + b"\n" for i in range(100, 112))


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def wait_for_job(dashboard: Dashboard, job_id: str, timeout_s: float = 240) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        job = dashboard.job(job_id)
        return job if job["status"] in TERMINAL else None

    return wait_until(finished, timeout_s, f"job {job_id} to finish", interval_s=0.5)


def assert_fits(page: Any) -> None:
    """No sideways scrolling: the page is as wide as the viewport."""
    widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"the page is {widths[0]}px wide in a {widths[1]}px viewport"


def axe_violations(page: Any, dashboard: Dashboard) -> list[str]:
    """axe-core, served by the app itself (the CSP allows our own scripts only), run on the live page. The
    issue asks for no serious or critical violations; moderate ones fail too, since there are none."""
    page.add_script_tag(url=dashboard.url(AXE))
    violations = page.evaluate(
        """async () => {
            const result = await axe.run(document, { resultTypes: ["violations"] });
            return result.violations
                .filter((v) => ["moderate", "serious", "critical"].includes(v.impact))
                .map((v) => `${v.impact} ${v.id}: ${v.help} -> ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(" | ")}`);
        }"""
    )
    return list(violations)


def metrics_steps(dashboard: Dashboard, job_id: str, key: str) -> set[int]:
    events = dashboard.http.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}).json()[
        "data"
    ]
    return {e["data"]["step"] for e in events if e["type"] == "metrics" and e["data"].get(key) is not None}


# -- fixtures that later tests reuse ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def training_files(dashboard: Dashboard) -> tuple[str, str]:
    train = dashboard.upload("ui-train.jsonl", chat_jsonl(TRAIN_EXAMPLES))
    valid = dashboard.upload("ui-valid.jsonl", validation_jsonl())
    return train["id"], valid["id"]


@pytest.fixture(scope="module")
def rejected_file(dashboard: Dashboard) -> str:
    response = dashboard.http.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("ui-broken.jsonl", broken_jsonl())}
    )
    assert response.status_code == 400
    return str(response.json()["error"]["file_id"])


@pytest.fixture(scope="module")
def trained_job(dashboard: Dashboard, training_files: tuple[str, str]) -> dict[str, Any]:
    """A succeeded job: the one the chart test watched, or a fresh one if that test did not run."""
    job = dashboard.state.get("watched_job")
    if job is None:
        train, valid = training_files
        created = dashboard.create_job(
            model="demo-tiny",
            training_file=train,
            validation_file=valid,
            suffix="ui-trained",
            method={
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 5, "batch_size": 2}},
            },
        )
        job = wait_for_job(dashboard, created["id"])
    assert job["status"] == "succeeded", job
    return job


# -- sign-in and secrets ----------------------------------------------------------------------------------


def test_sign_in_keeps_the_key_in_session_storage_only(
    open_page: Callable[..., Any], dashboard: Dashboard, shots: Shots
) -> None:
    page = open_page("/ui/files", sign_in=False)
    page.wait_for_selector("form.signin")
    shots(page, "sign-in")

    page.fill("#api-key", "ftsk-" + "x" * 48)
    page.click("form.signin button[type=submit]")
    page.wait_for_selector("#signin-error:has-text('not accepted')")
    assert page.evaluate("() => sessionStorage.length") == 0
    shots(page, "wrong-key")

    page.fill("#api-key", dashboard.key)
    page.click("form.signin button[type=submit]")
    page.wait_for_selector("#dropzone")
    assert page.evaluate("() => sessionStorage.getItem('ftserve.apiKey')") == dashboard.key
    assert page.evaluate("() => localStorage.length") == 0
    assert page.context.cookies() == []
    assert dashboard.key not in page.url
    assert page.input_value("#file-input") == ""

    page.reload()  # sessionStorage survives a reload of the tab
    page.wait_for_selector("#dropzone")

    # A key that stops working mid-session (revoked) sends the tab back to sign-in, saying why.
    page.evaluate("() => sessionStorage.setItem('ftserve.apiKey', 'ftsk-' + 'r'.repeat(48))")
    page.click("nav.nav a[data-nav='jobs']")
    page.wait_for_selector("form.signin .alert:has-text('no longer accepted')")
    assert page.evaluate("() => sessionStorage.getItem('ftserve.apiKey')") is None
    shots(page, "key-revoked")

    page.fill("#api-key", dashboard.key)
    page.click("form.signin button[type=submit]")
    page.wait_for_selector("#status-filter")
    page.click("#signout")
    page.wait_for_selector("form.signin")
    assert page.evaluate("() => sessionStorage.getItem('ftserve.apiKey')") is None

    # The shell is the same static document for everyone: requested with a key, it still carries none.
    for path in ("/ui", "/ui/jobs/ftjob-x", "/ui/files?file=x"):
        response = dashboard.http.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assert dashboard.key not in response.text
        assert "script-src 'self'" in response.headers["content-security-policy"]


# -- files ------------------------------------------------------------------------------------------------


def test_upload_valid_and_broken_files_shows_bad_lines(
    open_page: Callable[..., Any], dashboard: Dashboard, shots: Shots
) -> None:
    page = open_page("/ui/files")
    page.wait_for_selector("#dropzone")
    shots(page, "files-empty")

    # A real drop: a DataTransfer carrying a File, dispatched on the drop zone.
    transfer = page.evaluate_handle(
        """([name, text]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([text], name, { type: "application/jsonl" }));
            return transfer;
        }""",
        ["valid.jsonl", chat_jsonl(TRAIN_EXAMPLES).decode()],
    )
    page.dispatch_event("#dropzone", "dragenter", {"dataTransfer": transfer})
    assert "dragging" in (page.get_attribute("#dropzone", "class") or "")
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    valid = page.wait_for_selector("li.upload[data-name='valid.jsonl'][data-state='processed']")
    assert valid.get_attribute("data-progress") == "100"  # set only by the XHR's upload events
    valid_id = valid.get_attribute("data-file-id")
    page.wait_for_selector("#preview > li")
    preview = page.locator("#preview > li")
    assert preview.count() == 5
    assert "What is item 0?" in preview.nth(0).inner_text()
    assert "Item 4 is number 28." in preview.nth(4).inner_text()
    assert page.locator(f"#files-table tr[data-file-id='{valid_id}'] .badge").inner_text() == "ready"
    shots(page, "valid-preview")

    broken = tmp_file("broken.jsonl", broken_jsonl())
    page.set_input_files("#file-input", str(broken))
    item = page.wait_for_selector("li.upload[data-name='broken.jsonl'][data-state='error']")
    broken_id = item.get_attribute("data-file-id")
    assert broken_id and broken_id.startswith("file-")
    page.wait_for_selector(f"#file-detail[data-file-id='{broken_id}'] #bad-lines tbody tr")

    report = dashboard.http.get(f"/v1/files/{broken_id}/validation").json()
    rows = page.locator("#bad-lines tbody tr")
    assert rows.count() == report["error_count"] == 4
    shown = [
        (int(rows.nth(i).get_attribute("data-line") or 0), rows.nth(i).locator("td").nth(1).inner_text())
        for i in range(rows.count())
    ]
    expected = [(e["line"], e["field"] or "whole line") for e in report["errors"]]
    assert shown == expected
    assert [line for line, _ in shown] == [3, 7, 10, 12]
    assert "unknown role 'bot'" in rows.nth(0).inner_text()
    assert "invalid JSON" in rows.nth(1).inner_text()
    shots(page, "broken-bad-lines")

    page.set_viewport_size({"width": 390, "height": 900})
    assert_fits(page)
    shots(page, "broken-bad-lines")
    page.set_viewport_size({"width": 1280, "height": 900})

    # Delete asks twice, then the file is gone from the table and from the API.
    delete = page.locator("#file-detail button:has-text('Delete')")
    delete.click()
    page.locator("#file-detail button:has-text('Confirm delete')").click()
    page.wait_for_selector(f"#files-table tr[data-file-id='{broken_id}']", state="detached")
    assert dashboard.http.get(f"/v1/files/{broken_id}").status_code == 404
    shots(page, "after-delete")


def test_a_file_dropped_again_after_a_lost_response_is_stored_once(
    open_page: Callable[..., Any], dashboard: Dashboard
) -> None:
    """The upload reaches the server and creates the file, but the browser never sees the answer. Dropping the
    same file again sends the same Idempotency-Key, so the server answers with that file instead of a copy."""
    page = open_page("/ui/files")
    page.wait_for_selector("#dropzone")
    created: list[str] = []
    keys: list[str] = []

    def lose_the_first_answer(route: Any) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        keys.append(route.request.headers.get("idempotency-key", ""))
        if created:
            route.continue_()
            return
        # The server does this upload's work under the browser's key (Playwright can't re-send a File body
        # itself)... and the browser never gets the answer.
        response = dashboard.http.post(
            "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("lost-answer.jsonl", data)},
            headers={"Idempotency-Key": keys[-1]},
        )  # fmt: skip
        assert response.status_code == 200, response.text
        created.append(response.json()["id"])
        route.abort("connectionreset")

    page.route("**/v1/files", lose_the_first_answer)
    data = chat_jsonl(TRAIN_EXAMPLES + 3)
    upload = tmp_file("lost-answer.jsonl", data)
    page.set_input_files("#file-input", str(upload))
    failed = page.wait_for_selector("li.upload[data-name='lost-answer.jsonl'][data-state='error']")
    assert "could not be reached" in failed.inner_text()
    page.set_input_files("#file-input", str(upload))
    done = page.wait_for_selector("li.upload[data-name='lost-answer.jsonl'][data-state='processed']")
    page.unroute("**/v1/files")
    assert len(keys) == 2 and keys[0] == keys[1] and re.fullmatch(r"[0-9a-f-]{36}", keys[0])
    assert done.get_attribute("data-file-id") == created[0]
    names = [f["filename"] for f in dashboard.http.get("/v1/files", params={"limit": 1000}).json()["data"]]
    assert names.count("lost-answer.jsonl") == 1


def tmp_file(name: str, data: bytes) -> Path:
    folder = Path(__file__).resolve().parents[2] / "test-output" / "ui" / "_uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


# -- new job, live chart ----------------------------------------------------------------------------------


def test_create_job_in_the_form_and_watch_the_chart_grow(
    open_page: Callable[..., Any], dashboard: Dashboard, shots: Shots, training_files: tuple[str, str]
) -> None:
    train_id, valid_id = training_files
    page = open_page("/ui/jobs/new")
    page.wait_for_selector(f"#training_file option[value='{train_id}']", state="attached")
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == [
        "demo-tiny",
        "smollm2-135m-instruct",
    ]
    # Every hyperparameter starts as "auto".
    for name in ("n_epochs", "batch_size", "learning_rate_multiplier"):
        assert page.input_value(f"#hp-{name}") == "auto"
    page.select_option("#training_file", train_id)
    page.select_option("#validation_file", valid_id)

    # The VRAM estimate appears, and follows the form: a bigger batch needs more memory.
    page.wait_for_selector("#estimate[data-state='ready']")
    auto_mb = int(page.get_attribute("#estimate", "data-vram-mb") or 0)
    body = {
        "model": "demo-tiny",
        "training_file": train_id,
        "validation_file": valid_id,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 16}}},
    }
    page.fill("#hp-batch_size", "16")
    bigger = wait_until(
        lambda: (
            int(page.get_attribute("#estimate", "data-vram-mb") or 0) != auto_mb
            and int(page.get_attribute("#estimate", "data-vram-mb") or 0)
        ),
        10,
        "the estimate to follow the batch size",
    )
    api_estimate = dashboard.http.post("/v1/fine_tuning/estimates", json=body).json()
    assert bigger == api_estimate["estimated_vram_mb"] > auto_mb
    shots(page, "estimate")

    # Long enough (hundreds of steps) for the 1 s event poll to see the chart grow several times, even on a
    # quiet machine where demo-tiny steps take a few milliseconds.
    page.fill("#hp-batch_size", "2")
    page.fill("#hp-n_epochs", "30")
    page.fill("#suffix", "ui-chart")
    shots(page, "form-filled")
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/v1/fine_tuning/jobs")) as sent:
        page.click("form.job-form button[type=submit]")
    page.wait_for_url("**/ui/jobs/ftjob-*")
    job_id = page.url.rsplit("/", 1)[-1]
    # The form sends an Idempotency-Key, so resubmitting after a lost response cannot start a second job.
    key = sent.value.headers.get("idempotency-key", "")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", key), key
    replay = dashboard.http.post(
        "/v1/fine_tuning/jobs", content=sent.value.post_data, headers={"Idempotency-Key": key,
                                                                       "content-type": "application/json"}
    )  # fmt: skip
    assert replay.json()["id"] == job_id and replay.headers["idempotent-replayed"] == "true"
    page.evaluate("() => { window.__sameDocument = true; }")

    # Watch: the chart gains points and its x axis grows while the job runs, in the same document.
    seen_points: list[int] = []
    seen_x_max: list[float] = []
    shot_running = False
    deadline = time.monotonic() + 240
    status = ""
    while time.monotonic() < deadline:
        status = page.get_attribute(".status-line", "data-status") or ""
        points = int(page.get_attribute("#loss-chart", "data-train-points") or 0)
        x_max = page.evaluate(
            "() => { const c = Chart.getChart(document.getElementById('loss-chart')); return c ? c.scales.x.max : null; }"
        )
        if status == "running" and points and (not seen_points or points != seen_points[-1]):
            seen_points.append(points)
            if x_max is not None:
                seen_x_max.append(x_max)
            if not shot_running and points >= 5:
                shots(page, "chart-while-running")
                shot_running = True
        if status in TERMINAL:
            break
        time.sleep(0.1)
    assert status == "succeeded", f"job {job_id} ended {status!r}"
    assert len(seen_points) >= 3, f"the chart grew only through {seen_points} while running"
    assert seen_points == sorted(seen_points)
    assert len(set(seen_x_max)) >= 2, f"the x axis did not move: {seen_x_max}"
    assert page.evaluate("() => window.__sameDocument === true"), "the page reloaded"

    # The final chart holds every metrics step the API reports, validation included.
    train_steps = metrics_steps(dashboard, job_id, "train_loss")
    valid_steps = metrics_steps(dashboard, job_id, "valid_loss")
    wait_until(
        lambda: int(page.get_attribute("#loss-chart", "data-train-points") or 0) == len(train_steps),
        10,
        "the chart to show every training step",
    )
    assert valid_steps and int(page.get_attribute("#loss-chart", "data-valid-points") or 0) == len(
        valid_steps
    )

    page.wait_for_selector("#checkpoints tbody tr")
    assert page.locator("#hyperparameters [data-name='n_epochs'] dd").inner_text() == "30"
    assert page.locator("#hyperparameters [data-name='lora_rank'] dd").inner_text() == "16"  # auto, resolved
    shots(page, "job-succeeded")

    # The results CSV needs the Authorization header: the button fetches it and saves a blob.
    with page.expect_download() as download_info:
        page.click("#download-results")
    download = download_info.value
    assert download.suggested_filename == f"{job_id}-results.csv"
    csv_text = Path(download.path()).read_text()
    job = dashboard.job(job_id)
    expected_csv = dashboard.http.get(f"/v1/files/{job['result_files'][0]}/content").text
    assert csv_text == expected_csv and csv_text.startswith("step,")

    dashboard.state["watched_job"] = job

    page.click("nav.nav a[data-nav='jobs']")
    page.wait_for_selector(f"#jobs-table tr[data-job-id='{job_id}'] .badge-succeeded")
    page.check("#status-filter input[value='failed']", force=True)
    page.wait_for_selector(f"#jobs-table tr[data-job-id='{job_id}']", state="detached")
    page.check("#status-filter input[value='succeeded']", force=True)
    page.wait_for_selector(f"#jobs-table tr[data-job-id='{job_id}']")
    assert "status=succeeded" in page.url
    shots(page, "jobs-filtered")


def test_pause_resume_and_cancel_buttons(
    open_page: Callable[..., Any], dashboard: Dashboard, shots: Shots, training_files: tuple[str, str]
) -> None:
    train_id, _ = training_files
    job = dashboard.create_job(
        model="demo-tiny",
        training_file=train_id,
        suffix="ui-controls",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 20, "batch_size": 1}}},
    )
    page = open_page(f"/ui/jobs/{job['id']}")
    # Pause works on queued and running jobs alike; no need to wait for the worker to start training.
    page.wait_for_selector("#pause-job", timeout=60_000)
    shots(page, "active")

    page.click("#pause-job")
    page.wait_for_selector(".status-line[data-status='paused']")
    assert dashboard.job(job["id"])["status"] == "paused"
    shots(page, "paused")

    page.click("#resume-job")
    page.wait_for_selector(".status-line[data-status='queued'], .status-line[data-status='running']")
    assert dashboard.job(job["id"])["status"] in {"queued", "running"}

    page.click("#cancel-job")
    assert page.inner_text("#cancel-job") == "Confirm cancel"
    time.sleep(1.5)  # a poll (maybe queued -> running) redraws the page, and the half-confirmed button stays
    assert page.inner_text("#cancel-job") == "Confirm cancel"
    page.click("#cancel-job")
    page.wait_for_selector(".status-line[data-status='cancelled']")
    assert dashboard.job(job["id"])["status"] == "cancelled"
    assert page.locator("#cancel-job").count() == 0
    shots(page, "cancelled")


# -- playground -------------------------------------------------------------------------------------------


def test_playground_streams_an_answer_from_the_fine_tuned_model(
    open_page: Callable[..., Any], dashboard: Dashboard, shots: Shots, trained_job: dict[str, Any]
) -> None:
    dashboard.server.wait_inference_ready("demo-tiny")
    model = trained_job["fine_tuned_model"]
    page = open_page(f"/ui/jobs/{trained_job['id']}")
    page.click("#open-playground")
    page.wait_for_selector(f"#model-0 option[value='{model}']", state="attached")
    assert page.input_value("#model-0") == model

    prompt = "What is item 3?"
    page.fill("#prompt", prompt)
    with page.expect_response("**/v1/chat/completions") as response_info:
        page.press("#prompt", "Enter")
    assert response_info.value.headers["content-type"].startswith("text/event-stream")
    reply = page.wait_for_selector(
        ".pane[data-index='0'] .bubble-assistant[data-state='done']", timeout=120_000
    )
    chunks = int(reply.get_attribute("data-chunks") or 0)
    text = page.inner_text(".pane[data-index='0'] .bubble-assistant .bubble-text")
    # Streamed (the event-stream above) and rendered as it came. How many pieces is up to load: vLLM merges the
    # deltas a busy API has not read yet, so on a loaded CI box a short answer can arrive as one piece.
    assert chunks >= 1, "no streamed piece was rendered"
    # The streamed pieces add up to exactly what the same request answers without streaming.
    plain = dashboard.http.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": 256,
        },
    ).json()
    assert text == plain["choices"][0]["message"]["content"] and text.strip()
    shots(page, "single")

    # Side by side: the same prompt goes to the base model and the fine-tuned one.
    page.check("#mode-compare", force=True)
    assert page.input_value("#model-1") == "demo-tiny"
    page.fill("#prompt", "What is item 5?")
    page.press("#prompt", "Enter")
    page.wait_for_selector(".pane[data-index='1'] .bubble-assistant[data-state='done']", timeout=120_000)
    page.wait_for_selector(".pane[data-index='0'] .bubble-assistant[data-state='done'] >> nth=1")
    base_reply = page.locator(".pane[data-index='1'] .bubble-assistant").first
    assert base_reply.get_attribute("data-model") == "demo-tiny"
    assert int(base_reply.get_attribute("data-chunks") or 0) >= 1
    shots(page, "side-by-side")
    page.set_viewport_size({"width": 390, "height": 900})
    assert_fits(page)
    shots(page, "side-by-side")


# -- exports ----------------------------------------------------------------------------------------------


def test_export_the_adapter_and_download_it(
    open_page: Callable[..., Any],
    dashboard: Dashboard,
    shots: Shots,
    trained_job: dict[str, Any],
    tmp_path: Path,
) -> None:
    page = open_page(f"/ui/jobs/{trained_job['id']}")
    page.wait_for_selector("#export-source option", state="attached")
    assert page.locator("#export-source option").first.inner_text() == "Fine-tuned model"
    page.select_option("#export-format", "adapter")
    page.click("#export-button")
    row = page.locator("#exports tbody tr").first
    row.wait_for()
    shots(page, "export-queued")
    page.wait_for_selector("#exports tbody tr[data-status='succeeded'] button", timeout=180_000)
    shots(page, "export-succeeded")
    with page.expect_download() as info:
        page.click("#exports tbody tr[data-status='succeeded'] button")
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    assert saved.name == f"{trained_job['id']}-adapter.zip"
    with zipfile.ZipFile(saved) as archive:
        assert f"{trained_job['id']}-adapter/adapter_model.safetensors" in archive.namelist()


# -- every page: widths and accessibility -----------------------------------------------------------------


@pytest.mark.parametrize("width", [1280, 390])
def test_pages_fit_the_width_and_pass_axe(
    open_page: Callable[..., Any],
    dashboard: Dashboard,
    shots: Shots,
    width: int,
    trained_job: dict[str, Any],
    rejected_file: str,
    training_files: tuple[str, str],
) -> None:
    problems: list[str] = []

    def check(page: Any, step: str) -> None:
        assert_fits(page)
        problems.extend(f"{step}: {v}" for v in axe_violations(page, dashboard))
        shots(page, step)

    page = open_page("/ui", width=width, sign_in=False)
    page.wait_for_selector("form.signin")
    check(page, "sign-in")

    page = open_page(f"/ui/files?file={rejected_file}", width=width)
    page.wait_for_selector("#bad-lines tbody tr")
    check(page, "files-report")
    page.goto(dashboard.url(f"/ui/files?file={training_files[0]}"))
    page.wait_for_selector("#preview > li")
    check(page, "files-preview")

    page.goto(dashboard.url(f"/ui/jobs/new?training_file={training_files[0]}"))
    page.wait_for_selector("#estimate[data-state='ready']")
    page.click("details.advanced summary")
    check(page, "new-job")

    page.goto(dashboard.url("/ui/jobs"))
    page.wait_for_selector("#jobs-table tbody tr")
    check(page, "jobs")

    page.goto(dashboard.url(f"/ui/jobs/{trained_job['id']}"))
    page.wait_for_selector("#checkpoints tbody tr")
    page.wait_for_selector("#loss-chart:not([data-train-points='0'])")
    check(page, "job")

    page.goto(dashboard.url(f"/ui/playground?model={trained_job['fine_tuned_model']}&compare=demo-tiny"))
    page.wait_for_selector("#model-0 option", state="attached")
    check(page, "playground")

    assert not problems, "accessibility violations:\n" + "\n".join(problems)
