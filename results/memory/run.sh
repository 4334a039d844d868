#!/usr/bin/env bash
# Memory per rank of every scheme: a 33.7 M-parameter MLP (9 hidden layers of 2048) with Adam on 2 ranks.
# One `hpc train` per scheme, so each rank's peak RSS holds only that scheme's libraries (in one
# side-by-side process the libraries of the runs before it stay loaded); model states do not depend on it.
# Optional arguments: WIDTH DEPTH NAME MAX_MEMORY (default 2048 9 train 1GB; 4096 8 train-118M 2100MB:
# 117.8 M parameters).
set -euo pipefail
cd "$(dirname "$0")/../.."
width=${1:-2048} depth=${2:-9} name=${3:-train} max_memory=${4:-1GB}
out=results/memory/$name.jsonl
for sync in ring horovod ddp deepspeed-zero1 deepspeed-zero2 deepspeed-zero3; do
  timeout 900 .venv/bin/hpc train --np 2 --sync "$sync" --model mlp --width "$width" --depth "$depth" \
    --optimizer adam --batch 16 --steps 6 --warmup 2 --json "$out"
done
compare=results/memory/${name/train/compare}.md
.venv/bin/hpc compare "$out" --wide --markdown > "$compare"
.venv/bin/hpc compare "$out" --max-memory "$max_memory" --markdown >> "$compare"
.venv/bin/hpc plot "$out" -o "results/memory/${name/train/speed-memory}.png"
