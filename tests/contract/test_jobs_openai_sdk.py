"""Fine-tuning jobs through the official `openai` SDK against a real `ftserve up` (API + scheduler + worker)
training the real demo-tiny model on the CPU."""

from __future__ import annotations

import csv
import io
import json
import time

import openai
import pytest
from openai.types.fine_tuning import FineTuningJob

from tests.support.code_task import code_task, kto_rows, preference_rows
from tests.support.ftserve_process import FtserveProcess

pytestmark = pytest.mark.slow

ORG = "contract-jobs"


def _training_data(n: int = 24) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Code for item {i}?"},
                {"role": "assistant", "content": f"Item {i} has code {(i * 7919) % 1000:03d}."},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def sdk(ftserve_server: FtserveProcess) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=ftserve_server.create_key(ORG), base_url=ftserve_server.base_url, max_retries=0
    )


@pytest.fixture(scope="module")
def training_file(sdk: openai.OpenAI) -> str:
    return sdk.files.create(file=("train.jsonl", _training_data()), purpose="fine-tune").id


def _wait(sdk: openai.OpenAI, job_id: str, statuses: set[str], timeout_s: float = 300) -> FineTuningJob:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = sdk.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not reach {statuses}; last status {job.status}")


def _events(sdk: openai.OpenAI, job_id: str) -> list[openai.types.fine_tuning.FineTuningJobEvent]:
    return list(sdk.fine_tuning.jobs.list_events(job_id, limit=100))


def test_supervised_job_succeeds_with_model_events_checkpoints_and_results(
    sdk: openai.OpenAI, training_file: str
) -> None:
    job = sdk.fine_tuning.jobs.create(
        model="demo-tiny",
        training_file=training_file,
        validation_file=training_file,
        suffix="contract",
        seed=11,
        metadata={"suite": "contract"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4}}},
    )
    assert job.status in {"validating_files", "queued"}
    done = _wait(sdk, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:demo-tiny:{ORG}:contract:{job.id}"
    assert done.trained_tokens and done.trained_tokens > 0
    assert done.finished_at and done.finished_at >= done.created_at
    assert done.hyperparameters.n_epochs == 3 and done.hyperparameters.batch_size == 4
    assert isinstance(done.hyperparameters.learning_rate_multiplier, float)
    assert done.estimated_finish is None

    events = _events(sdk, job.id)
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics, [e.message for e in events]
    assert {"step", "train_loss", "total_steps"} <= set(metrics[0].data)
    assert any("valid_loss" in (e.data or {}) for e in metrics)
    messages = [e.message for e in events]
    assert any(m.startswith("Checkpoint created at step") for m in messages)
    assert any(done.fine_tuned_model in m for m in messages)

    checkpoints = list(sdk.fine_tuning.jobs.checkpoints.list(job.id))
    assert 1 <= len(checkpoints) <= 3
    assert all("train_loss" in c.metrics.model_dump(exclude_none=True) for c in checkpoints)
    assert checkpoints[0].fine_tuned_model_checkpoint.startswith(done.fine_tuned_model + ":ckpt-step-")

    assert len(done.result_files) == 1
    result = sdk.files.retrieve(done.result_files[0])
    assert result.purpose == "fine-tune-results"
    rows = list(csv.DictReader(io.StringIO(sdk.files.content(result.id).text)))
    assert rows and "train_loss" in rows[0] and int(rows[-1]["step"]) == done.model_extra["total_steps"]

    models = {m.id: m for m in sdk.models.list()}
    assert models[done.fine_tuned_model].owned_by == ORG and models["demo-tiny"].owned_by == "system"
    assert sdk.models.retrieve(done.fine_tuned_model).id == done.fine_tuned_model


def test_cancel_gives_cancelled_and_no_model(sdk: openai.OpenAI, training_file: str) -> None:
    job = sdk.fine_tuning.jobs.create(
        model="demo-tiny",
        training_file=training_file,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 40, "batch_size": 2}}},
    )
    _wait(sdk, job.id, {"running"})
    cancelled = sdk.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    time.sleep(2)  # the worker notices within one optimizer step; nothing may change the job afterwards
    final = sdk.fine_tuning.jobs.retrieve(job.id)
    assert final.status == "cancelled" and final.fine_tuned_model is None
    with pytest.raises(openai.BadRequestError):
        sdk.fine_tuning.jobs.cancel(job.id)


