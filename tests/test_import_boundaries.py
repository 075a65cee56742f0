"""The layout's import rules (README "What is here": api, scheduler and gpu_worker import core, never each other;
core imports none of them; nothing imports cli; the SDK stands alone), checked two ways.

Dynamically: api, scheduler, core, the SDK and cli's server verbs import without torch and friends (a slim API
image), in a fresh interpreter where every heavy import is both blocked and recorded, so a guarded
`try: import torch` fails the test as surely as a plain one.

Statically: the arrows. `api`, `scheduler` and `gpu_worker` import `core`, never each other; `core` imports
none of them nor `cli`; the SDK (clients/python/ftserve_client) imports nothing from the repo; nothing imports
`cli`. Every .py file is walked, function-level and TYPE_CHECKING imports included.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

HEAVY = ["torch", "transformers", "peft", "trl", "unsloth", "vllm", "datasets", "accelerate"]

# Each entry: one fresh interpreter imports these modules; a trailing ".*" means the package and every module
# under it (pkgutil.walk_packages), so a module api.main does not reach is checked too.
LIGHT_MODULES = [
    "core.*",
    "api.*",
    "scheduler.*",
    "ftserve_client.*",
    "cli.main",
    "adapter_agent.app",  # runs in the vLLM image, which has torch, but needs none of it
]
# Not importable on their own: alembic's env.py and revisions run only inside alembic (they need its context).
NOT_WALKED = ("core.migrations",)

# A module importing one of these names is a violation, by the importing file's top-level package.
REPO_PACKAGES = frozenset({"core", "api", "scheduler", "gpu_worker", "cli", "adapter_agent"})
FORBIDDEN: dict[str, frozenset[str]] = {
    "api": frozenset({"scheduler", "gpu_worker", "cli"}),
    "scheduler": frozenset({"api", "gpu_worker", "cli"}),
    "gpu_worker": frozenset({"api", "scheduler", "cli"}),
    "core": frozenset({"api", "scheduler", "gpu_worker", "cli"}),
    "adapter_agent": frozenset({"cli"}),
    "ftserve_client": REPO_PACKAGES,
}
# Where each checked package lives (its top-level name is the key of FORBIDDEN).
PACKAGE_DIRS = {
    "api": ROOT / "api",
    "scheduler": ROOT / "scheduler",
    "gpu_worker": ROOT / "gpu_worker",
    "core": ROOT / "core",
    "adapter_agent": ROOT / "adapter_agent",
    "ftserve_client": ROOT / "clients" / "python" / "ftserve_client",
}

_PROBE = """
import importlib, json, pkgutil, sys
HEAVY = set({heavy!r})
attempts = []
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            attempts.append(name)
            raise ImportError("blocked heavy import: " + name)
already = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
sys.meta_path.insert(0, Block())
errors = []
def load(name):
    try:
        return importlib.import_module(name)
    except BaseException as exc:
        errors.append(f"{{name}}: {{type(exc).__name__}}: {{exc}}")
target = {target!r}
if target.endswith(".*"):
    package = load(target[:-2])
    if package is not None:
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.startswith({not_walked!r}):
                load(info.name)
else:
    load(target)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print(json.dumps({{"already": already, "attempts": attempts, "loaded": loaded, "errors": errors}}))
"""


def probe_imports(target: str, *, extra_path: list[str] | None = None) -> dict[str, list[str]]:
    """Import `target` in a fresh interpreter with every heavy import blocked and recorded. This tree's packages
    and SDK come first on sys.path, ahead of whatever copy is installed."""
    path = [*(extra_path or []), str(ROOT), str(ROOT / "clients" / "python")]
    code = f"import sys; sys.path[:0] = {path!r}\n" + _PROBE.format(
        heavy=HEAVY, target=target, not_walked=NOT_WALKED
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, list[str]] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def heavy_problems(report: dict[str, list[str]]) -> list[str]:
    problems = []
    if report["already"]:
        problems.append(
            f"heavy modules loaded before the import, so the probe cannot see them: {report['already']}"
        )
    if report["attempts"]:
        problems.append(f"tried to import {sorted(set(report['attempts']))}")
    if report["loaded"]:
        problems.append(f"left {report['loaded']} in sys.modules")
    problems.extend(report["errors"])
    return problems


@pytest.mark.parametrize("target", LIGHT_MODULES)
def test_module_imports_without_heavy_libraries(target: str) -> None:
    assert not heavy_problems(probe_imports(target))


def test_heavy_import_probe_can_fail(tmp_path: Path) -> None:
    # A plain heavy import and a guarded one (which would pass a check that only blocks) are both caught.
    pkg = tmp_path / "heavypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "plain.py").write_text("import torch\n")
    (pkg / "guarded.py").write_text("try:\n    import transformers\nexcept ImportError:\n    pass\n")
    (pkg / "light.py").write_text("import json\n")
    assert not heavy_problems(probe_imports("heavypkg.light", extra_path=[str(tmp_path)]))
    plain = heavy_problems(probe_imports("heavypkg.plain", extra_path=[str(tmp_path)]))
    assert any("torch" in p for p in plain), plain
    guarded = heavy_problems(probe_imports("heavypkg.*", extra_path=[str(tmp_path)]))
    assert any("transformers" in p for p in guarded), guarded


# -- the arrows, statically


def imported_modules(source: str, module: str, *, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every import in `source`, wherever it sits (function bodies, `if
    TYPE_CHECKING:`), relative ones resolved against `module`; also importlib.import_module("...") and
    __import__("...") with a literal name."""
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            yield node.lineno, prefix
            for alias in node.names:  # `from pkg import submodule`
                yield node.lineno, f"{prefix}.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module"))
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            yield node.lineno, node.args[0].value


