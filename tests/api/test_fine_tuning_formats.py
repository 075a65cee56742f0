"""A file whose layout belongs to another method is refused at job creation, naming the layout it holds and
the method that would train it: preference data trains only with dpo, orpo or simpo, KTO data only with kto.
And the methods' own hyperparameters are checked, each refusal naming its field."""

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


def _create(
    client: TestClient, key: str, file_id: str, method: str, hyperparameters: dict[str, Any] | None = None
) -> Any:
    section = {} if hyperparameters is None else {method: {"hyperparameters": hyperparameters}}
    return client.post(
        "/v1/fine_tuning/jobs",
        headers=_auth(key),
        json={"model": "demo-tiny", "training_file": file_id, "method": {"type": method, **section}},
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


def test_kto_data_trains_with_kto_and_is_refused_for_every_other_method_naming_kto(
    client: TestClient, org_a_key: str, registered: None
) -> None:
    file_id = _upload(client, org_a_key, KTO)
    for method in ("supervised", "dpo", "orpo", "simpo"):
        refused = _create(client, org_a_key, file_id, method)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == "training_file" and error["code"] == "invalid_file_format"
        assert "KTO data" in error["message"] and "'kto'" in error["message"]
    accepted = _create(client, org_a_key, file_id, "kto", {"beta": 0.2, "undesirable_weight": 1.5})
    assert accepted.status_code == 200, accepted.text
    job = accepted.json()
    # echoed as OpenAI echoes dpo's: the method's section, "auto" until the worker resolves it
    assert job["method"]["type"] == "kto"
    shown = job["method"]["kto"]["hyperparameters"]
    assert shown["beta"] == 0.2 and shown["undesirable_weight"] == 1.5 and shown["desirable_weight"] == "auto"
    assert job["hyperparameters"] == shown


def test_preference_data_trains_with_orpo_and_simpo_and_is_refused_for_kto_naming_dpo(
    client: TestClient, org_a_key: str, registered: None
) -> None:
    file_id = _upload(client, org_a_key, TRL_PREFERENCE)
    for method in ("orpo", "simpo"):
        accepted = _create(client, org_a_key, file_id, method)
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["method"]["type"] == method
    refused = _create(client, org_a_key, file_id, "kto")
    assert refused.status_code == 400
    message = refused.json()["error"]["message"]
    assert "preference data" in message and "'dpo'" in message and "'orpo'" in message


BAD_HYPERPARAMETERS: list[tuple[str, dict[str, Any], str]] = [
    ("supervised", {"beta": 0.1}, "beta"),  # beta belongs to the preference methods
    ("kto", {"desirable_weight": -1}, "desirable_weight"),
    ("kto", {"undesirable_weight": 0}, "undesirable_weight"),
    ("kto", {"batch_size": 1}, "batch_size"),  # its KL estimate needs two examples per micro-batch
    ("kto", {"gamma": 1.0}, "gamma"),  # SimPO's
    ("dpo", {"loss_type": "kto_pair"}, "loss_type"),
    ("dpo", {"label_smoothing": 0.1}, "label_smoothing"),  # robust DPO's only
    ("simpo", {"gamma": -0.5}, "gamma"),
    ("orpo", {"beta": 0}, "beta"),
]


def test_bad_method_hyperparameters_are_400s_naming_the_field(
    client: TestClient, org_a_key: str, registered: None
) -> None:
    files = {
        "supervised": _upload(client, org_a_key, CHAT),
        "kto": _upload(client, org_a_key, KTO),
        "preference": _upload(client, org_a_key, TRL_PREFERENCE),
    }
    for method, hyperparameters, field in BAD_HYPERPARAMETERS:
        file_id = files.get(method, files["preference"])
        refused = _create(client, org_a_key, file_id, method, hyperparameters)
        assert refused.status_code == 400, (method, hyperparameters, refused.text)
        error = refused.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_hyperparameter"
        assert error["param"] == f"method.{method}.hyperparameters.{field}", error
        assert field in error["message"]
