"""One suite for every Storage backend: local disk and S3 (moto's real HTTP server through the minio SDK)."""

from __future__ import annotations

import hashlib
import io
import random
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio

from core.storage import LocalStorage, ObjectNotFound, ObjectWriter, Storage, make_storage
from core.storage.s3 import DEFAULT_PART_SIZE, Multipart, S3Storage, S3Writer
from tests.support.moto_server import ACCESS_KEY, REGION, SECRET_KEY, run_moto_server

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with run_moto_server() as endpoint:
        yield endpoint


def _s3(endpoint: str, url: str | None = None, **kwargs: object) -> S3Storage:
    url = url or f"s3://ftserve-test-{uuid.uuid4().hex[:12]}/some/prefix"
    return S3Storage.from_url(
        url,
        endpoint=endpoint,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        secure=False,
        region=REGION,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    return _s3(request.getfixturevalue("moto_endpoint"))


@pytest.fixture
def s3(moto_endpoint: str) -> S3Storage:
    return _s3(moto_endpoint)


def _kill(writer: ObjectWriter) -> None:
    """What kill -9 leaves of a writer: the kernel closes its files, and nothing commits or aborts."""
    if isinstance(writer, S3Writer):
        return  # S3 keeps the multipart upload and its parts; the process just stops sending
    writer._fh.close()  # type: ignore[attr-defined]


def _leftovers(storage: Storage, prefix: str) -> list[str]:
    """The invisible remains of killed writers under `prefix` (storage keys, without the URL prefix)."""
    if isinstance(storage, S3Storage):
        uploads = storage.client._list_multipart_uploads(storage.bucket).uploads
        names = [u.object_name.removeprefix(storage.prefix) for u in uploads]
    else:
        assert isinstance(storage, LocalStorage)
        names = [p.relative_to(storage.root).as_posix() for p in storage.root.rglob(".*.tmp-*")]
    return sorted(n for n in names if n.startswith(prefix))


def _blocks(total: int, block: int = MiB, seed: int = 0) -> Iterator[bytes]:
    rng = random.Random(seed)
    for start in range(0, total, block):
        yield rng.randbytes(min(block, total - start))


# ---------------------------------------------------------------- every backend


def test_is_a_storage(storage: Storage) -> None:
    assert isinstance(storage, Storage)


def test_round_trip(storage: Storage) -> None:
    storage.put_bytes("files/file-abc", b"hello\nworld\n")
    assert storage.exists("files/file-abc")
    assert storage.get_bytes("files/file-abc") == b"hello\nworld\n"
    assert storage.size("files/file-abc") == 12
    storage.put_bytes("files/file-abc", b"replaced")
    assert storage.get_bytes("files/file-abc") == b"replaced"
    storage.put_bytes("files/empty", b"")
    assert storage.get_bytes("files/empty") == b""
    assert storage.size("files/empty") == 0
    assert storage.exists("files/empty")


def test_writer_publishes_atomically_on_commit(storage: Storage) -> None:
    writer = storage.open_writer("jobs/j1/adapter/adapter_model.safetensors")
    # past one S3 part, so the multipart upload is already under way
    for block in _blocks(DEFAULT_PART_SIZE + MiB):
        writer.write(block)
    assert not storage.exists("jobs/j1/adapter/adapter_model.safetensors")
    assert storage.list_keys("") == []
    assert storage.list_keys("jobs/j1") == []
    writer.commit()
    assert storage.list_keys("jobs") == ["jobs/j1/adapter/adapter_model.safetensors"]
    assert storage.get_bytes("jobs/j1/adapter/adapter_model.safetensors") == b"".join(
        _blocks(DEFAULT_PART_SIZE + MiB)
    )


def test_writer_does_not_replace_old_version_until_commit(storage: Storage) -> None:
    storage.put_bytes("files/f", b"old")
    writer = storage.open_writer("files/f")
    writer.write(b"new")
    assert storage.get_bytes("files/f") == b"old"
    writer.commit()
    assert storage.get_bytes("files/f") == b"new"


@pytest.mark.parametrize("total", [100, DEFAULT_PART_SIZE + MiB], ids=["small", "multipart"])
def test_aborted_writer_leaves_nothing(storage: Storage, total: int) -> None:
    writer = storage.open_writer("jobs/j1/checkpoints/step-10/model.bin")
    for block in _blocks(total):
        writer.write(block)
    writer.abort()
    writer.abort()  # idempotent
    assert not storage.exists("jobs/j1/checkpoints/step-10/model.bin")
    assert storage.list_keys("") == []
    with pytest.raises(ObjectNotFound):
        storage.get_bytes("jobs/j1/checkpoints/step-10/model.bin")
    if isinstance(storage, LocalStorage):
        assert [p for p in storage.root.rglob("*") if p.is_file()] == []
    if isinstance(storage, S3Storage):  # the multipart upload itself is gone too
        uploads = storage.client._list_multipart_uploads(storage.bucket).uploads
        assert list(uploads) == []


def test_large_streamed_write_round_trips(storage: Storage) -> None:
    total = 40 * MiB
    writer = storage.open_writer("jobs/j2/results.bin")
    expected = hashlib.sha256()
    for block in _blocks(total, seed=2):
        expected.update(block)
        writer.write(block)
    writer.commit()
    assert storage.size("jobs/j2/results.bin") == total
    got = hashlib.sha256()
    for chunk in storage.iter_chunks("jobs/j2/results.bin"):
        got.update(chunk)
    assert got.hexdigest() == expected.hexdigest()
    if isinstance(storage, S3Storage):  # it really went up as 5 parts of 8 MiB
        stat = storage.client.stat_object(storage.bucket, storage.prefix + "jobs/j2/results.bin")
        assert (stat.etag or "").endswith("-5")


def test_iter_chunks_streams(storage: Storage) -> None:
    data = b"".join(_blocks(3 * MiB + 12345, seed=3))
    storage.put_bytes("files/big", data)
    chunks = list(storage.iter_chunks("files/big", chunk_size=MiB))
    assert b"".join(chunks) == data
    assert len(chunks) >= 4
    assert all(len(c) <= MiB for c in chunks)
    # stopping early releases the stream, and the backend keeps working
    for _ in range(20):
        it = storage.iter_chunks("files/big", chunk_size=64 * 1024)
        assert len(next(it)) <= 64 * 1024
        it.close()  # type: ignore[attr-defined]
    assert storage.get_bytes("files/big") == data


def test_list_delete_and_prefixes(storage: Storage) -> None:
    for key in ["jobs/a/x", "jobs/a/y/z", "jobs/ab/x", "files/f", "files/.hidden"]:
        storage.put_bytes(key, key.encode())
    everything = ["files/.hidden", "files/f", "jobs/a/x", "jobs/a/y/z", "jobs/ab/x"]
    assert storage.list_keys("") == everything
    assert storage.list_keys("jobs/a") == ["jobs/a/x", "jobs/a/y/z"]  # whole path components only
    assert storage.list_keys("jobs/a/") == ["jobs/a/x", "jobs/a/y/z"]
    assert storage.list_keys("jobs/a/y") == ["jobs/a/y/z"]
    assert storage.list_keys("files/f") == ["files/f"]
    assert storage.list_keys("files/f/") == []
    assert storage.list_keys("nothing") == []
    assert storage.list_keys("jobs/a/x/") == []

    storage.delete("files/f")
    storage.delete("files/f")  # deleting a missing key is not an error
    storage.delete("never/there")
    assert not storage.exists("files/f")

    assert storage.delete_prefix("jobs/a") == 2
    assert storage.list_keys("jobs") == ["jobs/ab/x"]
    assert storage.delete_prefix("jobs/a") == 0
    assert storage.get_bytes("jobs/ab/x") == b"jobs/ab/x"
    assert storage.delete_prefix("") == 2
    assert storage.list_keys("") == []


def test_delete_prefix_many(storage: Storage) -> None:
    for i in range(30):
        storage.put_bytes(f"jobs/j/checkpoints/step-{i}/f", b"x")
    assert storage.delete_prefix("jobs/j/checkpoints/") == 30
    assert storage.list_keys("jobs") == []


def test_upload_and_download_dir(storage: Storage, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = {
        "adapter_config.json": b'{"r": 16}',
        "adapter_model.safetensors": b"".join(_blocks(2 * MiB + 7, seed=4)),
        "sub/dir/notes.txt": b"nested",
        "empty": b"",
        ".gitattributes": b"dotfile",
    }
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    keys = storage.upload_dir(src, "jobs/j3/adapter/")
    assert sorted(keys) == sorted(f"jobs/j3/adapter/{rel}" for rel in files)
    assert storage.list_keys("jobs/j3/adapter") == sorted(keys)

    dst = tmp_path / "dst"
    paths = storage.download_dir("jobs/j3/adapter", dst)
    assert sorted(p.relative_to(dst).as_posix() for p in paths) == sorted(files)
    for rel, data in files.items():
        assert (dst / rel).read_bytes() == data
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == sorted(files)
    assert storage.download_dir("jobs/nothing", tmp_path / "none") == []


def test_missing_keys_raise_object_not_found(storage: Storage) -> None:
    storage.put_bytes("files/dir/inside", b"x")
    for key in ["files/missing", "files/dir"]:  # a "directory" is no object either
        with pytest.raises(ObjectNotFound):
            storage.get_bytes(key)
        with pytest.raises(ObjectNotFound):
            storage.iter_chunks(key)
        with pytest.raises(ObjectNotFound):
            storage.size(key)
        assert not storage.exists(key)
    with pytest.raises(KeyError):  # ObjectNotFound is a KeyError
        storage.get_bytes("files/missing")


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "", "a/./b", "a/..", "a/b/", "."])
def test_invalid_keys_raise_value_error(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError):
        storage.open_writer(key)
    with pytest.raises(ValueError):
        storage.put_bytes(key, b"x")
    with pytest.raises(ValueError):
        storage.get_bytes(key)
    with pytest.raises(ValueError):
        storage.iter_chunks(key)
    with pytest.raises(ValueError):
        storage.size(key)
    with pytest.raises(ValueError):
        storage.exists(key)
    with pytest.raises(ValueError):
        storage.delete(key)


