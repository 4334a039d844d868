#!/usr/bin/env bash
# Start a private multi-node Slurm cluster on this machine, for tests and for trying `--launcher slurm`.
#
#   slurm/cluster-up.sh [ROOT]      (ROOT defaults to $HPC_SLURM_ROOT, else /tmp/hpc-slurm)
#   eval "$(slurm/cluster-up.sh /tmp/c1)"   # or: . /tmp/c1/env
#
# Everything lives under ROOT: its own munged, slurmctld and one slurmd per node (c1..cN, each in
# its own UTS namespace so `hostname` says cN). Nothing under /etc/slurm or /run/munge is used, so
# two clusters (different ROOTs) can run side by side. Needs root. Stop it with slurm/cluster-down.sh.
#
# Settings (environment):
#   HPC_SLURM_NODES=3   number of nodes        HPC_SLURM_CPUS=8     CPUs per node
#   HPC_SLURM_PORT=     first of N+1 TCP ports (default: a free block found by scanning)
#   HPC_SLURM_NAME=     ClusterName (default: derived from ROOT)
#
# stdout: one line, `export SLURM_CONF=ROOT/etc/slurm.conf` (also written to ROOT/env).
# Progress and errors go to stderr; exit status is non-zero when the cluster did not come up.
set -euo pipefail

ROOT=${1:-${HPC_SLURM_ROOT:-/tmp/hpc-slurm}}
NODES=${HPC_SLURM_NODES:-3}
CPUS=${HPC_SLURM_CPUS:-8}
READY_TIMEOUT=${HPC_SLURM_READY_TIMEOUT:-60}

say() { echo "cluster-up: $*" >&2; }
die() { echo "cluster-up: error: $*" >&2; exit 1; }

[[ $NODES =~ ^[1-9][0-9]?$ ]] || die "HPC_SLURM_NODES must be 1..99, got '$NODES'"
[[ $CPUS =~ ^[1-9][0-9]*$ ]] || die "HPC_SLURM_CPUS must be a positive integer, got '$CPUS'"
[ "$(id -u)" = 0 ] || die "needs root (slurmd runs jobs as any user and uses unshare --uts)"
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd -P)
[[ $ROOT =~ ^[A-Za-z0-9_./+-]+$ ]] || die "ROOT must be a path without spaces or special characters: $ROOT"
CONF=$ROOT/etc/slurm.conf
export SLURM_CONF=$CONF
export HPC_SLURM_DAEMON_OF=$ROOT   # inherited by every daemon and slurmstepd: how cluster-down.sh knows them

# ---- packages ---------------------------------------------------------------------------------
install_packages() {
    command -v apt-get >/dev/null || die "Slurm is not installed and apt-get is not available"
    local log
    log=$(mktemp /tmp/hpc-slurm-apt.XXXXXX.log)
    say "installing slurm-wlm munge libpmix2 (apt; log in $log)"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq slurm-wlm munge libpmix2; } >"$log" 2>&1 \
        || { tail -n 20 "$log" >&2; die "apt-get install slurm-wlm munge libpmix2 failed (log: $log)"; }
    rm -f "$log"
}
if ! command -v sbatch >/dev/null || ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v munged >/dev/null || ! ls /usr/lib/*/pmix2/lib/libpmix.so.2 >/dev/null 2>&1; then
    install_packages
fi
# srun --mpi=pmix dlopens libpmix.so, which Debian's libpmix2 only ships as libpmix.so.2.
for d in /usr/lib/*/pmix2/lib; do
    [ -e "$d/libpmix.so" ] || [ ! -e "$d/libpmix.so.2" ] || ln -s libpmix.so.2 "$d/libpmix.so"
done

# ---- is a cluster already here? ------------------------------------------------------------------
ours() {  # ours PID: the process is alive and is one of this ROOT's daemons
    local pid=$1
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$ROOT/"
}
daemon_names() { echo munged slurmctld; for ((i = 1; i <= NODES; i++)); do echo "slurmd-c$i"; done; }

