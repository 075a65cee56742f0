"""deploy/ against the code: the files parse, the Kubernetes manifests pass the Kubernetes schemas, every image
is built by a Dockerfile here, every FTSERVE_* variable is a setting, every `ftserve` verb is a command, and
every probe's port and path is one the process really serves. No Docker daemon or cluster is needed.

Image convention: `ghcr.io/ftserve/<name>:<project version>` is built from `deploy/docker/<name>.Dockerfile`
with the repository root as the context (compose: `build: {context: .., dockerfile: deploy/docker/...}`).
"""

from __future__ import annotations

import ast
import asyncio
import copy
import fnmatch
import functools
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import typer.main
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from core.inference.replicas import parse_replicas_setting
from core.settings import Settings
from core.vram import ModelArch

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKER = DEPLOY / "docker"
IMAGE_PREFIX = "ghcr.io/ftserve/"
K8S_VERSION = "1.30"  # the oldest Kubernetes the manifests promise to work on
# Images ftserve does not build: compose's backing services, pinned to a release (never `latest`).
THIRD_PARTY_IMAGES = {"postgres", "redis", "minio/minio", "minio/mc"}
AGENT_ADAPTER_DIR = "/var/lib/ftserve/adapters"  # the same absolute path in vLLM and its agent (the contract)

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


# -- reading the files --------------------------------------------------------------------------------------


@dataclass
class Dockerfile:
    path: Path
    instructions: list[tuple[str, str]]  # (INSTRUCTION, arguments) of the final stage, continuations joined
    all_instructions: list[tuple[str, str]]

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        text = re.sub(r"\\\n", " ", path.read_text())
        parsed = []
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                word, _, rest = line.partition(" ")
                parsed.append((word.upper(), rest.strip()))
        last_from = max(i for i, (word, _) in enumerate(parsed) if word == "FROM")
        return cls(path, parsed[last_from:], parsed)

    def exec_form(self, instruction: str) -> list[str] | None:
        values = [rest for word, rest in self.instructions if word == instruction]
        return json.loads(values[-1]) if values else None

    @property
    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for word, rest in self.instructions:
            if word == "ENV":
                for item in shlex.split(rest):
                    key, _, value = item.partition("=")
                    env[key] = value
        return env


@dataclass
class Container:
    """One process as a deploy file runs it: where, which image, its argv, env, ports and probes."""

    where: str
    image: str
    argv: list[str]
    env: dict[str, str | None]  # None: from a Secret (the value is not in the file)
    probes: list[tuple[int, str]] = field(default_factory=list)  # (port, path)
    mounts: dict[str, str] = field(default_factory=dict)  # mount path -> volume name


def dockerfile_for(image: str) -> Dockerfile:
    name = image.removeprefix(IMAGE_PREFIX).split(":")[0]
    return Dockerfile.read(DOCKER / f"{name}.Dockerfile")


def effective_argv(image: str, command: list[str] | None, args: list[str] | None) -> list[str]:
    """Docker's rule: `command` replaces the ENTRYPOINT (and drops the CMD); `args` replaces the CMD."""
    if not image.startswith(IMAGE_PREFIX):
        return (command or []) + (args or [])
    dockerfile = dockerfile_for(image)
    if command is not None:
        return command + (args or [])
    return (dockerfile.exec_form("ENTRYPOINT") or []) + (
        args if args is not None else dockerfile.exec_form("CMD") or []
    )


@functools.cache
def k8s_documents() -> tuple[tuple[Path, dict[str, Any]], ...]:
    """Every manifest, parsed once (callers must not change them)."""
    return tuple(
        (path, doc)
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") != "Kustomization"
    )


def k8s_workloads() -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_documents() if doc["kind"] in ("Deployment", "StatefulSet")]


