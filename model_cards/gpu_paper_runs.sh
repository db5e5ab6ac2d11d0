#!/usr/bin/env bash
# The reference runs a 2-core CPU cannot afford, for ONE call on a lent H200 (issue 20, point 8). Prepared and
# dry-run on the CPU (QUICK=1, tests/test_gpu_script.py). Run on an H200 on 2026-12-04 (docs/reproduction.md): the
# SGD/GD runs below fit a call; the Dom-/Bulk- branches of vit_cifar10 and transformer_sst2 did not (see Sizing).
#
# Runs (all at once, one process each; the conventions of model_cards/regenerate.py: the χ_k EMA switch, bases
# certified within 0.05 with exact audits, MNIST pixels in [0, 1] without standardisation; one seed, SEEDS="0 1 2"
# for three):
#   mnist5k_sgd       MLP 784-200-200-10 on MNIST-5k (Hessian set = all 5,000), SGD lr 0.01: SGD, GD, Dom-, Bulk-;
#                     20 eigenvalues (spectrum gap); 2,000 steps, switch by the EMA rule capped at step 1,000
#   mnist5k_momentum  the same with momentum 0.9 (SGD, Dom-, Bulk-), 2,000 steps, cap 1,000
#   mnist5k_adam      the same with Adam lr 0.001, 2,000 steps, cap 1,000
#   mnist5k_sam       the same with SAM ρ = 0.05, 2,000 steps, cap 1,000
#   mnist5k_eos       full-batch GD lr 0.05 on MNIST-5k (2/η = 40), GD / Dom-GD / Bulk-GD, 800 steps, switch at 400
#   cnn_cifar10       the paper's CNN on the shipped CIFAR-10 5k, SGD lr 0.05, Hessian set 1,000 (CPU card: 250),
#                     1,000 steps, cap 400 (CPU card: 450, cap 250); SGD, GD, Dom-, Bulk-
#   vit_cifar10       the small transformers ViT, SGD lr 0.1, Hessian set 500 (CPU card: 128), 900 steps, cap 300
#                     (CPU card: 450, cap 150); SGD, GD, Dom-, Bulk-
#   transformer_sst2  the 2-layer Transformer (MSE) on the first 1,000 SST-2 sentences, SGD lr 0.01 (ηλ₁ ≈ 0.86 on the
#                     CPU attempt), Hessian set = all 1,000 (paper's), 1,500 steps, cap 300; SGD, GD, Dom-, Bulk-. On
#                     the CPU (Hessian set 100, 450-step branches) SGD's own progress was 0.036, under the claims'
#                     0.05, so the branches are three times longer here
#   vit_cifar10_gd_prefix, transformer_sst2_gd_prefix  full-batch GD prefix (fixed switch at 300), then SGD and GD
#                     branches of 400 steps: the GD→SGD claim for those models
# Validation: the first 2,000 official MNIST test images; the 1,000 shipped CIFAR-10 test images.
# Sizing, measured on the H200 (2026-12-04, 8 runs side by side, OMP_NUM_THREADS=2 each): the models are
# launch-bound; a Hessian-vector product over transformer_sst2's 1,000-sentence Hessian set took ~0.2 s (~5 per
# second; 0.12 s alone), vit_cifar10's ~160-product refreshes ran at ~25 per second, and a certified projected step
# needs a refresh at nearly every step, so Dom-/Bulk- branches cost ~6–8 s per step: a 1,200-step branch is hours,
# past one call. Measured wall times of the SGD/GD-only runs (EXTRA="--modes sgd,gd", 3 runs side by side):
# vit_cifar10 234 s, transformer_sst2 264 s; with 8 side by side: the two _gd_prefix runs 215 s and 306 s. A run
# still going after BUDGET_S (default 480 s) is stopped and reported as such in log.txt; LADDER runs (default
# vit_cifar10 and transformer_sst2) are also started with branches shortened by SCALES, so that the longest that fits
# comes back. Expect ~30 s for the start and the wheel install on top.
#
# Prepare here, once (stages the data inside the repository, since only the working tree and `carry` paths reach the
# device, and downloads the wheels the device image lacks: PyPI cannot be reached from the device):
#   bash model_cards/gpu_paper_runs.sh stage            # model_cards/.data and model_cards/.wheels (git-ignored)
# One device call:
#   run(command="bash model_cards/gpu_paper_runs.sh", carry=["model_cards/.data", "model_cards/.wheels"],
#       timeout_s=590)
# What comes back in $OUT (2 files; the device returns at most 8): gpu_paper_runs.tar.gz (per run: summary.json,
# machine.json (read by `cards --adopt`), the
# figures, each branch's model card README.md and hf_subspace_experiment.json, the run's log) and log.txt (the
# machine, the installed versions, each run's exit status and wall time). Models, checkpoints and TensorBoard stay in
# the scratch folder (SCRATCH, default a fresh folder under /tmp). A device call sends the checkout its session was
# started in, so stage there. To turn a run into a reference card afterwards, here: unpack the archive, give
# model_cards/regenerate.py a ReferenceRun with the run's options, then `hf-subspace cards --adopt NAME=FOLDER`.
#
# Variables: QUICK=1 (a few steps on tiny sizes; CPU), DATA (default model_cards/.data), WHEELS (default
# model_cards/.wheels), OUT (default runs/gpu_paper_runs), SCRATCH, BUDGET_S, JOBS (runs at a time; default all),
# SEEDS, PYTHON (default python3), ONLY (run names to keep, space-separated), LADDER (runs also started with
# shorter branches), SCALES (their branch lengths as fractions), LIST=1 (print the runs, run nothing), EXTRA (options
# appended to every run, e.g. EXTRA="--modes sgd,gd"; later options win).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DATA="${DATA:-model_cards/.data}"
WHEELS="${WHEELS:-model_cards/.wheels}"

