#!/usr/bin/env bash
# The prepared GPU call for issue 22's FSDP2 part (about 1 minute on an H200):
#   run(command="bash benchmarks/gpu_fsdp2.sh", timeout_s=300)
# Results come back in $OUT/fsdp2.json and $OUT/log.txt; put them in docs/performance.md ("FSDP2").
# CPU dry run (2 gloo processes): DEVICE=cpu NPROC=2 OUT=/tmp/fsdp2-dry bash benchmarks/gpu_fsdp2.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-benchmarks/results/cuda}"
mkdir -p "$OUT_DIR"
export OUT="$OUT_DIR" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
NPROC="${NPROC:-$(python3 -c 'import torch; print(max(1, torch.cuda.device_count()))')}"
python3 -m torch.distributed.run --standalone --nproc_per_node "$NPROC" benchmarks/gpu_fsdp2.py 2>&1 | tee "$OUT_DIR/log.txt"
exit "${PIPESTATUS[0]}"
