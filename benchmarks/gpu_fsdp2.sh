#!/usr/bin/env bash
# The prepared GPU call for issue 22's FSDP2 part (a few minutes on an H200; one GPU is enough):
#   run(command="bash benchmarks/gpu_fsdp2.sh", carry=["benchmarks/.whl"], timeout_s=420)
# (benchmarks/.whl: the transformers 5.24 wheel, as for gpu_run.sh; the image's own transformers may be older.)
# 1. torchrun over NPROC processes (default: the number of GPUs): finite-difference and FSDP2 products against the
#    exact ones, then SubspaceTrainer with accelerate's FSDP2 plugin (fsdp=True, fsdp_config version 2), resumed
#    from its step-2 checkpoint. accelerate shards only under a launcher (LOCAL_RANK set), so even one GPU is
#    sharded here, with world size 1.
# 2. the same trainer run without fsdp and without a launcher: the unsharded reference of the losses.
# Results come back in $OUT (fsdp2.json, trainer_fsdp2.json, trainer_plain.json, log.txt); put them in
# docs/performance.md ("FSDP2").
# CPU dry run (tiny sizes; on CPU accelerate trains with DDP, so "sharded" is false there):
#   DEVICE=cpu NPROC=2 OUT=/tmp/fsdp2-dry bash benchmarks/gpu_fsdp2.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-benchmarks/results/cuda}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export OUT="$OUT_DIR" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
source benchmarks/gpu_site.sh
NPROC="${NPROC:-$("$PY" -c 'import torch; print(max(1, torch.cuda.device_count()))')}"
{
    nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || true
    "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" benchmarks/gpu_fsdp2.py --out "$OUT_DIR"
    first=$?
    "$PY" benchmarks/gpu_fsdp2.py --part trainer --no-fsdp --out "$OUT_DIR"
    exit $(( first || $? ))
} 2>&1 | tee "$OUT_DIR/log.txt"
exit "${PIPESTATUS[0]}"
