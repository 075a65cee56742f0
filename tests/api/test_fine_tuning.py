"""Jobs API through the ASGI app: creation checks, listing, control verbs, events, isolation."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from core import jobs
from core.db import make_engine
from core.model_registry import register_model
from core.models import FineTunedModel, JobCheckpoint, Organization
from core.settings import Settings
from tests.support.datasets import chat_jsonl, preference_jsonl


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def base_model(settings: Settings, tmp_path: Path) -> str:
    # The API only needs the registry entry; no weights are loaded here.
    register_model(settings, "demo-tiny", tmp_path / "demo-tiny")
    return "demo-tiny"


def _upload(client: TestClient, key: str, data: bytes) -> str:
    resp = client.post(
        "/v1/files", headers=_auth(key), data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", data)}
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


@pytest.fixture
def chat_file(client: TestClient, org_a_key: str) -> str:
    return _upload(client, org_a_key, chat_jsonl(12))


@pytest.fixture
def preference_file(client: TestClient, org_a_key: str) -> str:
    return _upload(client, org_a_key, preference_jsonl(12))


def _create(client: TestClient, key: str, **body: object):
    return client.post("/v1/fine_tuning/jobs", headers=_auth(key), json=body)


def test_create_returns_openai_shaped_job(
    client: TestClient, org_a_key: str, base_model: str, chat_file: str
) -> None:
    resp = _create(
        client,
        org_a_key,
        model=base_model,
        training_file=chat_file,
        suffix="mine",
        seed=7,
        metadata={"team": "search"},
    )
    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert job["id"].startswith("ftjob-") and job["object"] == "fine_tuning.job"
    assert job["status"] == "validating_files"
    assert (
        job["seed"] == 7 and job["metadata"] == {"team": "search"} and job["user_provided_suffix"] == "mine"
    )
    assert job["method"]["type"] == "supervised"
    assert job["hyperparameters"]["n_epochs"] == "auto"
    for field in (
        "error",
        "fine_tuned_model",
        "finished_at",
        "trained_tokens",
        "validation_file",
        "estimated_finish",
    ):
        assert job[field] is None
    assert job["result_files"] == []
    # A seed is generated when none is given.
    other = _create(client, org_a_key, model=base_model, training_file=chat_file).json()
    assert isinstance(other["seed"], int)


def test_dpo_job_on_preference_data(
    client: TestClient, org_a_key: str, base_model: str, preference_file: str
) -> None:
    resp = _create(
        client,
        org_a_key,
        model=base_model,
        training_file=preference_file,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2}}},
    )
    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.2
    # OpenAI's spec requires the top-level object of every job: a DPO job's shows its method's.
    assert job["hyperparameters"] == job["method"]["dpo"]["hyperparameters"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "no-such-model"}, "model"),
        ({"training_file": "file-missing"}, "training_file"),
        ({"validation_file": "file-missing"}, "validation_file"),
        ({"suffix": "x" * 65}, "suffix"),
        ({"suffix": "a:b"}, "suffix"),
        ({"seed": -1}, "seed"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}},
            "method.supervised.hyperparameters.n_epochs",
        ),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 0}}}},
            "method.supervised.hyperparameters.batch_size",
        ),
        (
            {
                "method": {
                    "type": "supervised",
                    "supervised": {"hyperparameters": {"learning_rate_multiplier": 0}},
                }
            },
            "method.supervised.hyperparameters.learning_rate_multiplier",
        ),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epoch": 3}}}},
            "method.supervised.hyperparameters.n_epoch",
        ),
        ({"hyperparameters": {"n_epochs": "many"}}, "hyperparameters.n_epochs"),
        ({"method": {"type": "reinforcement"}}, "method.reinforcement.grader"),
        ({"method": {"type": "sideways"}}, "method.type"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ],
)
def test_invalid_create_requests_are_400_with_param(
    client: TestClient, org_a_key: str, base_model: str, chat_file: str, body: dict[str, object], param: str
) -> None:
    request = {"model": base_model, "training_file": chat_file, **body}
    resp = _create(client, org_a_key, **request)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param, error
    assert error["message"]


def test_dpo_beta_range_is_checked(
    client: TestClient, org_a_key: str, base_model: str, preference_file: str
) -> None:
    for beta in (0, 2.5, -1):
        resp = _create(
            client,
            org_a_key,
            model=base_model,
            training_file=preference_file,
            method={"type": "dpo", "dpo": {"hyperparameters": {"beta": beta}}},
        )
        assert resp.status_code == 400
        assert resp.json()["error"]["param"] == "method.dpo.hyperparameters.beta"


def test_format_must_match_method(
    client: TestClient, org_a_key: str, base_model: str, chat_file: str, preference_file: str
) -> None:
    dpo_on_chat = _create(
        client, org_a_key, model=base_model, training_file=chat_file, method={"type": "dpo"}
    )
    assert dpo_on_chat.status_code == 400 and dpo_on_chat.json()["error"]["param"] == "training_file"
    sft_on_pref = _create(client, org_a_key, model=base_model, training_file=preference_file)
    assert sft_on_pref.status_code == 400 and sft_on_pref.json()["error"]["param"] == "training_file"


def test_other_orgs_file_is_refused_like_a_missing_one(
    client: TestClient, org_a_key: str, org_b_key: str, base_model: str, chat_file: str
) -> None:
    resp = _create(client, org_b_key, model=base_model, training_file=chat_file)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "training_file"
    assert resp.json()["error"]["message"] == f"No such File object: {chat_file}"


def test_list_pages_and_filters_by_metadata(
    client: TestClient, org_a_key: str, base_model: str, chat_file: str
) -> None:
    made = [
        _create(
            client,
            org_a_key,
            model=base_model,
            training_file=chat_file,
            metadata={"team": "a" if i % 2 else "b", "i": str(i)},
        ).json()["id"]
        for i in range(5)
    ]
    page = client.get("/v1/fine_tuning/jobs", params={"limit": 2}, headers=_auth(org_a_key)).json()
    assert [j["id"] for j in page["data"]] == made[::-1][:2] and page["has_more"] is True
    rest = client.get(
        "/v1/fine_tuning/jobs", params={"limit": 10, "after": made[3]}, headers=_auth(org_a_key)
    ).json()
    assert [j["id"] for j in rest["data"]] == made[::-1][2:] and rest["has_more"] is False
    team_a = client.get(
        "/v1/fine_tuning/jobs", params={"metadata[team]": "a"}, headers=_auth(org_a_key)
    ).json()
    assert [j["id"] for j in team_a["data"]] == [made[3], made[1]]
    both = client.get(
        "/v1/fine_tuning/jobs", params={"metadata[team]": "a", "metadata[i]": "3"}, headers=_auth(org_a_key)
    ).json()
    assert [j["id"] for j in both["data"]] == [made[3]]


def test_cancel_pause_resume_transitions(
    client: TestClient, org_a_key: str, base_model: str, chat_file: str, settings: Settings
) -> None:
    job_id = _create(client, org_a_key, model=base_model, training_file=chat_file).json()["id"]
    # validating_files cannot be paused or resumed, but can be cancelled.
    resp = client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=_auth(org_a_key))
    assert resp.status_code == 400 and resp.headers["x-should-retry"] == "false"
    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/resume", headers=_auth(org_a_key)).status_code == 400

    engine = make_engine(settings.resolved_database_url)
    with Session(engine) as session:
        assert jobs.transition(session, job_id=job_id, from_status={jobs.VALIDATING}, to_status=jobs.QUEUED)
        session.commit()
    paused = client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=_auth(org_a_key)).json()
    assert paused["status"] == "paused"
    resumed = client.post(f"/v1/fine_tuning/jobs/{job_id}/resume", headers=_auth(org_a_key)).json()
    assert resumed["status"] == "queued"
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=_auth(org_a_key)).json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    again = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=_auth(org_a_key))
    assert again.status_code == 400 and "cancelled" in again.json()["error"]["message"]

    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", headers=_auth(org_a_key)).json()
    messages = [e["message"] for e in events["data"]]
    assert messages[0] == "Job cancelled" and messages[-1].startswith("Created fine-tuning job")
    assert all(e["object"] == "fine_tuning.job.event" for e in events["data"])
    older = client.get(
        f"/v1/fine_tuning/jobs/{job_id}/events",
        params={"limit": 1, "after": events["data"][0]["id"]},
        headers=_auth(org_a_key),
    ).json()
    assert older["data"][0]["id"] == events["data"][1]["id"] and older["has_more"] is True
    engine.dispose()


def test_checkpoints_list(
    client: TestClient, org_a_key: str, base_model: str, chat_file: str, settings: Settings
) -> None:
    job_id = _create(client, org_a_key, model=base_model, training_file=chat_file).json()["id"]
    engine = make_engine(settings.resolved_database_url)
    with Session(engine) as session:
        for step in (10, 20, 30):
            session.add(
                JobCheckpoint(
                    id=f"ftckpt-{step}",
                    job_id=job_id,
                    organization_id="x",
                    step_number=step,
                    metrics={"step": step, "train_loss": 1.0 / step},
                    fine_tuned_model_checkpoint=f"ft:m:ckpt-step-{step}",
                    storage_prefix=f"jobs/{job_id}/checkpoints/step-{step}",
                )
            )
        session.commit()
    engine.dispose()
    page = client.get(
        f"/v1/fine_tuning/jobs/{job_id}/checkpoints", params={"limit": 2}, headers=_auth(org_a_key)
    ).json()
    assert [c["step_number"] for c in page["data"]] == [30, 20]
    assert page["first_id"] == "ftckpt-30" and page["last_id"] == "ftckpt-20" and page["has_more"] is True
    assert page["data"][0]["metrics"]["train_loss"] == pytest.approx(1 / 30)
    assert page["data"][0]["fine_tuning_job_id"] == job_id


def test_every_job_route_hides_other_orgs_jobs(
    client: TestClient, org_a_key: str, org_b_key: str, base_model: str, chat_file: str
) -> None:
    job_id = _create(client, org_a_key, model=base_model, training_file=chat_file).json()["id"]
    for method, path in [
        ("GET", f"/v1/fine_tuning/jobs/{job_id}"),
        ("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel"),
        ("POST", f"/v1/fine_tuning/jobs/{job_id}/pause"),
        ("POST", f"/v1/fine_tuning/jobs/{job_id}/resume"),
        ("GET", f"/v1/fine_tuning/jobs/{job_id}/events"),
        ("GET", f"/v1/fine_tuning/jobs/{job_id}/checkpoints"),
    ]:
        resp = client.request(method, path, headers=_auth(org_b_key))
        assert resp.status_code == 404, (method, path, resp.text)
    assert client.get("/v1/fine_tuning/jobs", headers=_auth(org_b_key)).json()["data"] == []
    assert (
        client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=_auth(org_a_key)).json()["status"]
        == "validating_files"
    )


def test_models_list_retrieve_delete(
    client: TestClient, org_a_key: str, org_b_key: str, base_model: str, settings: Settings
) -> None:
    name = "ft:demo-tiny:org-a:s:ftjob-abc"
    engine = make_engine(settings.resolved_database_url)
    with Session(engine) as session:
        org_id = session.exec(select(Organization).where(Organization.name == "org-a")).one().id
        session.add(
            FineTunedModel(
                id=name,
                organization_id=org_id,
                job_id="ftjob-abc",
                base_model="demo-tiny",
                adapter_prefix="jobs/ftjob-abc/adapter",
            )
        )
        session.commit()
    engine.dispose()
    listing = client.get("/v1/models", headers=_auth(org_a_key)).json()
    owners = {m["id"]: m["owned_by"] for m in listing["data"]}
    assert owners == {"demo-tiny": "system", name: "org-a"}
    assert client.get(f"/v1/models/{name}", headers=_auth(org_a_key)).json()["id"] == name
    assert client.get("/v1/models/demo-tiny", headers=_auth(org_a_key)).json()["owned_by"] == "system"
    assert client.get(f"/v1/models/{name}", headers=_auth(org_b_key)).status_code == 404
    assert client.delete(f"/v1/models/{name}", headers=_auth(org_b_key)).status_code == 404
    assert name not in {m["id"] for m in client.get("/v1/models", headers=_auth(org_b_key)).json()["data"]}
    assert client.delete("/v1/models/demo-tiny", headers=_auth(org_a_key)).status_code == 400
    assert client.delete(f"/v1/models/{name}", headers=_auth(org_a_key)).json() == {
        "id": name,
        "object": "model",
        "deleted": True,
    }
    assert client.get(f"/v1/models/{name}", headers=_auth(org_a_key)).status_code == 404
