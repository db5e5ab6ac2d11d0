# Sourced by the GPU scripts (gpu_run.sh, gpu_fsdp2.sh) from the repository root, with PY set: the carried
# transformers wheel(s) in benchmarks/.whl go into a scratch site on a CUDA machine (the image's own transformers may
# be older), put first on PYTHONPATH with the repository.
SITE=""
if compgen -G "benchmarks/.whl/*.whl" > /dev/null && [ "${DEVICE:-cuda}" = "cuda" ]; then
    SITE=/tmp/hfsub-site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        benchmarks/.whl/*.whl || exit 1
fi
export PYTHONPATH="${SITE:+$SITE:}$PWD${PYTHONPATH:+:$PYTHONPATH}"