def test_pause_then_resume_continues_from_the_paused_step(sdk: openai.OpenAI, training_file: str) -> None:
    job = sdk.fine_tuning.jobs.create(
        model="demo-tiny",
        training_file=training_file,
        seed=5,
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 30, "batch_size": 2, "checkpoint_every_steps": 20}
            },
        },
    )
    _wait(sdk, job.id, {"running"})
    deadline = time.monotonic() + 120
    # A running job says when it expects to finish, from its measured step rate (known after two steps).
    while (running := sdk.fine_tuning.jobs.retrieve(job.id)).estimated_finish is None:
        assert time.monotonic() < deadline and running.status == "running", running.status
        time.sleep(0.2)
    assert running.status == "running" and running.model_extra["step"] >= 2
    assert running.estimated_finish >= running.created_at
    paused = sdk.fine_tuning.jobs.pause(job.id)
    assert paused.status == "paused"
    deadline = time.monotonic() + 120
    while not any(e.message.startswith("Paused at step") for e in _events(sdk, job.id)):
        assert time.monotonic() < deadline, [e.message for e in _events(sdk, job.id)]
        time.sleep(0.3)
    paused_event = next(e for e in _events(sdk, job.id) if e.message.startswith("Paused at step"))
    paused_step = int(paused_event.message.split("step ")[1].split()[0].rstrip(".:"))
    assert sdk.fine_tuning.jobs.retrieve(job.id).status == "paused"

    resumed = sdk.fine_tuning.jobs.resume(job.id)
    assert resumed.status == "queued"
    done = _wait(sdk, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    events = _events(sdk, job.id)  # newest first
    resumed_at = next(
        i for i, e in enumerate(events) if e.message.startswith("Resumed from checkpoint at step")
    )
    assert events[resumed_at].message.startswith(f"Resumed from checkpoint at step {paused_step}"), events[
        resumed_at
    ]
    steps_after_resume = [e.data["step"] for e in events[:resumed_at] if e.type == "metrics"]
    assert steps_after_resume and min(steps_after_resume) > paused_step
    assert max(steps_after_resume) == done.model_extra["total_steps"]


def test_dpo_job_on_preference_data_succeeds_and_its_loss_falls(sdk: openai.OpenAI) -> None:
    """The right code preferred over it reversed. The parity of a number, tested before, is not learnable by
    demo-tiny: its last step's loss came out above its first by chance. Whole epochs are compared, as every epoch
    holds the same rows; at the learning rate the job resolves for demo-tiny (5e-4) the epoch mean fell from
    0.69-0.70 to 0.21-0.22 for each of 8 seeds."""
    rows = preference_rows(code_task(20, seed=7))  # 5 steps of 4 an epoch
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    preference_file = sdk.files.create(file=("prefs.jsonl", data), purpose="fine-tune").id
    job = sdk.fine_tuning.jobs.create(
        model="demo-tiny",
        training_file=preference_file,
        suffix="dpo",
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 6, "batch_size": 4}}},
    )
    done = _wait(sdk, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    assert done.method.dpo.hyperparameters.beta == 0.1
    losses = [e.data["train_loss"] for e in reversed(_events(sdk, job.id)) if e.type == "metrics"]
    assert len(losses) == 30, losses
    first_epoch, last_epoch = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last_epoch < first_epoch - 0.3, losses


def test_kto_job_on_kto_data_succeeds_echoes_its_hyperparameters_and_its_loss_falls(
    sdk: openai.OpenAI,
) -> None:
    """An extension method through the official SDK: a file in TRL's unpaired KTO layout, method kto. Each
    step's loss depends on its batch's mix of desirable and undesirable rows (undesirable_weight 1.2), so whole
    epochs are compared: every epoch holds the same rows."""
    rows = kto_rows(code_task(12, seed=7))  # 24 rows: 6 steps of 4 an epoch
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    kto_file = sdk.files.create(file=("kto.jsonl", data), purpose="fine-tune").id
    hyperparameters = {"beta": 0.1, "undesirable_weight": 1.2, "n_epochs": 6, "batch_size": 4}
    job = sdk.fine_tuning.jobs.create(
        model="demo-tiny",
        training_file=kto_file,
        suffix="kto",
        method={"type": "kto", "kto": {"hyperparameters": hyperparameters}},  # type: ignore[typeddict-item]
    )
    done = _wait(sdk, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    assert done.method.type == "kto"
    shown = (done.method.model_extra or {})["kto"]["hyperparameters"]
    assert (shown["beta"], shown["undesirable_weight"], shown["batch_size"]) == (0.1, 1.2, 4)
    assert shown["desirable_weight"] == 1.0  # "auto", resolved
    losses = [e.data["train_loss"] for e in reversed(_events(sdk, job.id)) if e.type == "metrics"]
    assert len(losses) == 36, losses
    first_epoch, last_epoch = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last_epoch < first_epoch - 0.05, losses


def test_job_list_pages_and_filters_by_metadata(sdk: openai.OpenAI, training_file: str) -> None:
    made = []
    for i in range(3):
        made.append(
            sdk.fine_tuning.jobs.create(
                model="demo-tiny", training_file=training_file, metadata={"batch": "paging", "i": str(i)}
            ).id
        )
        sdk.fine_tuning.jobs.cancel(made[-1])
    page = sdk.fine_tuning.jobs.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    filtered = [j.id for j in sdk.fine_tuning.jobs.list(metadata={"batch": "paging"}, limit=1)]
    assert filtered == made[::-1]
    one = [j.id for j in sdk.fine_tuning.jobs.list(metadata={"batch": "paging", "i": "1"})]
    assert one == [made[1]]


def test_invalid_job_requests_and_other_orgs(
    sdk: openai.OpenAI, training_file: str, ftserve_server: FtserveProcess
) -> None:
    with pytest.raises(openai.BadRequestError) as excinfo:
        sdk.fine_tuning.jobs.create(model="no-such-model", training_file=training_file)
    assert excinfo.value.param == "model"
    with pytest.raises(openai.BadRequestError) as excinfo:
        sdk.fine_tuning.jobs.create(model="demo-tiny", training_file=training_file, suffix="x" * 65)
    assert excinfo.value.param == "suffix"
    with pytest.raises(openai.BadRequestError) as excinfo:
        sdk.fine_tuning.jobs.create(
            model="demo-tiny",
            training_file=training_file,
            method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}},
        )
    assert excinfo.value.param == "method.dpo.hyperparameters.beta"

    job = sdk.fine_tuning.jobs.create(model="demo-tiny", training_file=training_file)
    sdk.fine_tuning.jobs.cancel(job.id)
    other = openai.OpenAI(
        api_key=ftserve_server.create_key("contract-intruder"), base_url=ftserve_server.base_url
    )
    for call in (
        lambda: other.fine_tuning.jobs.retrieve(job.id),
        lambda: other.fine_tuning.jobs.cancel(job.id),
        lambda: other.fine_tuning.jobs.list_events(job.id),
        lambda: other.fine_tuning.jobs.checkpoints.list(job.id),
        lambda: other.files.retrieve(training_file),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError) as excinfo:
        other.fine_tuning.jobs.create(model="demo-tiny", training_file=training_file)
    assert excinfo.value.param == "training_file"
