"""POST /v1/fine_tuning/estimates against a real Redis worker registry, on SQLite and PostgreSQL: the
estimate is the estimator's, the fits are the live GPUs big enough, and bad bodies are 400s naming the field."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from core.model_registry import register_model
from core.queue import Device, WorkerInfo, publish_worker
from core.redis_embedded import EmbeddedRedis
from core.settings import Settings
from core.vram import estimate_request
from scheduler.main import connect_redis
from tests.support.datasets import chat_jsonl, preference_jsonl
from tests.support.model_configs import LLAMA_3_1_8B, write_config


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, redis_server: EmbeddedRedis) -> Settings:
    redis.Redis.from_url(redis_server.url).flushall()
    database_url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    settings = Settings(
        data_dir=tmp_path / "data", database_url=database_url, min_examples=10, redis_url=redis_server.url
    )
    # An 8B model's shape, without its weights: estimates read config.json only.
    register_model(
        settings, "llama-8b", tmp_path / "llama-8b", config=write_config(tmp_path / "cfg", LLAMA_3_1_8B)
    )
    return settings


def _publish(settings: Settings, *workers: WorkerInfo) -> None:
    async def go() -> None:
        pool = await connect_redis(str(settings.redis_url))
        for worker in workers:
            await publish_worker(pool, worker, ttl_s=60)
        await pool.close(close_connection_pool=True)

    asyncio.run(go())


def _gpu(name: str, mb: int, index: int = 0, free: int | None = None) -> Device:
    return Device(index=index, name=name, total_mb=mb, free_mb=mb if free is None else free)


def _estimate(client: TestClient, key: str, **body: object):
    return client.post("/v1/fine_tuning/estimates", headers=_auth(key), json=body)


def _upload(client: TestClient, key: str, data: bytes) -> str:
    resp = client.post(
        "/v1/files", headers=_auth(key), data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", data)}
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def test_estimate_lists_the_live_gpus_that_fit_and_the_best_one(
    client: TestClient, settings: Settings, org_a_key: str
) -> None:
    _publish(
        settings,
        WorkerInfo(id="small", gpus=[_gpu("A10-24GB", 24576)]),
        WorkerInfo(id="mid", gpus=[_gpu("L40S-48GB", 49152)]),
        WorkerInfo(id="big", gpus=[_gpu("H100-80GB", 81920), _gpu("H100-80GB", 81920, index=1, free=1000)]),
    )
    hp = {"batch_size": 2, "max_seq_length": 2048, "lora_rank": 16}
    resp = _estimate(
        client, org_a_key, model="llama-8b", n_examples=500,
        method={"type": "supervised", "supervised": {"hyperparameters": hp}},
    )  # fmt: skip
    assert resp.status_code == 200, resp.text
    body = resp.json()
    expected = estimate_request(
        settings, model="llama-8b", method_type="supervised", hyperparameters=hp, n_examples=500
    ).gpu
    assert body["object"] == "fine_tuning.estimate"
    assert body["estimated_vram_mb"] == expected.reservation_mb
    assert body["peak_vram_mb"] == expected.peak_mb < body["estimated_vram_mb"]
    assert sum(body["breakdown"].values()) == pytest.approx(body["estimated_vram_mb"], abs=10)
    assert body["tokens_per_micro_batch"] == 2 * 2048 and body["hyperparameters"]["batch_size"] == 2
    # ~16 GB of bf16 weights plus 4096 tokens of unfused logits: more than 24 GB, less than 48.
    assert 24576 < body["estimated_vram_mb"] < 49152
    assert [(f["gpu_class"], f["devices"], f["free_now"]) for f in body["fits"]] == [
        ("L40S-48GB", 1, 1),
        ("H100-80GB", 2, 1),  # the second H100 reports 1000 MiB free: something else uses it
    ]
    assert body["gpu_class"] == "L40S-48GB" and body["placeable"] is True


def test_estimate_from_a_training_file_and_a_job_create_body(
    client: TestClient, settings: Settings, org_a_key: str
) -> None:
    _publish(settings, WorkerInfo(id="small", gpus=[_gpu("A10-24GB", 24576)]))
    training = _upload(client, org_a_key, chat_jsonl(40))
    # Exactly what would be sent to create the job, extension fields included.
    body = {"model": "llama-8b", "training_file": training, "suffix": "x", "seed": 3, "priority": 5,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"max_seq_length": 512}}}}  # fmt: skip
    resp = _estimate(client, org_a_key, **body)
    assert resp.status_code == 200, resp.text
    est = resp.json()
    # "auto" epochs stop early, so 4 of the 40 are held out; the batch is sized by the whole file.
    assert (
        est["hyperparameters"]["early_stopping"] is True and est["hyperparameters"]["holdout_examples"] == 4
    )
    assert est["hyperparameters"]["n_examples"] == 36 and est["hyperparameters"]["batch_size"] == 4
    assert est["estimated_vram_mb"] < 24576 and est["gpu_class"] == "A10-24GB"
    # The top-level shortcut gives the same answer.
    short = _estimate(client, org_a_key, model="llama-8b", training_file=training, max_seq_length=512).json()
    assert short["estimated_vram_mb"] == est["estimated_vram_mb"]

    huge = _estimate(client, org_a_key, model="llama-8b", n_examples=64, max_seq_length=65536).json()
    assert huge["fits"] == [] and huge["placeable"] is False and huge["gpu_class"] is None


def test_an_all_auto_estimate_sizes_max_seq_length_from_the_file_not_the_context(
    client: TestClient, org_a_key: str
) -> None:
    data = chat_jsonl(40)
    training = _upload(client, org_a_key, data)
    longest = max(len(line) for line in data.splitlines())
    report = client.get(f"/v1/files/{training}/validation", headers=_auth(org_a_key)).json()
    assert report["longest_example_bytes"] == longest
    from_file = _estimate(client, org_a_key, model="llama-8b", training_file=training).json()
    blind = _estimate(client, org_a_key, model="llama-8b", n_examples=40).json()
    assert from_file["hyperparameters"]["max_seq_length"] == 1024  # short chats: < 512 bytes + template slack
    assert blind["hyperparameters"]["max_seq_length"] == 8192  # no file: Llama-3.1's context, capped
    assert from_file["estimated_vram_mb"] < blind["estimated_vram_mb"]


def _chats_of_about(n: int, words: int) -> bytes:
    """`n` chat examples of about `words` x 1.3 tokens each (a 300-token chat is ~1,300 bytes of JSONL)."""
    rows = []
    for i in range(n):
        text = " ".join(f"word{(i * 7 + j) % 97}" for j in range(words))
        rows.append({"messages": [{"role": "user", "content": f"Summarise item {i}."},
                                  {"role": "assistant", "content": text}]})  # fmt: skip
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def test_an_all_auto_8b_job_of_1000_examples_fits_an_80gb_gpu_with_lora_and_a_24gb_one_with_qlora(
    client: TestClient, settings: Settings, org_a_key: str
) -> None:
    """All hyperparameters "auto" on Llama-3.1-8B's shape, 1,000 chats of ~300 tokens. The token budget
    makes the effective batch of 32 micro-batches of 4 (2048-token bound from the bytes); where no GPU holds
    that, the scheduler and this estimate lower the micro-batch and accumulate more."""
    data = _chats_of_about(1000, 180)
    assert 1100 < max(len(line) for line in data.splitlines()) < 1536
    training = _upload(client, org_a_key, data)
    h100 = WorkerInfo(id="h100", gpus=[_gpu("H100-80GB", 81559)])
    a10 = WorkerInfo(id="a10", gpus=[_gpu("A10-24GB", 23028)], capabilities=["bnb_4bit"])

    _publish(settings, h100)
    lora = _estimate(client, org_a_key, model="llama-8b", training_file=training).json()
    hp = lora["hyperparameters"]
    assert (hp["n_examples"], hp["batch_size"], hp["max_seq_length"]) == (900, 32, 2048)  # 100 held out
    assert (hp["micro_batch_size"], hp["gradient_accumulation_steps"]) == (4, 8)
    assert lora["tokens_per_micro_batch"] == 4 * 2048
    assert lora["estimated_vram_mb"] <= 81559 and lora["placeable"] is True
    assert [f["gpu_class"] for f in lora["fits"]] == ["H100-80GB"]

    redis.Redis.from_url(str(settings.redis_url)).flushall()
    _publish(settings, a10)
    qlora_body = {"type": "supervised", "supervised": {"hyperparameters": {"quantization": "4bit"}}}
    qlora = _estimate(client, org_a_key, model="llama-8b", training_file=training, method=qlora_body).json()
    hp = qlora["hyperparameters"]
    assert (hp["batch_size"], hp["micro_batch_size"], hp["gradient_accumulation_steps"]) == (32, 2, 16)
    assert qlora["estimated_vram_mb"] <= 23028 and qlora["placeable"] is True
    assert [(f["gpu_class"], f["free_now"]) for f in qlora["fits"]] == [("A10-24GB", 1)]
    assert any("micro-batches of 2 x 16 accumulation steps" in note for note in qlora["notes"])
    # Without the fallback the job's own micro-batch would not fit that GPU.
    own = estimate_request(
        settings, model="llama-8b", method_type="supervised", hyperparameters={"quantization": "4bit"},
        n_examples=1000, longest_example_bytes=max(len(line) for line in data.splitlines()),
    )  # fmt: skip
    assert own.gpu.reservation_mb > 23028 >= qlora["estimated_vram_mb"]


def test_an_estimate_from_a_file_counts_its_tokens_with_the_models_tokenizer(
    client: TestClient, settings: Settings, org_a_key: str, demo_model_dir: Path, tmp_path: Path
) -> None:
    """Trained tokens (loss-bearing tokens per epoch x epochs) next to the memory, counted as the worker will
    tokenise the file; a model with only a config.json says why it can't count."""
    from core.token_counts import count_file_tokens

    register_model(settings, "demo-tiny", demo_model_dir)
    data = chat_jsonl(40)
    training = _upload(client, org_a_key, data)
    est = _estimate(client, org_a_key, model="demo-tiny", training_file=training).json()
    (tmp_path / "t.jsonl").write_bytes(data)
    expected = count_file_tokens(tmp_path / "t.jsonl", "chat", demo_model_dir, max_seq_length=1024)
    assert est["tokens"]["total_tokens"] == expected.total_tokens
    assert est["tokens"]["longest_example_tokens"] == expected.longest_example_tokens
    # every epoch of the 36 examples trained on (4 of 40 are held out for early stopping): an upper bound
    hp = est["hyperparameters"]
    assert est["trained_tokens"] == round(expected.trained_tokens * 36 / 40) * hp["n_epochs"]
    with_validation = _estimate(
        client, org_a_key, model="demo-tiny", training_file=training, validation_file=training
    ).json()
    assert with_validation["hyperparameters"]["holdout_examples"] == 0
    assert (
        with_validation["trained_tokens"]
        == expected.trained_tokens * with_validation["hyperparameters"]["n_epochs"]
    )
    assert est["hyperparameters"]["max_seq_length"] < 1024  # sized from the tokens, not the byte bound

    blind = _estimate(client, org_a_key, model="llama-8b", training_file=training).json()
    assert blind["tokens"] is None and blind["trained_tokens"] is None
    assert any(note.startswith("Tokens not counted") for note in blind["notes"])


