#!/usr/bin/env bash
# The engine benchmark on a CUDA box with bf16 autocast and channels-last (issue 5's GPU row), in one call.
# Wheels the box may lack (no internet there) go in WHEELS (default .whl/), fetched on a connected machine with
#   pip download --no-deps --only-binary :all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl openslide-python openslide-bin segmentation-models-pytorch==0.6.0 shapely
# Results: $OUT/engine_gpu.json (bf16, auto) and engine_gpu_fp32.json, then gpu_forward.json (compile/CUDA graphs),
# with their .md (copy them to benchmarks/results/).
set -uo pipefail
OUT=${OUT:-benchmarks/results}; WHEELS=${WHEELS:-.whl}; mkdir -p "$OUT"
export PYTHONPATH=$PWD
if ! python3 -c "import openslide, segmentation_models_pytorch, shapely, zarr" 2>/dev/null; then
  [ -d "$WHEELS" ] || { echo "missing packages and no wheels in $WHEELS" >&2; exit 1; }
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
python3 -c "import openslide, segmentation_models_pytorch, shapely, zarr, torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# each GPU runtime x precision (docs/runtimes.md: on CUDA only torch runs; bf16 autocast is auto's choice, fp32 the reference)
python3 benchmarks/bench_engine.py --device cuda --batch-size "${BS:-32}" --workers "${WORKERS:-15}" --repeat 2 \
    --skip-memory --json "$OUT/engine_gpu.json" --note "${NOTE:-torch bf16 autocast + channels-last (auto); the first of two runs per mode warms the GPU up}" || exit 1
python3 benchmarks/bench_engine.py --device cuda --no-amp --batch-size "${BS:-32}" --workers "${WORKERS:-15}" --repeat 2 \
    --skip-memory --json "$OUT/engine_gpu_fp32.json" --note "torch fp32 (--precision fp32); the first of two runs per mode warms the GPU up"
# item 5: eager bf16 (today's auto) against torch.compile and CUDA graphs, model only, both graphs; written
# after each model, so a timeout keeps the demo's figures ($OUT/gpu_forward.json/.md)
timeout "${FORWARD_TIMEOUT:-300}" python3 benchmarks/bench_gpu_forward.py --device cuda --batch "${BS:-32}" \
    --json "$OUT/gpu_forward.json" ${RESNET34:+--resnet34-checkpoint "$RESNET34"}
