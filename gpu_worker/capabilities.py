"""What this machine's training stack can do, found without importing torch (the worker process never imports it;
training runs in a child process). The worker reports these to the scheduler; accel.py checks them again in the
training process before it uses them."""

from __future__ import annotations

import importlib.util
import os
from importlib.metadata import version

BNB_MIN_VERSION = (0, 50)  # measured: 0.50.2's CPU backend trains NF4 + double quantization (2026-11-29)


def bnb_4bit_available() -> bool:
    """bitsandbytes recent enough for 4-bit (QLoRA) training, on CUDA and on its CPU backend."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return False
    try:
        major, minor = (int(part) for part in version("bitsandbytes").split(".")[:2])
    except ValueError:  # a local build with an odd version string: trust it
        return True
    return (major, minor) >= BNB_MIN_VERSION


def unsloth_installed() -> bool:
    """unsloth is importable and not switched off (FTSERVE_UNSLOTH=0 keeps it out of the process)."""
    return os.environ.get("FTSERVE_UNSLOTH", "1") != "0" and importlib.util.find_spec("unsloth") is not None
