#!/usr/bin/env bash
# The prepared GPU call: all benchmark tables on the GPU in one run (budget about 5 minutes on an H200).
#
# Prepare here (CPU machine), once:
#   python benchmarks/run_all.py --stage-data                                   # data  -> benchmarks/.data
#   pip download --no-deps -d benchmarks/.whl transformers==5.24.0              # the image has transformers 5.17
#   (peers in benchmarks/.peers: see benchmarks/README.md)
# Then one device call:
#   run(command="bash benchmarks/gpu_run.sh", carry=["benchmarks/.peers", "benchmarks/.data", "benchmarks/.whl"],
#       timeout_s=540)
# Results come back from $OUT (7 files: 5 JSONs, summary.md, log.txt); copy them to benchmarks/results/cuda/.
# Locally, a dry run of the same script on CPU: PROFILE=quick DEVICE=cpu OUT=/tmp/gpu-dry bash benchmarks/gpu_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-benchmarks/results/cuda}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
source benchmarks/gpu_site.sh
[ -f benchmarks/.data/mnist_train_5k.npz ] && export HF_SUBSPACE_MNIST_NPZ="$PWD/benchmarks/.data/mnist_train_5k.npz"
[ -f benchmarks/.data/sst2_train_20k.tsv ] && export HF_SUBSPACE_SST2_TSV="$PWD/benchmarks/.data/sst2_train_20k.tsv"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
    "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
    "$PY" benchmarks/run_all.py --profile "${PROFILE:-gpu}" --device "${DEVICE:-cuda}" --out-dir "$OUT_DIR"
} 2>&1 | tee "$OUT_DIR/log.txt"
exit "${PIPESTATUS[0]}"
