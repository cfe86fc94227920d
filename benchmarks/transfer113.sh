#!/usr/bin/env bash
# GrokTransfer at the paper's size (p = 113, 25% train) on a GPU: a few weak-model / target
# settings, each as `grokinterp transfer --compare` (scratch, transfer, random-A). Used for the
# p = 113 numbers in the issue report; see benchmarks/RESULTS.md. Usage: bash benchmarks/transfer113.sh
set -u
G="python3 -c 'from grokinterp.cli import app; app()' transfer --target groktransfer-mod-add --set train.device=cuda --compare --quiet"
WEAK="--weak-set train.device=cuda --weak-set train.lr=3e-3 --weak-set train.weight_decay=0.1"
eval "$G --weak groktransfer-weak-mod-add $WEAK --weak-set train.steps=30000 --weak-at best --out /tmp/t113a"
eval "$G --weak /tmp/t113a/weak --weak-at acc=0.5 --out /tmp/t113b"
eval "$G --weak /tmp/t113a/weak --weak-at best --set train.lr=3e-3 --out /tmp/t113c"
eval "$G --weak /tmp/t113a/weak --weak-at best --set train.weight_decay=0.1 --out /tmp/t113d"
