"""api, scheduler, core and cli's server verbs must import without torch and friends (a slim API image)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ["torch", "transformers", "peft", "trl", "unsloth", "vllm", "datasets", "accelerate"]
LIGHT_MODULES = [
    "core",
    "api.main",
    "scheduler",
    "cli.main",
    "core.storage",
    "core.training_data",
    "core.jobs",
    "adapter_agent.app",  # runs in the vLLM image, which has torch, but needs none of it
]


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_module_imports_without_heavy_libraries(module: str) -> None:
    # A meta-path hook makes every heavy import fail, as on an image without them.
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError("blocked heavy import: " + name)
sys.meta_path.insert(0, Block())
import {module}
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