def k8s_containers() -> list[Container]:
    containers = []
    for workload in k8s_workloads():
        pod = workload["spec"]["template"]["spec"]
        for spec in pod["containers"]:
            env: dict[str, str | None] = {}
            for ref in spec.get("envFrom", []):
                env.update(configmap(ref["configMapRef"]["name"]))
            for item in spec.get("env", []):
                env[item["name"]] = item.get("value")
            ports = {p["name"]: p["containerPort"] for p in spec.get("ports", [])}
            probes = []
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                if kind in spec:
                    get = spec[kind]["httpGet"]
                    port = get["port"]
                    probes.append((ports[port] if isinstance(port, str) else port, get["path"]))
            containers.append(
                Container(
                    where=f"k8s {workload['metadata']['name']}/{spec['name']}",
                    image=spec["image"],
                    argv=effective_argv(spec["image"], spec.get("command"), spec.get("args")),
                    env=env,
                    probes=probes,
                    mounts={m["mountPath"]: m["name"] for m in spec.get("volumeMounts", [])},
                )
            )
    return containers


def configmap(name: str) -> dict[str, str]:
    for _, doc in k8s_documents():
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == name:
            return dict(doc["data"])
    raise AssertionError(f"no ConfigMap {name} in deploy/k8s")


def secret_example() -> dict[str, str]:
    doc = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    return dict(doc["stringData"])


@functools.cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yml").read_text())


