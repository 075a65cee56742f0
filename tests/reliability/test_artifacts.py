"""Artifacts: only safetensors is ever loaded, trust_remote_code is never on, adapter and storage paths are
computed by the server, and a poisoned adapter_config.json is refused before anything reads the weights."""

from __future__ import annotations

import pickle
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.adapters import AdapterRejected, adapter_rel_dir, materialize, validate_adapter
from core.storage import LocalStorage
from tests.support.adapters import make_adapter, make_base
from tests.support.tenants import Tenant, auth, seed_tenant

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("core", "api", "scheduler", "gpu_worker", "cli", "adapter_agent", "clients")


class _Marker:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return make_base(tmp_path / "base")


def test_pickled_adapter_weights_are_refused_and_never_loaded(tmp_path: Path, base: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter", base)
    marker = tmp_path / "pickle-ran"
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(_Marker(str(marker))))
    with pytest.raises(AdapterRejected, match="only safetensors"):
        validate_adapter(adapter, max_lora_rank=64, base_model_dir=base)
    # The same through storage: materialize copies only the config and the safetensors file.
    storage = LocalStorage(tmp_path / "storage")
    for path in adapter.iterdir():
        storage.put_bytes(f"jobs/ftjob-x/adapter/{path.name}", path.read_bytes())
    with pytest.raises(AdapterRejected, match="only safetensors"):
        materialize(storage, "jobs/ftjob-x/adapter", tmp_path / "served", "ftjob-x/final", max_lora_rank=64)
    assert not marker.exists()
    assert not list((tmp_path / "served").rglob("*.bin"))


def _valid(tmp_path: Path, base: Path, **config: Any) -> Path:
    return make_adapter(tmp_path / "adapter", base, config=config)


POISONED_CONFIGS: dict[str, dict[str, Any]] = {
    "peft_type custom": {"peft_type": "CUSTOM"},
    "peft_type prefix tuning": {"peft_type": "PREFIX_TUNING"},
    "auto_mapping to os": {"auto_mapping": {"base_model_class": "system", "parent_library": "os"}},
    "megatron_core import": {"megatron_core": "os", "megatron_config": {"x": 1}},
    "megatron_config": {"megatron_config": {"tensor_model_parallel_size": 1}},
    "target_modules regex": {"target_modules": ".*"},
    "target_modules odd names": {"target_modules": ["q_proj", "os.system()"]},
    "target_modules path": {"target_modules": ["../../q_proj"]},
    "target_modules not a list": {"target_modules": {"q_proj": 1}},
    "modules_to_save": {"modules_to_save": ["lm_head"]},
    "rank 4096": {"r": 4096},
    "foreign base hub id": {"base_model_name_or_path": "someone/other-model"},
    "foreign base url": {"base_model_name_or_path": "https://evil.example/base"},
    "foreign base path": {"base_model_name_or_path": "/srv/other-model"},
}


@pytest.mark.parametrize("name", list(POISONED_CONFIGS))
def test_poisoned_adapter_config_is_refused(tmp_path: Path, base: Path, name: str) -> None:
    adapter = _valid(tmp_path, base, **POISONED_CONFIGS[name])
    with pytest.raises(AdapterRejected):
        validate_adapter(adapter, max_lora_rank=64, base_model_dir=base)


def test_the_unpoisoned_adapter_passes(tmp_path: Path, base: Path) -> None:
    """The control: the same adapter with the trainer's own config is accepted."""
    info = validate_adapter(_valid(tmp_path, base), max_lora_rank=64, base_model_dir=base)
    assert info.rank == 8


@pytest.mark.parametrize(
    "weights",
    [
        b"\x10\x00",  # truncated before the header length
        struct.pack("<Q", 200 * 1024 * 1024) + b"{}",  # a header length past the cap
        struct.pack("<Q", 20) + b"{not json",  # a header that is not JSON
        struct.pack("<Q", 2) + b"[]",  # a header that is not an object
    ],
)
def test_broken_safetensors_are_refused(tmp_path: Path, base: Path, weights: bytes) -> None:
    adapter = _valid(tmp_path, base)
    (adapter / "adapter_model.safetensors").write_bytes(weights)
    with pytest.raises(AdapterRejected, match="unreadable"):
        validate_adapter(adapter, max_lora_rank=64, base_model_dir=base)


