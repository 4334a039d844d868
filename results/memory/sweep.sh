#!/usr/bin/env bash
# Memory per rank against N (issue 23, item 4): the 33.7 M-parameter MLP of run.sh, Adam, a strong
# sweep over N = 1-4 (global batch 32) of ring and the three ZeRO stages; then `hpc predict`, trained
# on N <= 3, forecasts memory per rank at the held-out N = 4 and says whether its intervals covered.
# On this 2-core machine 3 and 4 ranks are oversubscribed: the times are not the point, memory is.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=results/memory/sweep
rm -rf "$out"
for sync in ring deepspeed-zero1 deepspeed-zero2 deepspeed-zero3; do  # a sweep each: one scheme's libraries per rank
  timeout 1500 .venv/bin/hpc sweep strong --np 1,2,3,4 --out "$out/$sync" train --sync "$sync" \
    --model mlp --width 2048 --depth 9 --optimizer adam --batch 32 --steps 6 --warmup 2
done
python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
recs = [json.loads(l) for f in sorted(out.rglob("*.jsonl")) for l in f.read_text().splitlines() if l.strip()]
for name, keep in (("train-n123.jsonl", lambda n: n <= 3), ("heldout-n4.jsonl", lambda n: n == 4)):
    (out.parent / f"sweep-{name}").write_text("".join(json.dumps(r) + "\n" for r in recs
                                                       if r.get("kind") == "train" and keep(r["np"])))
PY
.venv/bin/hpc predict results/memory/sweep-train-n123.jsonl --check results/memory/sweep-heldout-n4.jsonl \
  --markdown > results/memory/sweep-predict.md || true
.venv/bin/hpc predict results/memory/sweep --np 8,64 --markdown >> results/memory/sweep-predict.md || true
.venv/bin/hpc plot "$out" -o results/memory/sweep.png
