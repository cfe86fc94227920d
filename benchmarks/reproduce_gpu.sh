#!/usr/bin/env bash
# The paper-size reproductions of issue 17 on one GPU, as run through the `device` tool (its
# image has PyTorch but not transformer-lens: wheels travel in .whl/, as in gpu_session.sh).
#
#   bash benchmarks/reproduce_gpu.sh nanda2023,minegishi2024,lee2024            # ~6.5 GPU min
#   bash benchmarks/reproduce_gpu.sh xu2024                                     # ~4.5 GPU min
#   bash benchmarks/reproduce_gpu.sh fan2024,humayun2024,liu2022,merrill2023    # ~8.5 GPU min
#
# Runs go to $RUNS (default /tmp/repro: kept between calls on a warm machine, so a second call
# reuses finished runs and merges VERDICTS.md); what is small enough to bring back (VERDICTS.md,
# every verdict.json, report.html and summary.json) is copied to $OUT. BUDGET (minutes, default
# 9) is passed as --budget-minutes; extra arguments after the papers go to `grokinterp reproduce`.
set -u
PAPERS=${1:-all}
shift || true
OUT=${OUT:-/tmp/out}
RUNS=${RUNS:-/tmp/repro}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ! python3 -c 'import transformer_lens' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >/dev/null 2>&1 || echo "wheel install failed"
fi
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
date +%T
python3 -c 'from grokinterp.cli import app; app()' reproduce "$PAPERS" --size paper \
  --device cuda --budget-minutes "${BUDGET:-9}" --out "$RUNS" -q "$@" 2>&1 | tee "$OUT/reproduce.log"
date +%T
cp "$RUNS/VERDICTS.md" "$OUT/" 2>/dev/null
for d in "$RUNS"/*/; do
  name=$(basename "$d")
  [ "$name" = shared ] && continue
  mkdir -p "$OUT/$name"
  cp "$d"verdict.json "$d"report.html "$d"summary.json "$OUT/$name/" 2>/dev/null
done
du -sh "$RUNS" "$OUT"
