"""`ftserve org ...` (an admin's usage, keys and audit log, through the API) and the server verbs
`ftserve keys create --scope` and `ftserve budgets`, in this process against the API over real HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.db import make_engine, session_scope
from core.model_registry import register_model
from core.settings import Settings, get_settings
from core.usage import record_training_usage
from ftserve_client import Client
from tests.support.datasets import chat_jsonl
from tests.support.http_server import api_server
from tests.support.keys import make_key


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", min_examples=10)
    register_model(settings, "demo-tiny", tmp_path / "demo-tiny")
    return settings


@pytest.fixture
def base_url(settings: Settings) -> Iterator[str]:
    with api_server(settings) as url:
        yield url


def ftserve(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    from cli.main import app

    get_settings.cache_clear()  # server verbs read FTSERVE_DATA_DIR from `env`
    try:
        result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    finally:
        get_settings.cache_clear()
    return result.exit_code, result.stdout, result.stderr


def test_org_usage_keys_and_audit_logs(settings: Settings, base_url: str) -> None:
    admin = make_key(settings, "cli-org")
    env = {"FTSERVE_API_KEY": admin, "FTSERVE_BASE_URL": base_url}
    code, out, err = ftserve("org", "keys", "create", "--name", "bot", "--scope", "inference",
                             "--inference-token-quota", "100", env=env)  # fmt: skip
    assert code == 0, err
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("ftsk-") and "Store the key now" in err
    code, out, err = ftserve("org", "keys", "list", "--json", env=env)
    keys = json.loads(out)
    assert [(k["name"], k["scopes"], k["inference_token_quota"]) for k in keys] == [
        (None, ["admin"], None), ("bot", ["inference"], 100)
    ]  # fmt: skip

    sdk = Client(api_key=admin, base_url=base_url)
    job = sdk.fine_tuning.jobs.create(
        model="demo-tiny",
        training_file=sdk.files.create(file=("t.jsonl", chat_jsonl(12)), purpose="fine-tune").id,
    )
    engine = make_engine(settings.resolved_database_url)
    with session_scope(engine) as session:  # what the worker records as the job's attempt ends
        record_training_usage(
            session, settings, organization_id=job.organization_id, job_id=job.id, attempt=1, model="demo-tiny",
            gpu_class="cpu", trained_tokens=321, gpu_seconds=4.5,
        )  # fmt: skip
    engine.dispose()
    code, out, err = ftserve("org", "usage", "--days", "2", "--group-by", "job_id", "--json", env=env)
    assert code == 0, err
    page = json.loads(out)
    results = [r for bucket in page["data"] for r in bucket["results"]]
    assert len(page["data"]) == 2 and [(r["job_id"], r["trained_tokens"]) for r in results] == [(job.id, 321)]
    code, out, err = ftserve("org", "usage", env={**env, "COLUMNS": "200"})
    assert code == 0 and "\tfine-tuning cpu\t\t321 trained tokens, 4.5 GPU-s\t0.0000 USD" in out, out + err

    code, out, err = ftserve("org", "usage", "--group-by", "project", env=env)
    assert code == 2 and err.strip().splitlines() == [
        "error: unknown --group-by 'project'. Use model, job_id, api_key_id."
    ]
    code, out, err = ftserve("org", "usage", env={**env, "FTSERVE_API_KEY": secret})
    assert code == 1 and "needs the 'admin' scope" in err

    code, out, err = ftserve("org", "keys", "revoke", keys[1]["id"], env=env)
    assert code == 0 and f"Revoked {keys[1]['id']}" in err
    code, out, err = ftserve("org", "audit-logs", "--json", env=env)
    assert [e["type"] for e in json.loads(out)] == [
        "api_key.deleted", "fine_tuning.job.created", "file.created", "api_key.created"
    ]  # fmt: skip


def test_server_verbs_scoped_keys_and_budgets(settings: Settings) -> None:
    env = {"FTSERVE_DATA_DIR": str(settings.data_dir)}
    code, out, err = ftserve("keys", "create", "--org", "acme", "--scope", "inference", "--scope", "fine_tune",
                             "--inference-token-quota", "1000", env=env)  # fmt: skip
    assert code == 0, err
    assert out.strip().startswith("ftsk-")
    code, out, err = ftserve("keys", "create", "--org", "acme", "--scope", "root", env=env)
    assert code == 2 and "Invalid scopes ['root']" in err

    code, out, err = ftserve(
        "budgets", "set", "acme", "--cost", "12.5", "--trained-tokens", "1000000", env=env
    )
    assert code == 0, err
    code, out, err = ftserve("budgets", "show", "acme", "--json", env=env)
    [shown] = json.loads(out)
    assert (shown["organization"], shown["monthly_cost"], shown["monthly_trained_tokens"]) == (
        "acme",
        12.5,
        1_000_000,
    )
    assert (shown["budget_source"], shown["cost_used"], shown["trained_tokens_used"]) == (
        "organization",
        0.0,
        0,
    )
    assert shown["month_start"] <= time.time()
    code, out, err = ftserve("budgets", "clear", "acme", env=env)
    assert code == 0
    code, out, err = ftserve("budgets", "show", "--json", env={**env, "FTSERVE_ORG_MONTHLY_COST_BUDGET": "5"})
    assert [(b["organization"], b["monthly_cost"], b["budget_source"]) for b in json.loads(out)] == [
        ("acme", 5.0, "default")
    ]
    code, out, err = ftserve("budgets", "set", "nobody", "--cost", "1", env=env)
    assert code == 2 and "no organization named 'nobody'" in err