@pytest.mark.parametrize("prefix", ["../x", "/", "/abs", "a//b", "a/../.."])
def test_invalid_prefixes_raise_value_error(storage: Storage, prefix: str) -> None:
    storage.put_bytes("a/b", b"keep")
    with pytest.raises(ValueError):
        storage.list_keys(prefix)
    with pytest.raises(ValueError):
        storage.delete_prefix(prefix)
    assert storage.get_bytes("a/b") == b"keep"


def test_committed_writer_rejects_more_writes(storage: Storage) -> None:
    writer = storage.open_writer("files/w")
    writer.write(b"x")
    writer.commit()
    with pytest.raises(ValueError):
        writer.write(b"y")
    assert storage.get_bytes("files/w") == b"x"


def test_sweep_temporaries_reclaims_what_a_killed_writer_left(storage: Storage) -> None:
    storage.put_bytes("files/file-done", b"published")
    killed = storage.open_writer("files/file-killed")
    elsewhere = storage.open_writer("jobs/j1/adapter/adapter_model.safetensors")
    for writer in (killed, elsewhere):
        for block in _blocks(DEFAULT_PART_SIZE + MiB):  # past one part: on S3 a part is already stored
            writer.write(block)
        _kill(writer)
    assert len(_leftovers(storage, "files/")) == 1 and len(_leftovers(storage, "jobs/")) == 1

    assert storage.sweep_temporaries("files/", older_than_s=3600) == 0  # touched just now: kept
    assert len(_leftovers(storage, "files/")) == 1
    time.sleep(0.05)
    assert storage.sweep_temporaries("files/", older_than_s=0) == 1
    assert _leftovers(storage, "files/") == []
    assert storage.sweep_temporaries("files/", older_than_s=0) == 0
    assert len(_leftovers(storage, "jobs/")) == 1  # another prefix is not swept
    assert storage.list_keys("") == ["files/file-done"]
    assert storage.get_bytes("files/file-done") == b"published"


