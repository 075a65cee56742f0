"""Configuration of one training run, TRL-style: a dataclass whose every field documents itself.

The worker builds a `TrainJobConfig` from the job row (hyperparameters already resolved, files already
downloaded to local paths) and hands it to `gpu_worker.train.run_training`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.hyperparameters import METHODS, Method, ResolvedHyperparameters
from core.training_data import FORMATS_FOR_METHOD

DataFormat = Literal["chat", "prompt_completion", "preference", "sharegpt", "alpaca", "kto", "reinforcement"]


@dataclass
class TrainJobConfig:
    """One fine-tuning run: what to train, on what, where to write, and with which numbers."""

    job_id: str = field(metadata={"help": "The ftjob-... id; used in log lines and adapter metadata."})
    method: Method = field(
        metadata={
            "help": "Training objective, with LoRA: 'supervised' (SFT), 'dpo', 'orpo' or 'simpo' (preference "
            "pairs) or 'kto' (answers labelled desirable or not)."
        }
    )
    base_model_path: Path = field(
        metadata={"help": "Local Hugging Face model directory (config.json, safetensors, tokenizer)."}
    )
    training_file: Path = field(metadata={"help": "Local path of the validated training JSONL file."})
    data_format: DataFormat = field(
        metadata={
            "help": "Format detected by the upload validator: chat, prompt_completion, preference, sharegpt, "
            "alpaca or kto. sharegpt and alpaca are normalised to chat."
        }
    )
    output_dir: Path = field(
        metadata={
            "help": "Local working directory: checkpoints go to output_dir/checkpoints, the final "
            "adapter to output_dir/adapter."
        }
    )
    hyperparameters: ResolvedHyperparameters = field(
        metadata={"help": "Fully resolved hyperparameters (core.hyperparameters.resolve_hyperparameters)."}
    )
    validation_file: Path | None = field(
        default=None, metadata={"help": "Local path of the validation JSONL file, same format; optional."}
    )
    seed: int = field(default=42, metadata={"help": "Seed for LoRA initialisation, data order and dropout."})
    resume_from_checkpoint: Path | None = field(
        default=None,
        metadata={
            "help": "A checkpoint dir written by a previous attempt of this job: training continues "
            "from its step with optimizer, scheduler and RNG state restored."
        },
    )
    max_threads: int | None = field(
        default=None,
        metadata={
            "help": "CPU threads for torch. None: gpu_worker.accel.cpu_threads (1 thread for models under "
            "50M parameters, measured faster; else every core this process may use)."
        },
    )
    max_eval_examples: int = field(
        default=256,
        metadata={
            "help": "Periodic validation uses at most this many validation examples (the first ones); "
            "the final full_valid_* metrics use all of them."
        },
    )
    cache_dir: Path | None = field(
        default=None,
        metadata={
            "help": "Where tokenised SFT datasets are cached, keyed by file hash, tokenizer, template and "
            "max_seq_length, so a retry or resume doesn't tokenise again. None: no cache."
        },
    )
    packing: bool | None = field(
        default=None,
        metadata={
            "help": "SFT batch layout. None (auto): packed and padding-free when the model passes the packed-vs-"
            "unpacked check, else length-grouped batches. True: packed or fail. False: padded batches."
        },
    )
    use_unsloth: bool | None = field(
        default=None,
        metadata={
            "help": "None (auto): unsloth's FastLanguageModel on CUDA when it is installed and supports the "
            "architecture, else transformers + peft. False: never. True: unsloth or fail."
        },
    )
    keep_local_checkpoints: int = field(
        default=3, metadata={"help": "Checkpoints kept on local disk (older ones are deleted)."}
    )
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "Jinja chat template to train with instead of the tokenizer's (the model registry entry's "
            "`chat_template`); None: the tokenizer's"
        },
    )
    parent_adapter: Path | None = field(
        default=None,
        metadata={
            "help": "Continued training: the local directory of the fine-tuned model's adapter to start from "
            "(adapter_config.json, adapter_model.safetensors over the same base). It is merged into the base "
            "weights before the new LoRA is attached; checkpoints and the final adapter store both as one LoRA "
            "(gpu_worker.parent_adapter)."
        },
    )
    grader: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "Reinforcement only: the OpenAI grader (core.graders) whose score is the GRPO reward. "
            "score_model graders call `grader_base_url`."
        },
    )
    grader_servers: dict[str, tuple[str, str | None]] = field(
        default_factory=dict,
        metadata={
            "help": "score_model graders: model name -> (base URL, API key or None) of a vLLM serving it."
        },
    )

    def __post_init__(self) -> None:
        self.base_model_path = Path(self.base_model_path)
        self.training_file = Path(self.training_file)
        self.output_dir = Path(self.output_dir)
        if self.validation_file is not None:
            self.validation_file = Path(self.validation_file)
        if self.resume_from_checkpoint is not None:
            self.resume_from_checkpoint = Path(self.resume_from_checkpoint)
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)
        if self.parent_adapter is not None:
            self.parent_adapter = Path(self.parent_adapter)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method != self.hyperparameters.method:
            raise ValueError(
                f"hyperparameters were resolved for {self.hyperparameters.method!r}, not {self.method!r}"
            )
        if self.data_format not in FORMATS_FOR_METHOD[self.method]:
            raise ValueError(f"method {self.method!r} cannot train on {self.data_format!r} data")
        if (self.method == "reinforcement") != (self.grader is not None):
            raise ValueError("a reinforcement run needs a grader, and only a reinforcement run takes one")
