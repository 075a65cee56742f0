"""Fetch (pip download) and slim the wheels that bench/gpu_check.sh installs on a bare CUDA machine.

That machine has torch (CUDA), transformers, peft, accelerate, pyarrow, pandas and pytest, but no trl, datasets,
pydantic, orjson, bitsandbytes or unsloth, and nothing can be downloaded there: the wheels travel with the
working tree, at most 64 MiB in all. Two wheels are too big as published and are slimmed here (their RECORD
rewritten to match):
- bitsandbytes 0.50.2 (43 MB): keeps the CPU and CUDA 13.x libraries, drops those for CUDA 11.8-12.8, ROCm, XPU;
- unsloth 2026.10.9 (29 MB): drops `studio/` (the web UI; training never imports it). unsloth_zoo is kept
  whole: its `__init__` imports `unsloth_zoo.mlx.runtime` even on CUDA (seen on an H200, 2026-11-28).
The GPU worker pins trl 1.15.0, the newest that unsloth accepts (the TRL API we use is the same as 1.16's).

    echo /.gpu_wheels/ >> .git/info/exclude   # once: the folder travels as a `carry` path, never committed
    python bench/gpu_wheels.py                 # writes .gpu_wheels/*.whl and .gpu_wheels/demo-tiny/

demo-tiny is built here too (deterministic, ~30 s), so the GPU run needs no CPU time to build it.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / ".gpu_wheels"
WHEELS = [
    # our own code's needs there
    "trl==1.15.0", "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "pydantic==2.14.4",
    "pydantic_core==2.50.5", "annotated_types==0.8.0", "typing_inspection==0.4.5", "orjson==3.13.0",
    "pydantic_settings==2.16.3", "python_dotenv==1.2.4",  # core.vram (the estimator) imports core.settings
    # QLoRA
    "bitsandbytes==0.50.2",
    # unsloth and what its import needs beyond the machine's image
    "unsloth==2026.10.9", "unsloth_zoo==2026.10.9", "tyro==1.0.17", "docstring_parser==0.18.0",
    "typeguard==4.6.1", "shtab==1.13.0", "msgspec==0.22.0", "cut_cross_entropy==25.1.1", "torchao==0.18.0",
    "nest_asyncio==1.6.0", "json5==0.17.3", "structlog==26.1.0",
]  # fmt: skip
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]  # fmt: skip
DROP = {
    "bitsandbytes": lambda n: n.endswith(".so") and not n.endswith(("_cpu.so", "_cuda130.so", "_cuda132.so")),
    "unsloth": lambda n: n.startswith("studio/"),
}


def slim(wheel: Path, drop) -> None:  # type: ignore[no-untyped-def]
    """Rewrite `wheel` without the members `drop` selects, with a RECORD that lists exactly what is left."""
    tmp = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        lines = []
        for info in src.infolist():
            if info.filename == record_name or drop(info.filename):
                continue
            data = src.read(info)
            dst.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            lines.append(f"{info.filename},sha256={digest},{len(data)}")
        lines.append(f"{record_name},,")
        dst.writestr(record_name, "\n".join(lines) + "\n")
    tmp.replace(wheel)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "-d", str(OUT)]  # fmt: skip
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + WHEELS, check=True)
    for wheel in OUT.glob("*.whl"):
        name = wheel.name.split("-")[0].lower()
        if name in DROP:
            slim(wheel, DROP[name])
    from gpu_worker.demo_model import build_demo_model, demo_model_is_current

    if not demo_model_is_current(OUT / "demo-tiny"):
        build_demo_model(OUT / "demo-tiny")
    total = sum(w.stat().st_size for w in OUT.glob("*.whl"))
    print(f"{len(list(OUT.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB in {OUT}")
    if total > 60 * 2**20:
        raise SystemExit("over the 64 MiB a device run may carry (with the repo itself)")


if __name__ == "__main__":
    main()
