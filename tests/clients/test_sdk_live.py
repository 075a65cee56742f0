"""The SDK against the session's real `ftserve up` (API, scheduler, worker, vLLM): every resource, paging,
errors, waiting, following and streaming, sync and async."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from pathlib import Path

import pytest

import ftserve_client
from ftserve_client import AsyncClient, Client
from ftserve_client.resources.fine_tuning import jobs as jobs_module
from ftserve_client.types import FineTuningJobEvent
from tests.support.ftserve_process import FtserveProcess

pytestmark = pytest.mark.slow

ORG = "sdk-live"


def chat_rows(n: int, offset: int = 0) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Code for item {i}?"},
                {"role": "assistant", "content": f"Item {i} has code {(i * 7919) % 1000:03d}."},
            ]
        }
        for i in range(offset, offset + n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def key(ftserve_server: FtserveProcess) -> str:
    return ftserve_server.create_key(ORG)


@pytest.fixture(scope="module")
def client(ftserve_server: FtserveProcess, key: str) -> Client:
    return Client(api_key=key, base_url=ftserve_server.base_url)


@pytest.fixture(scope="module")
def training_file(client: Client) -> str:
    return client.files.create(file=("train.jsonl", chat_rows(24))).id


def test_files_every_call(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "from-path.jsonl"
    path.write_bytes(chat_rows(12))
    progress: list[tuple[int, int | None]] = []
    by_path = client.files.create(file=path, on_progress=lambda sent, total: progress.append((sent, total)))
    assert by_path.status == "processed" and by_path.filename == "from-path.jsonl"
    assert (
        by_path.example_count == 12 and by_path.data_format == "chat" and by_path.bytes == path.stat().st_size
    )
    assert progress[0] == (0, by_path.bytes) and progress[-1] == (by_path.bytes, by_path.bytes)
    by_bytes = client.files.create(file=("b.jsonl", chat_rows(11)), expires_after_seconds=3600)
    assert by_bytes.expires_at is not None and by_bytes.expires_at > by_bytes.created_at
    by_fileobj = client.files.create(file=io.BytesIO(chat_rows(10)))
    made = [by_fileobj.id, by_bytes.id, by_path.id]  # newest first

    page = client.files.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    listed = [f.id for f in page]  # walks every page
    assert [i for i in listed if i in made] == made and len(listed) == len(set(listed))
    assert [f.id for f in client.files.list(order="asc", limit=1)][-3:] == made[::-1]

    assert client.files.retrieve(by_path.id).id == by_path.id
    content = client.files.content(by_path.id)
    assert content.content == path.read_bytes() and content.text == path.read_text()
    client.files.content(by_bytes.id).write_to_file(tmp_path / "copy.jsonl")
    assert (tmp_path / "copy.jsonl").read_bytes() == chat_rows(11)

    deleted = client.files.delete(by_fileobj.id)
    assert deleted.deleted and deleted.id == by_fileobj.id
    with pytest.raises(ftserve_client.NotFoundError) as excinfo:
        client.files.retrieve(by_fileobj.id)
    assert excinfo.value.status_code == 404 and excinfo.value.request_id


def test_a_rejected_upload_names_its_report(client: Client) -> None:
    bad = chat_rows(12).replace(b'"role": "user"', b'"role": "bot"', 2)
    with pytest.raises(ftserve_client.BadRequestError) as excinfo:
        client.files.create(file=("bad.jsonl", bad))
    exc = excinfo.value
    assert exc.param == "file" and exc.code == "invalid_file" and exc.file_id
    report = client.files.validation_report(exc.file_id)
    assert report.status == "error" and report.error_count == 2
    assert [(e.line, e.code) for e in report.errors] == [(1, "unknown_role"), (2, "unknown_role")]
    assert "bot" in report.errors[0].message


def test_errors_by_status(client: Client, ftserve_server: FtserveProcess, training_file: str) -> None:
    with pytest.raises(ftserve_client.AuthenticationError):
        Client(api_key="ftsk-wrong", base_url=ftserve_server.base_url).models.list()
    with pytest.raises(ftserve_client.BadRequestError) as excinfo:
        client.fine_tuning.jobs.create(model="no-such-model", training_file=training_file)
    assert excinfo.value.param == "model" and "demo-tiny" in excinfo.value.message
    with pytest.raises(ftserve_client.BadRequestError) as excinfo:
        client.fine_tuning.jobs.create(
            model="demo-tiny", training_file=training_file, hyperparameters={"n_epoch": 2}
        )
    assert excinfo.value.param == "method.supervised.hyperparameters.n_epoch"
    with pytest.raises(ftserve_client.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-missing")
    with pytest.raises(ftserve_client.NotFoundError):
        client.models.retrieve("ft:demo-tiny:nobody:x:ftjob-missing")


def test_a_job_followed_waited_listed_and_served(
    client: Client, key: str, ftserve_server: FtserveProcess
) -> None:
    """One real training job: sync follow() (several pages per poll) and async wait(on_event) watch it at
    the same time; both must see every event once, oldest first. Then events, checkpoints, the model in
    /v1/models, chat with it (streamed and not), and deleting it."""
    validation = client.files.create(file=("valid.jsonl", chat_rows(10, offset=100))).id
    train = client.files.create(file=("train.jsonl", chat_rows(24))).id
    job = client.fine_tuning.jobs.create(
        model="demo-tiny",
        training_file=train,
        validation_file=validation,
        hyperparameters={"n_epochs": 3, "batch_size": 4, "lora_rank": 8},
        suffix="sdk",
        seed=7,
        metadata={"suite": "sdk-live"},
    )
    assert job.status in ("validating_files", "queued") and job.user_provided_suffix == "sdk"

    followed: list[FineTuningJobEvent] = []
    follower = client.fine_tuning.jobs.follow(job.id, poll_interval=0.2, timeout=240)
    saved_page = jobs_module.EVENTS_PAGE
    jobs_module.EVENTS_PAGE = 3  # make each poll read back over several pages
    thread = threading.Thread(target=lambda: followed.extend(follower))
    thread.start()

    async def wait_async() -> tuple[ftserve_client.types.FineTuningJob, list[str]]:
        seen: list[str] = []
        async with AsyncClient(api_key=key, base_url=ftserve_server.base_url) as aclient:
            done = await aclient.fine_tuning.jobs.wait(
                job.id, on_event=lambda e: seen.append(e.id), poll_interval=0.3, timeout=240
            )
        return done, seen

    try:
        done, waited = asyncio.run(wait_async())
        thread.join(timeout=240)
    finally:
        jobs_module.EVENTS_PAGE = saved_page
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:demo-tiny:{ORG}:sdk:{job.id}"
    assert done.base_model == "demo-tiny"  # the same as `model` here: the job starts from the base
    assert follower.job is not None and follower.job.status == "succeeded"
    assert done.hyperparameters is not None and done.hyperparameters.n_epochs == 3
    assert done.hyperparameters.lora_rank == 8 and done.step == done.total_steps

    history = list(client.fine_tuning.jobs.list_events(job.id, limit=3))  # newest first, every page
    oldest_first = [e.id for e in reversed(history)]
    assert len(set(oldest_first)) == len(oldest_first) > 10
    # Both watchers saw every event up to `succeeded`, once each, in order (the model.ready event from the
    # inference side may come after the last poll).
    assert [e.id for e in followed] == oldest_first[: len(followed)]
    assert waited == oldest_first[: len(waited)]
    finished_at = next(i for i, e in enumerate(reversed(history)) if "successfully completed" in e.message)
    assert len(followed) > finished_at and len(waited) > finished_at
    metrics = [e for e in followed if e.type == "metrics"]
    assert metrics and {"step", "train_loss"} <= set(metrics[-1].data or {})

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id, limit=1))
    assert 1 <= len(checkpoints) <= 3
    assert [c.step_number for c in checkpoints] == sorted((c.step_number for c in checkpoints), reverse=True)
    assert checkpoints[0].fine_tuned_model_checkpoint.startswith(f"{done.fine_tuned_model}:ckpt-step-")

    mine = [j.id for j in client.fine_tuning.jobs.list(metadata={"suite": "sdk-live"}, limit=1)]
    assert mine == [job.id]
    assert job.id in [j.id for j in client.fine_tuning.jobs.list(limit=1)]

    models = {m.id: m for m in client.models.list()}
    assert models[done.fine_tuned_model].owned_by == ORG and models["demo-tiny"].owned_by == "system"
    assert client.models.retrieve(done.fine_tuned_model).id == done.fine_tuned_model

    ftserve_server.wait_inference_ready("demo-tiny")
    messages = [{"role": "user", "content": "Code for item 5?"}]
    whole = client.chat.completions.create(
        model=done.fine_tuned_model, messages=messages, max_tokens=16, temperature=0
    )
    assert whole.model == done.fine_tuned_model and whole.choices[0].message.content
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    with client.chat.completions.create(
        model=done.fine_tuned_model, messages=messages, max_tokens=16, temperature=0, stream=True
    ) as stream:
        chunks = list(stream)
    assert len(chunks) > 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.text

    deleted = client.models.delete(done.fine_tuned_model)
    assert deleted.deleted and deleted.id == done.fine_tuned_model
    with pytest.raises(ftserve_client.NotFoundError):
        client.models.retrieve(done.fine_tuned_model)
    with pytest.raises(ftserve_client.NotFoundError):
        client.chat.completions.create(model=done.fine_tuned_model, messages=messages, stream=True)


def test_pause_resume_cancel_with_the_async_client(
    ftserve_server: FtserveProcess, key: str, training_file: str
) -> None:
    async def main() -> None:
        async with AsyncClient(api_key=key, base_url=ftserve_server.base_url) as client:
            job = await client.fine_tuning.jobs.create(
                model="demo-tiny",
                training_file=training_file,
                method={
                    "type": "supervised",
                    "supervised": {"hyperparameters": {"n_epochs": 40, "batch_size": 1}},
                },
            )
            running = await client.fine_tuning.jobs.wait(
                job.id, statuses={"running"}, poll_interval=0.2, timeout=120
            )
            assert running.status == "running"
            deadline = time.monotonic() + 120
            while not (await client.fine_tuning.jobs.retrieve(job.id)).step:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            assert (await client.fine_tuning.jobs.pause(job.id)).status == "paused"
            while not any(
                [
                    e.message.startswith("Paused at step")
                    async for e in client.fine_tuning.jobs.list_events(job.id)
                ]
            ):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            assert (await client.fine_tuning.jobs.resume(job.id)).status == "queued"
            cancelled = await client.fine_tuning.jobs.cancel(job.id)
            assert cancelled.status == "cancelled" and cancelled.done
            with pytest.raises(ftserve_client.BadRequestError) as excinfo:
                await client.fine_tuning.jobs.cancel(job.id)
            assert "cancelled" in excinfo.value.message
            checkpoints = [c async for c in client.fine_tuning.jobs.checkpoints.list(job.id)]
            assert checkpoints and checkpoints[0].fine_tuning_job_id == job.id
            page = await client.fine_tuning.jobs.list_events(job.id, limit=2)
            assert len(page.data) == 2 and page.has_more and (await page.get_next_page()).data

            # The async files resource, end to end.
            f = await client.files.create(file=("async.jsonl", chat_rows(10)))
            assert (await client.files.retrieve(f.id)).status == "processed"
            assert f.id in [x.id async for x in client.files.list(limit=1)]
            assert await (await client.files.content(f.id)).read() == chat_rows(10)
            assert (await client.files.delete(f.id)).deleted
            assert "demo-tiny" in [m.id async for m in client.models.list()]
            assert (await client.models.retrieve("demo-tiny")).owned_by == "system"

    asyncio.run(main())


def test_estimates_create_nothing_and_scale_with_the_job(client: Client, training_file: str) -> None:
    jobs_before = [j.id for j in client.fine_tuning.jobs.list(limit=100)]
    small = client.estimates.create(
        model="demo-tiny", training_file=training_file, hyperparameters={"n_epochs": 2, "lora_rank": 4}
    )
    assert (
        small.object == "fine_tuning.estimate" and small.model == "demo-tiny" and small.method == "supervised"
    )
    assert small.estimated_vram_mb > 0 and small.breakdown and small.hyperparameters["lora_rank"] == 4
    bigger = client.estimates.create(
        model="demo-tiny",
        n_examples=24,
        max_seq_length=256,
        method="supervised",
        hyperparameters={"lora_rank": 16},
    )
    assert bigger.trainable_parameters and small.trainable_parameters
    assert bigger.trainable_parameters > small.trainable_parameters
    with pytest.raises(ftserve_client.BadRequestError) as excinfo:
        client.estimates.create(model="demo-tiny")  # neither a file nor a count
    assert excinfo.value.param == "training_file"
    with pytest.raises(ftserve_client.BadRequestError) as excinfo:
        client.estimates.create(model="no-such-model", n_examples=10)
    assert excinfo.value.param == "model"
    assert [j.id for j in client.fine_tuning.jobs.list(limit=100)] == jobs_before


def test_webhook_endpoints_and_deliveries_that_verify(client: Client, training_file: str) -> None:
    """Manage an endpoint, get a real delivery (a cancelled job) and a test one, and verify both with the
    SDK, across a secret rotation (both secrets sign for 24 h)."""
    from tests.support.webhook_receiver import WebhookReceiver

    with WebhookReceiver() as receiver:
        endpoint = client.webhooks.create(
            url=receiver.url, event_types=["fine_tuning.job.cancelled"], name="sdk", description="sdk test"
        )
        secret = endpoint.signing_secret
        assert secret.startswith("whsec_") and endpoint.event_types == ["fine_tuning.job.cancelled"]
        assert endpoint.id in [e.id for e in client.webhooks.list(limit=1)]
        assert client.webhooks.retrieve(endpoint.id).signing_secret_hint == f"whsec_...{secret[-4:]}"

        job = client.fine_tuning.jobs.create(model="demo-tiny", training_file=training_file)
        client.fine_tuning.jobs.cancel(job.id)
        (delivered,) = receiver.wait_for(1)
        event = client.webhooks.unwrap(delivered.body, delivered.headers, secret=secret)
        assert event.type == "fine_tuning.job.cancelled" and event.data == {"id": job.id}
        with pytest.raises(ftserve_client.InvalidWebhookSignatureError):
            client.webhooks.verify(delivered.body + b" ", delivered.headers, secret=secret)
        deadline = time.monotonic() + 30
        while not (attempts := list(client.webhooks.list_deliveries(endpoint.id, event_id=event.id))):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert attempts[0].status == "succeeded" and attempts[0].response_status_code == 200
        assert attempts[0].event_id == delivered.headers["webhook-id"]

        updated = client.webhooks.update(
            endpoint.id, event_types=["fine_tuning.job.cancelled", "fine_tuning.job.failed"]
        )
        assert updated.event_types == ["fine_tuning.job.cancelled", "fine_tuning.job.failed"]
        rotated = client.webhooks.rotate_secret(endpoint.id)
        assert rotated.signing_secret != secret and rotated.previous_secret_expires_at
        result = client.webhooks.test(endpoint.id, event_type="fine_tuning.job.failed")
        assert result.status_code == 200 and result.success
        second = receiver.wait_for(2)[1]
        for key in (secret, rotated.signing_secret):  # either secret verifies during the rotation
            assert (
                client.webhooks.unwrap(second.body, second.headers, secret=key).type
                == "fine_tuning.job.failed"
            )
        assert client.webhooks.delete(endpoint.id).deleted
        with pytest.raises(ftserve_client.NotFoundError):
            client.webhooks.retrieve(endpoint.id)