if [ "${1:-}" = "stage" ]; then  # here, not on the device
    SHARED="${2:-../shared/data}"
    mkdir -p "$DATA/mnist" "$DATA/cifar10" "$DATA/sst2" "$WHEELS" || exit 1
    "$PY" -c "import numpy as np, sys; d = np.load(sys.argv[1]); \
np.savez_compressed(sys.argv[2], x=d['x'][:5000], y=d['y'][:5000])" "$SHARED/mnist/train.npz" "$DATA/mnist/train.npz" &&
        cp "$SHARED"/mnist/t10k-{images-idx3,labels-idx1}-ubyte.gz "$DATA/mnist/" &&
        cp "$SHARED"/cifar10/{train,test}.npz "$DATA/cifar10/" &&
        cp "$SHARED"/sst2/{train,dev}.tsv "$DATA/sst2/" || exit 1
    # Two versions of datasets: pip on the device picks the newest its pyarrow / huggingface_hub / fsspec allow.
    for set in "datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 evaluate==0.4.6" \
        "datasets==4.4.1 dill==0.4.0 multiprocess==0.70.18 fsspec==2025.10.0"; do
        # shellcheck disable=SC2086
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_17_x86_64 -d "$WHEELS" $set || exit 1
    done
    du -sh "$DATA" "$WHEELS"
    exit 0
fi

RESULTS="${OUT:-runs/gpu_paper_runs}"
SCRATCH="${SCRATCH:-$(mktemp -d /tmp/gpu_paper_runs.XXXXXX)}"
BUDGET_S="${BUDGET_S:-480}"
SEEDS="${SEEDS:-0}"
mkdir -p "$RESULTS" "$SCRATCH/runs" "$SCRATCH/logs" || exit 1
RESULTS="$(cd "$RESULTS" && pwd)"
LOG="$RESULTS/log.txt"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
say() { echo "$*" | tee -a "$LOG"; }
: >"$LOG"

MNIST=(--train_file "$DATA/mnist/train.npz" --validation_file "$DATA/mnist/t10k-images-idx3-ubyte.gz"
    --num_train 5000 --num_validation 2000 --hessian_batch_size 5000 --per_device_eval_batch_size 2000
    --standardize none --switch_rule ema --subspace_basis_tol 0.05)