def test_adapter_paths_never_leave_their_root(tmp_path: Path, base: Path) -> None:
    adapter = _valid(tmp_path, base)
    storage = LocalStorage(tmp_path / "storage")
    for path in adapter.iterdir():
        storage.put_bytes(f"jobs/ftjob-x/adapter/{path.name}", path.read_bytes())
    root = tmp_path / "served"
    for rel_dir in ("../escape", "ftjob-x/../../escape", "/etc", ""):
        with pytest.raises(AdapterRejected, match="not a directory under"):
            materialize(storage, "jobs/ftjob-x/adapter", root, rel_dir, max_lora_rank=64)
    assert not (tmp_path / "escape").exists()
    path, _version = materialize(
        storage, "jobs/ftjob-x/adapter", root, adapter_rel_dir("ftjob-x", None), max_lora_rank=64
    )
    assert path.resolve().is_relative_to(root.resolve())
    # Storage keys refuse traversal too.
    for key in ("../x", "files/../../x", "/etc/passwd", "files//x"):
        with pytest.raises(ValueError):
            storage.put_bytes(key, b"x")


def test_user_strings_never_become_paths(battery_client: TestClient, battery_settings: Any) -> None:
    tenant: Tenant = seed_tenant(battery_client, battery_settings, "paths-org")
    headers = auth(tenant.key)
    upload = battery_client.post(
        "/v1/files",
        headers=headers,
        data={"purpose": "fine-tune"},
        files={
            "file": (
                "../../../../tmp/evil.jsonl",
                (REPO / "tests/support/datasets.py").read_bytes()[:0] + b"{}\n",
            )
        },
    )
    file_id = upload.json()["error"]["file_id"]  # one line: stored, then refused as too few examples
    assert battery_client.get(f"/v1/files/{file_id}", headers=headers).json()["filename"] == "evil.jsonl"
    assert not Path("/tmp/evil.jsonl").exists()
    # Ids with traversal are just unknown ids.
    for path in (
        "/v1/files/..%2F..%2Fetc%2Fpasswd",
        "/v1/files/../../etc/passwd/content",
        "/v1/models/../../etc/passwd",
    ):
        assert battery_client.get(path, headers=headers).status_code == 404
    job = battery_client.post(
        "/v1/fine_tuning/jobs",
        headers=headers,
        json={"model": "demo-tiny", "training_file": tenant.file_id, "suffix": "../../x"},
    )
    assert job.status_code == 400 and job.json()["error"]["param"] == "suffix"


TRUST_REMOTE_CODE = re.compile(r"trust_remote_code\s*[=:]\s*(?!False\b)")
FORBIDDEN_LOADERS = re.compile(r"\bpickle\.loads?\(|\bAutoPeftModel|torch\.load\((?![^)]*weights_only=True)")


def test_no_trust_remote_code_or_pickle_loaders_in_the_code() -> None:
    """A grep over every package: trust_remote_code only ever appears as False, and nothing unpickles or
    loads through AutoPeftModel (which would follow base_model_name_or_path)."""
    offenders = []
    for top in SOURCE_DIRS:
        for path in (REPO / top).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for pattern in (TRUST_REMOTE_CODE, FORBIDDEN_LOADERS):
                for match in pattern.finditer(text):
                    line = text.count("\n", 0, match.start()) + 1
                    offenders.append(f"{path.relative_to(REPO)}:{line}: {match.group(0)}")
    assert not offenders, offenders
    assert TRUST_REMOTE_CODE.search("from_pretrained(p, trust_remote_code=True)")  # the grep can fail
    assert FORBIDDEN_LOADERS.search("torch.load(path)")
