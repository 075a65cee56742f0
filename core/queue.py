"""What the scheduler and the workers share through Redis: queue names, key prefixes, the worker registry
record, the `train` task payload, and arq's (de)serializers.

Redis holds only queues and liveness. Flushing it loses no job: the DB says what is queued, and the
scheduler enqueues again. arq pickles by default; we use JSON so that nothing executable travels through
Redis and any process (or person with `redis-cli`) can read a payload.

Keys:
    ftserve:worker:<worker_id>      arq queue (sorted set) of one worker (`train` and `export` tasks); arq adds
                                    its own arq:* keys
    ftserve:registry:<worker_id>    the worker's WorkerInfo as JSON, with a TTL: present = alive
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, Field

QUEUE_PREFIX = "ftserve:worker:"
REGISTRY_PREFIX = "ftserve:registry:"

TRAIN_TASK = "train"
Capability = Literal["cuda", "bf16", "unsloth", "bnb_4bit"]


def queue_name(worker_id: str) -> str:
    return f"{QUEUE_PREFIX}{worker_id}"


def registry_key(worker_id: str) -> str:
    return f"{REGISTRY_PREFIX}{worker_id}"


def arq_job_id(job_id: str, attempt: int) -> str:
    """arq drops a second enqueue with the same id, so re-enqueueing one attempt is harmless."""
    return f"{job_id}:{attempt}"


class Device(BaseModel):
    """One GPU, or the pseudo-device a CPU-only worker reports (its RAM budget)."""

    index: int
    name: str
    total_mb: int
    free_mb: int


class WorkerInfo(BaseModel):
    """A worker's registry entry, refreshed every heartbeat."""

    id: str
    gpus: list[Device] = Field(default_factory=list)
    capabilities: list[Capability] = Field(default_factory=list)
    running_jobs: list[str] = Field(default_factory=list)
    max_jobs: int = 1
    labels: dict[str, str] = Field(default_factory=dict)
    heartbeat_at: float = Field(default_factory=time.time)

    @property
    def queue(self) -> str:
        return queue_name(self.id)


class TrainTask(BaseModel):
    """The payload of arq's `train` task: train one attempt of one job."""

    job_id: str
    attempt: int

    @property
    def arq_job_id(self) -> str:
        return arq_job_id(self.job_id, self.attempt)


# Long: a fine-tune may run for many hours. Cancellation goes through the DB, not arq's timeout.
TRAIN_TIMEOUT_S = 7 * 24 * 3600

EXPORT_TASK = "export"
# Merging and checking a large model on a CPU takes a while; an export still running after this is failed.
EXPORT_TIMEOUT_S = 12 * 3600


class ExportTask(BaseModel):
    """The payload of arq's `export` task: make one attempt of one export (core.exports)."""

    export_id: str
    attempt: int

    @property
    def arq_job_id(self) -> str:
        return arq_job_id(self.export_id, self.attempt)


def _json_default(value: object) -> str:
    # arq stores a failed task's exception as its result; keep it readable rather than failing to store it.
    return repr(value)


def serialize(data: dict[str, Any]) -> bytes:
    return json.dumps(data, default=_json_default, separators=(",", ":")).encode()


def deserialize(raw: bytes) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("an arq record must be a JSON object")
    return value


# -- the worker registry: one JSON value per worker, with a TTL -------------------------------------------------
# Typed loosely (`Any`) so that both redis.asyncio.Redis and arq's ArqRedis (a subclass) fit.


async def publish_worker(redis: Any, info: WorkerInfo, *, ttl_s: float) -> None:
    await redis.set(registry_key(info.id), info.model_dump_json(), px=max(1, int(ttl_s * 1000)))


async def remove_worker(redis: Any, worker_id: str) -> None:
    await redis.delete(registry_key(worker_id))


async def live_workers(redis: Any) -> list[WorkerInfo]:
    """Every worker whose heartbeat key has not expired, sorted by id."""
    keys = [key async for key in redis.scan_iter(match=f"{REGISTRY_PREFIX}*", count=500)]
    if not keys:
        return []
    workers = []
    for raw in await redis.mget(keys):
        if raw is not None:  # expired between SCAN and MGET
            workers.append(WorkerInfo.model_validate_json(raw))
    return sorted(workers, key=lambda w: w.id)
