"""Inference replicas and adapter placement, shared by the API (lazy loads, routing) and the scheduler (hot
loads on success, health checks).

- A replica is one vLLM server for one base model (`inference_replicas`). vLLM's own runtime LoRA API does
  the loading: `POST /v1/load_lora_adapter {lora_name, lora_path}` with an absolute, versioned path.
- A served adapter (`served_adapters`) is a model name inference can serve: a job's final adapter or one of
  its checkpoints. Its files are copied from storage to `<replica.adapter_dir>/<job>/<final|ckpt-step-N>/
  <sha16>/` once, read-only, and never rewritten (vLLM re-reads evicted adapters from that path, and its
  prefix cache keys on it).
- A placement (`adapter_placements`) says an adapter is loaded on a replica. Each replica holds at most
  `max_adapters`; loading one more first unloads the least recently used.

vLLM keeps its registry per process and forgets it on restart; the placements are ftserve's view, corrected
by the scheduler's health check (which lists what each replica really serves) and by the API, which treats a
404 from vLLM for a placed adapter as "not loaded any more" and loads it again.

The package, one module per noun (importers may use either the package or the module):

- `replicas`: the replica registry and the placements (which replica has which adapter loaded).
- `served`: the served adapters, resolved from a model name.
- `vllm`: the HTTP client of a replica's vLLM (what it serves, LoRA load and unload).
- `agent`: the HTTP client of a replica's adapter agent (split deployments).
- `loader`: `AdapterLoader`, which puts adapters on replicas.
"""

from core.adapters import AdapterRejected
from core.inference.agent import agent_forget, agent_headers, agent_sync
from core.inference.loader import AdapterLoader, Loaded
from core.inference.replicas import (
    FROM_CLI,
    FROM_SETTINGS,
    HEALTHY,
    MANAGED,
    STARTING,
    UNHEALTHY,
    UNKNOWN,
    drop_placements,
    flush_recency,
    list_replicas,
    lru_victims,
    normalize_url,
    now_ms,
    parse_replicas_setting,
    placements_by_adapter,
    record_placement,
    remove_replica,
    set_replica_health,
    sync_configured_replicas,
    upsert_replica,
)
from core.inference.served import (
    CHECKPOINT_NAME,
    DELETED,
    PENDING,
    READY,
    REJECTED,
    mark_deleted,
    reject_adapter,
    resolve_adapter,
    set_adapter_version,
)
from core.inference.vllm import ReplicaError, replica_headers, vllm_load, vllm_models, vllm_unload

__all__ = [
    "CHECKPOINT_NAME",
    "DELETED",
    "FROM_CLI",
    "FROM_SETTINGS",
    "HEALTHY",
    "MANAGED",
    "PENDING",
    "READY",
    "REJECTED",
    "STARTING",
    "UNHEALTHY",
    "UNKNOWN",
    "AdapterLoader",
    "AdapterRejected",
    "Loaded",
    "ReplicaError",
    "agent_forget",
    "agent_headers",
    "agent_sync",
    "drop_placements",
    "flush_recency",
    "list_replicas",
    "lru_victims",
    "mark_deleted",
    "normalize_url",
    "now_ms",
    "parse_replicas_setting",
    "placements_by_adapter",
    "record_placement",
    "reject_adapter",
    "remove_replica",
    "replica_headers",
    "resolve_adapter",
    "set_adapter_version",
    "set_replica_health",
    "sync_configured_replicas",
    "upsert_replica",
    "vllm_load",
    "vllm_models",
    "vllm_unload",
]
