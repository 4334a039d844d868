#!/usr/bin/env bash
# Memory per rank of every scheme: a 33.7 M-parameter MLP (9 hidden layers of 2048) with Adam on 2 ranks.
# One `hpc train` per scheme, so each rank's peak RSS holds only that scheme's libraries (in one
# side-by-side process the libraries of the runs before it stay loaded); model states do not depend on it.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=results/memory/train.jsonl
for sync in ring horovod ddp deepspeed-zero1 deepspeed-zero2 deepspeed-zero3; do
  timeout 900 .venv/bin/hpc train --np 2 --sync "$sync" --model mlp --width 2048 --depth 9 \
    --optimizer adam --batch 16 --steps 6 --warmup 2 --json "$out"
done
.venv/bin/hpc compare "$out" --wide --markdown > results/memory/compare.md
.venv/bin/hpc compare "$out" --max-memory 1.5GB --markdown >> results/memory/compare.md
.venv/bin/hpc plot "$out" -o results/memory/speed-memory.png
