"""Objects as files on local disk: a write goes to a temporary file and is published with `os.replace`."""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from core.storage.base import (
    CHUNK_SIZE,
    ObjectNotFound,
    ObjectWriter,
    check_key,
    check_prefix,
    download_dir_from,
    upload_dir_to,
)

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
        return self.root / check_key(key)

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
        wanted = check_prefix(prefix)
        base = self.root / wanted
        if wanted and base.is_dir():
            shutil.rmtree(base, ignore_errors=True)
        return len(keys)

    def list_keys(self, prefix: str) -> list[str]:
        """Keys equal to `prefix` or under `prefix/` (whole path components), sorted.

        A prefix ending in "/" names a directory only.
        """
        wanted = check_prefix(prefix)
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
        return upload_dir_to(self, local_dir, prefix)

    def download_dir(self, prefix: str, local_dir: Path) -> list[Path]:
        return download_dir_from(self, prefix, local_dir)

    def sweep_temporaries(self, prefix: str, *, older_than_s: float) -> int:
        """Delete temporary files under `prefix` untouched for `older_than_s`: what a writer killed mid-write
        (kill -9, power loss) left behind. They were never visible; this only gives the disk back. A write
        still in progress touches its file on every chunk, so it is never this old."""
        wanted = check_prefix(prefix)
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
