#!/usr/bin/env bash
# Stop the private Slurm cluster that slurm/cluster-up.sh started at ROOT, and remove ROOT.
#
#   slurm/cluster-down.sh [ROOT]    (ROOT defaults to $HPC_SLURM_ROOT, else /tmp/hpc-slurm)
#
# Cancels every job, waits for the queue to drain, then sends TERM to every recorded daemon at once
# (after checking that the pid still belongs to this ROOT), KILL to whatever is left after 10 s.
# Processes are never matched by name. Set HPC_SLURM_KEEP=1 to keep ROOT (logs) afterwards.
set -uo pipefail

ROOT=${1:-${HPC_SLURM_ROOT:-/tmp/hpc-slurm}}
say() { echo "cluster-down: $*" >&2; }

if [ ! -d "$ROOT" ]; then say "nothing at $ROOT"; exit 0; fi
ROOT=$(cd "$ROOT" && pwd -P)
if [ ! -f "$ROOT/etc/slurm.conf" ] && [ ! -d "$ROOT/run" ]; then
    say "error: $ROOT does not look like a cluster made by cluster-up.sh (no etc/slurm.conf, no run/); not touching it"
    exit 1
fi
export SLURM_CONF=$ROOT/etc/slurm.conf

has() {  # has PID FILE GREP-FLAGS TEXT: an entry of /proc/PID/FILE (NUL-separated) matches TEXT
    grep -qz"$3" -- "$4" "/proc/$1/$2" 2>/dev/null
}
ours() {  # ours PID: a daemon of this ROOT (its command line or environment names ROOT)
    has "$1" cmdline F "$ROOT/" || has "$1" environ xF "HPC_SLURM_DAEMON_OF=$ROOT"
}
job_of_ours() {  # job_of_ours PID: a job process (or slurmstepd) of this cluster
    has "$1" environ xF "HPC_SLURM_DAEMON_OF=$ROOT" \
        || { has "$1" environ xF "SLURM_CONF=$SLURM_CONF" && has "$1" environ E "^SLURM_JOB_ID="; }
}
alive() {  # alive PID: running (a zombie waiting for its parent to reap it counts as gone)
    local state
    state=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null) && [ -n "$state" ] && [ "$state" != Z ]
}

# ---- jobs ----------------------------------------------------------------------------------------
ctld=$(cat "$ROOT/run/slurmctld.pid" 2>/dev/null || true)
if [ -n "$ctld" ] && ours "$ctld" && [ -f "$SLURM_CONF" ]; then
    jobs=$(timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        say "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        for _ in $(seq 150); do  # up to 30 s for job steps to end
            [ -z "$(timeout 10 squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
fi

# ---- daemons (and any job process still holding on) ---------------------------------------------
pids=()
for f in "$ROOT"/run/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null || true)
    if [ -n "$pid" ] && ours "$pid"; then pids+=("$pid"); fi
done
# Stray slurmstepd / job processes of this cluster (re-parented to init) carry ROOT in their environment.
mine=" $$ "; p=$$
while p=$(awk '/^PPid:/ {print $2}' "/proc/$p/status" 2>/dev/null) && [ "${p:-0}" -gt 1 ]; do mine+="$p "; done
for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    [[ $mine == *" $pid "* ]] && continue  # never this script or its callers
    if job_of_ours "$pid"; then
        [[ " ${pids[*]:-} " == *" $pid "* ]] || pids+=("$pid")
    fi
done

if [ ${#pids[@]} -gt 0 ]; then
    say "stopping ${#pids[@]} processes"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 100); do  # up to 10 s
        left=()
        for pid in "${pids[@]}"; do alive "$pid" && left+=("$pid"); done
        [ ${#left[@]} -eq 0 ] && break
        sleep 0.1
    done
    if [ ${#left[@]} -gt 0 ]; then
        say "killing ${#left[@]} processes that ignored TERM: ${left[*]}"
        for pid in "${left[@]}"; do { ours "$pid" || job_of_ours "$pid"; } && kill -KILL "$pid" 2>/dev/null; done
    fi
fi

if [ "${HPC_SLURM_KEEP:-0}" = 1 ]; then
    say "stopped; kept $ROOT"
else
    rm -rf "$ROOT"
    say "stopped; removed $ROOT"
fi
