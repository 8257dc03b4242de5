#!/usr/bin/env bash
# The GPU checks of one lent-GPU session, in one call (device time is short: see README "On a GPU").
# Runs from the repository root on a CUDA machine whose python3 has torch but not genscope's other
# dependencies: wheels in .whl/ (diffusers, transformers, ...) are installed to /tmp/site first.
#   OUT=/some/folder bash benchmarks/gpu_checks.sh [tests peers characterize ablation]   (default: tests characterize peers)
# Each step has its own time limit (seconds: TESTS_S, PEERS_S, CHARACTERIZE_S) and writes its log under $OUT;
# a failing step does not stop the next. PEERS_ARGS (default --compile --compile-dtype float16) and MODELS
# (default: stable-diffusion make-a-video imagen) narrow a short session.
set -u
OUT=${OUT:-/tmp/genscope-gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
steps=${*:-tests characterize peers}
stamp() { echo "== $(date -u +%T) $*"; }

for step in $steps; do
  case $step in
  tests)
    stamp tests
    { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
      python3 -c "import torch, triton, diffusers, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'triton', triton.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
      timeout ${TESTS_S:-100} python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_profiler.py tests/test_gpu_attention.py \
        tests/test_cuda_graphs.py \
        tests/test_triton_interpret.py tests/test_passes.py
      echo "rc=$?"; } > "$OUT/tests.log" 2>&1
    tail -5 "$OUT/tests.log" ;;
  peers)
    stamp peers
    timeout ${PEERS_S:-200} python3 benchmarks/peers.py --device cuda --preset paper --image-size 512 --repeat 10 \
      --budget-s 30 ${PEERS_ARGS---compile --compile-dtype float16} --json "$OUT/peers.json" > "$OUT/peers.log" 2>&1
    echo "rc=$?" >> "$OUT/peers.log"
    grep -v "^\[peers\] round" "$OUT/peers.log" | tail -14 ;;
  characterize)
    stamp characterize
    start=$(date +%s)
    timeout ${CHARACTERIZE_S:-180} python3 -m genscope characterize --preset paper --device cuda --dtype float16 \
      --studies breakdown --models ${MODELS:-stable-diffusion make-a-video imagen} --repeat 2 --db "$OUT/gpu.db" --out /tmp/gpu-report \
      > "$OUT/characterize.log" 2>&1
    echo "rc=$? wall_s=$(( $(date +%s) - start ))" >> "$OUT/characterize.log"
    tail -c 1500 "$OUT/characterize.log"
    tar czf "$OUT/report.tgz" -C /tmp gpu-report 2>/dev/null ;;
  ablation)
    stamp ablation
    timeout 120 python3 -m genscope optimize stable-diffusion --preset paper --device cuda --dtype float16 --ablation \
      --backend triton --repeat 3 --no-store > "$OUT/ablation.log" 2>&1
    echo "rc=$?" >> "$OUT/ablation.log"
    tail -c 2500 "$OUT/ablation.log" ;;
  esac
done
stamp done
