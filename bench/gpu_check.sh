#!/usr/bin/env bash
# Issue #11 device check, for a bare CUDA machine (torch, transformers, peft present; nothing downloadable).
# Prepare once where pip works:  python bench/gpu_wheels.py   (-> .gpu_wheels/: ~20 MiB of wheels + demo-tiny)
# Run from the repo root with .gpu_wheels carried:  bash bench/gpu_check.sh
# Prints labelled lines; everything also goes to $OUT/gpu_check.log (and bench JSON to $OUT/*.json).
#   1. versions, GPU, whether unsloth imports (and why not)
#   2. pytest -m gpu tests/gpu_worker/test_cuda.py on the plain path (FTSERVE_UNSLOTH=0)
#   3. bench/train_throughput.py on a random ~0.6B Llama, QLoRA 4-bit (transformers + peft); each bench prints one
#      JSON line "BENCH <name> {...}"
#   4. if unsloth imports: the unsloth test, then the bf16 bench with unsloth forced on
#   5. the bf16 LoRA bench on transformers + peft (measured once already: last, as the budget allows)
# Budget: ~5 minutes; later steps are skipped (and say so) past BUDGET_S.
set -u
OUT=${OUT:-/tmp/gpu_check_out}; mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-270}
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
export FTSERVE_DEMO_MODEL_CACHE=$PWD/.gpu_wheels/demo-tiny
step() { echo; echo "=== $* (t=${SECONDS}s)"; }
left() { [ $((BUDGET_S - SECONDS)) -gt "$1" ] || { echo "SKIPPED: $2 (budget ${BUDGET_S}s nearly spent)"; return 1; }; }

step "install carried wheels"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .gpu_wheels/*.whl 2>&1 | grep -v "Running pip as the 'root'" || true
export PYTHONPATH=/tmp/site:$PWD

step "versions"
python3 - <<'EOF'
import importlib, torch
print("GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE", "| torch", torch.__version__,
      "cuda", torch.version.cuda, "bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
for m in ("transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "triton"):
    try:
        print(f"  {m} {importlib.import_module(m).__version__}")
    except Exception as e:
        print(f"  {m} NOT IMPORTABLE: {type(e).__name__}: {e}")
try:
    from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    print("  torch varlen_attn: available")
except Exception as e:
    print(f"  torch varlen_attn: NOT available ({e})")
EOF
step "unsloth import"
timeout 90 python3 -c "import unsloth, unsloth_zoo; print('UNSLOTH IMPORTS:', unsloth.__version__)" \
  > "$OUT/unsloth_import.txt" 2>&1
rc=$?
if [ $rc = 0 ]; then
  UNSLOTH=1; grep "UNSLOTH IMPORTS" "$OUT/unsloth_import.txt"
else
  UNSLOTH=0; echo "UNSLOTH DOES NOT IMPORT (exit $rc); last lines:"; tail -n 15 "$OUT/unsloth_import.txt"
fi

step "gpu tests, plain transformers + peft path (FTSERVE_UNSLOTH=0)"
FTSERVE_UNSLOTH=0 timeout 200 python3 -m pytest -q -m gpu --confcutdir=tests/gpu_worker -p no:cacheprovider \
  -W ignore tests/gpu_worker/test_cuda.py tests/gpu_worker/test_gpu_pinning.py 2>&1 | tail -n 25
echo "GPU TESTS (plain) EXIT: ${PIPESTATUS[0]}"

bench() {  # name, then args for bench/train_throughput.py
  local name=$1; shift
  left 60 "bench $name" || return 0
  step "bench $name: $*"
  timeout $((BUDGET_S - SECONDS + 20)) python3 bench/train_throughput.py "$@" > "$OUT/bench_$name.txt" 2>&1
  local rc=$?
  local line; line=$(grep '^{"bench"' "$OUT/bench_$name.txt" | tail -n 1)
  if [ -n "$line" ]; then echo "BENCH $name $line"; echo "$line" > "$OUT/bench_$name.json"
  else echo "BENCH $name FAILED (exit $rc):"; tail -n 30 "$OUT/bench_$name.txt"; fi
}
# What has never run on a GPU goes first (2026-11-28: bf16 LoRA was measured; QLoRA and unsloth were not).
bench qlora_4bit --model-size 0.5b --examples 384 --batch-size 8 --quantization 4bit --unsloth off
if [ "$UNSLOTH" = 1 ]; then
  if left 60 "unsloth test"; then
    step "gpu test, unsloth auto"
    timeout $((BUDGET_S - SECONDS + 20)) python3 -m pytest -q -m gpu --confcutdir=tests/gpu_worker \
      -p no:cacheprovider -W ignore tests/gpu_worker/test_cuda.py -k unsloth 2>&1 | tail -n 25
    echo "GPU TESTS (unsloth) EXIT: ${PIPESTATUS[0]}"
  fi
  bench bf16_lora_unsloth --model-size 0.5b --examples 384 --batch-size 8 --unsloth on
fi
bench bf16_lora --model-size 0.5b --examples 768 --batch-size 8 --unsloth off
step "done"
