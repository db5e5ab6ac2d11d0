#!/usr/bin/env bash
# The longer versions of the issue-13 reference runs, for a lent GPU, in one call (not yet run on a GPU).
#
# The CPU reference cards (model_cards/mlp_mnist_{eos,sgd,momentum,adam,sam}, vit_cifar10) are shortened for a busy
# 2-core machine; this script runs them closer to the paper: MNIST-5k instead of 1k, basis refreshed every step
# (the paper's) or every 20, and the ViT config's 3,000 steps with the Hessian on 1,000 images.
#
# Prepare here (CPU machine), once: stage the data inside the repository (the device gets the working tree plus
# `carry` paths; ../shared is not copied):
#   mkdir -p model_cards/.data && python -c "import numpy as np; d = np.load('../shared/data/mnist/train.npz'); \
#     np.savez('model_cards/.data/mnist_5k.npz', x=d['x'][:5000], y=d['y'][:5000])" \
#     && cp ../shared/data/cifar10/{train,test}.npz model_cards/.data/
# Then one device call (results come back from $OUT: one folder per run with summary.json and the figures):
#   run(command="bash model_cards/gpu_paper_runs.sh", carry=["model_cards/.data"], timeout_s=580)
# Dry run on CPU (a handful of steps each): QUICK=1 OUT=/tmp/gpu-dry bash model_cards/gpu_paper_runs.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-runs/gpu_paper_runs}"
DATA="${DATA:-model_cards/.data}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1
RUN="${PYTHON:-python3} -m hf_subspace.cli run"
COMMON=(--report_to none --disable_tqdm true --overwrite_output_dir true)
QUICK_OPTS=()
if [ -n "${QUICK:-}" ]; then
    QUICK_OPTS=(--max_steps 12 --switch_step 6 --subspace_alignment_steps 3 --subspace_refresh_steps 3 --num_train 200)
fi
MNIST=(--train_file "$DATA/mnist_5k.npz" --num_train 5000 --hessian_batch_size 5000 --per_device_eval_batch_size 1000)
status=0
one() {  # one() NAME RECIPE OPTIONS...: run, keep going on failure, time it
    local name=$1 recipe=$2
    shift 2
    local start=$SECONDS
    $RUN "$recipe" "$@" "${COMMON[@]}" "${QUICK_OPTS[@]}" --output_dir "$OUT_DIR/$name" || status=1
    echo "$name: $((SECONDS - start)) s"
}
{
    nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || true
    # edge of stability on MNIST-5k: GD lr 0.05 (2/η = 40), refresh every step
    one mlp_mnist5k_eos mlp_mnist "${MNIST[@]}" --num_validation 1000 --prefix gd --modes gd,dominant-gd,bulk-gd \
        --learning_rate 0.05 --max_steps 1500 --switch_step 750 --subspace_alignment_steps 25 --subspace_refresh_steps 1
    # Dom-/Bulk- variants and Table 1 (first 1,000 steps) for SGD, momentum, Adam, SAM; refresh every 20 steps
    for variant in "sgd:--subspace_extra_eigenvalues 10" "momentum:--optim_args momentum=0.9" \
        "adam:--optim adamw_torch --learning_rate 0.001" "sam:--sam_rho 0.05"; do
        # shellcheck disable=SC2086
        one "mlp_mnist5k_${variant%%:*}" mlp_mnist "${MNIST[@]}" --num_validation 1000 --max_steps 3000 \
            --switch_step 1000 --subspace_alignment_steps 50 --subspace_refresh_steps 20 ${variant#*:}
    done
    # the ViT config (3,000 steps, Hessian on 1,000 images, refresh every 20 steps)
    one vit_cifar10_config vit_cifar10 recipes/configs/vit_cifar10.yaml --train_file "$DATA/train.npz" \
        --validation_file "$DATA/test.npz"
    exit $status
} 2>&1 | tee "$OUT_DIR/log.txt"
exit "${PIPESTATUS[0]}"
