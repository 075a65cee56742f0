"""S3/MinIO object storage through the `minio` SDK.

Writes stream: `open_writer()` buffers one part at a time and uploads it as a part of an S3 multipart upload,
so a writer holds at most about two parts in memory (the buffer and the copy being sent) whatever the object
size. The object appears under its key only when `commit()` completes the multipart upload, which S3 does
atomically; `abort()` aborts the upload and leaves nothing behind. Objects smaller than one part are sent
with a single PutObject on commit.

minio's public `put_object` only streams from a reader, which would need a thread between `write()` and the
upload, and it would leave an abandoned writer's thread blocked forever. The writer therefore drives the
multipart API directly: `Minio._create_multipart_upload`, `_upload_part`, `_complete_multipart_upload` and
`_abort_multipart_upload`. `sweep_temporaries()` also uses `_list_multipart_uploads` and `_list_parts` to find
the uploads of writers killed mid-write (kill -9, OOM, a lost node), which S3 keeps, and bills, until they
are aborted. These calls are private but have kept their signatures through minio 7.x; they are wrapped in
`Multipart` so that only one small class depends on them.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from minio import Minio
from minio.datatypes import Part, Upload
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from core.storage.base import (
    CHUNK_SIZE,
    ObjectNotFound,
    ObjectWriter,
    check_key,
    check_prefix,
    download_dir_from,
    upload_dir_to,
)

log = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 1024 * 1024
"""S3 refuses parts smaller than this (except the last one)."""
DEFAULT_PART_SIZE = 8 * 1024 * 1024
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound"})


def _is_missing(exc: S3Error) -> bool:
    return exc.code in _MISSING_CODES


class Multipart:
    """One S3 multipart upload, and the listing of a bucket's incomplete ones.

    The only place that uses minio's private multipart calls.
    """

    def __init__(self, client: Minio, bucket: str, name: str) -> None:
        self._client = client
        self._bucket = bucket
        self._name = name
        self._parts: list[Part] = []
        self.upload_id: str = client._create_multipart_upload(
            bucket, name, {"Content-Type": "application/octet-stream"}
        )

    def upload_part(self, data: bytes) -> None:
        number = len(self._parts) + 1
        etag = self._client._upload_part(self._bucket, self._name, data, None, self.upload_id, number)
        self._parts.append(Part(number, etag))

    def complete(self) -> None:
        self._client._complete_multipart_upload(self._bucket, self._name, self.upload_id, self._parts)

    def abort(self) -> None:
        self._client._abort_multipart_upload(self._bucket, self._name, self.upload_id)

    @staticmethod
    def incomplete(client: Minio, bucket: str, prefix: str) -> Iterator[Upload]:
        """Every incomplete multipart upload whose object name starts with `prefix`, page after page."""
        key_marker: str | None = None
        upload_id_marker: str | None = None
        while True:
            page = client._list_multipart_uploads(
                bucket, prefix=prefix, key_marker=key_marker, upload_id_marker=upload_id_marker
            )
            yield from page.uploads
            if not page.is_truncated or not page.uploads:
                return
            # The next page starts after the last upload listed, which is what NextKeyMarker and
            # NextUploadIdMarker name. Taken from the upload itself: minio 7.2 never fills
            # `next_upload_id_marker` (its parser sets a misspelt attribute), and a key marker alone
            # would skip the other uploads of that key.
            last = page.uploads[-1]
            markers = (last.object_name, last.upload_id)
            if markers == (key_marker, upload_id_marker):  # a server that does not move on
                return
            key_marker, upload_id_marker = markers

    @staticmethod
    def has_part_since(client: Minio, bucket: str, upload: Upload, since: datetime) -> bool:
        """Whether any part of `upload` was sent at or after `since` (a part without a time counts)."""
        marker: str | None = None
        while True:
            page = client._list_parts(
                bucket, upload.object_name, upload.upload_id or "", part_number_marker=marker
            )
            if any(part.last_modified is None or part.last_modified >= since for part in page.parts):
                return True
            if (
                not page.is_truncated
                or not page.next_part_number_marker
                or page.next_part_number_marker == marker
            ):
                return False
            marker = page.next_part_number_marker

    @staticmethod
    def abort_upload(client: Minio, bucket: str, upload: Upload) -> bool:
        """Abort `upload`; False if it was completed or aborted meanwhile."""
        try:
            client._abort_multipart_upload(bucket, upload.object_name, upload.upload_id or "")
        except S3Error as exc:
            if exc.code == "NoSuchUpload":
                return False
            raise
        return True


class S3Writer:
    """A streaming write to one S3 object; see the module docstring."""

    def __init__(self, client: Minio, bucket: str, name: str, part_size: int) -> None:
        self._client = client
        self._bucket = bucket
        self._name = name
        self._part_size = part_size
        self._buf = bytearray()
        self._upload: Multipart | None = None
        self._closed = False
        self.bytes_written = 0

    @property
    def buffered(self) -> int:
        """Bytes held in memory waiting to be sent (never more than one part)."""
        return len(self._buf)

    @property
    def upload_id(self) -> str | None:
        """The multipart upload in progress, once the first part has been sent."""
        return self._upload.upload_id if self._upload else None

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ValueError("write to a committed or aborted writer")
        view = memoryview(data).cast("B")
        self.bytes_written += len(view)
        while len(view):
            room = self._part_size - len(self._buf)
            self._buf += view[:room]
            view = view[room:]
            if len(self._buf) >= self._part_size:
                self._send_part()

    def _send_part(self) -> None:
        payload = bytes(self._buf)
        self._buf.clear()
        if self._upload is None:
            self._upload = Multipart(self._client, self._bucket, self._name)
        self._upload.upload_part(payload)

    def commit(self) -> None:
        if self._closed:
            raise ValueError("commit of a committed or aborted writer")
        try:
            if self._upload is None:
                data = bytes(self._buf)
                self._buf.clear()
                self._client.put_object(self._bucket, self._name, io.BytesIO(data), len(data))
            else:
                if self._buf:
                    self._send_part()
                self._upload.complete()
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._buf = bytearray()
        if self._upload is not None:
            try:
                self._upload.abort()
            except Exception:  # an orphaned multipart upload is invisible; don't mask the caller's error
                log.warning(
                    "could not abort multipart upload of %s/%s", self._bucket, self._name, exc_info=True
                )


class S3Storage:
    """Objects in one bucket, under an optional key prefix (`s3://bucket/prefix`)."""

    def __init__(
        self, client: Minio, bucket: str, prefix: str = "", *, part_size: int = DEFAULT_PART_SIZE
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        self.client = client
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.prefix = f"{check_key(prefix)}/" if prefix else ""
        self.part_size = part_size

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        endpoint: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        secure: bool | None = None,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        create_bucket: bool = True,
    ) -> S3Storage:
        """`s3://bucket[/prefix]`. The endpoint is `host:port` or a URL whose scheme decides `secure`.

        Missing values come from the environment: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (else AWS S3),
        AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION.
        The bucket is created when missing.
        """
        parsed = urlsplit(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an s3://bucket[/prefix] URL: {url!r}")
        endpoint = (
            endpoint
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or "s3.amazonaws.com"
        )
        if "://" in endpoint:
            ep = urlsplit(endpoint)
            if ep.scheme not in ("http", "https"):
                raise ValueError(f"S3 endpoint must be http(s)://host[:port] or host[:port]: {endpoint!r}")
            secure = ep.scheme == "https"  # the URL's own scheme wins over the flag
            endpoint = ep.netloc
        client = Minio(
            endpoint,
            access_key=access_key or os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY"),
            session_token=os.environ.get("AWS_SESSION_TOKEN") if access_key is None else None,
            secure=True if secure is None else secure,
            region=region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        )
        storage = cls(client, parsed.netloc, parsed.path, part_size=part_size)
        if create_bucket:
            storage.ensure_bucket()
        return storage

    def ensure_bucket(self) -> None:
        if self.client.bucket_exists(self.bucket):
            return
        try:
            self.client.make_bucket(self.bucket)
        except S3Error as exc:  # created meanwhile by another process
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def open_writer(self, key: str) -> ObjectWriter:
        return S3Writer(self.client, self.bucket, self._name(key), self.part_size)

    def put_bytes(self, key: str, data: bytes) -> None:
        writer = self.open_writer(key)
        try:
            writer.write(data)
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def get_bytes(self, key: str) -> bytes:
        name = self._name(key)
        try:
            response = self.client.get_object(self.bucket, name)
        except S3Error as exc:
            if _is_missing(exc):
                raise ObjectNotFound(key) from None
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        name = self._name(key)
        try:  # open eagerly, so a missing key raises here like on local disk
            response = self.client.get_object(self.bucket, name)
        except S3Error as exc:
            if _is_missing(exc):
                raise ObjectNotFound(key) from None
            raise

        def _gen() -> Iterator[bytes]:
            try:
                yield from response.stream(chunk_size)
            finally:
                response.close()
                response.release_conn()

        return _gen()

    def size(self, key: str) -> int:
        name = self._name(key)
        try:
            stat = self.client.stat_object(self.bucket, name)
        except S3Error as exc:
            if _is_missing(exc):
                raise ObjectNotFound(key) from None
            raise
        return stat.size or 0

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, self._name(key))

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list_keys(prefix)
        for start in range(0, len(keys), 1000):
            batch = [DeleteObject(self.prefix + key) for key in keys[start : start + 1000]]
            errors = list(self.client.remove_objects(self.bucket, batch))
            if errors:
                raise OSError(f"could not delete {len(errors)} objects under {prefix!r}: {errors[0]}")
        return len(keys)

    def list_keys(self, prefix: str) -> list[str]:
        """Keys equal to `prefix` or under `prefix/` (path components, as on local disk), sorted."""
        wanted = check_prefix(prefix)
        objects: Iterator[Any] = self.client.list_objects(
            self.bucket, prefix=self.prefix + wanted, recursive=True
        )
        keys = []
        for obj in objects:
            name: str | None = obj.object_name
            if not name or getattr(obj, "is_dir", False):
                continue
            key = name[len(self.prefix) :]
            if not wanted or key.startswith(wanted + "/") or (key == wanted and not prefix.endswith("/")):
                keys.append(key)
        return sorted(keys)

    def upload_dir(self, local_dir: Path, prefix: str) -> list[str]:
        return upload_dir_to(self, local_dir, prefix)

    def download_dir(self, prefix: str, local_dir: Path) -> list[Path]:
        return download_dir_from(self, prefix, local_dir)

    def sweep_temporaries(self, prefix: str, *, older_than_s: float) -> int:
        """Abort the incomplete multipart uploads under `prefix` that nothing has touched for `older_than_s`
        (initiated that long ago, and no part sent since): what a writer killed mid-write (kill -9, OOM, a
        lost node) left behind. They were never visible as objects, but S3 keeps and bills their parts until
        they are aborted. A write in progress sends a part every `part_size` bytes, so only one slower than
        `part_size` per `older_than_s` (8 MiB an hour by default) could look this idle. An upload whose
        initiation time the server does not report is kept."""
        wanted = check_prefix(prefix)
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        swept = 0
        for upload in Multipart.incomplete(self.client, self.bucket, self.prefix + wanted):
            key = upload.object_name[len(self.prefix) :]
            if wanted and key != wanted and not key.startswith(wanted + "/"):
                continue  # "files" must not reach "filesystem/..."
            if upload.upload_id is None or upload.initiated_time is None or upload.initiated_time >= cutoff:
                continue
            if Multipart.has_part_since(self.client, self.bucket, upload, cutoff):
                continue
            if Multipart.abort_upload(self.client, self.bucket, upload):
                log.info("aborted stale multipart upload of %s/%s", self.bucket, upload.object_name)
                swept += 1
        return swept
