"""A file whose layout belongs to another method is refused at job creation, naming the layout it holds and
the method that would train it: preference data never trains as SFT, KTO data never trains at all (yet)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.model_registry import register_model
from core.settings import Settings


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _upload(client: TestClient, key: str, rows: list[dict[str, Any]], name: str = "t.jsonl") -> str:
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    resp = client.post(
        "/v1/files", headers=_auth(key), data={"purpose": "fine-tune"}, files={"file": (name, data)}
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


TRL_PREFERENCE = [{"prompt": f"Say {i}", "chosen": f"{i}", "rejected": f"not {i}"} for i in range(12)]
KTO = [{"prompt": f"Say {i}", "completion": f"{i}", "label": i % 2 == 0} for i in range(12)]
CHAT = [
    {"messages": [{"role": "user", "content": f"Say {i}"}, {"role": "assistant", "content": f"{i}"}]}
    for i in range(12)
]


@pytest.fixture
def registered(settings: Settings, tmp_path: Path) -> None:
    register_model(settings, "demo-tiny", tmp_path / "demo-tiny")  # the API needs the registry entry only


def _create(client: TestClient, key: str, file_id: str, method: str) -> Any:
    return client.post(
        "/v1/fine_tuning/jobs",
        headers=_auth(key),
        json={"model": "demo-tiny", "training_file": file_id, "method": {"type": method}},
    )


def test_trl_preference_data_is_refused_for_sft_and_names_dpo(
    client: TestClient, org_a_key: str, registered: None
) -> None:
    file_id = _upload(client, org_a_key, TRL_PREFERENCE)
    refused = _create(client, org_a_key, file_id, "supervised")
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "training_file" and error["code"] == "invalid_file_format"
    assert "preference data" in error["message"] and "'dpo'" in error["message"]
    assert "TRL" in error["message"]  # the layout seen
    assert _create(client, org_a_key, file_id, "dpo").status_code == 200


def test_kto_data_is_refused_for_every_method_naming_kto(
    client: TestClient, org_a_key: str, registered: None
) -> None:
    file_id = _upload(client, org_a_key, KTO)
    for method in ("supervised", "dpo"):
        refused = _create(client, org_a_key, file_id, method)
        assert refused.status_code == 400, refused.text
        assert (
            "KTO data" in refused.json()["error"]["message"] and "'kto'" in refused.json()["error"]["message"]
        )


def test_chat_data_is_refused_for_dpo_naming_supervised(
    client: TestClient, org_a_key: str, registered: None
) -> None:
    refused = _create(client, org_a_key, _upload(client, org_a_key, CHAT), "dpo")
    assert refused.status_code == 400
    assert "'supervised'" in refused.json()["error"]["message"]
