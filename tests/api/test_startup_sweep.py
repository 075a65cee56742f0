"""The API reclaims, when it starts, the writes that a killed API or worker left in storage, on every backend."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import api.main
from api.main import create_app
from core.settings import Settings
from core.storage import LocalStorage, make_storage_from_settings
from core.storage.s3 import S3Storage, S3Writer
from tests.support.moto_server import run_moto_server, s3_settings_kwargs


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with run_moto_server() as endpoint:
        yield endpoint


def _upload_ids(storage: S3Storage) -> set[str | None]:
    return {u.upload_id for u in storage.client._list_multipart_uploads(storage.bucket).uploads}


def _start_upload(storage: S3Storage, key: str) -> str:
    writer = storage.open_writer(key)
    assert isinstance(writer, S3Writer)
    writer.write(os.urandom(storage.part_size))  # one part sent; then the process "dies"
    assert writer.upload_id is not None
    return writer.upload_id


def test_start_aborts_a_stale_s3_upload_and_keeps_a_live_one(
    tmp_path: Path, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", **s3_settings_kwargs(moto_endpoint, "ftserve-startup", "/ftserve")
    )
    storage = make_storage_from_settings(settings)
    assert isinstance(storage, S3Storage)
    stale = _start_upload(storage, "files/file-killed")
    stale_checkpoint = _start_upload(storage, "jobs/ftjob-killed/attempt-1/checkpoints/step-8/adapter.bin")
    time.sleep(5.5)
    live = _start_upload(storage, "files/file-uploading")  # another API replica, still streaming
    monkeypatch.setattr(api.main, "STALE_UPLOAD_S", 5.0)  # instead of an hour; 4 s of margin for the start

    with caplog.at_level(logging.INFO, logger="api.main"), TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
    assert _upload_ids(storage) == {live}
    assert stale not in _upload_ids(storage) and stale_checkpoint not in _upload_ids(storage)
    assert "swept 1 stale upload(s) under files/" in caplog.text
    assert "swept 1 stale upload(s) under jobs/" in caplog.text  # a worker killed mid-checkpoint


def test_start_deletes_a_stale_temporary_file_on_local_disk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    storage = make_storage_from_settings(settings)
    assert isinstance(storage, LocalStorage)
    storage.put_bytes("files/file-done", b"published")
    (storage.root / "files" / f".file-killed.tmp-{uuid.uuid4().hex}").write_bytes(b"half")
    young = storage.root / "files" / f".file-uploading.tmp-{uuid.uuid4().hex}"
    young.write_bytes(b"half")
    for path in (storage.root / "files").glob(".file-killed.tmp-*"):
        os.utime(path, (time.time() - 7200, time.time() - 7200))

    with caplog.at_level(logging.INFO, logger="api.main"), TestClient(create_app(settings)):
        pass
    assert sorted(p.name for p in (storage.root / "files").iterdir()) == sorted(["file-done", young.name])
    assert "swept 1 stale upload(s) under files/" in caplog.text
