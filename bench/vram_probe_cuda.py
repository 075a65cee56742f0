"""Measure the GPU memory of real LoRA training steps, the way ftserve's CUDA worker trains, to check the
`ftserve-cuda` profile of the VRAM estimator (or to calibrate a new stack: a two-point probe).

    python bench/vram_probe_cuda.py > probe.json          # on a CUDA machine; needs torch, transformers, peft
    python bench/vram_estimator.py --probe probe.json      # compare with the estimator (any machine)

Models are built from real config.json shapes with random weights (no download: memory does not depend on
the values). Each run: bf16 base, PEFT LoRA r16 on all linear layers (fp32 adapters), gradient checkpointing,
SDPA attention, bf16 autocast, the model's own (unfused) cross-entropy, torch AdamW; two optimizer steps on
random tokens of exactly batch x seq. Reported: the allocator's peak (reserved) plus the CUDA context, i.e.
what the process holds on the device.
"""

from __future__ import annotations

import gc
import json
import sys
import time

CONFIGS = {
    "llama-3.2-1b": {"hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192, "vocab_size": 128256,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "tie_word_embeddings": True},
    "llama-3.2-3b": {"hidden_size": 3072, "num_hidden_layers": 28, "intermediate_size": 8192, "vocab_size": 128256,
                     "num_attention_heads": 24, "num_key_value_heads": 8, "tie_word_embeddings": True},
    "llama-3.1-8b": {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False},
}  # fmt: skip
RUNS = [
    ("llama-3.2-1b", 4, 1024),
    ("llama-3.2-1b", 8, 2048),
    ("llama-3.2-3b", 2, 2048),
    ("llama-3.1-8b", 2, 1024),
    ("llama-3.1-8b", 1, 4096),
    ("llama-3.1-8b", 4, 2048),
]


def main() -> int:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    mib = 2**20
    torch.zeros(1, device="cuda")
    free, total = torch.cuda.mem_get_info()
    context_mb = (total - free) / mib - torch.cuda.memory_reserved() / mib
    for name, batch, seq in RUNS:
        t0 = time.perf_counter()
        config = LlamaConfig(**CONFIGS[name], max_position_embeddings=131072, attn_implementation="sdpa")
        torch.set_default_dtype(torch.bfloat16)
        with torch.device("cuda"):
            model = LlamaForCausalLM(config)
        torch.set_default_dtype(torch.float32)
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        )
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        ids = torch.randint(0, config.vocab_size, (batch, seq), device="cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        row = {
            "model": name,
            "batch": batch,
            "seq": seq,
            "peak_reserved_mb": round(torch.cuda.max_memory_reserved() / mib),
            "peak_allocated_mb": round(torch.cuda.max_memory_allocated() / mib),
            "context_mb": round(context_mb),
            "measured_mb": round(torch.cuda.max_memory_reserved() / mib + context_mb),
            "trainable_parameters": sum(p.numel() for p in trainable),
            "seconds": round(time.perf_counter() - t0, 1),
            "device": torch.cuda.get_device_name(),
            "torch": torch.__version__,
        }
        print(json.dumps(row), flush=True)
        del model, optimizer, loss, ids, trainable
        gc.collect()
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
