#!/usr/bin/env bash
# GPU check, under 10 minutes on one GPU: the CUDA tests (pytest -m gpu) and the model / training / evaluation
# benchmarks in bf16 (pairs/s, utilisation of the bf16 peak, batched images/s against one image at a time).
#
#   bash benchmarks/device_check.sh              # from the repository root, on a machine with a CUDA GPU
#   bash benchmarks/device_check.sh --dry-run    # same steps on the CPU with the tiny preset (CI: a minute at most)
#   DEVICE_CHECK_DRY_RUN=1 bash benchmarks/device_check.sh
#
# Everything (log, JSON figures, nvidia-smi, versions) goes to $OUT (default: results/device_check). Installs the
# project with pinned torch/torchvision first when its imports fail (a bare machine needs the network then).
# Exit status: non-zero when any step fails, or when a real (non-dry) run finds no CUDA device.
set -euo pipefail

DRY="${DEVICE_CHECK_DRY_RUN:-0}"
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "device_check.sh: unknown argument $arg (expected --dry-run)" >&2; exit 2 ;;
  esac
done
[[ -f pyproject.toml && -d ace_lora ]] || { echo "device_check.sh: run it from the repository root" >&2; exit 2; }

PY="${PYTHON:-python}"
OUT="${OUT:-results/device_check}"
mkdir -p "$OUT"
exec > >(tee "$OUT/device_check.log") 2>&1
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - start ))s] $*"; }

step "environment"
if ! "$PY" -c "import torch, torchvision, timm, transformers, pydicom, pytest, ace_lora" 2>/dev/null; then
  echo "installing the project (pinned torch)"
  "$PY" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" -e ".[test]"
fi
"$PY" - <<'EOF' | tee "$OUT/versions.txt"
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cudnn", torch.backends.cudnn.version(), "| nccl", torch.cuda.nccl.version() if torch.cuda.is_available() else None)
print("cpu capability", torch.backends.cpu.get_cpu_capability(), "| cpus", __import__("os").cpu_count())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name} {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, bf16 {torch.cuda.is_bf16_supported()}")
EOF
if [[ "$DRY" == 1 ]]; then
  echo "dry run: CPU, tiny preset (the gpu tests skip, saying why)"
  DEV=cpu PRESET=tiny
else
  command -v nvidia-smi >/dev/null && nvidia-smi | tee "$OUT/nvidia-smi.txt"
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch: nothing to check (use --dry-run on a CPU)')"
  DEV=cuda PRESET=biomedclip
fi

step "CUDA tests: pytest -m gpu"
"$PY" -m pytest -m gpu tests/test_gpu.py -q -rs -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml"

if [[ "$DRY" == 1 ]]; then
  MODEL_ARGS=(--batch-sizes 4 --steps 1 --warmup 0 --image-batch 4)
  TRAIN_ARGS=(--batch 4 --steps 1 --warmup 0)
  TRAIN_PRECISIONS=(bf16)
  EVAL_ARGS=(--images 6 --single-images 3 --batch-size 3 --repeats 1 --bootstrap 10)
else
  MODEL_ARGS=(--batch-sizes 16 64 --steps 5 --warmup 2 --image-batch 256)
  TRAIN_ARGS=(--batch 64 128 --steps 10 --warmup 2)
  TRAIN_PRECISIONS=(bf16 fp32)
  EVAL_ARGS=(--images 1024 --single-images 64 --batch-size 256 --repeats 3 --bootstrap 1000)
fi

step "model benchmark ($PRESET, $DEV, bf16): train step pairs/s, image-embedding images/s"
"$PY" benchmarks/bench_model.py --preset "$PRESET" --device "$DEV" --precision bf16 "${MODEL_ARGS[@]}" \
  --json "$OUT/bench_model_bf16.json"

step "training benchmark ($PRESET, $DEV): pairs/s and utilisation (${TRAIN_PRECISIONS[*]})"
for prec in "${TRAIN_PRECISIONS[@]}"; do
  "$PY" benchmarks/bench_train.py --preset "$PRESET" --device "$DEV" --precision "$prec" "${TRAIN_ARGS[@]}" \
    --out "$OUT/bench_train_$prec.json"
done

step "evaluation benchmark ($PRESET, $DEV, bf16): batched vs one image at a time"
"$PY" benchmarks/bench_eval.py --preset "$PRESET" --device "$DEV" --precision bf16 "${EVAL_ARGS[@]}" \
  --json "$OUT/bench_eval_bf16.json"

step "done in $(( $(date +%s) - start ))s; figures in $OUT"
