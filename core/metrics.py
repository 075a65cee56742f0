"""Every Prometheus series ftserve exposes, in the default registry (docs/observability.md lists them).

Each process serves the series it updates: the API on its own port at /metrics, the scheduler and the worker
on FTSERVE_HEALTH_PORT (core.observability). A series another process owns shows up with no samples.
Labels stay bounded: route templates, statuses, worker ids and GPU indexes, never job ids or raw paths.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# `*_created` timestamps double the series of every counter and histogram and say little here.
disable_created_metrics()  # type: ignore[no-untyped-call]

# -- API ---------------------------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "ftserve_http_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "ftserve_http_request_duration_seconds",
    "Time from a request's arrival until its response has been sent in full (streams included).",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
UNMATCHED_ROUTE = "unmatched"  # the route label of requests no route matched (404s on unknown paths)

# -- adapters (API lazy loads, scheduler hot loads: core.inference.loader.AdapterLoader) ---------------------

ADAPTER_LOADS = Counter(
    "ftserve_adapter_loads_total",
    "Adapters loaded onto a vLLM replica: hot (the scheduler, when a model is ready) or lazy (the API, on "
    "a request for an adapter the replica does not hold).",
    ["trigger"],
)
ADAPTER_EVICTIONS = Counter(
    "ftserve_adapter_evictions_total",
    "Adapters unloaded from a full replica to make room (least recently used).",
)
ADAPTER_LOAD_SECONDS = Histogram(
    "ftserve_adapter_load_seconds",
    "One adapter load: copy or sync to the replica's host, evictions, load_lora_adapter and its check.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)

# -- scheduler ---------------------------------------------------------------------------------------------

QUEUE_DEPTH = Gauge("ftserve_queue_depth", "Jobs in status queued (from the DB).")
JOBS = Gauge("ftserve_jobs", "Jobs by status (from the DB).", ["status"])
PLACEMENT_LATENCY = Histogram(
    "ftserve_placement_latency_seconds",
    "From a job entering the queue to its placement on a worker.",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
)
GPU_MEMORY_TOTAL = Gauge(
    "ftserve_gpu_memory_total_mib",
    "Memory of each live worker's device, as its heartbeat reports it.",
    ["worker", "gpu"],
)
GPU_MEMORY_FREE = Gauge(
    "ftserve_gpu_memory_free_mib", "Free memory of each live worker's device, as its heartbeat reports it.",
    ["worker", "gpu"],
)  # fmt: skip
VRAM_ALLOCATED = Gauge(
    "ftserve_vram_allocated_mib",
    "Memory the scheduler has reserved on each device for the jobs placed there (their estimates).",
    ["worker", "gpu"],
)
WEBHOOK_DELIVERY_LAG = Histogram(
    "ftserve_webhook_delivery_lag_seconds",
    "From a webhook event's creation to its successful delivery (retries included).",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400, 259200),
)
WEBHOOK_OLDEST_PENDING = Gauge(
    "ftserve_webhook_oldest_pending_seconds", "Age of the oldest webhook delivery still pending (0: none)."
)

# -- worker ------------------------------------------------------------------------------------------------

TRAINED_TOKENS = Counter(
    "ftserve_trained_tokens_total",
    "Loss-bearing tokens trained on by this worker's runners (the same count as a job's trained_tokens).",
    ["worker"],
)
TRAINING_TOKENS_PER_SECOND = Gauge(
    "ftserve_training_tokens_per_second",
    "Training throughput of this worker: the latest rate of each running attempt, summed (0 when idle).",
    ["worker"],
)
WORKER_RUNNING_JOBS = Gauge("ftserve_worker_running_jobs", "Attempts this worker is running.", ["worker"])
