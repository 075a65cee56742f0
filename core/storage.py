"""Object storage: local disk by default, S3/MinIO through the `minio` SDK.

Keys are `/`-separated paths such as `files/<file_id>` or `jobs/<job_id>/adapter/adapter_model.safetensors`.
Every write goes to a temporary name first and is published in one step, so a reader never sees half an
object: `os.replace` on disk, CompleteMultipartUpload on S3.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from core.settings import Settings

CHUNK_SIZE = 1024 * 1024


class ObjectNotFound(KeyError):
    """The key does not exist."""


@runtime_checkable
class ObjectWriter(Protocol):
    """A write in progress. Nothing is visible under the key until `commit()`."""

    def write(self, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


@runtime_checkable
class Storage(Protocol):
    def open_writer(self, key: str) -> ObjectWriter: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]: ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def upload_dir(self, local_dir: Path, prefix: str) -> list[str]: ...
    def download_dir(self, prefix: str, local_dir: Path) -> list[Path]: ...
    def sweep_temporaries(self, prefix: str, *, older_than_s: float) -> int:
        """Reclaim what writers killed mid-write left under `prefix` (temporary files on disk, incomplete
        multipart uploads on S3) untouched for `older_than_s`; returns how many. Never visible as keys."""
        ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid storage key: {key!r}")
    return key


def _check_prefix(prefix: str) -> str:
    """A listing prefix: "" (everything) or a valid key, maybe ending in "/". Returned without the "/"."""
    if not prefix:
        return ""
    return _check_key(prefix.removesuffix("/"))


# `_LocalWriter`'s temporary names. Only these are hidden from listings: other dotfiles are ordinary keys.
_TMP_NAME = re.compile(r"\..+\.tmp-[0-9a-f]{32}")


class _LocalWriter:
    def __init__(self, final: Path) -> None:
        self._final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex}"
        self._fh = open(self._tmp, "wb")  # closed in commit/abort

    def write(self, data: bytes) -> None:
        self._fh.write(data)

    def commit(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self._final)

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self._tmp.unlink(missing_ok=True)


class LocalStorage:
    """Objects as files under `root`. Temporary files (`.<name>.tmp-<hex>`) are never listed."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def open_writer(self, key: str) -> ObjectWriter:
        return _LocalWriter(self._path(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        writer = self.open_writer(key)
        try:
            writer.write(data)
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(key) from None

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        try:
            fh = open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(key) from None

        def _gen() -> Iterator[bytes]:
            with fh:
                while chunk := fh.read(chunk_size):
                    yield chunk

        return _gen()

    def size(self, key: str) -> int:
        path = self._path(key)
        try:
            if path.is_file():
                return path.stat().st_size
        except FileNotFoundError:
            pass
        raise ObjectNotFound(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list_keys(prefix)
        for key in keys:
            self.delete(key)
        wanted = _check_prefix(prefix)
        base = self.root / wanted
        if wanted and base.is_dir():
            shutil.rmtree(base, ignore_errors=True)
        return len(keys)

    def list_keys(self, prefix: str) -> list[str]:
        """Keys equal to `prefix` or under `prefix/` (whole path components), sorted.

        A prefix ending in "/" names a directory only.
        """
        wanted = _check_prefix(prefix)
        base = self.root / wanted if wanted else self.root
        if base.is_file():
            return [] if prefix.endswith("/") or _TMP_NAME.fullmatch(base.name) else [wanted]
        if not base.is_dir():
            return []
        keys = []
        for path in base.rglob("*"):
            if path.is_file() and not _TMP_NAME.fullmatch(path.name):
                keys.append(path.relative_to(self.root).as_posix())
        return sorted(keys)

    def upload_dir(self, local_dir: Path, prefix: str) -> list[str]:
        return _upload_dir(self, local_dir, prefix)

    def download_dir(self, prefix: str, local_dir: Path) -> list[Path]:
        return _download_dir(self, prefix, local_dir)

    def sweep_temporaries(self, prefix: str, *, older_than_s: float) -> int:
        """Delete temporary files under `prefix` untouched for `older_than_s`: what a writer killed mid-write
        (kill -9, power loss) left behind. They were never visible; this only gives the disk back. A write
        still in progress touches its file on every chunk, so it is never this old."""
        wanted = _check_prefix(prefix)
        base = self.root / wanted if wanted else self.root
        cutoff = time.time() - older_than_s
        swept = 0
        for path in base.rglob(".*.tmp-*") if base.is_dir() else []:
            try:
                if _TMP_NAME.fullmatch(path.name) and path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    swept += 1
            except FileNotFoundError:  # committed or aborted meanwhile
                continue
        return swept


def _upload_dir(storage: Storage, local_dir: Path, prefix: str) -> list[str]:
    keys = []
    for path in sorted(local_dir.rglob("*")):
        if path.is_file():
            rel = path.relative_to(local_dir).as_posix()
            key = f"{prefix.rstrip('/')}/{rel}" if prefix.rstrip("/") else rel
            writer = storage.open_writer(key)
            try:
                with open(path, "rb") as fh:
                    while chunk := fh.read(CHUNK_SIZE):
                        writer.write(chunk)
                writer.commit()
            except BaseException:
                writer.abort()
                raise
            keys.append(key)
    return keys


def _download_dir(storage: Storage, prefix: str, local_dir: Path) -> list[Path]:
    prefix = prefix.rstrip("/") + "/" if prefix.rstrip("/") else ""
    paths = []
    for key in storage.list_keys(prefix):
        if not key.startswith(prefix):
            continue
        # keys listed from a shared bucket may come from other writers: never leave local_dir
        target = local_dir / _check_key(key[len(prefix) :])
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as fh:
            for chunk in storage.iter_chunks(key):
                fh.write(chunk)
        os.replace(tmp, target)
        paths.append(target)
    return paths


def make_storage(url: str, **s3_options: object) -> Storage:
    """`file:///abs/path` or a bare path gives LocalStorage; `s3://bucket[/prefix]` gives S3Storage."""
    if url.startswith("s3://"):
        from core.s3_storage import S3Storage

        return S3Storage.from_url(url, **s3_options)  # type: ignore[arg-type]
    return LocalStorage(Path(url.removeprefix("file://")))


def make_storage_from_settings(settings: Settings) -> Storage:
    """The storage every process uses, built from FTSERVE_STORAGE_URL and the S3 options."""
    return make_storage(
        settings.resolved_storage_url,
        endpoint=settings.s3_endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        secure=settings.s3_secure,
        region=settings.s3_region,
    )
