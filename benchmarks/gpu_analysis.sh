#!/usr/bin/env bash
# Issue 13's GPU measurements, in one `device` call (H200 image: PyTorch, no transformer-lens or
# plotly; their wheels travel in .whl/, see /work/.library/device/README.md):
#   1. the CUDA tests (batched analyses on CUDA vs the CPU reference, fast engine, resume);
#   2. train nanda2023 (p = 113, 40 000 steps, fast engine) on the GPU;
#   3. benchmarks/bench_analysis.py on that run: every analysis batched on the GPU vs the old
#      per-checkpoint path (on a subset of checkpoints, extrapolated), and the cached second call;
#   4. `grokinterp analyze` from scratch (wall, process start excluded) and again (all cached);
#   5. the report (light) and the analysis caches' summaries; a profile of the fourier chunk.
# Usage: bash benchmarks/gpu_analysis.sh   (results under $OUT, default /tmp/out)
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ! python3 -c 'import transformer_lens, plotly' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >/dev/null 2>&1 || echo "wheel install failed"
fi
export PYTHONPATH=/tmp/site:$PWD
gi() { python3 -c 'import sys; from grokinterp.cli import app; sys.argv[0]="grokinterp"; app()' "$@"; }
STAGES=${STAGES:-"env test train bench analyze report"}
for stage in $STAGES; do
  echo "=== $stage $(date +%T)"
  case $stage in
    env) nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
         python3 -c 'import torch, transformer_lens, plotly; print(torch.__version__, torch.version.cuda)' ;;
    test) timeout 300 python3 -m pytest -q -p no:cacheprovider tests -m "cuda or not slow" \
            -k "cuda" 2>&1 | tail -15 ;;  # every CUDA test: analyses, fast engine, seeds, resume
    train) /usr/bin/time -f "train wall %e s" timeout 300 bash -c \
            "$(declare -f gi); gi train --preset nanda2023 --set train.device=cuda --out /tmp/nanda -q" \
            2>&1 | tail -5
         python3 -c 'import json; d=json.load(open("/tmp/nanda/run.json")); print({k: d[k] for k in ("final_step","wall_time_s") if k in d}, d.get("engine"))'
         ls /tmp/nanda/steps | wc -l ;;
    bench) timeout 400 python3 benchmarks/bench_analysis.py --run /tmp/nanda --device cuda \
            --old-checkpoints ${OLD_CKPTS:-6} --json "$OUT/analysis_nanda2023_cuda.json" ;;
    analyze) rm -rf /tmp/nanda/analysis
         timeout 200 python3 - <<'PY' 2>&1 | tail -20
import time, torch
from grokinterp.store import Run
from grokinterp.analysis import applicable, over_training
run = Run.open("/tmp/nanda")
names = [n for n, r in applicable(run).items() if r is None]
torch.cuda.synchronize(); t = time.perf_counter()
res = over_training(run, names, device="cuda", progress=False)
torch.cuda.synchronize(); first = time.perf_counter() - t
t = time.perf_counter(); again = over_training(run, names, device="cuda", progress=False)
second = time.perf_counter() - t
print(f"all analyses, {len(run.steps)} checkpoints: {first:.2f} s from scratch "
      f"({ {k: round(v, 2) for k, v in res.seconds.items()} }); second call {second:.2f} s, "
      f"computed {sum(again.computed.values())}")
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    over_training(run, ["fourier"], device="cuda", progress=False, force=True)
    torch.cuda.synchronize()
open("/tmp/out_profile.txt", "w").write(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
PY
         cp /tmp/out_profile.txt "$OUT/profile_fourier_cuda.txt" 2>/dev/null
         ( time gi analyze /tmp/nanda --device cuda -q ) > "$OUT/analyze_cached.txt" 2>&1; tail -30 "$OUT/analyze_cached.txt" ;;
    report) timeout 200 bash -c "$(declare -f gi); gi report /tmp/nanda --light -o $OUT/nanda2023_report.html" 2>&1 | tail -5
         cp /tmp/nanda/run.json "$OUT/nanda2023_run.json"; cp /tmp/nanda/metrics.jsonl "$OUT/nanda2023_metrics.jsonl"
         cp /tmp/nanda/analysis/fourier.safetensors "$OUT/nanda2023_fourier.safetensors" ;;
  esac
done