OPTIM=("${MNIST[@]}" --modes sgd,dominant,bulk --max_steps 2000 --switch_step 1000 --subspace_alignment_steps 100
    --subspace_refresh_steps 200 --basis_audit_steps 100 --logging_steps 100)
CIFAR=(--train_file "$DATA/cifar10/train.npz" --validation_file "$DATA/cifar10/test.npz" --num_train 5000
    --num_validation 1000 --modes sgd,gd,dominant,bulk --switch_rule ema --switch_measure_steps 10
    --subspace_alignment_steps 25 --subspace_basis_tol 0.05 --subspace_refresh_steps 50 --basis_audit_steps 50
    --subspace_extra_eigenvalues 3 --logging_steps 25)
RUNS=(  # NAME|RECIPE|OPTIONS (word-split; no spaces inside an option)
    "mnist5k_sgd|mlp_mnist|${OPTIM[*]} --modes sgd,gd,dominant,bulk --subspace_extra_eigenvalues 10"
    "mnist5k_momentum|mlp_mnist|${OPTIM[*]} --optim_args momentum=0.9"
    "mnist5k_adam|mlp_mnist|${OPTIM[*]} --optim adamw_torch --learning_rate 0.001"
    "mnist5k_sam|mlp_mnist|${OPTIM[*]} --sam_rho 0.05"
    "mnist5k_eos|mlp_mnist|${MNIST[*]} --prefix gd --modes gd,dominant-gd,bulk-gd --learning_rate 0.05
        --max_steps 800 --switch_step 400 --switch_rule fixed --subspace_alignment_steps 20 --subspace_refresh_steps 100
        --basis_audit_steps 50 --logging_steps 20"
    "cnn_cifar10|cnn_cifar10|${CIFAR[*]} --learning_rate 0.05 --max_steps 1000 --switch_step 400
        --hessian_num_samples 1000 --hessian_batch_size 1000 --per_device_eval_batch_size 1000"
    "vit_cifar10|vit_cifar10|${CIFAR[*]} --learning_rate 0.1 --max_steps 900 --switch_step 300
        --hessian_num_samples 500 --hessian_batch_size 500 --per_device_eval_batch_size 500"
    "transformer_sst2|transformer_sst2|--train_file $DATA/sst2/train.tsv --validation_file $DATA/sst2/dev.tsv
        --num_train 1000 --learning_rate 0.01 --modes sgd,gd,dominant,bulk --max_steps 1500 --switch_step 300
        --switch_rule ema --switch_measure_steps 10 --subspace_alignment_steps 25 --subspace_basis_tol 0.05
        --subspace_refresh_steps 100 --basis_audit_steps 50 --subspace_extra_eigenvalues 2 --hessian_batch_size 250
        --logging_steps 25"
    "vit_cifar10_gd_prefix|vit_cifar10|${CIFAR[*]} --learning_rate 0.1 --prefix gd --modes sgd,gd --max_steps 700
        --switch_step 300 --switch_rule fixed --hessian_num_samples 500 --hessian_batch_size 500
        --per_device_eval_batch_size 500"
    "transformer_sst2_gd_prefix|transformer_sst2|--train_file $DATA/sst2/train.tsv --validation_file $DATA/sst2/dev.tsv
        --num_train 1000 --learning_rate 0.01 --prefix gd --modes sgd,gd --max_steps 700 --switch_step 300
        --subspace_alignment_steps 25 --subspace_basis_tol 0.05 --subspace_refresh_steps 100 --basis_audit_steps 50
        --hessian_batch_size 250 --logging_steps 25"
)
# LADDER: runs also started with shorter branches, side by side, in case the full length does not fit the budget
# (NAME_b<steps after the switch cap>); the longest that finishes is the one to adopt.
LADDER="${LADDER-vit_cifar10 transformer_sst2}"
SCALES="${SCALES:-0.5 0.25}"
QUICK_OPTS=()
if [ -n "${QUICK:-}" ]; then  # CPU smoke test: every run, a handful of steps on tiny sizes (later options win)
    QUICK_OPTS=(--max_steps 6 --switch_step 3 --subspace_alignment_steps 3 --subspace_refresh_steps 3
        --basis_audit_steps 3 --num_train 60 --num_validation 20 --hessian_num_samples 30 --hessian_batch_size 30
        --per_device_train_batch_size 10 --per_device_eval_batch_size 20 --logging_steps 3)