if [ -d "$ROOT/run" ] && compgen -G "$ROOT/run/*.pid" >/dev/null; then
    alive=() dead=()
    for f in "$ROOT"/run/*.pid; do
        name=$(basename "$f" .pid)
        pid=$(cat "$f" 2>/dev/null || true)
        if [ -n "$pid" ] && ours "$pid"; then alive+=("$name"); else dead+=("$name"); fi
    done
    if [ ${#alive[@]} -gt 0 ] && [ ${#dead[@]} -eq 0 ] && timeout 10 sinfo -h >/dev/null 2>&1; then
        say "a cluster is already up at $ROOT; reusing it"
        echo "export SLURM_CONF=$CONF"
        exit 0
    elif [ ${#alive[@]} -gt 0 ]; then
        die "a partial cluster is running at $ROOT (alive: ${alive[*]}; dead: ${dead[*]:-none}); run slurm/cluster-down.sh $ROOT first"
    fi
    say "removing the remains of a stopped cluster at $ROOT"
fi
rm -rf "$ROOT"/{etc,state,log,run,tmp,spool,munge,env,hostnames}

# ---- ports and names -------------------------------------------------------------------------
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
block_free() { local p; for ((p = $1; p <= $1 + NODES; p++)); do port_busy "$p" && return 1; done; return 0; }
if [ -n "${HPC_SLURM_PORT:-}" ]; then
    PORT=$HPC_SLURM_PORT
    block_free "$PORT" || die "a port in $PORT..$((PORT + NODES)) is in use (HPC_SLURM_PORT)"
else
    PORT=
    for _ in $(seq 50); do  # below the kernel's ephemeral range (32768+)
        p=$((17000 + (RANDOM % 1400) * 10))
        if block_free "$p"; then PORT=$p; break; fi
    done
    [ -n "$PORT" ] || die "no free block of $((NODES + 1)) TCP ports found in 17000..31000"
fi
NAME=${HPC_SLURM_NAME:-hpc$(printf %s "$ROOT" | cksum | cut -d' ' -f1)}

# ---- files ---------------------------------------------------------------------------------------
mkdir -p "$ROOT"/{etc,state,log,run,munge}
for ((i = 1; i <= NODES; i++)); do mkdir -p "$ROOT/tmp/c$i" "$ROOT/spool/c$i"; done
chmod 755 "$ROOT/munge"
if command -v mungekey >/dev/null; then
    mungekey -c -k "$ROOT/munge/munge.key"
else
    dd if=/dev/urandom of="$ROOT/munge/munge.key" bs=1024 count=1 status=none
fi
chmod 400 "$ROOT/munge/munge.key"

cat >"$CONF" <<EOF
# Written by slurm/cluster-up.sh: a private $NODES-node cluster under $ROOT
ClusterName=$NAME
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$ROOT/munge/munged.sock
CredType=cred/munge
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool/%n
SlurmctldPidFile=$ROOT/run/slurmctld.daemon-pid
SlurmdPidFile=$ROOT/run/slurmd-%n.daemon-pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd-%n.log
TmpFS=$ROOT/tmp/%n
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$ROOT/log/jobcomp.log
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
# A job whose dependency can never be met (afterok on a failed job) is cancelled, not left pending
# forever. Slurm >= 20.11 reads kill_invalid_depend here, not in SchedulerParameters.
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
SlurmdTimeout=60
# Reject at submission a job larger than the cluster, instead of leaving it pending forever.
EnforcePartLimits=ALL
InactiveLimit=0
KillWait=5
MinJobAge=600
NodeName=c[1-$NODES] NodeHostname=localhost NodeAddr=127.0.0.1 Port=[$((PORT + 1))-$((PORT + NODES))] CPUs=$CPUS RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
echo "export SLURM_CONF=$CONF" >"$ROOT/env"

# ---- daemons -------------------------------------------------------------------------------------
start() {  # start NAME CMD...: run CMD detached (own session, no inherited fds); its pid is the daemon's
    local name=$1; shift
    setsid "$@" </dev/null >"$ROOT/log/$name.out" 2>&1 &
    echo $! >"$ROOT/run/$name.pid"
}
stop_started() {  # TERM what this script started, so a failed bring-up leaves no daemons behind
    local f pid
    for f in "$ROOT"/run/*.pid; do
        pid=$(cat "$f" 2>/dev/null || true)
        [ -n "$pid" ] && ours "$pid" && kill -TERM "$pid" 2>/dev/null || true
    done
}
fail() {  # fail NAME MESSAGE: show the daemon's logs, stop the others, exit
    local name=$1; shift
    echo "cluster-up: error: $*" >&2
    for f in "$ROOT/log/$name.log" "$ROOT/log/$name.out"; do
        [ -s "$f" ] && { echo "---- tail of $f" >&2; tail -n 20 "$f" >&2; }
    done
    stop_started
    echo "cluster-up: logs kept in $ROOT/log; remove with slurm/cluster-down.sh $ROOT" >&2
    exit 1
}
check_alive() {
    local name pid
    for name in $(daemon_names); do
        pid=$(cat "$ROOT/run/$name.pid")
        kill -0 "$pid" 2>/dev/null || fail "$name" "$name (pid $pid) died during start-up"
    done
}

start munged munged -F --force --socket="$ROOT/munge/munged.sock" --key-file="$ROOT/munge/munge.key" \
    --pid-file="$ROOT/run/munged.daemon-pid" --log-file="$ROOT/log/munged.log" --seed-file="$ROOT/munge/munged.seed"
for _ in $(seq 100); do [ -S "$ROOT/munge/munged.sock" ] && break; sleep 0.05; done
[ -S "$ROOT/munge/munged.sock" ] || fail munged "munged did not create its socket"

start slurmctld slurmctld -D -f "$CONF"
# Each slurmd in its own UTS namespace, so that jobs on node cN see hostname cN (srun --mpi=pmix needs
# distinct hostnames once a node runs 3+ ranks). Without CAP_SYS_ADMIN (e.g. an unprivileged
# container) fall back to shared hostnames: mpirun still works.
if unshare --uts true 2>/dev/null; then
    echo per-node >"$ROOT/hostnames"
else
    echo shared >"$ROOT/hostnames"
    say "warning: unshare --uts is not permitted; all nodes share this machine's hostname"
fi
for ((i = 1; i <= NODES; i++)); do
    if [ "$(cat "$ROOT/hostnames")" = per-node ]; then
        start "slurmd-c$i" unshare --uts sh -c "hostname c$i && exec slurmd -D -N c$i -f '$CONF'"
    else
        start "slurmd-c$i" slurmd -D -N "c$i" -f "$CONF"
    fi
done

say "cluster $NAME: $NODES nodes x $CPUS CPUs, ports $PORT..$((PORT + NODES)), root $ROOT"
deadline=$((SECONDS + READY_TIMEOUT))
while :; do
    check_alive
    states=$(timeout 10 sinfo -h -N -o '%N %t' 2>/dev/null | sort -u || true)
    idle=$(grep -c ' idle$' <<<"$states" || true)
    [ "$idle" -eq "$NODES" ] && break
    if [ $SECONDS -ge $deadline ]; then
        echo "cluster-up: sinfo says:" >&2; echo "${states:-(no answer)}" >&2
        fail slurmctld "nodes not idle after ${READY_TIMEOUT}s"
    fi
    sleep 0.2
done
say "all $NODES nodes idle"
echo "export SLURM_CONF=$CONF"
