"""`ftserve config validate|run`: the YAML job files in examples/ (every one is validated and trained) and
the one-line errors for broken ones."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ftserve_client import Client
from tests.support.cli_runner import Run

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    return lines[0]


def test_config_run_demo_trains_and_prints_the_model_name(ftserve_proc: Run, sdk: Client) -> None:
    done = ftserve_proc("config", "run", "examples/demo.yaml")
    assert done.returncode == 0, done.stderr
    model = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"ft:demo-tiny:cli-user:demo:ftjob-\w+", model), done.stdout
    job = sdk.fine_tuning.jobs.retrieve(model.rsplit(":", 1)[1])
    assert job.status == "succeeded" and job.fine_tuned_model == model
    assert job.hyperparameters is not None and job.hyperparameters.n_epochs == 3
    assert "status    succeeded" in done.stderr and "upload demo-train.jsonl" in done.stderr


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLE_FILES} >= {"demo.yaml", "lora.yaml", "dpo.yaml"}


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_example_validates(ftserve: Run, path: Path) -> None:
    done = ftserve("config", "validate", str(path), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["base_model_checked"] and report["datasets"]
    assert report["estimate"]["estimated_vram_mb"] > 0  # the server's pre-flight estimate, sized locally


def test_every_other_example_trains(ftserve: Run, sdk: Client) -> None:
    """demo.yaml is followed above; the others are submitted together and waited on with the SDK."""
    jobs = {}
    for path in EXAMPLE_FILES:
        if path.name == "demo.yaml":
            continue
        done = ftserve("config", "run", str(path), "--no-follow", "--json")
        assert done.returncode == 0, done.stderr
        jobs[path.name] = json.loads(done.stdout)["id"]
    finished = {
        name: sdk.fine_tuning.jobs.wait(job_id, poll_interval=0.5, timeout=300)
        for name, job_id in jobs.items()
    }
    for name, job in finished.items():
        assert job.status == "succeeded", (name, job.error)
    lora = finished["lora.yaml"]
    assert lora.validation_file and lora.seed == 42 and lora.metadata == {"project": "quickstart"}
    hp = lora.hyperparameters
    assert hp is not None and (hp.lora_rank, hp.lora_alpha, hp.target_modules) == (8, 16, "all-linear")
    assert (hp.max_seq_length, hp.eval_every_steps, hp.checkpoint_every_steps) == (256, 4, 4)
    joined = sdk.files.retrieve(lora.training_file)
    assert joined.filename == "lora-train.jsonl" and joined.example_count == 32 + 12  # both datasets
    tagged = json.loads(ftserve("jobs", "list", "--metadata", "project=quickstart", "--json").stdout)
    assert lora.id in [j["id"] for j in tagged] and all(
        j["metadata"] == {"project": "quickstart"} for j in tagged
    )
    dpo = finished["dpo.yaml"]
    assert dpo.method is not None and dpo.method.type == "dpo"
    assert dpo.method.dpo and dpo.method.dpo.hyperparameters and dpo.method.dpo.hyperparameters.beta == 0.1


BROKEN = {
    "bad-yaml": (
        "base_model: demo-tiny\ndatasets:\n  - path: x.jsonl\n   suffix: oops\n",
        ":4:",
        "invalid YAML",
    ),
    "tab-yaml": ("base_model: demo-tiny\n\tmethod: sft\n", ":2:", "invalid YAML"),
    "not-a-mapping": ("- base_model: demo-tiny\n", "", "expected a mapping of keys"),
    "unknown-key": (
        "base_model: demo-tiny\ndatasets: [{path: ../examples/data/demo-train.jsonl}]\nlora_rank: 8\n",
        ":3:",
        "unknown key 'lora_rank'. Did you mean 'lora_r'?",
    ),
    "bad-value": (
        "base_model: demo-tiny\ndatasets: [{path: data.jsonl}]\nnum_epochs: three\n",
        ":3:",
        "num_epochs: Input should be a valid integer",
    ),
    "missing-key": ("datasets: [{path: data.jsonl}]\n", "", "missing required key 'base_model'"),
    "missing-dataset": (
        "base_model: demo-tiny\ndatasets:\n  - path: nowhere.jsonl\n",
        "",
        "datasets[0].path: no such file",
    ),
    "beta-for-sft": (
        "base_model: demo-tiny\ndatasets: [{path: data.jsonl}]\nbeta: 0.1\n",
        ":3:",
        "beta applies to method: dpo",
    ),
    "wrong-format": (
        "base_model: demo-tiny\nmethod: dpo\ndatasets: [{path: data.jsonl}]\n",
        "",
        "cannot train method dpo: it holds chat data (OpenAI chat: messages), which method 'supervised' trains on",
    ),
    "unknown-model": (
        "base_model: demo-tiyn\ndatasets: [{path: data.jsonl}]\n",
        "",
        "unknown model 'demo-tiyn'. Did you mean 'demo-tiny'?",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
@pytest.mark.parametrize("verb", ["validate", "run"])
def test_broken_configs_get_one_line_that_says_how_to_fix_them(
    ftserve: Run, tmp_path: Path, case: str, verb: str
) -> None:
    text, where, expected = BROKEN[case]
    (tmp_path / "data.jsonl").write_bytes((EXAMPLES / "data" / "demo-train.jsonl").read_bytes())
    config = tmp_path / f"{case}.yaml"
    config.write_text(text)
    done = ftserve("config", verb, str(config))
    assert done.returncode == 2, (done.stdout, done.stderr)
    line = one_error_line(done.stderr)
    assert f"{config}{where}" in line and expected in line, line
    assert (
        "docs/config.md" in line
        or "Fix" in line
        or "fix" in line
        or "Change" in line
        or "ftserve models list" in line
    )


def test_a_missing_config_file(ftserve: Run) -> None:
    done = ftserve("config", "run", "examples/nope.yaml")
    assert done.returncode == 2
    assert "no such config file: examples/nope.yaml" in one_error_line(done.stderr)
