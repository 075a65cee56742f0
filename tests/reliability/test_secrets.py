"""Secrets: API keys hashed, shown once and revocable; webhook secrets never returned after creation or
rotation; and no secret in the logs of a real API process run at DEBUG with every kind of secret set."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from core.db import make_engine, migrate, session_scope
from core.keys import create_key, revoke_key
from core.redis_embedded import free_port
from core.settings import Settings
from tests.support.datasets import chat_jsonl
from tests.support.moto_server import run_moto_server
from tests.support.postgres import postgres_reachable
from tests.support.tenants import auth


def _dump(settings: Settings) -> str:
    """Every row of every table, as text: what a leaked database backup would show."""
    engine = make_engine(settings.resolved_database_url)
    out = []
    with engine.connect() as conn:
        tables = [r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))]
        for table in tables:
            out += [repr(tuple(row)) for row in conn.execute(text(f'SELECT * FROM "{table}"'))]
    engine.dispose()
    return "\n".join(out)


def test_keys_are_hashed_shown_once_and_revocable_through_the_api(
    client: TestClient, settings: Settings
) -> None:
    url = settings.resolved_database_url
    migrate(url)
    engine = make_engine(url)
    with session_scope(engine) as session:
        row, key = create_key(session, org_name="secrets-org")
        key_id = row.id
    headers = auth(key)
    assert client.get("/v1/files", headers=headers).status_code == 200
    endpoint = client.post(
        "/v1/webhook_endpoints", headers=headers, json={"url": "https://1.1.1.1/hook"}
    ).json()
    signing_secret = endpoint["signing_secret"]
    assert signing_secret.startswith("whsec_")

    # Webhook secrets: only the create and rotate answers carry one.
    rotated = client.post(
        f"/v1/webhook_endpoints/{endpoint['id']}/rotate_secret", headers=headers, json={}
    ).json()["signing_secret"]
    answers = [
        client.get(f"/v1/webhook_endpoints/{endpoint['id']}", headers=headers).text,
        client.get("/v1/webhook_endpoints", headers=headers).text,
        client.patch(f"/v1/webhook_endpoints/{endpoint['id']}", headers=headers, json={"name": "n"}).text,
        client.post(f"/v1/webhook_endpoints/{endpoint['id']}", headers=headers, json={"name": "m"}).text,
        client.get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries", headers=headers).text,
    ]
    for answer in answers:
        assert 'signing_secret"' not in answer and signing_secret not in answer and rotated not in answer
        assert signing_secret[6:] not in answer and rotated[6:] not in answer

    # The database holds neither the key nor a webhook secret in the clear.
    dump = _dump(settings)
    for secret in (key, key[5:], signing_secret[6:], rotated[6:]):
        assert secret not in dump

    with session_scope(engine) as session:
        revoke_key(session, key_id=key_id)
    engine.dispose()
    revoked = client.get("/v1/files", headers=headers)
    # Inference keeps a 1 s authentication cache; the other routes see the revocation at once.
    assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "invalid_api_key"


def test_key_is_printed_once_by_the_cli(tmp_path: Path) -> None:
    env = dict(os.environ, FTSERVE_DATA_DIR=str(tmp_path / "data"))
    created = subprocess.run(
        [sys.executable, "-m", "cli.main", "keys", "create", "--org", "cli-org"],
        env=env, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("ftsk-") and created.stdout.count(key) == 1 and key not in created.stderr
    # What the server keeps to show later is a 9-character prefix, never enough to use.
    settings = Settings(data_dir=tmp_path / "data")
    assert key not in _dump(settings) and key[:9] in _dump(settings) and key[9:] not in _dump(settings)


def test_no_secret_in_the_logs_of_a_real_api_process(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """`ftserve api` at DEBUG with a database password, an S3 secret, the webhook encryption key and the
    agent token in its environment, then used with a real key (and a wrong and a revoked one), a webhook
    endpoint whose secret is created and rotated, an upload to S3 and an inference call: its whole log
    output holds none of them."""
    db_password = "dbpw-" + secrets.token_hex(12)
    s3_secret = "s3secret-" + secrets.token_hex(12)
    encryption_key = "whkey-" + secrets.token_hex(16)
    agent_token = "agent-" + secrets.token_hex(12)
    database_url = None
    if postgres_reachable() is None:
        # Trust auth ignores the password, but it is in the URL every connection is made with.
        database_url = request.getfixturevalue("postgres_url").replace(
            "postgres@", f"postgres:{db_password}@"
        )
    port = free_port()
    with run_moto_server() as s3_endpoint:
        env = dict(
            os.environ,
            FTSERVE_DATA_DIR=str(tmp_path / "data"),
            FTSERVE_LOG_LEVEL="debug",
            FTSERVE_STORAGE_URL="s3://ftserve-secrets",
            FTSERVE_S3_ENDPOINT=s3_endpoint,
            FTSERVE_S3_ACCESS_KEY="testing",
            FTSERVE_S3_SECRET_KEY=s3_secret,
            FTSERVE_S3_SECURE="false",
            FTSERVE_WEBHOOK_SECRET_KEY=encryption_key,
            FTSERVE_AGENT_TOKEN=agent_token,
            FTSERVE_WEBHOOK_ALLOW_PRIVATE="true",
            FTSERVE_INFERENCE_REPLICAS='[{"base_model": "demo-tiny", "url": "http://127.0.0.1:9"}]',
        )
        if database_url:
            env["FTSERVE_DATABASE_URL"] = database_url
        settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
        migrate(settings.resolved_database_url)
        engine = make_engine(settings.resolved_database_url)
        with session_scope(engine) as session:
            _row, key = create_key(session, org_name="logs-org")
            revoked_row, revoked_key = create_key(session, org_name="logs-org")
            revoke_key(session, key_id=revoked_row.id)
        engine.dispose()

        log_path = tmp_path / "api.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "api", "--port", str(port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            try:
                base = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.2)
                with httpx.Client(base_url=base, headers=auth(key), timeout=30) as http:
                    upload = http.post(
                        "/v1/files",
                        data={"purpose": "fine-tune"},
                        files={"file": ("t.jsonl", chat_jsonl(12))},
                    )
                    assert upload.status_code == 200, upload.text
                    assert http.get(f"/v1/files/{upload.json()['id']}/content").content == chat_jsonl(12)
                    endpoint = http.post("/v1/webhook_endpoints", json={"url": "http://127.0.0.1:9/h"}).json()
                    rotated = http.post(
                        f"/v1/webhook_endpoints/{endpoint['id']}/rotate_secret", json={}
                    ).json()
                    http.post(
                        "/v1/chat/completions",
                        json={"model": "demo-tiny", "messages": [{"role": "user", "content": "hi"}]},
                    )
                    http.get("/v1/files", headers=auth(key[:-1] + ("x" if key[-1] != "x" else "y")))
                    http.get("/v1/files", headers=auth(revoked_key))
                    http.post("/v1/chat/completions", headers=auth(revoked_key), json={"model": "x"})
                    http.get(
                        "/v1/files", params={"api_key": key}
                    )  # a key in the wrong place is still a secret
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
    logs = log_path.read_text(errors="replace")
    assert "DEBUG" in logs or "debug" in logs.lower(), "the process did not log at DEBUG"
    assert "GET /v1/files" in logs, logs[-2000:]
    leaked = {
        name: secret
        for name, secret in {
            "api key": key,
            "api key body": key[5:],
            "revoked key": revoked_key,
            "webhook secret": endpoint["signing_secret"],
            "rotated webhook secret": rotated["signing_secret"],
            "s3 secret": s3_secret,
            "webhook encryption key": encryption_key,
            "agent token": agent_token,
            "database password": db_password,
        }.items()
        if secret in logs
    }
    assert not leaked, f"secrets in the API's log: {sorted(leaked)}"