# ---------------------------------------------------------------- S3 only


def test_s3_writer_memory_is_bounded(s3: S3Storage) -> None:
    writer = s3.open_writer("jobs/j4/big.bin")
    assert isinstance(writer, S3Writer)
    expected = hashlib.sha256()
    most_buffered = 0
    block = random.Random(5).randbytes(MiB)
    tracemalloc.start()
    try:
        for i in range(64):
            chunk = block[:8] + i.to_bytes(8, "big") + block[16:]
            expected.update(chunk)
            writer.write(chunk)
            most_buffered = max(most_buffered, writer.buffered)
        writer.commit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert most_buffered < s3.part_size
    assert peak < 40 * MiB, f"peak {peak / MiB:.1f} MiB while writing 64 MiB"
    assert s3.size("jobs/j4/big.bin") == 64 * MiB
    got = hashlib.sha256()
    for chunk in s3.iter_chunks("jobs/j4/big.bin"):
        got.update(chunk)
    assert got.hexdigest() == expected.hexdigest()


def test_s3_one_big_write_is_split_into_parts(s3: S3Storage) -> None:
    data = b"".join(_blocks(2 * s3.part_size + 3, seed=6))
    writer = s3.open_writer("files/one-write")
    assert isinstance(writer, S3Writer)
    writer.write(data)
    assert writer.buffered == 3 and writer.upload_id is not None
    writer.commit()
    assert s3.get_bytes("files/one-write") == data
    stat = s3.client.stat_object(s3.bucket, s3.prefix + "files/one-write")
    assert (stat.etag or "").endswith("-3")