def test_estimate_without_a_reachable_registry_still_estimates(
    client: TestClient, settings: Settings, org_a_key: str
) -> None:
    settings.redis_url = "redis://127.0.0.1:1/0"  # nothing listens there
    resp = _estimate(client, org_a_key, model="llama-8b", n_examples=100)
    assert resp.status_code == 200, resp.text
    assert resp.json()["fits"] == [] and resp.json()["placeable"] is None
    assert "unreachable" in resp.json()["notes"][-1]


BAD_BODIES: list[tuple[dict[str, object], str]] = [
    ({}, "training_file"),
    ({"n_examples": 0}, "n_examples"),
    ({"n_examples": "many"}, "n_examples"),
    ({"n_examples": 10, "training_file": "file-x"}, "n_examples"),
    ({"n_examples": 10, "model": "nope"}, "model"),
    ({"n_examples": 10, "max_seq_length": 8}, "max_seq_length"),
    (
        {"n_examples": 10, "training_file": None, "hyperparameters": {"lora_rank": 0}},
        "hyperparameters.lora_rank",
    ),
    (
        {
            "n_examples": 10,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epoch": 2}}},
        },
        "method.supervised.hyperparameters.n_epoch",
    ),
    (
        {
            "n_examples": 10,
            "max_seq_length": 512,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"max_seq_length": 1024}}},
        },
        "max_seq_length",
    ),  # fmt: skip
    ({"training_file": "file-nope"}, "training_file"),
    ({"model": ""}, "model"),
]