fi

# 1. refuse, before anything runs, data the runs cannot use (too few training or validation examples)
preflight() {
    "$PY" - "$@" <<'PYEOF'
import argparse, gzip, struct, sys
from pathlib import Path

import numpy as np

def count(path: Path) -> int:
    if path.suffix == ".npz":
        with np.load(path) as npz:
            return len(npz["y"])
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as handle:
            return struct.unpack(">I", handle.read(8)[4:8])[0]
    return sum(1 for _ in path.open(encoding="utf-8")) - 1

problems = []
for spec in sys.argv[1:]:
    name, _, options = spec.split("|", 2)
    parser = argparse.ArgumentParser(add_help=False)
    for flag in ("--train_file", "--validation_file"):
        parser.add_argument(flag)
    for flag in ("--num_train", "--num_validation"):
        parser.add_argument(flag, type=int)
    ns, _ = parser.parse_known_args(options.split())
    for flag in ("--train_file", "--validation_file"):
        given = getattr(ns, flag[2:])
        if given and not Path(given).is_file():
            problems.append(f"{name}: {flag} {given} is missing (run `bash model_cards/gpu_paper_runs.sh stage` here)")
    if problems or not ns.train_file:
        continue
    n_file = count(Path(ns.train_file))
    if ns.num_train and n_file < ns.num_train:
        problems.append(f"{name}: --num_train {ns.num_train} but {ns.train_file} holds {n_file:,} examples")
    wanted = ns.num_validation or 0
    if ns.validation_file:
        n_val = count(Path(ns.validation_file))
        if n_val < wanted:
            problems.append(f"{name}: --num_validation {wanted} but --validation_file {ns.validation_file} holds "
                            f"{n_val:,} examples")
    elif n_file - (ns.num_train or 0) < wanted:
        problems.append(f"{name}: --num_validation {wanted} without --validation_file, but {ns.train_file} holds "
                        f"{n_file:,} examples and --num_train {ns.num_train} leaves {n_file - (ns.num_train or 0):,}")
for line in problems:
    print(f"gpu_paper_runs.sh: refused: {line}", file=sys.stderr)
sys.exit(1 if problems else 0)
PYEOF
}

SPECS=()  # one line each: NAME|RECIPE|OPTIONS with the QUICK options last
set -f
for run in "${RUNS[@]}"; do
    name=${run%%|*}
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
    small=()  # QUICK: the MLPs also shrink (the CPU test's time goes mostly into 200-unit layers)
    [ -n "${QUICK:-}" ] && [[ $run == *"|mlp_mnist|"* ]] && small=(--hidden_sizes 16,16)
    # shellcheck disable=SC2086
    SPECS+=("$(echo $run ${EXTRA:-} ${QUICK_OPTS[*]} ${small[*]})")
    if [[ " $LADDER " == *" $name "* ]]; then
        cap=$(echo $run | sed -E 's/.*--switch_step ([0-9]+).*/\1/')
        steps=$(echo $run | sed -E 's/.*--max_steps ([0-9]+).*/\1/')
        for scale in $SCALES; do
            branch=$(awk -v s="$scale" -v n="$steps" -v c="$cap" 'BEGIN { printf "%d", s * (n - c) }')
            # shellcheck disable=SC2086
            SPECS+=("$(echo "${name}_b$branch|"${run#*|} --max_steps $((cap + branch)) ${EXTRA:-} ${QUICK_OPTS[*]} ${small[*]})")
        done
    fi
done
set +f
if [ -n "${LIST:-}" ]; then printf '%s\n' "${SPECS[@]}"; exit 0; fi  # LIST=1: the runs and their options, nothing run
if ! preflight "${SPECS[@]}" 2> >(tee -a "$LOG" >&2); then
    say "gpu_paper_runs.sh: nothing was run"
    exit 2
fi