def arrow_violations(
    package: str, source: str, module: str, where: str, *, is_package: bool = False
) -> list[str]:
    """The imports in one file of `package` that break its arrows, as "where:line imports name"."""
    forbidden = FORBIDDEN[package]
    return [
        f"{where}:{line} imports {name}"
        for line, name in imported_modules(source, module, is_package=is_package)
        if name.split(".")[0] in forbidden
    ]


def package_files(package: str) -> Iterator[tuple[Path, str, bool]]:
    top = PACKAGE_DIRS[package]
    for path in sorted(top.rglob("*.py")):
        parts = [package, *path.relative_to(top).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        yield path, ".".join(parts), is_package


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_arrows(package: str) -> None:
    files = list(package_files(package))
    assert files, f"no .py files under {PACKAGE_DIRS[package]}"
    violations = [
        v
        for path, module, is_package in files
        for v in arrow_violations(
            package, path.read_text(), module, str(path.relative_to(ROOT)), is_package=is_package
        )
    ]
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize(
    ("package", "module", "source", "bad"),
    [
        ("api", "api.routes.jobs", "import scheduler.placement\n", "scheduler.placement"),
        ("scheduler", "scheduler.x", "def f():\n    from api import main\n", "api"),
        (
            "gpu_worker",
            "gpu_worker.x",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import api\n",
            "api",
        ),
        (
            "core",
            "core.x",
            "import importlib\nimportlib.import_module('gpu_worker.train')\n",
            "gpu_worker.train",
        ),
        ("core", "core.x", "from cli.main import app\n", "cli.main"),
        ("ftserve_client", "ftserve_client._client", "from core import errors\n", "core"),
        ("adapter_agent", "adapter_agent.app", "import cli\n", "cli"),
    ],
)
def test_arrow_checker_flags_violations(package: str, module: str, source: str, bad: str) -> None:
    violations = arrow_violations(package, source, module, "synthetic.py")
    assert any(v.endswith(f"imports {bad}") for v in violations), violations


def test_arrow_checker_allows_the_arrows() -> None:
    source = (
        "import core.db\nfrom core import errors\nfrom . import deps\nfrom .services import files\n"
        "import httpx\nimport importlib\nimportlib.import_module('core.storage')\n"
    )
    assert not arrow_violations("api", source, "api.main", "synthetic.py")
    # A relative import resolves inside its own package, so `from .. import x` in api/routes is api.x.
    assert list(imported_modules("from .. import deps\n", "api.routes.jobs")) == [(1, "api"), (1, "api.deps")]
    assert list(imported_modules("from . import x\n", "api.routes", is_package=True)) == [
        (1, "api.routes"),
        (1, "api.routes.x"),
    ]


# -- tests and benches: shared code lives in tests/support, which benches may use; nothing imports a test


def harness_violations(source: str, module: str, where: str) -> list[str]:
    """Imports that break the harness arrows: a conftest or a test module imported from elsewhere (fixtures
    arrive by name, helpers come from tests.support), and tests importing bench."""
    problems = []
    for line, name in imported_modules(source, module):
        parts = name.split(".")
        if parts[0] == "bench" and module.startswith("tests."):
            problems.append(f"{where}:{line} imports {name} (tests never import benches)")
        elif parts[0] == "tests" and any(p == "conftest" or p.startswith("test_") for p in parts[1:]):
            problems.append(f"{where}:{line} imports {name} (a conftest or test module)")
    return problems


def test_tests_and_benches_share_code_only_through_tests_support() -> None:
    violations = []
    for top in ("tests", "bench"):
        for path in sorted((ROOT / top).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            violations += harness_violations(path.read_text(), module, str(path.relative_to(ROOT)))
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("tests.gpu_worker.test_qlora", "from tests.gpu_worker.test_train import exact_match\n"),
        ("tests.reliability.test_x", "from tests.reliability.conftest import auth\n"),
        ("tests.gpu_worker.test_packing", "def f():\n    from bench.train_throughput import lengths\n"),
        ("bench.soak", "from tests.conftest import make_key\n"),
    ],
)
def test_harness_checker_flags_violations(module: str, source: str) -> None:
    assert harness_violations(source, module, "synthetic.py")


def test_harness_checker_allows_support() -> None:
    assert not harness_violations(
        "from tests.support.fleet import SplitFleet\n", "bench.soak", "synthetic.py"
    )