def test_s3_keys_live_under_the_url_prefix(moto_endpoint: str) -> None:
    bucket = f"ftserve-test-{uuid.uuid4().hex[:12]}"
    store = _s3(moto_endpoint, f"s3://{bucket}/deploy/one/")
    store.put_bytes("files/f", b"x")
    raw = Minio(moto_endpoint, ACCESS_KEY, SECRET_KEY, secure=False, region=REGION)
    names = [o.object_name for o in raw.list_objects(bucket, recursive=True)]
    assert names == ["deploy/one/files/f"]
    raw.put_object(bucket, "elsewhere/g", io.BytesIO(b"y"), 1)
    assert store.list_keys("") == ["files/f"]

    root = _s3(moto_endpoint, f"s3://{bucket}")  # no prefix: the whole bucket
    assert root.list_keys("") == ["deploy/one/files/f", "elsewhere/g"]
    assert root.get_bytes("deploy/one/files/f") == b"x"


def test_s3_from_url_creates_bucket_and_reads_env(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    bucket = f"ftserve-test-{uuid.uuid4().hex[:12]}"
    store = S3Storage.from_url(f"s3://{bucket}", endpoint=f"http://{moto_endpoint}", region=REGION)
    assert store.client.bucket_exists(bucket)
    store.put_bytes("k", b"v")
    again = S3Storage.from_url(f"s3://{bucket}", endpoint=f"http://{moto_endpoint}", region=REGION)
    assert again.get_bytes("k") == b"v"  # an existing bucket is reused, not recreated

    via_make = make_storage(f"s3://{bucket}", endpoint=moto_endpoint, secure=False, region=REGION)
    assert isinstance(via_make, S3Storage) and via_make.get_bytes("k") == b"v"


def test_s3_rejects_bad_urls_and_part_sizes(moto_endpoint: str) -> None:
    for url in ["http://bucket", "s3://", "s3:///prefix", "s3://bucket/../x"]:
        with pytest.raises(ValueError):
            _s3(moto_endpoint, url)
    with pytest.raises(ValueError):
        _s3(moto_endpoint, part_size=MiB)


def _upload_ids(s3: S3Storage) -> set[str | None]:
    return {u.upload_id for u in s3.client._list_multipart_uploads(s3.bucket).uploads}


def _start_upload(s3: S3Storage, key: str) -> S3Writer:
    """A writer with one part already sent, so its multipart upload exists."""
    writer = s3.open_writer(key)
    assert isinstance(writer, S3Writer)
    writer.write(b"".join(_blocks(s3.part_size)))
    assert writer.upload_id is not None and writer.buffered == 0
    return writer


def test_s3_sweep_aborts_a_killed_writers_upload_and_keeps_the_rest(s3: S3Storage) -> None:
    committed = b"".join(_blocks(s3.part_size + MiB, seed=7))
    s3.put_bytes("files/file-done", committed)
    killed = _start_upload(s3, "files/file-killed")
    killed_id = killed.upload_id
    del killed  # the kill: neither commit nor abort ever runs
    other_ids = {
        _start_upload(s3, "jobs/j1/checkpoints/step-5/model.bin").upload_id,  # another prefix
        _start_upload(s3, "files-old/x").upload_id,  # shares the first letters of "files", not its directory
    }
    # moto reports every upload as initiated in 2010, so what decides here is the time of the newest part:
    # the killed writer's is 3.5 s old, the live writer's (below) is new. S3 times are whole seconds, so a
    # threshold of 3 s leaves 2 s of margin for the live one. Real S3 would also see its initiation as new.
    time.sleep(3.5)
    live = _start_upload(s3, "files/file-live")
    assert _upload_ids(s3) == {killed_id, live.upload_id, *other_ids}

    assert s3.sweep_temporaries("files/", older_than_s=3) == 1
    assert _upload_ids(s3) == {live.upload_id, *other_ids}
    assert s3.sweep_temporaries("files/", older_than_s=3) == 0

    live.write(b"tail")  # the live upload was not touched: it still completes
    live.commit()
    assert s3.get_bytes("files/file-live") == b"".join(_blocks(s3.part_size)) + b"tail"
    assert s3.get_bytes("files/file-done") == committed
    assert s3.list_keys("") == ["files/file-done", "files/file-live"]


def test_s3_sweep_judges_an_upload_without_parts_by_its_initiation(s3: S3Storage) -> None:
    # A writer killed between CreateMultipartUpload and its first part leaves an upload with no parts.
    Multipart(s3.client, s3.bucket, s3.prefix + "files/file-no-parts")
    [upload] = s3.client._list_multipart_uploads(s3.bucket).uploads
    assert upload.initiated_time is not None
    age = time.time() - upload.initiated_time.timestamp()
    assert s3.sweep_temporaries("files", older_than_s=age + 3600) == 0  # initiated later than that: kept
    time.sleep(1.1)  # S3 times are whole seconds
    assert s3.sweep_temporaries("files", older_than_s=1) == 1
    assert _upload_ids(s3) == set()


def test_s3_sweep_stays_inside_the_url_prefix(moto_endpoint: str) -> None:
    bucket = f"ftserve-test-{uuid.uuid4().hex[:12]}"
    ours = _s3(moto_endpoint, f"s3://{bucket}/deploy/one")
    theirs = _s3(moto_endpoint, f"s3://{bucket}/deploy/two")
    _start_upload(theirs, "files/file-x")
    time.sleep(0.05)
    assert ours.sweep_temporaries("", older_than_s=0) == 0
    assert len(_upload_ids(theirs)) == 1
    assert theirs.sweep_temporaries("", older_than_s=0) == 1
