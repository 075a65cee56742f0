"""`ftserve evals ...` against the session's `ftserve up`, with the org and fine-tuned model of the shared secret
eval (tests/support/evals.py): create an eval from a JSON file, run it for the base and the fine-tuned model on
inline items, and compare the runs in a table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli_runner import Run
from tests.support.evals import SECRET, SECRET_QUESTION, secret_eval
from tests.support.ftserve_process import FtserveProcess

pytestmark = pytest.mark.slow


def test_create_run_and_compare(ftserve: Run, ftserve_server: FtserveProcess, tmp_path: Path) -> None:
    compared = secret_eval(ftserve_server)
    env = {"FTSERVE_API_KEY": compared.key}
    spec = {
        "name": "cli secret",
        "data_source_config": {
            "type": "custom",
            "item_schema": {"type": "object", "properties": {"q": {"type": "string"}, "a": {"type": "string"}}},
        },
        "testing_criteria": [
            {"type": "string_check", "name": "has secret", "input": "{{ sample.output_text }}",
             "reference": "{{ item.a }}", "operation": "like"},
        ],
    }  # fmt: skip
    (tmp_path / "eval.json").write_text(json.dumps(spec))
    created = ftserve("evals", "create", str(tmp_path / "eval.json"), env_extra=env)
    assert created.returncode == 0, created.stderr
    eval_id = created.stdout.strip()
    assert eval_id.startswith("eval_")
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"q": SECRET_QUESTION, "a": SECRET}) + "\n" for _ in range(3)))

    ran = ftserve("evals", "run", eval_id, "-m", "demo-tiny", "-m", compared.tuned_model, "--items", str(items),
                  "--prompt", "{{ item.q }}", "--max-tokens", "12", "--json", env_extra=env)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    runs = {r["model"]: r for r in json.loads(ran.stdout)}
    assert runs[compared.tuned_model]["result_counts"]["passed"] == 3
    assert runs["demo-tiny"]["result_counts"]["passed"] == 0

    table = ftserve("evals", "runs", eval_id, env_extra=env)
    assert table.returncode == 0, table.stderr
    header, *rows = [line.split("\t") for line in table.stdout.strip().splitlines()]
    assert header == ["run", "model", "status", "passed", "errored", "has secret", "report file"]
    by_model = {row[1]: row for row in rows}
    assert by_model[compared.tuned_model][3] == "3/3" and by_model["demo-tiny"][3] == "0/3"
    assert by_model[compared.tuned_model][5] == "3/3 · 1.000"

    listed = ftserve("evals", "list", env_extra=env)
    assert eval_id in listed.stdout
    bad = ftserve("evals", "run", eval_id, "-m", "demo-tiny", "--file", "file-nope", env_extra=env)
    assert bad.returncode == 1 and "--file" in bad.stderr, bad.stderr
