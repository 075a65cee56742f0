"""Continue training end to end on demo-tiny, through the job runner: an SFT job keeping n_checkpoints=2, then a
DPO job on its ft: model. The DPO run starts from the SFT model (policy = reference at step 1, so the reward
margin starts at 0) and raises the margin; its stored adapter, one LoRA over the bare base, reproduces the
trained model's logits; every kept checkpoint of both jobs passes vLLM's adapter checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core import jobs
from core.adapters import materialize
from core.continuation import resolve_parent, take_parent_shape
from core.model_registry import register_model
from core.models import FineTunedModel, JobCheckpoint, TrainingUsage
from core.queue import WorkerInfo
from core.settings import Settings
from core.storage import Storage
from gpu_worker.job_runner import run_attempt
from scheduler.dispatch import claim
from tests.scheduler.factories import events, get_job, make_file, make_job, make_org
from tests.support.code_task import chat_rows, code_task, preference_rows

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow
ORG = "org-continue"


@pytest.fixture
def settings(tmp_path: Path, demo_model_dir: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", model_registry=tmp_path / "models.json")
    register_model(settings, "demo-tiny", demo_model_dir)
    return settings


def _run(settings: Settings, engine: Engine, job_id: str) -> Any:
    attempt = claim(engine, get_job(engine, job_id), WorkerInfo(id="w-test"))
    assert attempt is not None
    run_attempt(settings, job_id, attempt)
    job = get_job(engine, job_id)
    assert job.status == jobs.SUCCEEDED, (job.error, [e.message for e in events(engine, job_id)][-5:])
    return job


def _kept_checkpoints(engine: Engine, job_id: str) -> list[JobCheckpoint]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(JobCheckpoint)
                .where(JobCheckpoint.job_id == job_id, col(JobCheckpoint.deleted_at).is_(None))
                .order_by(col(JobCheckpoint.step_number))
            ).all()
        )


def _adapter_prefix(engine: Engine, model: str) -> str:
    with Session(engine) as session:
        return session.exec(select(FineTunedModel).where(FineTunedModel.id == model)).one().adapter_prefix


def _logits(model_dir: Path, ids: Any, *, merged: Path | None = None, adapter: Path | None = None) -> Any:
    """demo-tiny's logits, with `merged` merged into its weights and `adapter` loaded on top by PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from gpu_worker.parent_adapter import merge_into

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if merged is not None:
        merge_into(model, merged)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_sft_then_dpo_from_its_model_starts_from_it_and_stores_one_exact_adapter(
    settings: Settings, engine: Engine, storage: Storage, demo_model_dir: Path, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    org = make_org(engine, ORG)
    pairs = code_task(16, seed=11)

    # -- SFT, keeping 2 checkpoints (auto: one every 2 of its 12 steps) -------------------------------------
    sft_file = make_file(engine, storage, org, chat_rows(pairs))
    sft_id = make_job(
        engine, org, sft_file, suffix="sft", status=jobs.QUEUED,
        hyperparameters={"n_epochs": 3, "batch_size": 4, "n_checkpoints": 2},
    )  # fmt: skip
    sft = _run(settings, engine, sft_id)
    assert sft.resolved_hyperparameters and sft.resolved_hyperparameters["n_checkpoints"] == 2
    kept = _kept_checkpoints(engine, sft_id)
    assert [c.step_number for c in kept] == [10, 12]
    assert not storage.list_keys(f"jobs/{sft_id}/checkpoints/step-8/")  # older ones deleted from storage too

    # -- DPO on the SFT model, as the API creates it ----------------------------------------------------------
    dpo_file = make_file(engine, storage, org, preference_rows(pairs), data_format="preference")
    hyperparameters: dict[str, Any] = {"n_epochs": 4, "batch_size": 8, "learning_rate": 5e-3}
    with Session(engine) as session:
        parent = resolve_parent(session, organization_id=org, model=sft.fine_tuned_model or "")
    take_parent_shape(parent, hyperparameters, param="method.dpo.hyperparameters")
    dpo_id = make_job(
        engine, org, dpo_file, model=parent.model, method="dpo", suffix="dpo", status=jobs.QUEUED,
        hyperparameters=hyperparameters,
    )  # fmt: skip
    dpo = _run(settings, engine, dpo_id)
    assert dpo.model == sft.fine_tuned_model
    assert dpo.fine_tuned_model == f"ft:demo-tiny:{ORG}:dpo:{dpo_id}"  # named after the base model
    with Session(engine) as session:
        usage = session.exec(select(TrainingUsage).where(TrainingUsage.job_id == dpo_id)).one()
    assert usage.model == "demo-tiny"  # metered and priced as the base model

    margins = [
        e.data["train_reward_margin"] for e in events(engine, dpo_id) if e.type == "metrics" and e.data
    ]
    print(f"\nDPO from the SFT model: reward margin per step {[round(m, 4) for m in margins]}")
    # Step 1: the policy is its reference, so every reward is 0. Had the reference been the bare base, the SFT
    # model's log-ratios against it would make the margin non-zero here.
    assert margins[0] == pytest.approx(0.0, abs=1e-5)
    assert min(margins[-2:]) > 0.1 and margins[-1] > margins[0]

    # -- the stored adapter: one LoRA over the bare base that reproduces the trained model ------------------
    sft_dir, dpo_dir = tmp_path / "sft", tmp_path / "dpo"
    storage.download_dir(_adapter_prefix(engine, sft.fine_tuned_model or ""), sft_dir)
    storage.download_dir(_adapter_prefix(engine, dpo.fine_tuned_model or ""), dpo_dir)
    ids = torch.tensor([[5, 17, 42, 99, 123, 7, 64, 200, 31, 8]])
    sft_logits = _logits(demo_model_dir, ids, adapter=sft_dir)
    assert torch.allclose(_logits(demo_model_dir, ids, merged=sft_dir), sft_logits, atol=1e-5)  # the start
    trained = _logits(demo_model_dir, ids, merged=sft_dir, adapter=dpo_dir / "trained_adapter")
    served = _logits(demo_model_dir, ids, adapter=dpo_dir)
    difference = (served - trained).abs().max().item()
    print(f"stored adapter vs trained model: max |logit difference| {difference:.2e}")
    assert difference < 1e-4 and not torch.allclose(served, sft_logits, atol=1e-3)

    # -- every kept checkpoint of both jobs is servable (what the adapter loader checks before vLLM) ----------
    for checkpoint in kept + _kept_checkpoints(engine, dpo_id):
        _, _ = materialize(
            storage, checkpoint.storage_prefix, tmp_path / "served", f"{checkpoint.job_id}/{checkpoint.step_number}",
            max_lora_rank=settings.vllm_max_lora_rank, base_model_dir=demo_model_dir, base_model_id="demo-tiny",
        )  # fmt: skip
    dpo_kept = _kept_checkpoints(engine, dpo_id)
    assert [c.step_number for c in dpo_kept] == [6, 7, 8]  # the default n_checkpoints, 3

    # -- a resumed attempt continues the new LoRA from a stored checkpoint and ends where the job ended -------
    from core.hyperparameters import ResolvedHyperparameters
    from gpu_worker.config import TrainJobConfig
    from gpu_worker.reporting import RecordingReporter
    from gpu_worker.train import run_training

    checkpoint_dir = tmp_path / "resume"
    storage.download_dir(dpo_kept[0].storage_prefix, checkpoint_dir)
    (tmp_path / "dpo.jsonl").write_bytes(storage.get_bytes(f"files/{dpo_file}"))
    resumed = run_training(
        TrainJobConfig(
            job_id=dpo_id, method="dpo", base_model_path=demo_model_dir, training_file=tmp_path / "dpo.jsonl",
            data_format="preference", output_dir=tmp_path / "resumed",
            hyperparameters=ResolvedHyperparameters.model_validate(dpo.resolved_hyperparameters),
            seed=dpo.seed, resume_from_checkpoint=checkpoint_dir, parent_adapter=sft_dir,
        ),
        RecordingReporter(),
    )  # fmt: skip
    assert resumed.adapter_dir is not None and resumed.global_step == 8
    again = _logits(demo_model_dir, ids, adapter=resumed.adapter_dir)
    assert torch.allclose(again, served, atol=1e-5), (again - served).abs().max().item()
