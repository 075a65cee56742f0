"""Streaming multipart upload: bytes go to storage and through the JSONL validator as they arrive.

A .json upload holding a JSON array is stored as JSON Lines (element N on line N, as the validator converts it), so
the worker and the token counter only ever read JSON Lines; its `bytes` and SHA-256 are those of the upload.

Neither the request nor the file is ever held whole: the parser sees the body in ~1 MiB batches, which run
in a worker thread so validation never stalls the event loop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from core.errors import InvalidRequestError, PayloadTooLargeError
from core.storage import ObjectWriter, Storage
from core.training_data import StreamingValidator, ValidationReport

BATCH_BYTES = 1024 * 1024
MAX_FIELD_BYTES = 64 * 1024


@dataclass
class UploadResult:
    fields: dict[str, str]
    filename: str | None
    bytes: int
    sha256: str
    report: ValidationReport | None
    # The valid upload, still a temporary: the caller publishes it (`commit()`) or drops it (`abort()`, also
    # safe after a commit). None when validation failed: nothing is kept then.
    writer: ObjectWriter | None


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)


class _StreamingForm:
    """Callbacks for python-multipart's MultipartParser. One `file` part goes to storage; others are small."""

    def __init__(
        self,
        *,
        storage: Storage,
        key: str,
        validator: StreamingValidator,
        max_bytes: int,
        check_purpose: Callable[[str | None], None],
    ) -> None:
        self.storage = storage
        self.check_purpose = check_purpose
        self.key = key
        self.validator = validator
        self.max_bytes = max_bytes
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_bytes = 0
        self.sha = hashlib.sha256()
        self.writer: ObjectWriter | None = None
        self.file_seen = False
        self._part = _Part()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._field_value = bytearray()
        self._in_file = False
        self.complete = False

    # python-multipart callbacks -------------------------------------------------------------------------
    def on_part_begin(self) -> None:
        self._part = _Part()
        self._field_value.clear()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._part.headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._part.headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        filename = options.get(b"filename")
        self._part.name = name.decode("utf-8", "replace") if name is not None else None
        self._part.filename = filename.decode("utf-8", "replace") if filename is not None else None
        self._in_file = self._part.name == "file"
        if self._in_file:
            self.check_purpose(self.fields.get("purpose"))
            if self.file_seen:
                raise InvalidRequestError("Send exactly one 'file' part.", param="file")
            self.file_seen = True
            self.filename = clean_filename(self._part.filename)
            self.validator.set_filename(self._part.filename)  # a .json file may be a JSON array
            self.writer = self.storage.open_writer(self.key)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._in_file:
            self.file_bytes += len(chunk)
            if self.file_bytes > self.max_bytes:
                raise PayloadTooLargeError(
                    f"File is larger than the {self.max_bytes:,}-byte upload limit.", param="file"
                )
            self.sha.update(chunk)
            # What is stored: the chunk itself, or for a JSON array its elements as JSON lines, so everything
            # downstream reads JSON Lines.
            stored = self.validator.feed(chunk)
            assert self.writer is not None
            if stored:
                self.writer.write(stored)
        else:
            self._field_value += chunk
            if len(self._field_value) > MAX_FIELD_BYTES:
                raise InvalidRequestError(
                    f"Form field {self._part.name!r} is too large.", param=self._part.name
                )

    def on_part_end(self) -> None:
        if not self._in_file and self._part.name is not None:
            self.fields[self._part.name] = self._field_value.decode("utf-8", "replace")
        self._in_file = False

    def on_end(self) -> None:
        # Called only when the closing boundary arrives: without it the body was cut short.
        self.complete = True

    def callbacks(self) -> dict[str, object]:
        return {
            name: getattr(self, name)
            for name in (
                "on_part_begin",
                "on_header_field",
                "on_header_value",
                "on_header_end",
                "on_headers_finished",
                "on_part_data",
                "on_part_end",
                "on_end",
            )
        }


def clean_filename(name: str | None) -> str:
    """A display name only (storage keys are ours): the last path component, no control characters, short.
    Directory parts are dropped so that no client that saves a download under its name can be sent
    elsewhere ('../../x')."""
    cleaned = "".join(ch for ch in (name or "") if ch.isprintable()).strip()
    cleaned = cleaned.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return "upload.jsonl" if cleaned in ("", ".", "..") else cleaned[:255]


def check_purpose(purpose: str | None) -> None:
    """Only fine-tune uploads are accepted. `None` means the field has not arrived (yet)."""
    if purpose is not None and purpose != "fine-tune":
        raise InvalidRequestError(
            f"Invalid purpose {purpose!r}: this service accepts only purpose='fine-tune' uploads.",
            param="purpose",
            code="invalid_purpose",
        )


def _boundary(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "")
    mime, options = parse_options_header(content_type)
    if mime != b"multipart/form-data" or b"boundary" not in options:
        raise InvalidRequestError(
            "Uploads must be multipart/form-data with a 'file' part and a 'purpose' field.", param="file"
        )
    return options[b"boundary"]


async def receive_upload(
    *,
    request: Request,
    storage: Storage,
    key: str,
    max_bytes: int,
    max_line_bytes: int,
    min_examples: int,
    purpose_check: Callable[[str | None], None] = check_purpose,
) -> UploadResult:
    """Stream the request body into a temporary object for `key` while validating and hashing it. A complete,
    valid upload comes back unpublished in `result.writer`, for the caller to publish or drop; anything else
    leaves nothing behind. `purpose_check` sees the purpose field when the file part starts (None if it has
    not arrived yet)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MAX_FIELD_BYTES:
        raise PayloadTooLargeError(f"File is larger than the {max_bytes:,}-byte upload limit.", param="file")

    form = _StreamingForm(
        storage=storage,
        key=key,
        validator=StreamingValidator(max_line_bytes=max_line_bytes, min_examples=min_examples),
        max_bytes=max_bytes,
        check_purpose=purpose_check,
    )
    parser = MultipartParser(_boundary(request), form.callbacks())  # type: ignore[arg-type]
    batch = bytearray()
    try:
        async for chunk in request.stream():
            batch += chunk
            if len(batch) >= BATCH_BYTES:
                await run_in_threadpool(parser.write, bytes(batch))
                batch.clear()
        if batch:
            await run_in_threadpool(parser.write, bytes(batch))
        parser.finalize()
        if not form.file_seen:
            raise InvalidRequestError("Missing the 'file' part of the upload.", param="file")
        if not form.complete:
            raise InvalidRequestError(
                "The upload was cut short: the multipart body has no closing boundary.", param="file"
            )
        report = await run_in_threadpool(form.validator.finish)
        assert form.writer is not None
        if not report.ok:
            form.writer.abort()
    except BaseException as exc:
        if form.writer is not None:
            form.writer.abort()
        if isinstance(exc, FormParserError):
            raise InvalidRequestError(f"Malformed multipart body: {exc}", param="file") from exc
        raise
    return UploadResult(
        fields=form.fields,
        filename=form.filename,
        bytes=form.file_bytes,
        sha256=form.sha.hexdigest(),
        report=report,
        writer=form.writer if report.ok else None,
    )
