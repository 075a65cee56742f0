"""Base models: a JSON registry file mapping a model id to a local Hugging Face directory.

    {"demo-tiny": {"path": "/abs/path/to/demo-tiny", "created": 1764355200,
                   "family": "llama", "parameters": 460000, "context_length": 1024,
                   "assistant_only_loss": true, "source": "demo"}}

Real deployments list their own models (a local directory per worker and vLLM host): `ftserve models add ID DIR`
checks a directory and registers it, `ftserve models import-gguf FILE --id ID` converts a GGUF file first, and
`ftserve models remove ID` takes one out (docs/models.md). The registry is read on every call, so a change takes
effect without a restart.

Optional keys of an entry:
- `config`: the config.json the scheduler sizes the model by (its memory estimate), for a control plane that
  holds no weights. Tests use it to stand demo-tiny's weights in for bigger models.
- `chat_template`: a Jinja template to train with instead of the tokenizer's (a custom training template).
- `family`, `parameters`, `context_length`, `assistant_only_loss`, `source`: what the check found when the model
  was added; shown by `ftserve models list --server`, never needed to train or serve.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import InvalidRequestError, NotFoundError
from core.settings import Settings

# What `models add` records about a model, beside its path (see the module docstring).
INFO_KEYS = ("family", "parameters", "context_length", "assistant_only_loss", "source")


@dataclass(frozen=True)
class BaseModel:
    id: str
    path: Path
    created: int
    config: Path | None = None  # the config.json to estimate memory from; default: path/config.json
    chat_template: str | None = None  # a custom training template; None: the tokenizer's own
    info: dict[str, Any] = field(default_factory=dict)  # INFO_KEYS, as the check at registration found them

    @property
    def config_file(self) -> Path:
        return self.config or self.path / "config.json"

    def context_length(self) -> int | None:
        """The model's context length: its config.json's, else what `models add` recorded."""
        from core.vram import EstimateError, ModelArch

        try:
            positions = ModelArch.from_config_file(self.config_file).max_positions
        except (EstimateError, ValueError, KeyError, TypeError):  # no or odd config.json
            positions = None
        if positions is None and isinstance(self.info.get("context_length"), int):
            positions = self.info["context_length"]
        return int(positions) if positions else None


def _entry_to_model(model_id: str, entry: dict[str, Any]) -> BaseModel:
    return BaseModel(
        id=model_id,
        path=Path(entry["path"]),
        created=int(entry.get("created", 0)),
        config=Path(entry["config"]) if entry.get("config") else None,
        chat_template=entry.get("chat_template") or None,
        info={k: entry[k] for k in INFO_KEYS if k in entry},
    )


def load_registry(settings: Settings) -> dict[str, BaseModel]:
    path = settings.resolved_model_registry
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(f"The model registry {path} is not valid JSON: {exc}") from exc
    return {model_id: _entry_to_model(model_id, entry) for model_id, entry in raw.items()}


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


@contextmanager
def _locked_registry(settings: Settings) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Hold the registry's lock; yields a function that replaces the file atomically with new content."""
    registry_path = settings.resolved_model_registry
    registry_path.parent.mkdir(parents=True, exist_ok=True)
    with open(registry_path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)

        def write(raw: dict[str, Any]) -> None:
            tmp = registry_path.with_name(f".{registry_path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(raw, indent=2, sort_keys=True))
            os.replace(tmp, registry_path)

        yield write


def _read_raw(settings: Settings) -> dict[str, Any]:
    path = settings.resolved_model_registry
    return json.loads(path.read_text()) if path.exists() else {}


def register_model(
    settings: Settings,
    model_id: str,
    path: Path,
    *,
    config: Path | None = None,
    chat_template: str | None = None,
    info: dict[str, Any] | None = None,
) -> BaseModel:
    """Add or replace one entry, atomically and safely against concurrent writers."""
    with _locked_registry(settings) as write:
        raw = _read_raw(settings)
        entry: dict[str, Any] = {"path": str(path.resolve()), "created": int(time.time())}
        if config is not None:
            entry["config"] = str(config.resolve())
        if chat_template:
            entry["chat_template"] = chat_template
        entry.update({k: v for k, v in (info or {}).items() if k in INFO_KEYS and v is not None})
        raw[model_id] = entry
        write(raw)
    return _entry_to_model(model_id, entry)


def unregister_model(settings: Settings, model_id: str) -> BaseModel:
    """Remove one entry (its files stay where they are); NotFoundError if it is not registered."""
    with _locked_registry(settings) as write:
        raw = _read_raw(settings)
        if model_id not in raw:
            raise NotFoundError(
                f"The model '{model_id}' is not registered.", param="model", code="model_not_found"
            )
        removed = _entry_to_model(model_id, raw.pop(model_id))
        write(raw)
    return removed
