"""Base models: a JSON registry file mapping a model id to a local Hugging Face directory.

    {"demo-tiny": {"path": "/abs/path/to/demo-tiny", "created": 1764355200}}

Real deployments list their own models (a local directory per worker and vLLM host). The registry is read
on every call, so `ftserve models create-demo` or an edited file takes effect without a restart.

An entry may also name `"config"`: the config.json the scheduler sizes the model by (its memory estimate),
for a control plane that holds no weights. Tests use it to stand demo-tiny's weights in for bigger models.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import InvalidRequestError, NotFoundError
from core.settings import Settings


@dataclass(frozen=True)
class BaseModel:
    id: str
    path: Path
    created: int
    config: Path | None = None  # the config.json to estimate memory from; default: path/config.json

    @property
    def config_file(self) -> Path:
        return self.config or self.path / "config.json"


def load_registry(settings: Settings) -> dict[str, BaseModel]:
    path = settings.resolved_model_registry
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(f"The model registry {path} is not valid JSON: {exc}") from exc
    return {
        model_id: BaseModel(
            id=model_id,
            path=Path(entry["path"]),
            created=int(entry.get("created", 0)),
            config=Path(entry["config"]) if entry.get("config") else None,
        )
        for model_id, entry in raw.items()
    }


def local_base_dir(settings: Settings, model_id: str) -> Path | None:
    """The base model's weights directory on this host, if it is registered and present here (the control
    plane may register a config.json only)."""
    registered = load_registry(settings).get(model_id)
    return registered.path if registered is not None and registered.path.is_dir() else None


def get_base_model(settings: Settings, model_id: str, *, param: str = "model") -> BaseModel:
    model = load_registry(settings).get(model_id)
    if model is None:
        known = ", ".join(sorted(load_registry(settings))) or "none registered"
        raise NotFoundError(
            f"The model '{model_id}' does not exist (base models: {known}).",
            param=param,
            code="model_not_found",
        )
    return model


def register_model(settings: Settings, model_id: str, path: Path, *, config: Path | None = None) -> BaseModel:
    """Add or replace one entry, atomically and safely against concurrent writers."""
    registry_path = settings.resolved_model_registry
    registry_path.parent.mkdir(parents=True, exist_ok=True)
    with open(registry_path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        raw = json.loads(registry_path.read_text()) if registry_path.exists() else {}
        entry: dict[str, object] = {"path": str(path.resolve()), "created": int(time.time())}
        if config is not None:
            entry["config"] = str(config.resolve())
        raw[model_id] = entry
        tmp = registry_path.with_name(f".{registry_path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(raw, indent=2, sort_keys=True))
        os.replace(tmp, registry_path)
    created = int(entry["created"])  # type: ignore[call-overload]
    return BaseModel(
        id=model_id, path=path.resolve(), created=created, config=config.resolve() if config else None
    )