# 2. what the device image lacks (datasets, evaluate), from the carried wheels: PyPI cannot be reached from there
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
    echo "scratch: $SCRATCH; budget ${BUDGET_S} s; seeds $SEEDS; quick ${QUICK:-0}"
} | tee -a "$LOG"
if ! "$PY" -c "import datasets, evaluate" 2>/dev/null; then
    # into the image's environment, so pip checks the versions there; else (read-only) beside it, newest wheels
    if ! "$PY" -m pip install -q --no-index --find-links "$WHEELS" --no-cache-dir "datasets>=3.0" "evaluate>=0.4" \
        >>"$LOG" 2>&1; then
        say "pip could not install into the environment; trying --target $SCRATCH/site with the newest wheels"
        "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --target "$SCRATCH/site" \
            "$WHEELS"/{datasets-5.2.0,evaluate-0.4.6,dill-0.4.1,multiprocess-0.70.19,fsspec-2026.9.0}-*.whl >>"$LOG" 2>&1
        export PYTHONPATH="$SCRATCH/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    "$PY" -c "import datasets, evaluate" 2>>"$LOG" ||
        { say "gpu_paper_runs.sh: datasets/evaluate from $WHEELS do not import (see above); nothing was run"; exit 3; }
fi
"$PY" -c "import datasets, evaluate, torch, transformers as t; print('torch', torch.__version__, 'cuda', \
torch.cuda.is_available(), '| transformers', t.__version__, '| datasets', datasets.__version__, '| evaluate', \
evaluate.__version__)" 2>&1 | tee -a "$LOG"

# 3. the runs, side by side, each stopped at the budget
START=$SECONDS
one() {  # one NAME SEED RECIPE OPTIONS...
    local name=$1 seed=$2 recipe=$3 begin=$SECONDS rc
    shift 3
    local left=$((BUDGET_S - (SECONDS - START)))
    [ "$left" -lt 30 ] && left=30
    # shellcheck disable=SC2068
    timeout --kill-after=15 "$left" "$PY" -m hf_subspace.cli run "$recipe" $@ --seed "$seed" \
        --report_to none --disable_tqdm true --overwrite_output_dir true \
        --output_dir "$SCRATCH/runs/$name-seed$seed" >"$SCRATCH/logs/$name-seed$seed.log" 2>&1
    rc=$?
    # the machine, for the cards of an adopted run (hf-subspace cards --adopt reads machine.json beside summary.json)
    "$PY" -c "import json, sys, torch; from hf_subspace.experiments.cards import machine_info; \
torch.set_num_threads(int(sys.argv[2])); m = machine_info(); m['platform'] += ', torch ' + torch.__version__; \
json.dump(m, open(sys.argv[1], 'w'))" "$SCRATCH/runs/$name-seed$seed/machine.json" "$OMP_NUM_THREADS" 2>/dev/null
    local what="ok"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && what="STOPPED at the ${BUDGET_S} s budget (halve its steps)"
    [ "$rc" -ne 0 ] && [ "$what" = "ok" ] && what="FAILED (exit $rc; see its log)"
    say "$name seed $seed: $what, $((SECONDS - begin)) s"
    return "$rc"
}
status=0
jobs_max="${JOBS:-${#SPECS[@]}}"
for spec in "${SPECS[@]}"; do
    IFS='|' read -r name recipe options <<<"$spec"
    for seed in $SEEDS; do
        while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || status=1; done
        # shellcheck disable=SC2086
        one "$name" "$seed" "$recipe" $options &
    done
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || status=1; done
wait || status=1
say "all runs: $((SECONDS - START)) s, exit status $status"

# 4. only summaries, figures, cards and logs come back (one archive beside log.txt)
(cd "$SCRATCH" && find runs logs -type f \( -name summary.json -o -name '*.png' -o -name README.md \
    -o -name hf_subspace_experiment.json -o -name machine.json -o -name '*.log' \) -not -path '*/checkpoint-*' -print0 |
    tar --null -czf "$RESULTS/gpu_paper_runs.tar.gz" -T -) || status=1
ls -la "$RESULTS" | tee -a "$LOG"
exit "$status"
