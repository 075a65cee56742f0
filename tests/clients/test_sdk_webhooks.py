"""`client.webhooks.verify/unwrap`: Standard Webhooks signatures, checked against the spec's published vector,
the official openai SDK's verifier (parity), and ftserve's own sender (core.webhooks)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import openai
import pytest

from core import webhooks as server_webhooks
from ftserve_client import Client, InvalidWebhookSignatureError
from ftserve_client.resources.webhooks import sign, verify_signature

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another secret, rotated in......").decode()
BODY = json.dumps(
    {
        "id": "evt_1",
        "object": "event",
        "type": "fine_tuning.job.succeeded",
        "created_at": 1,
        "data": {"id": "ftjob-1"},
    }
)


def headers(
    *, body: str = BODY, ts: int | None = None, secrets: tuple[str, ...] = (SECRET,)
) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    sigs = " ".join(sign(body, secret=s, webhook_id="msg_1", timestamp=ts) for s in secrets)
    return {"webhook-id": "msg_1", "webhook-timestamp": str(ts), "webhook-signature": sigs}


@pytest.fixture
def client() -> Client:
    return Client(api_key="k", base_url="http://127.0.0.1:1", webhook_secret=SECRET)


def test_the_standard_webhooks_published_vector() -> None:
    signature = sign(
        '{"test": 2432232314}',
        secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        webhook_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
        timestamp=1614265330,
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_unwrap_returns_the_event(client: Client) -> None:
    event = client.webhooks.unwrap(BODY.encode(), headers())
    assert event.type == "fine_tuning.job.succeeded" and event.data == {"id": "ftjob-1"}


def test_header_names_are_case_insensitive(client: Client) -> None:
    client.webhooks.verify(BODY, {k.title(): v for k, v in headers().items()})


def _vectors() -> dict[str, tuple[str | bytes, dict[str, str], str, bool]]:
    """(payload, headers, secret, valid) by name; built when the test runs, since they depend on the clock."""
    now = int(time.time())
    good = headers(ts=now)
    return {
        "valid": (BODY, good, SECRET, True),
        "valid bytes": (BODY.encode(), good, SECRET, True),
        "rotation: old and new signatures": (BODY, headers(secrets=(OTHER_SECRET, SECRET)), SECRET, True),
        "rotation: verified with the new secret": (
            BODY,
            headers(secrets=(OTHER_SECRET, SECRET)),
            OTHER_SECRET,
            True,
        ),
        "tampered body": (BODY.replace("ftjob-1", "ftjob-2"), good, SECRET, False),
        "wrong secret": (BODY, good, OTHER_SECRET, False),
        "4 minutes old": (BODY, headers(ts=now - 240), SECRET, True),
        "6 minutes old": (BODY, headers(ts=now - 360), SECRET, False),
        "6 minutes in the future": (BODY, headers(ts=now + 360), SECRET, False),
        "signature of another id": (BODY, {**good, "webhook-id": "msg_2"}, SECRET, False),
        "garbage signature": (BODY, {**good, "webhook-signature": "v1,AAAA"}, SECRET, False),
        "a raw (not whsec_) secret": (BODY, headers(secrets=("plain-secret",)), "plain-secret", True),
    }


@pytest.mark.parametrize("case", list(_vectors()))
def test_verification_agrees_with_the_openai_sdk(case: str, client: Client) -> None:
    payload, hdrs, secret, valid = _vectors()[case]
    official = openai.OpenAI(api_key="x", base_url="http://127.0.0.1:1", webhook_secret=secret)
    try:
        official.webhooks.verify_signature(payload, hdrs, secret=secret)
        openai_ok = True
    except openai.InvalidWebhookSignatureError:
        openai_ok = False
    try:
        client.webhooks.verify(payload, hdrs, secret=secret)
        ours_ok = True
    except InvalidWebhookSignatureError:
        ours_ok = False
    assert (ours_ok, openai_ok) == (valid, valid)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers_are_named(missing: str, client: Client) -> None:
    hdrs = {k: v for k, v in headers().items() if k != missing}
    with pytest.raises(InvalidWebhookSignatureError, match=missing):
        client.webhooks.verify(BODY, hdrs)


def test_bad_timestamp_and_missing_secret() -> None:
    with pytest.raises(InvalidWebhookSignatureError, match="timestamp"):
        verify_signature(BODY, {**headers(), "webhook-timestamp": "soon"}, secret=SECRET)
    with pytest.raises(ValueError, match="webhook secret"):
        Client(api_key="k", base_url="http://127.0.0.1:1").webhooks.verify(BODY, headers())


def test_the_tolerance_can_be_widened(client: Client) -> None:
    old = headers(ts=int(time.time()) - 3600)
    with pytest.raises(InvalidWebhookSignatureError, match="too old"):
        client.webhooks.verify(BODY, old)
    client.webhooks.verify(BODY, old, tolerance=7200)


def test_what_ftserve_sends_verifies(client: Client) -> None:
    """core.webhooks signs the deliveries (issue #6): the SDK must accept them, rotation included."""
    ts = int(time.time())
    sent: dict[str, Any] = dict(
        server_webhooks.webhook_headers([OTHER_SECRET, SECRET], msg_id="msg_9", timestamp=ts, body=BODY)
    )
    event = client.webhooks.unwrap(BODY, sent)
    assert event.id == "evt_1"
    with pytest.raises(InvalidWebhookSignatureError):
        client.webhooks.verify(BODY + " ", sent)
