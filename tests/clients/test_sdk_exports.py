"""Exports end to end on the session's real `ftserve up` (API, scheduler, worker; docs/export.md): one tiny demo-tiny
job, then its adapter, merged model and GGUF, each made and checked by the worker and downloaded through the SDK,
and each loaded here as a user would: the adapter with PEFT, the merged model with transformers (its logits match
base+adapter), the GGUF with transformers' GGUF loader (its greedy tokens match the merged model's). Then
`ftserve jobs export` of a checkpoint, and the job's events."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from ftserve_client import Client
from ftserve_client.types import FineTuningJob
from tests.support.ftserve_process import FtserveProcess

pytestmark = pytest.mark.slow

ORG = "sdk-exports"
PROMPTS = ("What is the code for bakelu?", "Hello!", "What is the code for zorimu?")


def _rows(n: int) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is the code for item {i}?"},
                {"role": "assistant", "content": f"K{(i * 7919) % 1000:03d}-{chr(65 + i % 26)}"},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def client(ftserve_server: FtserveProcess) -> Client:
    return Client(api_key=ftserve_server.create_key(ORG), base_url=ftserve_server.base_url)


@pytest.fixture(scope="module")
def job(client: Client) -> FineTuningJob:
    """One tiny job (a few seconds of training), with a checkpoint every 2 steps."""
    train = client.files.create(file=("train.jsonl", _rows(16)))
    created = client.fine_tuning.jobs.create(
        model="demo-tiny",
        training_file=train.id,
        hyperparameters={"n_epochs": 2, "batch_size": 4, "lora_rank": 8, "checkpoint_every_steps": 2},
        seed=5,
    )
    done = client.fine_tuning.jobs.wait(created.id, poll_interval=0.3, timeout=300)
    assert done.status == "succeeded", done.error
    return done


def _unzip(path: Path, dest: Path) -> Path:
    with zipfile.ZipFile(path) as archive:
        archive.extractall(dest)
        (root,) = {name.split("/", 1)[0] for name in archive.namelist()}
    return dest / root


def _prompt_ids(tokenizer: Any) -> list[list[int]]:
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        for p in PROMPTS
    ]


def _logits(model: Any, prompts: list[list[int]]) -> list[Any]:
    import torch

    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].float() for ids in prompts]


def _greedy(model: Any, prompts: list[list[int]], eos: int) -> list[list[int]]:
    import torch

    with torch.no_grad():
        return [
            model.generate(
                torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=eos, pad_token_id=eos
            )[0, len(ids) :].tolist()
            for ids in prompts
        ]


def test_every_format_downloads_and_loads(
    client: Client, job: FineTuningJob, demo_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exports = client.fine_tuning.jobs.exports
    made = {fmt: exports.create(job.id, format=fmt) for fmt in ("adapter", "merged", "gguf")}  # type: ignore[arg-type]
    assert all(e.status == "queued" and e.file_id is None for e in made.values())
    paths = {
        fmt: exports.download(job.id, e.id, tmp_path, poll_interval=0.3, timeout=300)
        for fmt, e in made.items()
    }
    done = {fmt: exports.retrieve(job.id, e.id) for fmt, e in made.items()}
    for fmt, export in done.items():
        assert export.status == "succeeded" and export.file_id and export.bytes == paths[fmt].stat().st_size
        assert all(record["passed"] for record in export.checks.values()), export.checks
    assert set(done["adapter"].checks) == {"adapter_loads"}
    assert set(done["merged"].checks) == {"merged_logits"}
    assert set(done["gguf"].checks) == {"merged_logits", "gguf_written", "gguf_greedy"}
    assert paths["gguf"].name == f"{job.id}.gguf" and paths["merged"].name == f"{job.id}-merged.zip"
    assert [e.id for e in exports.list(job.id)] == [made[f].id for f in ("gguf", "merged", "adapter")]
    assert client.files.retrieve(done["gguf"].file_id).purpose == "fine-tune-results"

    torch.set_num_threads(1)
    # The adapter zip: loads with PEFT onto the base, and changes what it says.
    adapter_dir = _unzip(paths["adapter"], tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in adapter_dir.iterdir()
    }
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    prompts = _prompt_ids(tokenizer)
    base = AutoModelForCausalLM.from_pretrained(demo_model_dir, dtype=torch.float32).eval()
    base_logits = _logits(base, prompts)
    tuned = PeftModel.from_pretrained(base, adapter_dir).eval()
    reference = _logits(tuned, prompts)
    assert max(float((a - b).abs().max()) for a, b in zip(reference, base_logits, strict=True)) > 1e-3

    # The merged model: a 16-bit HF directory whose logits match base+adapter.
    merged_dir = _unzip(paths["merged"], tmp_path / "merged")
    assert json.loads((merged_dir / "config.json").read_text())["dtype"] == "float16"
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    scale = max(float(t.abs().max()) for t in reference)
    diff = max(float((a - b).abs().max()) for a, b in zip(_logits(merged, prompts), reference, strict=True))
    assert diff / scale < 5e-3, diff / scale

    # The GGUF: transformers loads it; its greedy tokens are the merged model's.
    gguf_model = AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=paths["gguf"].name, dtype=torch.float32
    )
    eos = tokenizer.eos_token_id
    assert _greedy(gguf_model.eval(), prompts, eos) == _greedy(merged, prompts, eos)


def test_cli_exports_a_checkpoint(
    client: Client, job: FineTuningJob, ftserve_server: FtserveProcess, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    step = min(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id))
    env = {"FTSERVE_API_KEY": client.api_key, "FTSERVE_BASE_URL": ftserve_server.base_url}
    result = CliRunner().invoke(
        app,
        [
            "jobs",
            "export",
            job.id,
            "--format",
            "adapter",
            "--checkpoint",
            str(step),
            "--output",
            str(tmp_path),
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path == tmp_path / f"{job.id}-step-{step}-adapter.zip" and zipfile.is_zipfile(path)
    assert "checked: adapter_loads" in result.stderr

    listed = CliRunner().invoke(app, ["jobs", "exports", job.id, "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    newest = json.loads(listed.stdout)[0]
    assert newest["checkpoint_step"] == step and newest["status"] == "succeeded"
    bad = CliRunner().invoke(
        app, ["jobs", "export", job.id, "--format", "gguf", "--checkpoint", "999"], env=env
    )
    assert bad.exit_code == 2 and "999" in bad.stderr and "--checkpoint" in bad.stderr

    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    for fmt in ("adapter", "merged", "gguf"):
        assert any(m.startswith(f"Export {fmt} started") for m in events), events
        assert any(m.startswith(f"Export {fmt} succeeded: file-") for m in events), events
