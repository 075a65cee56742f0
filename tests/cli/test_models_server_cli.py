"""`ftserve models add | import-gguf | remove | create-demo | list --server`: onboarding base models, as an
operator runs them (real processes, a registry of their own, the real SmolLM2 import of this run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.model_registry import load_registry, register_model
from core.settings import Settings
from gpu_worker.model_import import (
    SMOLLM2_MODEL_ID,
    ModelCheckError,
    bundled_smollm2_gguf,
    import_gguf,
    import_is_current,
    inspect_model_dir,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def server_cli(data_dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FTSERVE_API_KEY", "FTSERVE_MODEL_REGISTRY")}
    env["FTSERVE_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- import-gguf: the run's SmolLM2 came through it --------------------------------------------------------------


def test_import_gguf_converts_smollm2_into_a_plain_checked_model(smollm2_import: dict[str, Any]) -> None:
    report, path = smollm2_import, Path(smollm2_import["path"])
    assert report["family"] == "llama" and report["architecture"] == "LlamaForCausalLM"
    assert 134_000_000 < report["parameters"] < 135_000_000  # 134.5M, tied embeddings counted once
    assert report["context_length"] == 8192 and report["dtype"] == "F32"
    assert report["assistant_only_loss"] is True, report["assistant_only_loss_reason"]
    # The GGUF conversion's eos was <|im_start|>; ours is the one the GGUF metadata names (and vLLM stops on).
    assert report["eos_token"] == "<|im_end|>"
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config  # a plain float model, not a "GGUF-quantised" one
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    assert "<|im_start|>assistant" in tokenizer_config["chat_template"]
    assert tokenizer_config["model_max_length"] == 8192
    gguf_file = bundled_smollm2_gguf()
    assert gguf_file is not None and import_is_current(path, gguf_file)
    registry = json.loads(Path(smollm2_import["registry"]).read_text())
    assert registry[SMOLLM2_MODEL_ID]["path"] == str(path.resolve())
    assert registry[SMOLLM2_MODEL_ID]["assistant_only_loss"] is True


def test_import_gguf_refuses_a_file_that_is_not_gguf_and_an_existing_target(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    done = server_cli(tmp_path / "data", "models", "import-gguf", str(fake), "--id", "x")
    assert done.returncode == 2 and "not a GGUF file" in done.stderr
    assert not load_registry(Settings(data_dir=tmp_path / "data"))
    (tmp_path / "taken").mkdir()
    with pytest.raises(ModelCheckError, match="already exists"):
        import_gguf(bundled_smollm2_gguf() or fake, tmp_path / "taken")


# -- add / remove / list ----------------------------------------------------------------------------------------


def test_add_checks_and_registers_a_directory_then_list_and_remove(
    tmp_path: Path, demo_model_dir: Path
) -> None:
    data = tmp_path / "data"
    added = server_cli(data, "models", "add", "my-demo", str(demo_model_dir), "--json")
    assert added.returncode == 0, added.stderr
    report = json.loads(added.stdout)
    assert report["family"] == "llama" and report["assistant_only_loss"] is True
    assert 100_000 < report["parameters"] < 5_000_000

    listed = json.loads(server_cli(data, "models", "list", "--server", "--json").stdout)
    assert [(m["id"], m["family"], m["source"]) for m in listed] == [("my-demo", "llama", "directory")]

    again = server_cli(data, "models", "add", "my-demo", str(demo_model_dir))
    assert again.returncode == 2 and "--replace" in again.stderr

    removed = server_cli(data, "models", "remove", "my-demo")
    assert removed.returncode == 0 and not load_registry(Settings(data_dir=data))
    assert demo_model_dir.is_dir()  # only the entry goes; the files were not under DATA_DIR/models
    missing = server_cli(data, "models", "remove", "my-demo")
    assert missing.returncode == 2 and "not registered" in missing.stderr


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("auto_map", "trust_remote_code"),
        ("pickle_weights", "pickle"),
        ("no_config", "no config.json"),
        ("not_causal", "not a causal language model"),
    ],
)
def test_add_refuses_a_model_it_cannot_train_safely(
    tmp_path: Path, demo_model_dir: Path, breakage: str, message: str
) -> None:
    model = copy_model(demo_model_dir, tmp_path / "model")
    config_path = model / "config.json"
    config = json.loads(config_path.read_text())
    if breakage == "auto_map":
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    elif breakage == "pickle_weights":
        (model / "model.safetensors").rename(model / "pytorch_model.bin")
    elif breakage == "no_config":
        config_path.unlink()
    elif breakage == "not_causal":
        config["architectures"] = ["LlamaForSequenceClassification"]
    if config_path.exists():
        config_path.write_text(json.dumps(config))
    done = server_cli(tmp_path / "data", "models", "add", "bad", str(model))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not load_registry(Settings(data_dir=tmp_path / "data"))  # nothing registered


def test_a_custom_training_template_is_checked_and_recorded(tmp_path: Path, demo_model_dir: Path) -> None:
    template = tmp_path / "train.jinja"
    # ChatML without generation markers: assistant-only loss must still be derived.
    template.write_text(
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    data = tmp_path / "data"
    added = server_cli(
        data, "models", "add", "custom", str(demo_model_dir), "--chat-template", str(template), "--json"
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["assistant_only_loss"] is True
    assert load_registry(Settings(data_dir=data))["custom"].chat_template == template.read_text()


def test_a_template_that_fails_on_ordinary_turns_is_reported_not_hidden(demo_model_dir: Path) -> None:
    raising = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    report = inspect_model_dir(demo_model_dir, chat_template=raising)
    assert report.assistant_only_loss is False
    assert "alternate" in (report.assistant_only_loss_reason or "")


# -- create-demo ------------------------------------------------------------------------------------------------


def test_create_demo_if_missing_keeps_current_builds_of_both_models(
    tmp_path: Path, demo_model_dir: Path, smollm2_dir: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    register_model(settings, "demo-tiny", demo_model_dir)
    register_model(settings, SMOLLM2_MODEL_ID, smollm2_dir)

    done = server_cli(settings.data_dir, "models", "create-demo", "--if-missing")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("registered and current") == 2  # nothing rebuilt, nothing re-imported
    registry = load_registry(settings)
    assert registry["demo-tiny"].path == demo_model_dir.resolve()
    assert registry[SMOLLM2_MODEL_ID].path == smollm2_dir.resolve()

    listed = server_cli(settings.data_dir, "models", "list", "--server").stdout.splitlines()
    assert [line.split("\t")[0] for line in listed] == ["demo-tiny", SMOLLM2_MODEL_ID]


def test_models_list_on_an_empty_registry_says_how_to_add_one(tmp_path: Path) -> None:
    listed = server_cli(tmp_path / "data", "models", "list")
    assert listed.returncode == 0 and listed.stdout == "" and "create-demo" in listed.stderr