def interpolate(value: str) -> str:
    """Compose's variable substitution, with a stand-in for each required variable."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if op == ":-":
            return arg
        return f"value-of-{name}"

    value = re.sub(r"\$\{([A-Z0-9_]+)(?:(:[-?])([^}]*))?\}", one, value)
    return value.replace("$$", "$")


HEALTHCHECK_URL = re.compile(r"^http://127\.0\.0\.1:(\d+)(/\S*)$")


def compose_containers() -> list[Container]:
    containers = []
    for name, service in compose()["services"].items():
        image = service["image"]
        # Compose's `entrypoint` and `command` act as Kubernetes' `command` and `args`.
        argv = effective_argv(image, service.get("entrypoint"), service.get("command"))
        environment = service.get("environment") or {}
        env: dict[str, str | None] = {str(key): interpolate(str(value)) for key, value in environment.items()}
        probes = []
        test = (service.get("healthcheck") or {}).get("test", [])
        if test and test[:2] == ["CMD", "ftserve-healthcheck"]:
            match = HEALTHCHECK_URL.match(test[2])
            assert match, f"compose {name}: healthcheck URL {test[2]!r} is not http://127.0.0.1:PORT/PATH"
            probes.append((int(match.group(1)), match.group(2)))
        mounts = {}
        for volume in service.get("volumes", []):
            if isinstance(volume, str):
                source, target = volume.split(":")[:2]
                mounts[target] = source
            else:
                mounts[volume["target"]] = volume["source"]
        containers.append(
            Container(f"compose {name}", image, [interpolate(a) for a in argv], env, probes, mounts)
        )
    return containers


def all_containers() -> list[Container]:
    return k8s_containers() + compose_containers()


def runs(container: Container, verb: str) -> bool:
    return container.argv[:2] == ["ftserve", verb]


def is_vllm(container: Container) -> bool:
    return container.argv[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]


def flag(argv: list[str], name: str) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return argv[i + 1]
    raise AssertionError(f"{name} not in {argv}")


def setting(container: Container, name: str) -> Any:
    """The value the process will see for a setting: the container's env, else the image's ENV, else the
    default in Settings."""
    value = container.env.get(name)
    if value is None and container.image.startswith(IMAGE_PREFIX):
        value = dockerfile_for(container.image).env.get(name)
    field_name = name.removeprefix("FTSERVE_").lower()
    if value is None:
        return Settings.model_fields[field_name].default
    return getattr(Settings.model_validate({field_name: value}), field_name)


# -- the files parse and Kubernetes accepts the manifests -----------------------------------------------------


def deploy_files(*patterns: str) -> list[Path]:
    return sorted(p for pattern in patterns for p in DEPLOY.rglob(pattern))


def test_every_deploy_file_parses() -> None:
    yaml_files = deploy_files("*.yml", "*.yaml")
    json_files = deploy_files("*.json")
    assert {p.relative_to(DEPLOY).parts[0] for p in yaml_files + json_files} >= {
        "compose.yml",
        "k8s",
        "runpod",
        "skypilot",
    }
    for path in yaml_files:
        assert list(yaml.safe_load_all(path.read_text())), path
    for path in json_files:
        json.loads(path.read_text())


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_k8s_manifests_validate_against_the_kubernetes_schemas(path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") != "Kustomization"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_schema_check_is_strict() -> None:
    """A misspelled field must fail validation, or the test above proves nothing."""
    deployment = copy.deepcopy(next(doc for doc in k8s_workloads() if doc["kind"] == "Deployment"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbe"]["httpGet"]["paht"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == {m for m in manifests if not m.endswith(".example.yaml")}
    assert "secret.example.yaml" in manifests  # placeholders are never applied by `kubectl apply -k`
    if shutil.which("kubectl"):  # kustomize itself, when it is installed (it is not required)
        rendered = subprocess.run(
            ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
        )
        assert len([d for d in yaml.safe_load_all(rendered.stdout) if d]) == len(list(k8s_documents())) - 1


# -- images and Dockerfiles -------------------------------------------------------------------------------


def named_images() -> dict[str, str]:
    """Every image any deploy file runs, with where."""
    images = {c.image: c.where for c in all_containers()}
    runpod = json.loads((DEPLOY / "runpod" / "worker-template.json").read_text())
    images[runpod["imageName"]] = "runpod"
    skypilot = (DEPLOY / "skypilot" / "worker.yaml").read_text()
    for image in re.findall(r"ghcr\.io/ftserve/[\w.-]+:[\w.-]+", skypilot):
        images[image] = "skypilot"
    return images


def test_every_ftserve_image_is_built_by_a_dockerfile_here() -> None:
    images = named_images()
    ours = {image for image in images if image.startswith(IMAGE_PREFIX)}
    assert {i.removeprefix(IMAGE_PREFIX).split(":")[0] for i in ours} == {"api", "worker", "vllm"}
    for image in ours:
        name, _, tag = image.removeprefix(IMAGE_PREFIX).partition(":")
        assert (DOCKER / f"{name}.Dockerfile").is_file(), f"{images[image]}: {image} has no Dockerfile"
        assert tag == PROJECT["version"], f"{images[image]}: {image} is not tagged {PROJECT['version']}"
    built = {p.name.removesuffix(".Dockerfile") for p in DOCKER.glob("*.Dockerfile")}
    assert built == {i.removeprefix(IMAGE_PREFIX).split(":")[0] for i in ours}, "a Dockerfile nobody runs"
    for image, where in images.items():
        if not image.startswith(IMAGE_PREFIX):
            name, _, tag = image.partition(":")
            assert name in THIRD_PARTY_IMAGES and where.startswith("compose"), (
                f"{where}: unknown image {image}"
            )
            assert tag and tag != "latest", f"{where}: {image} is not pinned"


def test_compose_builds_each_ftserve_image_from_its_dockerfile() -> None:
    for name, service in compose()["services"].items():
        if service["image"].startswith(IMAGE_PREFIX):
            image_name = service["image"].removeprefix(IMAGE_PREFIX).split(":")[0]
            assert service["build"] == {
                "context": "..",
                "dockerfile": f"deploy/docker/{image_name}.Dockerfile",
            }, name


@pytest.mark.parametrize("path", sorted(DOCKER.glob("*.Dockerfile")), ids=lambda p: p.name)
def test_dockerfile_copies_real_paths_and_runs_as_non_root(path: Path) -> None:
    dockerfile = Dockerfile.read(path)
    ignored = [
        line.strip().removeprefix("**/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = set()
    for word, rest in dockerfile.all_instructions:
        if word == "COPY" and "--from=" not in rest:
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{path.name}: COPY {source}: no such path"
                assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), (
                    f"{path.name}: COPY {source} is excluded by .dockerignore"
                )
                copied.add(source)
    # `pip install .` only installs the packages that are in the build context.
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    wanted = {pattern.rstrip("*") for pattern in packages["include"]} | {"pyproject.toml", "clients/python"}
    assert wanted <= copied, f"{path.name} does not COPY {sorted(wanted - copied)}"
    user = [rest for word, rest in dockerfile.instructions if word == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0"), f"{path.name} runs as root"
    assert any(word == "HEALTHCHECK" for word, _ in dockerfile.instructions), f"{path.name}: no HEALTHCHECK"


def test_the_control_plane_image_has_no_ml_extras_and_the_worker_has_cuda() -> None:
    def installs(name: str) -> str:
        runs = " ".join(rest for word, rest in Dockerfile.read(DOCKER / name).instructions if word == "RUN")
        return " ".join(re.findall(r"pip install ([^&]+)", runs))

    assert "[" not in installs("api.Dockerfile")  # no extras: no torch in the api/scheduler image
    assert "[" not in installs("vllm.Dockerfile")  # the agent beside vLLM needs no ML stack of its own
    assert '".[cuda]"' in installs("worker.Dockerfile")


# -- settings, commands, ports and probes match the code ----------------------------------------------------


def test_every_ftserve_variable_in_deploy_is_a_setting() -> None:
    fields = set(Settings.model_fields)
    used: dict[str, set[str]] = {}
    for path in [ROOT / ".dockerignore", *DEPLOY.rglob("*")]:
        if path.is_file():
            for name in re.findall(r"\bFTSERVE_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()):
                used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert len(used) > 15, "the scan found too few variables to be reading the files"
    unknown = {name: sorted(paths) for name, paths in used.items() if name[8:].lower() not in fields}
    assert not unknown, f"not fields of core.settings.Settings: {unknown}"


def test_every_ftserve_command_in_deploy_is_a_cli_command() -> None:
    from cli.main import app

    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    verbs = {c.argv[1]: c.where for c in all_containers() if c.argv[:1] == ["ftserve"]}
    runpod = json.loads((DEPLOY / "runpod" / "worker-template.json").read_text())
    verbs[(runpod["dockerEntrypoint"] + runpod["dockerStartCmd"])[1]] = "runpod"
    skypilot = yaml.safe_load((DEPLOY / "skypilot" / "worker.yaml").read_text())
    for word in re.findall(r"\bftserve ([a-z][a-z-]*)", skypilot["run"]):
        verbs[word] = "skypilot"
    for path in DOCKER.glob("*.Dockerfile"):
        dockerfile = Dockerfile.read(path)
        if dockerfile.exec_form("ENTRYPOINT") == ["ftserve"]:
            verbs[(dockerfile.exec_form("CMD") or [""])[0]] = path.name
    assert set(verbs) >= {"api", "scheduler", "worker", "adapter-agent"}, verbs
    unknown = {verb: where for verb, where in verbs.items() if verb not in commands}
    assert not unknown, f"not `ftserve` commands ({sorted(commands)}): {unknown}"


def api_routes() -> set[str]:
    from api.main import create_app

    return {getattr(route, "path", "") for route in create_app(Settings()).routes}


def health_server_paths() -> set[str]:
    """The paths the scheduler's and worker's health server answers (anything but 404)."""
    from core.observability import HealthServer, Liveness

    server = HealthServer(host="127.0.0.1", port=0, liveness=Liveness("test", stale_after_s=60), checks={})
    candidates = ("/healthz", "/readyz", "/metrics", "/health", "/")
    return {p for p in candidates if asyncio.run(server.respond("GET", p))[0] != 404}


def agent_routes() -> set[str]:
    from adapter_agent.app import create_agent_app

    return {getattr(route, "path", "") for route in create_agent_app(Settings()).routes}


def test_probes_hit_ports_and_paths_the_processes_serve() -> None:
    api, health, agent = api_routes(), health_server_paths(), agent_routes()
    assert {"/healthz", "/readyz"} <= health
    checked = set()
    for container in all_containers():
        if runs(container, "api"):
            port, paths = setting(container, "FTSERVE_PORT"), api
        elif runs(container, "scheduler") or runs(container, "worker"):
            port, paths = setting(container, "FTSERVE_HEALTH_PORT"), health
            assert port > 0, f"{container.where}: FTSERVE_HEALTH_PORT is off, so nothing answers its probes"
        elif runs(container, "adapter-agent"):
            port, paths = setting(container, "FTSERVE_AGENT_PORT"), agent
        elif is_vllm(container):
            port, paths = int(flag(container.argv, "--port")), {"/health"}
        else:
            continue
        assert container.probes, f"{container.where} has no probe"
        for probe_port, path in container.probes:
            assert probe_port == port, (
                f"{container.where}: probe on {probe_port}, the process listens on {port}"
            )
            assert path in paths, f"{container.where}: {path} is not served (it serves {sorted(paths)})"
        checked.add(container.where)
    assert len(checked) >= 10, checked


def test_prometheus_annotations_point_at_metrics_endpoints() -> None:
    served = {"api": api_routes(), "scheduler": health_server_paths(), "worker": health_server_paths()}
    served["vllm"] = {"/metrics"}  # vLLM's own
    for workload in k8s_workloads():
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        name = workload["metadata"]["name"]
        assert annotations.get("prometheus.io/scrape") == "true", name
        assert annotations["prometheus.io/path"] in served[name], (
            f"{name}: no {annotations['prometheus.io/path']}"
        )
        ports = [
            p["containerPort"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c["ports"]
        ]
        assert int(annotations["prometheus.io/port"]) in ports, name


def test_the_health_servers_bind_beyond_loopback_in_containers() -> None:
    for container in all_containers():
        if container.argv[:1] == ["ftserve"]:
            assert setting(container, "FTSERVE_HOST") == "0.0.0.0", container.where


def test_inference_replicas_point_at_the_vllm_pods_and_their_agents() -> None:
    k8s = {c.where: c for c in k8s_containers()}
    vllm, agent = k8s["k8s vllm/vllm"], k8s["k8s vllm/adapter-agent"]
    statefulset = next(w for w in k8s_workloads() if w["kind"] == "StatefulSet")
    pods = [f"vllm-{i}.{statefulset['spec']['serviceName']}" for i in range(statefulset["spec"]["replicas"])]
    replicas = parse_replicas_setting(secret_example()["FTSERVE_INFERENCE_REPLICAS"])
    assert_replicas_match(replicas, vllm, agent, hosts=pods)

    services = {c.where: c for c in compose_containers()}
    vllm, agent = services["compose vllm"], services["compose adapter-agent"]
    replicas = parse_replicas_setting(services["compose api"].env["FTSERVE_INFERENCE_REPLICAS"])
    assert compose()["services"]["adapter-agent"]["network_mode"] == "service:vllm"  # one host, like a pod
    assert_replicas_match(replicas, vllm, agent, hosts=["vllm"])
    assert (
        services["compose scheduler"].env["FTSERVE_INFERENCE_REPLICAS"]
        == (services["compose api"].env["FTSERVE_INFERENCE_REPLICAS"])
    )


def assert_replicas_match(
    replicas: list[dict[str, Any]], vllm: Container, agent: Container, *, hosts: list[str]
) -> None:
    assert sorted(urlsplit(r["url"]).hostname for r in replicas) == sorted(hosts)
    for replica in replicas:
        url, agent_url = urlsplit(replica["url"]), urlsplit(replica["agent_url"])
        assert url.port == int(flag(vllm.argv, "--port"))
        assert agent_url.hostname == url.hostname  # the agent sits beside its vLLM
        assert agent_url.port == setting(agent, "FTSERVE_AGENT_PORT")
        assert replica["base_model"] == flag(vllm.argv, "--served-model-name")
        assert replica["max_lora_rank"] <= int(flag(vllm.argv, "--max-lora-rank"))
        # ftserve evicts before vLLM's own LRU would (docs/deploy.md, "vLLM memory").
        assert replica["max_adapters"] <= int(flag(vllm.argv, "--max-cpu-loras"))
        assert replica["api_key"]
    # The agent writes adapters where vLLM reads them: the same volume at the same absolute path.
    assert setting(agent, "FTSERVE_AGENT_ADAPTER_DIR") == Path(AGENT_ADAPTER_DIR)
    assert agent.mounts[AGENT_ADAPTER_DIR] == vllm.mounts[AGENT_ADAPTER_DIR]
    assert setting(agent, "FTSERVE_AGENT_VLLM_URL") == f"http://127.0.0.1:{flag(vllm.argv, '--port')}"
    assert "--enable-lora" in vllm.argv
    assert vllm.env.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True") == "True"


def test_the_model_registry_configmap_serves_every_process() -> None:
    """API and scheduler size jobs from the ConfigMap's config.json; workers, vLLM and agents read weights
    from the models volume; vLLM serves a registered model from its registry path."""
    data = configmap("ftserve-models")
    registry_path = Path(configmap("ftserve-config")["FTSERVE_MODEL_REGISTRY"])
    registry = json.loads(data[registry_path.name])
    for model_id, entry in registry.items():
        config = Path(entry["config"])
        assert config.parent == registry_path.parent and config.name in data, model_id
        ModelArch.from_config(json.loads(data[config.name]))  # the estimator can size it
        assert Path(entry["path"]).is_relative_to("/models"), model_id
    for container in k8s_containers():
        assert str(registry_path.parent) in container.mounts or is_vllm(container), container.where
        if is_vllm(container) or runs(container, "worker") or runs(container, "adapter-agent"):
            assert "/models" in container.mounts, f"{container.where} cannot read the weights"
        if is_vllm(container):
            assert (
                flag(container.argv, "--model")
                == registry[flag(container.argv, "--served-model-name")]["path"]
            )


# -- secrets and hardening --------------------------------------------------------------------------------

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|REDISCLI_AUTH")


def test_compose_requires_every_secret_and_has_no_default_password() -> None:
    lines = (DEPLOY / "compose.yml").read_text().splitlines()
    raw = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    for name, default in re.findall(r"\$\{([A-Z0-9_]+):-([^}]*)\}", raw):
        assert not SECRET_NAME.search(name), (
            f"${{{name}}} has a default ({default!r}): make it ${{{name}:?...}}"
        )
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) and key != "FTSERVE_S3_ACCESS_KEY":
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", str(value)), f"{name}: {key} is not required"
            # Credentials inside URLs and JSON come from required variables too.
            for password in re.findall(r"://[^:/@\s]*:([^@\s]+)@", str(value)):
                assert password.startswith("${") and ":?" in password, f"{name}: {key} has a literal password"
            for api_key in re.findall(r'"api_key": "([^"]*)"', str(value)):
                assert api_key.startswith("${") and ":?" in api_key, f"{name}: {key} has a literal api_key"
    example = dict(
        line.split("=", 1) for line in (DEPLOY / "env.example").read_text().splitlines() if "=" in line
    )
    for name in set(re.findall(r"\$\{([A-Z0-9_]+):\?", raw)):
        assert name in example, f"deploy/env.example does not list {name}"
        if SECRET_NAME.search(name):
            assert example[name] == "", f"deploy/env.example ships a value for the secret {name}"


def test_compose_redis_keeps_an_append_only_file_and_the_worker_is_a_gpu_profile() -> None:
    services = compose()["services"]
    assert "--appendonly yes" in " ".join(services["redis"]["command"])
    for name in ("worker", "vllm", "adapter-agent"):
        assert services[name]["profiles"] == ["gpu"], name
    for name in ("worker", "vllm"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name


def test_k8s_secrets_are_referenced_by_key_and_exist_in_the_example() -> None:
    example = secret_example()
    referenced = set()
    for workload in k8s_workloads():
        for spec in workload["spec"]["template"]["spec"]["containers"]:
            assert not any("secretRef" in ref for ref in spec.get("envFrom", [])), "whole-Secret envFrom"
            for item in spec.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "ftserve-secrets" and ref["key"] == item["name"], item
                    referenced.add(ref["key"])
    assert referenced == set(example), "secret.example.yaml and the manifests disagree"
    vllm = next(c for c in k8s_containers() if is_vllm(c))
    secret_env = {k for k, v in vllm.env.items() if v is None}
    assert secret_env == {"VLLM_API_KEY"}, "vLLM must hold no storage or database credentials"


def test_k8s_pods_are_restricted_and_gpu_pods_ask_for_a_gpu() -> None:
    for workload in k8s_workloads():
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for spec in pod["containers"]:
            assert spec["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            assert spec["resources"]["requests"], f"{name}/{spec['name']} has no resource requests"
        gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for c in pod["containers"]]
        if name in ("worker", "vllm"):
            assert gpus.count(1) == 1, name
            assert pod["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == 1, name
            assert pod["nodeSelector"] and pod["tolerations"], name
        else:
            assert not any(gpus), name
    budgets = {doc["metadata"]["name"] for _, doc in k8s_documents() if doc["kind"] == "PodDisruptionBudget"}
    assert budgets == {w["metadata"]["name"] for w in k8s_workloads()}
    replicas = {w["metadata"]["name"]: w["spec"]["replicas"] for w in k8s_workloads()}
    assert replicas["api"] >= 2 and replicas["scheduler"] >= 2


# -- the control-plane image is complete --------------------------------------------------------------------

FIRST_PARTY = {"core", "api", "scheduler", "gpu_worker", "cli", "adapter_agent", "ftserve_client"}


def module_level_imports(package: str) -> dict[str, str]:
    """Top-level names of the modules a package imports when it is imported (not inside functions, which
    may load the ML stack on purpose), each with one file that does."""
    found: dict[str, str] = {}
    for path in (ROOT / package).rglob("*.py"):
        if "migrations" in path.parts:
            continue
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def requirement_closure(requirements: list[str]) -> set[str]:
    """Distributions that pip installs for these requirements (no extras), from the installed metadata."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in importlib.metadata.requires(requirement.name) or []]
        except importlib.metadata.PackageNotFoundError:
            pass
    return seen


def test_pip_install_without_extras_brings_every_module_the_control_plane_imports() -> None:
    """The api and vllm images run `pip install . ./clients/python` and nothing else: a module that the
    control plane imports but pyproject.toml does not declare would only be there by luck in a dev venv."""
    client = tomllib.loads((ROOT / "clients" / "python" / "pyproject.toml").read_text())["project"]
    installed = requirement_closure(PROJECT["dependencies"] + client["dependencies"])
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for package in ("core", "api", "scheduler", "cli", "adapter_agent"):
        for module, where in module_level_imports(package).items():
            if module in sys.stdlib_module_names or module in FIRST_PARTY or module == "__future__":
                continue
            owners = {canonicalize_name(d) for d in distributions.get(module, [module])}
            if not owners & installed:
                missing[module] = where
    assert not missing, f"imported but not in pyproject.toml's dependencies: {missing}"
