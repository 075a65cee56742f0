"""Training throughput: our trainer (gpu_worker.train) against a plain HF Trainer + PEFT LoRA baseline.

Both train the same model, with the same LoRA (r 16, all linear layers), learning rate, batch size, seed, thread
count and dtype, for one epoch on the same tokenised chat data. The data is synthetic chat with log-normal lengths
(median 220 tokens, sigma 0.8, so mean ~300) clipped to 16-2048 tokens: a typical chat fine-tuning spread,
where dynamic padding wastes ~61% of the tokens (docs/training.md, docs/benchmarks.md). Lengths are the distribution's
quantiles in shuffled order, so every run sees exactly that spread.

- baseline: `transformers.Trainer`, PEFT LoRA, `DataCollatorForSeq2Seq` padding to the longest in the batch,
  random batches, no packing, SDPA attention.
- ours: `gpu_worker.train.run_training` as a job runs it (reporter callbacks, final checkpoint and all), with
  everything on auto: padding-free packing, the plain LM head on CPU, unsloth where present on CUDA.

Each side runs in its own subprocess (clean memory peaks). Prints one JSON line:
tokens_per_s_ours, tokens_per_s_baseline, speedup, padding_waste_pct_{ours,baseline}, and on CUDA the GPU name,
peak memory of each side and the #4 estimator's prediction (core.vram) against torch.cuda.max_memory_allocated.

    python bench/train_throughput.py                       # CPU, demo-tiny (built and cached on first use)
    python bench/train_throughput.py --model-size 0.5b     # CUDA: a random ~0.6B Llama built from a config
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.datasets import lognormal_lengths  # noqa: E402  (the length spread the tests check too)

SYLLABLES = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
# A ~0.6B Llama (vocab 32k like Llama 2 / Mistral, so the LM head costs what it does in real models).
MODEL_SIZES = {
    "0.5b": {"hidden_size": 1536, "intermediate_size": 4096, "num_hidden_layers": 20, "num_attention_heads": 12,
                 "num_key_value_heads": 4, "vocab_size": 32000},
    "1.5b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 26, "num_attention_heads": 16,
                 "num_key_value_heads": 4, "vocab_size": 32000},
}  # fmt: skip


def chat_example(tokenizer: Any, target: int, rng: random.Random, cap: int) -> tuple[dict[str, Any], int]:
    """A user/assistant exchange whose chat-template rendering is `target` tokens long (to within a few)."""

    def words(k: int) -> str:
        return " ".join("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(k))

    def render(user: str, answer: str) -> tuple[list[dict[str, str]], int]:
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return msgs, len(tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])

    user = words(max(1, target // 8))
    base = render(user, "")[1]
    k = max(1, (target - base) // 2)
    msgs, n = render(user, words(k))
    for _ in range(8):
        if abs(n - target) <= 2:
            break
        k = max(1, round(k * max(1, target - base) / max(1, n - base)))
        msgs, n = render(user, words(k))
    while n > cap and k > 1:  # never over the length the job allows (it would be refused, not truncated)
        k = max(1, k - max(1, (n - cap) // 2))
        msgs, n = render(user, words(k))
    return {"messages": msgs}, n


def build_model(size: str, out: Path, tokenizer_dir: Path) -> int:
    """A Llama of `size` with random weights and the demo tokenizer (no hub): for speed and memory only."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.save_pretrained(out)
    cfg = LlamaConfig(**MODEL_SIZES[size], max_position_embeddings=4096, tie_word_embeddings=False,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def demo_model(path: Path | None) -> Path:
    from gpu_worker.demo_model import build_demo_model, demo_model_is_current

    path = path or Path(os.environ.get("FTSERVE_DEMO_MODEL_CACHE", Path.home() / ".cache/ftserve/demo-tiny"))
    if not demo_model_is_current(path):
        build_demo_model(path)
    return path


# -- the two sides (each in its own process) -------------------------------------------------------------------


def _hp(n: int, args: argparse.Namespace, params: int) -> Any:
    from core.hyperparameters import SupervisedHyperparameters, resolve_hyperparameters

    big = 10**9
    return resolve_hyperparameters(
        "supervised",
        SupervisedHyperparameters(batch_size=args.batch_size, n_epochs=1, max_seq_length=args.max_len,
                                  checkpoint_every_steps=big, eval_every_steps=big,
                                  quantization=args.quantization),
        n_examples=n,
        base_model_params=params,
    )  # fmt: skip


def run_ours(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    import torch

    from gpu_worker.config import TrainJobConfig
    from gpu_worker.reporting import RecordingReporter
    from gpu_worker.train import run_training

    n = sum(1 for _ in open(args.data))
    work = Path(tempfile.mkdtemp(prefix="ours-"))
    config = TrainJobConfig(
        job_id="ftjob-bench", method="supervised", base_model_path=args.model, training_file=args.data,
        data_format="chat", output_dir=work, hyperparameters=_hp(n, args, args.params), seed=args.seed,
        max_threads=threads, use_unsloth=None if args.unsloth == "auto" else args.unsloth == "on",
    )  # fmt: skip
    reporter = RecordingReporter()
    result = run_training(config, reporter)
    start = next(e["data"] for e in reporter.events if e["message"].startswith("Fine-tuning started"))
    out = {
        "train_s": result.metrics["train_s"],
        "train_cpu_s": result.metrics["train_cpu_s"],
        "padding_waste_pct": result.metrics.get("padding_pct"),
        "largest_batch_shape": result.metrics.get("largest_batch_shape"),
        "steps": result.global_step,
        "first_loss": result.metrics_history[0]["train_loss"],
        "last_loss": result.metrics_history[-1]["train_loss"],
        "batching": start["batching"],
        "backend": start["backend"],
        "gradient_checkpointing": start["gradient_checkpointing"],
        "notes": [e["message"] for e in reporter.events if e["message"].startswith("Training backend")],
    }
    if torch.cuda.is_available():
        out["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def run_baseline(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    import torch
    import transformers
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from gpu_worker.accel import GRADIENT_CHECKPOINTING_PARAMS, load_model_with_lora
    from gpu_worker.data import build_sft_rows, load_examples
    from gpu_worker.packing import CountingCollator

    cuda = torch.cuda.is_available()
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    rows = build_sft_rows(
        load_examples(args.data, "chat"), tok, data_format="chat", max_seq_length=args.max_len
    )
    ds = Dataset.from_dict(
        {"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows]}
    )
    hp = _hp(len(rows), args, args.params)
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    transformers.set_seed(args.seed)
    gc = cuda and args.params > GRADIENT_CHECKPOINTING_PARAMS
    # 4-bit: the same NF4 loading as ours, so the comparison is about the training loop.
    if args.quantization == "4bit":
        model = load_model_with_lora(args.model, hp, cuda=cuda, dtype=dtype, n_params=args.params,
                                     attn_implementation="sdpa", seed=args.seed, use_unsloth=False).model  # fmt: skip
    else:
        base = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation="sdpa")
        base.config.use_cache = False
        lora = LoraConfig(
            r=hp.lora_rank, lora_alpha=hp.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"
        )
        model = get_peft_model(base, lora)
    collator = CountingCollator(DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100))
    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="baseline-"), per_device_train_batch_size=args.batch_size,
        num_train_epochs=1, learning_rate=hp.learning_rate, lr_scheduler_type="linear", warmup_steps=hp.warmup_ratio,
        max_grad_norm=1.0, seed=args.seed, logging_steps=1, save_strategy="no", report_to="none",
        bf16=dtype == torch.bfloat16, use_cpu=not cuda, gradient_checkpointing=gc,
        gradient_checkpointing_kwargs={"use_reentrant": False}, dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=targs, train_dataset=ds, data_collator=collator)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    train_s, train_cpu_s = time.perf_counter() - t, time.process_time() - cpu
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    out = {
        "train_s": round(train_s, 2),
        "train_cpu_s": round(train_cpu_s, 2),
        "padding_waste_pct": collator.padding_pct,
        "largest_batch_shape": list(collator.largest),
        "steps": trainer.state.global_step,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "gradient_checkpointing": gc,
    }
    if cuda:
        out["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


# -- the driver ------------------------------------------------------------------------------------------------


def vram_prediction(
    args: argparse.Namespace, ours: dict[str, Any], baseline: dict[str, Any]
) -> dict[str, Any]:
    """core.vram's prediction for each side's actual shape (same flags as the run), and its error."""
    try:
        from core.vram import ModelArch, estimate, spec_for_job, with_flags
    except ImportError as exc:
        return {"vram_estimator": f"not available ({exc}); raw peaks recorded only"}
    n = sum(1 for _ in open(args.data))
    hp = _hp(n, args, args.params)
    arch = ModelArch.from_config_file(args.model / "config.json")
    out: dict[str, Any] = {}
    reserve = estimate(arch, spec_for_job("supervised", hp))
    out["vram_reservation_mb_job_spec"] = reserve.reservation_mb  # what the scheduler holds for this job
    for side, res in (("baseline", baseline), ("ours", ours)):
        rows, width = res["largest_batch_shape"]  # the step that set the peak: its real shape
        spec = with_flags(spec_for_job("supervised", hp), micro_batch=rows, seq_len=width,
                          gradient_checkpointing=bool(res.get("gradient_checkpointing")))  # fmt: skip
        if side == "ours":
            spec = with_flags(spec, loss="chunked")  # TRL's chunked LM head on CUDA
        est = estimate(arch, spec)
        out[f"vram_predicted_peak_mb_{side}"] = est.peak_mb
        if res.get("peak_memory_mb"):
            out[f"vram_error_pct_{side}"] = round(
                100 * (est.peak_mb - res["peak_memory_mb"]) / res["peak_memory_mb"], 1
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", type=Path, help="model dir (default: demo-tiny, or a random --model-size Llama)"
    )
    ap.add_argument(
        "--model-size", choices=sorted(MODEL_SIZES), help="build a random Llama of this size (CUDA)"
    )
    ap.add_argument("--examples", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--median", type=float, default=220)
    ap.add_argument("--sigma", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="CPU threads for both sides (default: ours' own choice)")
    ap.add_argument("--quantization", choices=["none", "4bit"], default="none")
    ap.add_argument("--unsloth", choices=["auto", "on", "off"], default="auto")
    ap.add_argument(
        "--repeats", type=int, default=1, help="runs of each side, interleaved; the fastest counts"
    )
    ap.add_argument("--side", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--params", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.side:  # a child: run one side, print its JSON
        res = (run_ours if args.side == "ours" else run_baseline)(args, args.threads)
        print("RESULT " + json.dumps(res), flush=True)
        return

    import torch
    from transformers import AutoTokenizer

    from gpu_worker.accel import cpu_threads

    work = Path(tempfile.mkdtemp(prefix="train-throughput-"))
    if args.model_size:
        model = work / f"llama-{args.model_size}"
        params = build_model(args.model_size, model, demo_model(None))
    else:
        model = args.model or demo_model(None)
        params = _count_params(model)
    tok = AutoTokenizer.from_pretrained(model)
    lengths = lognormal_lengths(args.examples, median=args.median, sigma=args.sigma, lo=16, hi=args.max_len,
                                seed=args.seed)  # fmt: skip
    rng = random.Random(args.seed)
    rows, real = [], []
    for target in lengths:
        row, n = chat_example(tok, target, rng, args.max_len)
        rows.append(row)
        real.append(n)
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    threads = args.threads or cpu_threads(params)

    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "ours": []}
    for _ in range(args.repeats):  # interleaved, so a busy spell on a shared machine hits both sides alike
        for side in ("baseline", "ours"):
            cmd = [sys.executable, __file__, "--side", side, "--model", str(model), "--data", str(data),
                   "--params", str(params), "--threads", str(threads), "--batch-size", str(args.batch_size),
                   "--max-len", str(args.max_len), "--seed", str(args.seed), "--quantization", args.quantization,
                   "--unsloth", args.unsloth]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
                raise SystemExit(f"{side} failed (exit {proc.returncode})")
            runs[side].append(json.loads(line.removeprefix("RESULT ")))
    # The fastest of the repeats: the least disturbed by other work on the machine.
    results = {side: min(rs, key=lambda r: r["train_s"]) for side, rs in runs.items()}
    for side, rs in runs.items():
        results[side]["train_s_all"] = [r["train_s"] for r in rs]

    total_tokens = sum(real)
    ours, base = results["ours"], results["baseline"]
    out: dict[str, Any] = {
        "bench": "train_throughput",
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu ({os.cpu_count()} cores)",
        "model": args.model_size or model.name,
        "parameters": params,
        "examples": len(rows),
        "tokens": total_tokens,
        "median_len": sorted(real)[len(real) // 2],
        "mean_len": round(total_tokens / len(real), 1),
        "batch_size": args.batch_size,
        "threads": threads,
        "quantization": args.quantization,
        "tokens_per_s_ours": round(total_tokens / ours["train_s"], 1),
        "tokens_per_s_baseline": round(total_tokens / base["train_s"], 1),
        "speedup": round(base["train_s"] / ours["train_s"], 2),
        "speedup_cpu_time": round(base["train_cpu_s"] / ours["train_cpu_s"], 2),
        "repeats": args.repeats,
        "padding_waste_pct_ours": ours["padding_waste_pct"],
        "padding_waste_pct_baseline": base["padding_waste_pct"],
        "ours": ours,
        "baseline": base,
    }
    if torch.cuda.is_available():
        out["peak_memory_mb_ours"] = ours.get("peak_memory_mb")
        out["peak_memory_mb_baseline"] = base.get("peak_memory_mb")
        args.model, args.params = model, params
        out.update(vram_prediction(args, ours, base))
    print(json.dumps(out), flush=True)


def _count_params(model: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in model.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return total


if __name__ == "__main__":
    main()