def test_bad_estimate_bodies_are_400_naming_the_field(
    client: TestClient, settings: Settings, org_a_key: str
) -> None:
    for body, param in BAD_BODIES:
        resp = _estimate(client, org_a_key, **{"model": "llama-8b", **body})
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["error"]["param"] == param, (body, resp.json())


def test_estimate_refuses_a_file_of_the_wrong_format(
    client: TestClient, settings: Settings, org_a_key: str
) -> None:
    preference = _upload(client, org_a_key, preference_jsonl(12))
    resp = _estimate(client, org_a_key, model="llama-8b", training_file=preference)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "training_file"
    # The message names the layout seen and the method that would use the file.
    assert "OpenAI preference" in resp.json()["error"]["message"]
    assert "'dpo'" in resp.json()["error"]["message"]
    kto_rows = [{"prompt": f"Say {i}", "completion": f"{i}", "label": i % 2 == 0} for i in range(12)]
    kto = _upload(client, org_a_key, b"".join(json.dumps(r).encode() + b"\n" for r in kto_rows))
    for method in ({"type": "supervised"}, {"type": "dpo"}):
        refused = _estimate(client, org_a_key, model="llama-8b", training_file=kto, method=method)
        assert refused.status_code == 400, refused.text
        assert "KTO data" in refused.json()["error"]["message"]
        assert "method 'kto'" in refused.json()["error"]["message"]
    kto_estimate = _estimate(client, org_a_key, model="llama-8b", training_file=kto, method={"type": "kto"})
    assert kto_estimate.status_code == 200, kto_estimate.text
    kto_hp = kto_estimate.json()["hyperparameters"]
    assert kto_hp["micro_batch_size"] >= 2  # its KL term needs two examples per micro-batch
    # each example runs with its mismatched KL pair: two sequences, as DPO's chosen and rejected
    assert (
        kto_estimate.json()["tokens_per_micro_batch"]
        == 2 * kto_hp["micro_batch_size"] * kto_hp["max_seq_length"]
    )
    dpo = _estimate(client, org_a_key, model="llama-8b", training_file=preference, method={"type": "dpo"})
    assert dpo.status_code == 200, dpo.text
    resolved = dpo.json()["hyperparameters"]
    assert resolved["max_seq_length"] == 1024  # sized from the file's longest pair, not Llama-3.1's context
    assert dpo.json()["tokens_per_micro_batch"] == 2 * resolved["batch_size"] * 1024  # chosen + rejected


def test_estimates_need_a_key(client: TestClient) -> None:
    assert (
        client.post("/v1/fine_tuning/estimates", json={"model": "llama-8b", "n_examples": 5}).status_code
        == 401
    )


def test_priority_is_accepted_on_create_and_shown_on_the_job(
    client: TestClient, settings: Settings, org_a_key: str
) -> None:
    training = _upload(client, org_a_key, chat_jsonl(12))
    job = client.post(
        "/v1/fine_tuning/jobs", headers=_auth(org_a_key),
        json={"model": "llama-8b", "training_file": training, "priority": 7},
    ).json()  # fmt: skip
    assert job["priority"] == 7 and job["estimated_vram_mb"] is None and job["queue_position"] is None
    for bad in (101, "high", 1.5, True):
        resp = client.post(
            "/v1/fine_tuning/jobs", headers=_auth(org_a_key),
            json={"model": "llama-8b", "training_file": training, "priority": bad},
        )  # fmt: skip
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "priority", (bad, resp.text)
