"""Replica registration: `ftserve up`'s local vLLM command line, FTSERVE_INFERENCE_REPLICAS, and the
`ftserve inference add/list/remove` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from cli.supervisor import vllm_children
from core.db import session_scope
from core.errors import InvalidRequestError
from core.inference.replicas import parse_replicas_setting, sync_configured_replicas, upsert_replica
from core.model_registry import register_model
from core.models import AdapterPlacement, InferenceReplica
from core.settings import Settings
from tests.support.adapters import make_base

REPO = Path(__file__).resolve().parents[2]


def test_up_starts_one_vllm_per_served_base_model(settings: Settings, tmp_path: Path) -> None:
    register_model(settings, "demo-tiny", make_base(tmp_path / "a"))
    register_model(settings, "other", make_base(tmp_path / "b"))
    register_model(settings, "gone", tmp_path / "missing")
    tuned = settings.model_copy(
        update={
            "vllm_max_loras": 3,
            "vllm_max_cpu_loras": 5,
            "vllm_max_lora_rank": 32,
            "vllm_extra_args": "--seed 7",
        }
    )
    children = vllm_children(tuned)
    assert [c.name for c in children] == ["vllm:demo-tiny", "vllm:other"]  # "gone" has no directory
    first = children[0]
    args = first.args
    assert args[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    flags: dict[str, str] = {}
    for i, arg in enumerate(args[3:], start=3):
        if arg.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) else ""
            flags[arg] = "" if nxt.startswith("--") else nxt
    assert flags["--model"] == str(tmp_path / "a") and flags["--served-model-name"] == "demo-tiny"
    assert flags["--host"] == "127.0.0.1" and flags["--max-loras"] == "3" and flags["--max-cpu-loras"] == "5"
    assert flags["--max-lora-rank"] == "32" and flags["--enable-lora"] == "" and args[-2:] == ["--seed", "7"]
    assert (
        first.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and first.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    )
    assert (
        len(first.env["VLLM_API_KEY"]) >= 24 and first.env["VLLM_API_KEY"] != children[1].env["VLLM_API_KEY"]
    )
    assert first.restart and first.health_url == f"{first.replica['url']}/health"
    assert first.replica is not None and first.replica["api_key"] == first.env["VLLM_API_KEY"]
    assert first.replica["adapter_dir"] == settings.adapters_dir and first.replica["max_adapters"] == 5
    assert children[1].replica is not None and children[1].replica["url"] != first.replica["url"]

    assert vllm_children(tuned.model_copy(update={"vllm_models": "other"}))[0].name == "vllm:other"
    assert vllm_children(tuned.model_copy(update={"vllm_models": ""})) == []
    assert vllm_children(tuned.model_copy(update={"inference_enabled": False})) == []


def test_a_registered_training_template_is_the_served_template_too(
    settings: Settings, tmp_path: Path
) -> None:
    template = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>{% endfor %}"
    register_model(settings, "custom", make_base(tmp_path / "a"), chat_template=template)
    register_model(settings, "plain", make_base(tmp_path / "b"))
    custom, plain = vllm_children(settings)
    flag = custom.args.index("--chat-template")
    assert Path(custom.args[flag + 1]).read_text() == template
    assert "--chat-template" not in plain.args


def test_configured_replicas_are_applied_and_removed(engine: Engine, settings: Settings) -> None:
    entries = [
        {
            "base_model": "llama",
            "url": "http://vllm-1:8000/v1/",
            "adapter_dir": "/shared/a",
            "max_adapters": 9,
        },
        {"base_model": "llama", "url": "http://vllm-2:8000", "api_key": "k"},
    ]
    sync_configured_replicas(engine, settings.model_copy(update={"inference_replicas": json.dumps(entries)}))
    with Session(engine) as session:
        rows = {r.url: r for r in session.exec(select(InferenceReplica)).all()}
    assert set(rows) == {"http://vllm-1:8000", "http://vllm-2:8000"}
    assert (
        rows["http://vllm-1:8000"].max_adapters == 9 and rows["http://vllm-1:8000"].adapter_dir == "/shared/a"
    )
    assert rows["http://vllm-2:8000"].adapter_dir == str(settings.adapters_dir)
    assert rows["http://vllm-2:8000"].api_key == "k" and rows["http://vllm-2:8000"].source == "settings"
    with session_scope(engine) as session:
        session.add(
            AdapterPlacement(adapter_id="ft:x", replica_id=rows["http://vllm-2:8000"].id, lora_path="/p")
        )
    sync_configured_replicas(
        engine, settings.model_copy(update={"inference_replicas": json.dumps(entries[:1])})
    )
    with Session(engine) as session:
        assert [r.url for r in session.exec(select(InferenceReplica)).all()] == ["http://vllm-1:8000"]
        assert session.exec(select(AdapterPlacement)).all() == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{", "not valid JSON"),
        ('{"url": "x"}', "must be a JSON list"),
        ('[{"url": "http://h:1"}]', "needs 'base_model' and 'url'"),
    ],
)
def test_bad_replica_settings_say_what_is_wrong(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_replicas_setting(raw)


def test_bad_replica_fields(engine: Engine) -> None:
    with session_scope(engine) as session:
        for kwargs, param in (
            ({"url": "vllm-1:8000"}, "url"),
            ({"url": "http://h:1", "adapter_dir": "relative/dir"}, "adapter_dir"),
            ({"url": "http://h:1", "max_adapters": 0}, "max_adapters"),
        ):
            fields = {
                "base_model": "m",
                "adapter_dir": "/a",
                "max_adapters": 2,
                "max_lora_rank": 16,
                "source": "cli",
            }
            with pytest.raises(InvalidRequestError) as caught:
                upsert_replica(session, **{**fields, **kwargs})  # type: ignore[arg-type]
            assert caught.value.param == param


def test_inference_commands(tmp_path: Path) -> None:
    env = {**os.environ, "FTSERVE_DATA_DIR": str(tmp_path / "data")}

    def ftserve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", "inference", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )

    added = ftserve("add", "--base-model", "llama", "--url", "http://127.0.0.1:9/", "--max-adapters", "7")
    assert added.returncode == 0, added.stderr
    replica_id = added.stdout.strip()
    assert replica_id.startswith("rep-") and "does not answer" in added.stderr  # registered anyway
    (row,) = json.loads(ftserve("list", "--json").stdout)
    assert (row["id"], row["base_model"], row["url"], row["source"], row["max_adapters"]) == (
        replica_id, "llama", "http://127.0.0.1:9", "cli", 7,
    )  # fmt: skip
    assert row["adapter_dir"] == str((tmp_path / "data" / "adapters").resolve()) and "api_key" not in row
    bad = ftserve("add", "--base-model", "llama", "--url", "ftp://x", "--no-check")
    assert bad.returncode == 2 and "must start with http://" in bad.stderr
    assert ftserve("remove", replica_id).returncode == 0
    assert json.loads(ftserve("list", "--json").stdout) == []
    missing = ftserve("remove", replica_id)
    assert missing.returncode == 2 and "no replica" in missing.stderr
