"""Object storage: local disk by default, S3/MinIO through the `minio` SDK.

- `base`: the `Storage` protocol every backend implements, `ObjectNotFound`, the key rules.
- `local`: `LocalStorage`, objects as files (`os.replace` publishes a write).
- `s3`: `S3Storage`, objects in a bucket (CompleteMultipartUpload publishes a write). Imported only when an
  `s3://` URL asks for it.

Keys are `/`-separated paths such as `files/<file_id>` or `jobs/<job_id>/adapter/adapter_model.safetensors`.
Every write goes to a temporary name first and is published in one step, so a reader never sees half an
object. `make_storage_from_settings` builds the one every process uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from core.storage.base import CHUNK_SIZE, ObjectNotFound, ObjectWriter, Storage
from core.storage.local import LocalStorage

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = [
    "CHUNK_SIZE",
    "LocalStorage",
    "ObjectNotFound",
    "ObjectWriter",
    "Storage",
    "make_storage",
    "make_storage_from_settings",
]


def make_storage(url: str, **s3_options: object) -> Storage:
    """`file:///abs/path` or a bare path gives LocalStorage; `s3://bucket[/prefix]` gives S3Storage."""
    if url.startswith("s3://"):
        from core.storage.s3 import S3Storage

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
