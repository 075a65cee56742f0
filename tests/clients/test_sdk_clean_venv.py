"""The SDK installs and works alone: a fresh venv gets the built wheel and only what it declares (httpx,
pydantic and theirs), then talks to the session's real `ftserve up`, with no torch anywhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.ftserve_process import FtserveProcess

pytestmark = pytest.mark.slow

SDK_DIR = Path(__file__).resolve().parents[2] / "clients" / "python"
ALLOWED = {
    "ftserve-client",
    "httpx",
    "httpcore",
    "h11",
    "anyio",
    "idna",
    "certifi",
    "sniffio",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-extensions",
    "typing-inspection",
    "exceptiongroup",
}

SCRIPT = r"""
import json, sys
for heavy in ("torch", "fastapi", "core", "api", "openai"):
    try:
        __import__(heavy)
    except ImportError:
        pass
    else:
        sys.exit(f"{heavy} is importable: not a clean venv")

import ftserve_client
from ftserve_client import Client, NotFoundError

client = Client()  # FTSERVE_API_KEY and FTSERVE_BASE_URL from the environment
rows = [{"prompt": f"Q{i}:", "completion": f" A{i}"} for i in range(12)]
data = "".join(json.dumps(r) + "\n" for r in rows).encode()
seen = []
f = client.files.create(file=("clean.jsonl", data), on_progress=lambda s, t: seen.append(s))
assert f.status == "processed" and f.data_format == "prompt_completion" and seen[-1] == len(data), f
assert f.id in [x.id for x in client.files.list(limit=1)]
assert "demo-tiny" in [m.id for m in client.models.list()]
job = client.fine_tuning.jobs.create(model="demo-tiny", training_file=f.id, suffix="clean")
job = client.fine_tuning.jobs.cancel(job.id)
try:
    client.files.retrieve("file-nope")
except NotFoundError as e:
    status = e.status_code
print(json.dumps({"file": f.id, "job": job.status, "not_found": status,
                  "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "fastapi"))}))
"""


def test_the_sdk_installs_alone_and_works(tmp_path: Path, ftserve_server: FtserveProcess) -> None:
    started = time.monotonic()
    # Build the wheel from a copy, so no build/ or egg-info lands in the source tree.
    source = tmp_path / "src"
    shutil.copytree(SDK_DIR, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(source),
            "-w",
            str(wheels),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("ftserve_client-*.whl")

    # No pip, no setuptools: the venv ends up holding only the SDK and what it declares. This
    # interpreter's pip installs into it (`pip --python`), which also skips ensurepip.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    installed = subprocess.run(
        [*pip, "install", "-q", str(wheel)], capture_output=True, text=True, timeout=300
    )
    assert installed.returncode == 0, installed.stderr
    listed = subprocess.run([*pip, "list", "--format=json"], capture_output=True, text=True, check=True)
    names = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert names - ALLOWED == set(), f"the SDK pulled in more than httpx and pydantic: {names - ALLOWED}"
    assert {"ftserve-client", "httpx", "pydantic"} <= names
    install_s = time.monotonic() - started

    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "FTSERVE_API_KEY": ftserve_server.create_key("clean-venv"),
        "FTSERVE_BASE_URL": ftserve_server.base_url,
    }
    # -I: isolated mode, so neither the repo (cwd) nor user site-packages can leak in.
    ran = subprocess.run(
        [str(python), "-I", "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert result["job"] == "cancelled" and result["not_found"] == 404 and result["modules"] == []
    print(f"clean venv: wheel + venv + install in {install_s:.1f}s")
