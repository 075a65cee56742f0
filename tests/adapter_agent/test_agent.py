"""The adapter agent in-process, on real storage (moto's S3 server over HTTP, as MinIO would be): it copies
an adapter from the bucket to its own disk, validated, at an immutable versioned path, and refuses what
vLLM can't serve, callers without the token, and paths it did not compute."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from adapter_agent.app import create_agent_app
from core.model_registry import register_model
from core.settings import Settings
from core.storage import make_storage_from_settings
from tests.support.adapters import make_adapter, make_base
from tests.support.moto_server import run_moto_server, s3_settings_kwargs

TOKEN = "agent-token-for-tests"
JOB = "ftjob-agent1"


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with run_moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def settings(tmp_path: Path, moto_endpoint: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "agent-host",
        model_registry=tmp_path / "agent-host" / "models.json",
        **s3_settings_kwargs(moto_endpoint, "ftserve-agent"),
        agent_token=TOKEN,
        agent_adapter_dir=tmp_path / "vllm-host-adapters",
        agent_vllm_url="http://127.0.0.1:9",  # nothing listens: /readyz must say so
    )


@pytest.fixture
def base(tmp_path: Path, settings: Settings) -> Path:
    base = make_base(tmp_path / "base")
    register_model(settings, "demo-tiny", base)
    return base


@pytest.fixture
def agent(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_agent_app(settings)) as client:
        client.headers["authorization"] = f"Bearer {TOKEN}"
        yield client


def upload(settings: Settings, adapter: Path, prefix: str) -> None:
    make_storage_from_settings(settings).upload_dir(adapter, prefix)


def sync_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "storage_prefix": f"jobs/{JOB}/adapter",
        "rel_dir": f"{JOB}/final",
        "expected_version": None,
        "max_lora_rank": 16,
        "base_model": "demo-tiny",
    }
    return body | overrides


def test_sync_copies_from_the_bucket_to_an_immutable_local_path(
    agent: TestClient, settings: Settings, base: Path, tmp_path: Path
) -> None:
    upload(settings, make_adapter(tmp_path / "trained", base, rank=8), f"jobs/{JOB}/adapter")
    response = agent.post("/v1/adapters/sync", json=sync_body())
    assert response.status_code == 200, response.text
    path, version = Path(response.json()["path"]), response.json()["version"]
    assert path.is_absolute() and path.is_relative_to((tmp_path / "vllm-host-adapters").resolve())
    assert path == (tmp_path / "vllm-host-adapters").resolve() / JOB / "final" / version
    assert sorted(p.name for p in path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    # The same version again is a lookup: it works with the bucket emptied.
    make_storage_from_settings(settings).delete_prefix(f"jobs/{JOB}/")
    again = agent.post("/v1/adapters/sync", json=sync_body(expected_version=version))
    assert again.json() == {"path": str(path), "version": version}
    metrics = agent.get("/metrics").text
    assert 'ftserve_agent_syncs_total{result="ok"}' in metrics
    # A deleted model's copies go.
    assert agent.delete(f"/v1/adapters/{JOB}").status_code == 204
    assert not (tmp_path / "vllm-host-adapters" / JOB).exists()


def test_an_adapter_vllm_would_refuse_is_a_422_naming_why(
    agent: TestClient, settings: Settings, base: Path, tmp_path: Path
) -> None:
    upload(settings, make_adapter(tmp_path / "big", base, rank=32), f"jobs/{JOB}/adapter")
    response = agent.post("/v1/adapters/sync", json=sync_body())
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "adapter_not_servable" and "rank" in error["message"]
    assert not list((tmp_path / "vllm-host-adapters").glob(f"{JOB}/final/*"))


def test_callers_without_the_token_are_refused(agent: TestClient, base: Path) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}):
        response = agent.post("/v1/adapters/sync", json=sync_body(), headers=headers or {"authorization": ""})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert agent.delete(f"/v1/adapters/{JOB}", headers={"authorization": ""}).status_code == 401


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rel_dir", "../../etc"),
        ("rel_dir", f"{JOB}/final/../../x"),
        ("rel_dir", "/abs/path"),
        ("storage_prefix", "files/file-abc"),
        ("storage_prefix", f"jobs/{JOB}/../../secrets"),
        ("max_lora_rank", 0),
    ],
)
def test_paths_it_did_not_compute_are_refused(agent: TestClient, field: str, value: object) -> None:
    response = agent.post("/v1/adapters/sync", json=sync_body(**{field: value}))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == field
    assert agent.delete("/v1/adapters/..").status_code in (400, 404, 405)


def test_probes(agent: TestClient) -> None:
    assert agent.get("/healthz").json() == {"status": "ok"}
    ready = agent.get("/readyz")
    assert ready.status_code == 503 and any(f.startswith("vllm") for f in ready.json()["failed"])


def test_the_cli_refuses_to_listen_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "adapter-agent"],
        env={"FTSERVE_HOST": "0.0.0.0", "FTSERVE_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "FTSERVE_AGENT_TOKEN" in result.stderr
