"""What every storage backend is: the `Storage` protocol, its errors, key rules and the helpers both backends
share.

Keys are `/`-separated paths such as `files/<file_id>` or `jobs/<job_id>/adapter/adapter_model.safetensors`.
Every write goes to a temporary name first and is published in one step, so a reader never sees half an
object.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

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


def check_key(key: str) -> str:
    """`key` itself if it is a valid key (relative, no empty, "." or ".." component), else ValueError."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid storage key: {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: "" (everything) or a valid key, maybe ending in "/". Returned without the "/"."""
    if not prefix:
        return ""
    return check_key(prefix.removesuffix("/"))


def upload_dir_to(storage: Storage, local_dir: Path, prefix: str) -> list[str]:
    """Every file under `local_dir` to `prefix/<relative path>`, one atomic write each; returns the keys.
    What both backends' `upload_dir` do."""
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


def download_dir_from(storage: Storage, prefix: str, local_dir: Path) -> list[Path]:
    """Every key under `prefix/` to `local_dir/<rest of the key>`, each file replaced in one step; returns
    the paths. What both backends' `download_dir` do."""
    prefix = prefix.rstrip("/") + "/" if prefix.rstrip("/") else ""
    paths = []
    for key in storage.list_keys(prefix):
        if not key.startswith(prefix):
            continue
        # keys listed from a shared bucket may come from other writers: never leave local_dir
        target = local_dir / check_key(key[len(prefix) :])
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as fh:
            for chunk in storage.iter_chunks(key):
                fh.write(chunk)
        os.replace(tmp, target)
        paths.append(target)
    return paths
