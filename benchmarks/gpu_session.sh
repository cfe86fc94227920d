#!/usr/bin/env bash
# The GPU benchmarks of benchmarks/RESULTS.md, as run through the `device` tool (an H100 whose
# image has PyTorch but not transformer-lens: its wheels travel in .whl/, see
# /work/.library/device/README.md). Usage: bash benchmarks/gpu_session.sh STAGE...
# Stages: env test profile step seeds ckpt grok e2e transfer. JSON results and logs go to $OUT (or /tmp/out).
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ! python3 -c 'import transformer_lens' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >/dev/null 2>&1 || echo "wheel install failed"
fi
export PYTHONPATH=/tmp/site:$PWD
B="python3 benchmarks/bench_train.py"
for stage in "$@"; do
  echo "=== $stage $(date +%T)"
  case $stage in
    env) nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
         python3 -c 'import torch, transformer_lens, einops, safetensors; print(torch.__version__, torch.version.cuda, transformer_lens.__version__ if hasattr(transformer_lens, "__version__") else "tl ok")'
         nproc; df -h /tmp | tail -1 ;;
    test) timeout 120 python3 -m pytest -q tests/test_fast.py tests/test_multiseed.py -k "cuda or 50_steps or tf32 or equal_seeds or compile" -p no:cacheprovider 2>&1 | tail -15 ;;
    profile) timeout 120 python3 benchmarks/profile_step.py --seeds 1 64 --tf32 0 1 ;;
    snapshot) timeout 60 python3 benchmarks/profile_step.py --snapshot ;;
    step) timeout 200 $B step --presets demo nanda2023 ${STEP_ARGS:-} --json "$OUT/step_cuda.json" ;;
    seeds) timeout 240 $B seeds --seeds 1 8 64 ${SEEDS_ARGS:-} --json "$OUT/seeds_cuda.json" ;;
    ckpt) timeout 120 $B ckpt --rounds 2 --ckpt-steps 3000 --json "$OUT/ckpt_cuda.json" ;;
    grok) timeout 150 $B grok --grok-tf32 --json "$OUT/grok_cuda.json" ;;
    e2e) timeout 150 $B seeds --seeds 1 64 --tf32-modes ${E2E_TF32:-0} --rounds 1 --steps 5 --end-to-end --e2e-steps 1000 ${E2E_ARGS:-} --json "$OUT/seeds_e2e_cuda.json" ;;
    transfer) timeout 240 python3 -c 'from grokinterp.cli import app; app()' transfer \
         --weak groktransfer-weak-mod-add --target groktransfer-mod-add --compare --grokfast \
         --set train.device=cuda --weak-set train.device=cuda ${TRANSFER_ARGS:-} --out /tmp/transfer113 --quiet ;;
  esac
done
