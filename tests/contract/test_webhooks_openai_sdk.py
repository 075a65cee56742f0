"""Webhooks end to end: endpoints managed with the official `openai` SDK (`client.webhooks.*`), a job trained by
the real `ftserve up`, and a real receiver on loopback whose deliveries `client.webhooks.unwrap` accepts
unchanged, and rejects once tampered with or older than 5 minutes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types.webhooks import FineTuningJobSucceededWebhookEvent

from core import webhooks
from tests.support.ftserve_process import FtserveProcess
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.slow

ORG = "contract-webhooks"


def _training_data(n: int = 16) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Colour of box {i}?"},
                {"role": "assistant", "content": f"Box {i} is {['red', 'blue', 'green'][i % 3]}."},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def key(ftserve_server: FtserveProcess) -> str:
    return ftserve_server.create_key(ORG)


@pytest.fixture(scope="module")
def sdk(ftserve_server: FtserveProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=ftserve_server.base_url, max_retries=0)


@pytest.fixture
def receivers() -> Iterator[tuple[WebhookReceiver, WebhookReceiver]]:
    with WebhookReceiver() as official, WebhookReceiver() as everything:
        yield official, everything


def test_job_succeeded_webhook_is_accepted_by_the_official_sdk(
    sdk: openai.OpenAI,
    ftserve_server: FtserveProcess,
    key: str,
    receivers: tuple[WebhookReceiver, WebhookReceiver],
) -> None:
    official, everything = receivers
    endpoint = sdk.webhooks.create(url=official.url, event_types=["fine_tuning.job.succeeded"], name="ci")
    secret = endpoint.signing_secret
    assert secret.startswith("whsec_") and endpoint.event_types == ["fine_tuning.job.succeeded"]
    # A second endpoint, created over plain HTTP with our `events: "all"`, sees our own events too.
    api = httpx.Client(
        base_url=ftserve_server.base_url, headers={"authorization": f"Bearer {key}"}, timeout=30
    )
    all_endpoint = api.post("/webhook_endpoints", json={"url": everything.url, "events": "all"}).json()
    assert all_endpoint["events"] == "all"

    training = sdk.files.create(file=("train.jsonl", _training_data()), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(
        model="demo-tiny",
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 8}}},
    )
    (delivery,) = official.wait_for(1, timeout_s=300)
    assert sdk.fine_tuning.jobs.retrieve(job.id).status == "succeeded"

    # The official verifier accepts the delivery exactly as it arrived.
    verifier = openai.OpenAI(api_key="unused", webhook_secret=secret)
    event = verifier.webhooks.unwrap(delivery.body, delivery.headers)
    assert isinstance(event, FineTuningJobSucceededWebhookEvent)
    assert event.type == "fine_tuning.job.succeeded" and event.object == "event"
    assert event.data.id == job.id and event.id == delivery.headers["webhook-id"]
    assert abs(event.created_at - (sdk.fine_tuning.jobs.retrieve(job.id).finished_at or 0)) <= 2
    assert json.loads(delivery.body) == {
        "id": event.id,
        "object": "event",
        "type": "fine_tuning.job.succeeded",
        "created_at": event.created_at,
        "data": {"id": job.id},
    }

    # Tampered: one byte of the body changed.
    other_last = "y" if job.id.endswith("x") else "x"  # a changed byte, whatever the id ends with
    tampered = delivery.body.replace(job.id.encode(), (job.id[:-1] + other_last).encode())
    assert tampered != delivery.body
    with pytest.raises(openai.InvalidWebhookSignatureError):
        verifier.webhooks.unwrap(tampered, delivery.headers)
    # Old: the same body and id, correctly signed with the real secret, but 301 s ago.
    stale_ts = int(time.time()) - 301
    stale = {
        **delivery.headers,
        "webhook-timestamp": str(stale_ts),
        "webhook-signature": "v1,"
        + webhooks.sign(secret, msg_id=event.id, timestamp=stale_ts, body=delivery.body),
    }
    with pytest.raises(openai.InvalidWebhookSignatureError, match="too old"):
        verifier.webhooks.unwrap(delivery.body, stale)
    # Another secret.
    with pytest.raises(openai.InvalidWebhookSignatureError):
        openai.OpenAI(api_key="unused", webhook_secret=webhooks.new_secret()).webhooks.unwrap(
            delivery.body, delivery.headers
        )

    # The subscribe-to-everything endpoint got our events for the same job: running, then succeeded.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        types = [json.loads(r.body)["type"] for r in everything.received]
        if "fine_tuning.job.succeeded" in types:
            break
        time.sleep(0.1)
    assert types.index("fine_tuning.job.running") < types.index("fine_tuning.job.succeeded"), types
    if list(sdk.fine_tuning.jobs.checkpoints.list(job.id)):
        assert "fine_tuning.job.checkpoint.created" in types, types
    for request in everything.received:
        body = json.loads(request.body)
        assert body["data"]["id"] == job.id
        assert webhooks.verify(all_endpoint["signing_secret"], body=request.body, headers=request.headers)

    # The deliveries API shows the successful attempt.
    attempts = api.get(f"/webhook_endpoints/{endpoint.id}/deliveries").json()["data"]
    assert [(a["event_id"], a["status"], a["response_status_code"]) for a in attempts] == [
        (event.id, "succeeded", 200)
    ]
    assert attempts[0]["delivery_status"] == "delivered"
    api.close()


def test_endpoint_management_with_the_official_sdk(sdk: openai.OpenAI) -> None:
    with WebhookReceiver([202]) as receiver:
        created = sdk.webhooks.create(url=receiver.url, event_types=["fine_tuning.job.failed"], name="ops")
        assert created.object == "webhook_endpoint" and created.signing_secret_hint
        listed = {e.id: e for e in sdk.webhooks.list()}
        assert created.id in listed and "signing_secret" not in listed[created.id].model_dump()
        updated = sdk.webhooks.update(created.id, name="ops-2", event_types=["fine_tuning.job.cancelled"])
        assert updated.name == "ops-2" and updated.event_types == ["fine_tuning.job.cancelled"]
        assert sdk.webhooks.retrieve(created.id).name == "ops-2"
        rotated = sdk.webhooks.rotate_secret(created.id)
        assert rotated.signing_secret != created.signing_secret
        tested = sdk.webhooks.test(created.id, event_type="fine_tuning.job.cancelled")
        assert tested.status_code == 202 and tested.success
        # During the rotation overlap the sample is signed with both secrets.
        (sample,) = receiver.received
        for secret in (created.signing_secret, rotated.signing_secret):
            openai.OpenAI(api_key="x", webhook_secret=secret).webhooks.verify_signature(
                sample.body, sample.headers
            )
        assert "fine_tuning.job.succeeded" in sdk.webhooks.event_types.list().data
        deleted = sdk.webhooks.delete(created.id)
        assert deleted.deleted and deleted.object == "webhook_endpoint.deleted"
        with pytest.raises(openai.NotFoundError):
            sdk.webhooks.retrieve(created.id)
        with pytest.raises(openai.BadRequestError) as excinfo:
            sdk.webhooks.create(
                url="ftp://example.com/hook", event_types=["fine_tuning.job.failed"], name="x"
            )
        assert excinfo.value.body["param"] == "url"  # type: ignore[index]
