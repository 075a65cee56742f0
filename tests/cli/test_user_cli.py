"""`ftserve files|jobs|models|chat`, as a user runs them against a real `ftserve up`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cli.follow import SPARK, sparkline
from ftserve_client import Client
from tests.support.cli_runner import Run
from tests.support.ftserve_process import FtserveProcess

pytestmark = pytest.mark.slow

TRAIN = Path(__file__).resolve().parents[2] / "examples" / "data" / "demo-train.jsonl"


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    return lines[0]


@pytest.fixture(scope="module")
def followed(cli_env: dict[str, str], sdk: Client) -> tuple[object, str]:
    """`ftserve jobs create ... --follow` on demo-tiny in a real process, run once: (the process, the model)."""
    from tests.support.cli_runner import run_ftserve

    done = run_ftserve(
        "jobs", "create", "--model", "demo-tiny", "--file", str(TRAIN),
        "-H", "n_epochs=2", "-H", "batch_size=4", "--suffix", "cli", "--follow",
        env=cli_env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    model = done.stdout.strip().splitlines()[-1]
    return done, model


def test_jobs_create_follow_shows_the_progress_view_and_ends_with_the_model(
    followed: tuple[object, str], sdk: Client
) -> None:
    done, model = followed
    stderr: str = done.stderr  # type: ignore[attr-defined]
    assert re.fullmatch(r"ft:demo-tiny:cli-user:cli:ftjob-\w+", model)
    job = sdk.fine_tuning.jobs.retrieve(model.rsplit(":", 1)[1])
    assert job.status == "succeeded" and job.fine_tuned_model == model
    # The upload's progress bar, the events as they came, then the final view.
    assert "upload demo-train.jsonl" in stderr and f"→ {job.training_file}: processed, 32 chat" in stderr
    assert "Fine-tuning job started" in stderr and "Checkpoint created at step" in stderr
    view = stderr[stderr.index("╭─ " + job.id) :]
    assert "status    succeeded" in view
    assert f"step      {job.total_steps}/{job.total_steps}" in view and "100%" in view
    loss_line = next(line for line in view.splitlines() if "loss" in line)
    assert sum(ch in SPARK for ch in loss_line) == job.total_steps  # one bar per logged step
    assert f"model     {model}" in view
    assert f"{job.id} succeeded. Fine-tuned model:" in stderr


def test_sparkline_scales_and_buckets() -> None:
    assert sparkline([3.0, 2.0, 1.0, 0.0]) == "█▆▃▁"
    assert sparkline([1.0, 1.0]) == "▅▅" and sparkline([]) == ""
    assert len(sparkline([float(i) for i in range(1000)], width=40)) == 40


def test_follow_json_and_exit_codes_of_a_cancelled_job(ftserve: Run, sdk: Client) -> None:
    training = sdk.files.create(file=TRAIN).id
    created = ftserve(
        "jobs",
        "create",
        "-m",
        "demo-tiny",
        "-f",
        training,
        "-H",
        "n_epochs=40",
        "-H",
        "batch_size=1",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    job_id = json.loads(created.stdout)["id"]
    cancelled = ftserve("jobs", "cancel", job_id)
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"{job_id} cancelled"
    followed = ftserve("jobs", "follow", job_id, "--json")
    assert followed.returncode == 1  # cancelled is not success
    lines = [json.loads(line) for line in followed.stdout.splitlines()]
    assert lines[-1]["id"] == job_id and lines[-1]["status"] == "cancelled"
    assert [e["message"] for e in lines[:-1]][0].startswith("Created fine-tuning job")
    assert any(e["message"] == "Job cancelled" for e in lines[:-1])
    for verb in ("pause", "resume"):
        refused = ftserve("jobs", verb, job_id)
        assert refused.returncode == 2 and f"Cannot {verb} job {job_id}" in one_error_line(refused.stderr)


def test_files_verbs(ftserve: Run, tmp_path: Path) -> None:
    uploaded = ftserve("files", "upload", str(TRAIN), "--json")
    assert uploaded.returncode == 0, uploaded.stderr
    file = json.loads(uploaded.stdout)
    assert file["status"] == "processed" and file["example_count"] == 32 and file["filename"] == TRAIN.name
    plain = ftserve("files", "upload", str(TRAIN))
    assert plain.returncode == 0 and re.fullmatch(r"file-\w+\n", plain.stdout)
    assert "upload demo-train.jsonl" in plain.stderr and "6.1/6.1 kB" in plain.stderr  # the progress bar

    listed = ftserve("files", "list", "--json")
    ids = [f["id"] for f in json.loads(listed.stdout)]
    assert ids[:2] == [plain.stdout.strip(), file["id"]]
    table = ftserve("files", "list")
    assert file["id"] in table.stdout and "demo-train.jsonl" in table.stdout and "processed" in table.stdout
    assert json.loads(ftserve("files", "get", file["id"], "--json").stdout)["id"] == file["id"]
    downloaded = ftserve("files", "download", file["id"], "-o", str(tmp_path / "copy.jsonl"))
    assert downloaded.returncode == 0 and (tmp_path / "copy.jsonl").read_bytes() == TRAIN.read_bytes()
    deleted = ftserve("files", "delete", file["id"])
    assert deleted.returncode == 0 and deleted.stdout.strip() == f"Deleted {file['id']}"
    missing = ftserve("files", "get", file["id"])
    assert missing.returncode == 1 and "No such File object" in one_error_line(missing.stderr)


def test_a_rejected_upload_prints_each_bad_line_and_why(ftserve: Run, tmp_path: Path) -> None:
    lines = TRAIN.read_text().splitlines()
    lines[2] = lines[2].replace('"role": "user"', '"role": "bot"')
    lines[6] = "{not json"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    done = ftserve("files", "upload", str(bad))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"error: {bad} was rejected: 2 problem(s)" in done.stderr
    assert re.search(r"^  line 3: messages\[1\]\.role: unknown role 'bot'", done.stderr, re.M), done.stderr
    assert re.search(r"^  line 7: invalid JSON", done.stderr, re.M), done.stderr
    as_json = ftserve("files", "upload", str(bad), "--json")
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and [e["line"] for e in report["errors"]] == [3, 7]


def test_jobs_list_get_events_checkpoints(ftserve: Run, followed: tuple[object, str]) -> None:
    _done, model = followed
    job_id = model.rsplit(":", 1)[1]
    jobs = json.loads(ftserve("jobs", "list", "--json", "-n", "100").stdout)
    assert job_id in [j["id"] for j in jobs]
    assert job_id in ftserve("jobs", "list").stdout
    shown = ftserve("jobs", "get", job_id)
    assert re.search(r"^status +succeeded$", shown.stdout, re.M) and model in shown.stdout
    assert re.search(r"^hyperparameters .*n_epochs=2.*batch_size=4", shown.stdout, re.M), shown.stdout
    events = json.loads(ftserve("jobs", "events", job_id, "--json", "-n", "1000").stdout)
    assert events[0]["message"].startswith("Created fine-tuning job")  # oldest first
    assert [e["created_at"] for e in events] == sorted(e["created_at"] for e in events)
    last_two = ftserve("jobs", "events", job_id, "-n", "2").stdout.splitlines()
    assert len(last_two) == 2
    checkpoints = json.loads(ftserve("jobs", "checkpoints", job_id, "--json").stdout)
    assert checkpoints and checkpoints[0]["fine_tuned_model_checkpoint"].startswith(model + ":ckpt-step-")


def test_models_list_through_the_api_and_the_registry(
    ftserve: Run, followed: tuple[object, str], ftserve_server: FtserveProcess
) -> None:
    _done, model = followed
    listed = {m["id"]: m for m in json.loads(ftserve("models", "list", "--json").stdout)}
    assert listed["demo-tiny"]["owned_by"] == "system" and listed[model]["owned_by"] == "cli-user"
    assert model in ftserve("models", "list").stdout
    assert json.loads(ftserve("models", "get", model, "--json").stdout)["id"] == model
    # On the server machine, --server reads the registry file instead (id, local path).
    registry = ftserve(
        "models", "list", "--server", env_extra={"FTSERVE_MODEL_REGISTRY": str(ftserve_server.model_registry)}
    )
    assert registry.returncode == 0 and registry.stdout.startswith("demo-tiny\t")
    assert model not in registry.stdout


def test_chat_one_shot_json_and_repl(
    ftserve: Run, followed: tuple[object, str], ftserve_server: FtserveProcess
) -> None:
    _done, model = followed
    ftserve_server.wait_inference_ready("demo-tiny")
    streamed = ftserve(
        "chat", "-m", model, "-p", "Code for item 5?", "--max-tokens", "12", "--temperature", "0"
    )
    assert streamed.returncode == 0, streamed.stderr
    completion = json.loads(
        ftserve(
            "chat",
            "-m",
            model,
            "-p",
            "Code for item 5?",
            "--max-tokens",
            "12",
            "--temperature",
            "0",
            "--json",
        ).stdout
    )
    assert completion["model"] == model
    assert streamed.stdout.strip() == completion["choices"][0]["message"]["content"].strip()
    first = ftserve("chat", "-m", model, "-p", "Code for item 1?", "--max-tokens", "8", "--temperature", "0")
    repl = ftserve(
        "chat",
        "-m",
        model,
        "--max-tokens",
        "8",
        "--temperature",
        "0",
        stdin="Code for item 1?\n/reset\nhi\n/exit\n",
    )
    assert repl.returncode == 0, repl.stderr
    assert "(history cleared)" in repl.stderr and repl.stderr.count("you> ") == 4
    assert repl.stdout.startswith(first.stdout) and len(repl.stdout) > len(
        first.stdout
    )  # then the answer to "hi"
    unknown = ftserve("chat", "-m", "ft:demo-tiny:cli-user:x:ftjob-nope", "-p", "hi")
    assert unknown.returncode == 1 and "--model" in one_error_line(unknown.stderr)


@pytest.mark.parametrize(
    ("args", "unset", "extra", "expected", "code"),
    [
        (["jobs", "create", "-m", "demo-tiny", "-f", "nope.jsonl"], (), {}, "no such file: nope.jsonl", 2),
        (
            ["jobs", "create", "-m", "demo-tyni", "-f", str(TRAIN)],
            (),
            {},
            "unknown model 'demo-tyni'. Did you mean 'demo-tiny'?",
            2,
        ),
        (
            ["jobs", "create", "-m", "demo-tiny", "-f", str(TRAIN), "--method", "rl"],
            (),
            {},
            "--method sft",
            2,
        ),
        (
            ["jobs", "create", "-m", "demo-tiny", "-f", str(TRAIN), "-H", "epochs"],
            (),
            {},
            "-H takes key=value",
            2,
        ),
        (
            ["jobs", "create", "-m", "demo-tiny", "-f", str(TRAIN), "-H", "n_epoch=2"],
            (),
            {},
            "unknown hyperparameter 'n_epoch'. Did you mean 'n_epochs'? Fix -H n_epoch=VALUE",
            2,
        ),
        (["files", "list"], ("FTSERVE_API_KEY",), {}, "FTSERVE_API_KEY is not set", 2),
        (["files", "list"], (), {"FTSERVE_API_KEY": "ftsk-wrong"}, "refused the API key", 1),
        (["files", "list"], (), {"FTSERVE_BASE_URL": "http://127.0.0.1:9/v1"}, "cannot reach ftserve at", 1),
        (["jobs", "get", "ftjob-nope"], (), {}, "No such fine-tuning job: ftjob-nope", 1),
    ],
    ids=[
        "missing-file",
        "unknown-model",
        "bad-method",
        "bad-H",
        "unknown-hyperparameter",
        "no-key",
        "bad-key",
        "down",
        "no-job",
    ],
)
def test_mistakes_get_one_line_that_says_how_to_fix_them(
    ftserve: Run, args: list[str], unset: tuple[str, ...], extra: dict[str, str], expected: str, code: int
) -> None:
    done = ftserve(*args, unset=unset, env_extra=extra)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert expected in one_error_line(done.stderr)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["jobs", "create", "--model", "demo-tiny", "--file", "missing.jsonl"],
            "no such file: missing.jsonl",
        ),
        (["jobs", "create", "--model", "nope", "--file", str(TRAIN)], "unknown model 'nope'"),
        (["config", "run", "tests/cli/broken.yaml"], "tests/cli/broken.yaml:3:"),
    ],
    ids=["missing-file", "unknown-model", "broken-yaml"],
)
def test_the_three_usual_mistakes_in_a_real_process(
    ftserve_proc: Run, args: list[str], expected: str
) -> None:
    """What a user sees in their terminal: one line on stderr, no traceback, exit code 2."""
    done = ftserve_proc(*args)
    assert done.returncode == 2 and done.stdout == ""
    assert expected in one_error_line(done.stderr)
