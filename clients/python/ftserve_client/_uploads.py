"""Streaming multipart uploads with progress: the file is read in chunks while it is sent, never whole.

A file given by path (or a seekable file object) is re-read from the start on a retry, so uploads retry
like any other request; a non-seekable stream is sent once.
"""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeAlias, cast

from ._constants import UPLOAD_CHUNK_BYTES

FileContent: TypeAlias = "str | os.PathLike[str] | bytes | IO[bytes]"
FileTypes: TypeAlias = "FileContent | tuple[str, FileContent]"
"""A path, bytes, a binary file object, or (filename, one of those)."""
ProgressCallback: TypeAlias = Callable[[int, "int | None"], None]
"""on_progress(bytes_sent, total_bytes or None when the size is unknown)."""


def _quote(value: str) -> str:
    # HTML5 form encoding for header parameters, as browsers and httpx do.
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


@dataclass
class MultipartUpload:
    fields: dict[str, str]
    filename: str
    source: str | os.PathLike[str] | bytes | IO[bytes]
    on_progress: ProgressCallback | None = None

    def __post_init__(self) -> None:
        self.boundary = secrets.token_hex(16)
        self._start = self._stream.tell() if self._seekable() else 0
        parts = [
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n{value}\r\n'
            for name, value in self.fields.items()
        ]
        parts.append(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{_quote(self.filename)}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        self.head = "".join(parts).encode()
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.size = self._size()

    @classmethod
    def from_file(
        cls, file: FileTypes, fields: dict[str, str], on_progress: ProgressCallback | None
    ) -> MultipartUpload:
        filename: str | None = None
        if isinstance(file, tuple):
            filename, file = file
        if isinstance(file, (str, os.PathLike)):
            path = Path(file)
            if not path.is_file():
                raise FileNotFoundError(f"No such file: {path}")
            filename = filename or path.name
        elif not isinstance(file, bytes):
            filename = filename or os.path.basename(str(getattr(file, "name", "") or "")) or None
        return cls(fields=fields, filename=filename or "upload.jsonl", source=file, on_progress=on_progress)

    @property
    def _stream(self) -> IO[bytes]:
        return cast(IO[bytes], self.source)

    def _seekable(self) -> bool:
        if isinstance(self.source, (str, bytes, os.PathLike)):
            return False
        seekable = getattr(self.source, "seekable", None)
        return bool(seekable and seekable())

    @property
    def retryable(self) -> bool:
        return isinstance(self.source, (str, os.PathLike, bytes)) or self._seekable()

    def _size(self) -> int | None:
        if isinstance(self.source, bytes):
            return len(self.source)
        if isinstance(self.source, (str, os.PathLike)):
            return Path(self.source).stat().st_size
        if self._seekable():
            end = self._stream.seek(0, io.SEEK_END)
            self._stream.seek(self._start)
            return end - self._start
        return None

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": self.content_type}
        if self.size is not None:
            headers["Content-Length"] = str(len(self.head) + self.size + len(self.tail))
        return headers

    def _chunks(self) -> Iterator[bytes]:
        if isinstance(self.source, bytes):
            view = memoryview(self.source)
            for offset in range(0, len(view), UPLOAD_CHUNK_BYTES):
                yield bytes(view[offset : offset + UPLOAD_CHUNK_BYTES])
            return
        if isinstance(self.source, (str, os.PathLike)):
            with open(self.source, "rb") as handle:
                while chunk := handle.read(UPLOAD_CHUNK_BYTES):
                    yield chunk
            return
        if self._seekable():
            self._stream.seek(self._start)
        while chunk := self._stream.read(UPLOAD_CHUNK_BYTES):
            yield chunk

    def iter_body(self) -> Iterator[bytes]:
        """One pass over the body; call again for a retry (the progress restarts from 0)."""
        yield self.head
        sent = 0
        if self.on_progress:
            self.on_progress(0, self.size)
        for chunk in self._chunks():
            sent += len(chunk)
            yield chunk
            if self.on_progress:
                self.on_progress(sent, self.size)
        yield self.tail

    async def aiter_body(self) -> AsyncIterator[bytes]:
        # Local file reads are fast and chunked; a thread per chunk would cost more than it saves.
        for chunk in self.iter_body():
            yield chunk
