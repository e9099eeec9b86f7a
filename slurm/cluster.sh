#!/usr/bin/env bash
# A real one-node Slurm on this machine, from the distribution's packages, for tests and trying things out.
#
#   slurm/cluster.sh install           apt-get the packages (slurmctld, slurmd, slurm-client, munge) if missing
#   slurm/cluster.sh start  [DIR]      start munged, slurmctld, slurmd; wait until the node is idle
#   slurm/cluster.sh status [DIR]      the daemons' process ids and `sinfo`
#   slurm/cluster.sh stop   [DIR]      cancel the cluster's jobs, stop the daemons it started (by their pids)
#
# Everything (configs, munge key and socket, state, logs, pid files) lives under DIR, default
# $HARNESS_SLURM_DIR or /tmp/harness-slurm. Clients find the cluster through DIR/env:
#   . DIR/env    # exports SLURM_CONF=DIR/etc/slurm.conf
# No systemd, no cgroups: proctrack/linuxproc, task/none. Ports: $HARNESS_SLURM_PORT (slurmctld) and the next one.
# A requeued job may start again after cred_expire seconds ($HARNESS_SLURM_CRED_EXPIRE, 15; Slurm's default is 120).
set -euo pipefail

ACTION=${1:-}
DIR=${2:-${HARNESS_SLURM_DIR:-/tmp/harness-slurm}}
PORT=${HARNESS_SLURM_PORT:-6817}
WAIT_S=${HARNESS_SLURM_WAIT_S:-60}
PARTITION=${HARNESS_SLURM_PARTITION:-debug}

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

alive() { # alive NAME: the daemon recorded in DIR/run/NAME.pid is running
    local f="$DIR/run/$1.pid"
    [[ -s $f ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

logs_tail() { # the last lines of every daemon log, for a failure message
    local f
    for f in "$DIR"/log/*.log; do
        [[ -e $f ]] || continue
        echo "--- last lines of $f" >&2
        tail -n 15 "$f" >&2
    done
}

fail_start() {
    echo "cluster.sh: $*" >&2
    logs_tail
    stop_daemons
    exit 1
}

install() {
    local missing=()
    for cmd in munged slurmctld slurmd sinfo; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        echo "slurm and munge already installed ($(slurmctld -V))"
        return
    fi
    local sudo=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "installing needs root (missing: ${missing[*]}); run as root or install sudo"
        sudo="sudo"
    fi
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge
    slurmctld -V
}

write_configs() {
    mkdir -p "$DIR"/{etc,munge,run,log,state,spool/slurmd}
    chmod 0700 "$DIR/etc"
    chmod 0755 "$DIR" "$DIR/munge" # munged refuses a socket folder others can write to
    if [[ ! -s $DIR/etc/munge.key ]]; then
        mungekey --create --keyfile="$DIR/etc/munge.key" >/dev/null 2>&1 ||
            dd if=/dev/urandom of="$DIR/etc/munge.key" bs=1024 count=1 status=none
    fi
    chmod 0400 "$DIR/etc/munge.key"

    local node host cpus mem
    node=$(slurmd -C | head -n 1) # NodeName=... CPUs=... RealMemory=...
    [[ $node == NodeName=* ]] || die "slurmd -C did not describe this node: $node"
    host=$(hostname -s)
    node=${node/NodeName=* CPUs/NodeName=$host CPUs}
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    cat >"$DIR/etc/slurm.conf" <<EOF
# Written by slurm/cluster.sh: one node, one partition, no cgroups, no accounting database.
ClusterName=harness
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket.2,cred_expire=${HARNESS_SLURM_CRED_EXPIRE:-15}
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd
SlurmctldPidFile=$DIR/run/slurmctld.daemon.pid
SlurmdPidFile=$DIR/run/slurmd.daemon.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((mem / cpus))
JobRequeue=1
ReturnToService=2
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
KillWait=5
MinJobAge=600
InactiveLimit=0
SlurmdTimeout=60
SlurmctldTimeout=60
$node State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    echo "export SLURM_CONF=$DIR/etc/slurm.conf" >"$DIR/env"
}

start_daemon() { # start_daemon NAME COMMAND...: run in the foreground of a background shell, record its pid
    local name=$1
    shift
    nohup "$@" >>"$DIR/log/$name.out" 2>&1 </dev/null &
    echo $! >"$DIR/run/$name.pid"
}

start() {
    for cmd in munged slurmctld slurmd sinfo; do
        command -v "$cmd" >/dev/null 2>&1 || die "$cmd not found; run 'slurm/cluster.sh install' first"
    done
    if alive munged && alive slurmctld && alive slurmd; then
        echo "cluster already running in $DIR"
        return
    fi
    stop_daemons # a half-started cluster from before
    local port
    for port in "$PORT" $((PORT + 1)); do
        if (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            die "port $port is taken (another Slurm?); stop it or pick free ports with HARNESS_SLURM_PORT=N"
        fi
    done
    write_configs
    export SLURM_CONF=$DIR/etc/slurm.conf
    start_daemon munged munged --foreground --force --socket="$DIR/munge/munge.socket.2" \
        --key-file="$DIR/etc/munge.key" --pid-file="$DIR/run/munged.daemon.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/run/munged.seed"
    local t
    for t in $(seq 50); do
        [[ -S $DIR/munge/munge.socket.2 ]] && break
        alive munged || fail_start "munged exited at start"
        sleep 0.2
    done
    [[ -S $DIR/munge/munge.socket.2 ]] || fail_start "munged made no socket in 10 s"
    start_daemon slurmctld slurmctld -D -c -f "$SLURM_CONF"
    start_daemon slurmd slurmd -D -f "$SLURM_CONF"
    local deadline=$((SECONDS + WAIT_S)) state=""
    while ((SECONDS < deadline)); do
        for name in munged slurmctld slurmd; do
            alive "$name" || fail_start "$name exited at start"
        done
        state=$(sinfo -h -N -o %t 2>/dev/null | head -n 1 || true)
        [[ $state == idle ]] && break
        sleep 1
    done
    [[ $state == idle ]] || fail_start "the node is not idle after ${WAIT_S}s (state: '${state:-no answer}')"
    echo "cluster up in $DIR: $(sinfo -h -o '%P %D %c cpus %m MB %t')"
    echo "clients: . $DIR/env"
}

stop_daemons() {
    local name pid
    if alive slurmctld && command -v squeue >/dev/null 2>&1; then # cancel this cluster's jobs first
        SLURM_CONF=$DIR/etc/slurm.conf scancel --full --quiet $(SLURM_CONF=$DIR/etc/slurm.conf squeue -h -o %A) \
            2>/dev/null || true
    fi
    for name in slurmd slurmctld munged; do
        [[ -s $DIR/run/$name.pid ]] || continue
        pid=$(cat "$DIR/run/$name.pid")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.2
            done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
        fi
        rm -f "$DIR/run/$name.pid"
    done
}

status() {
    local name up=1
    for name in munged slurmctld slurmd; do
        if alive "$name"; then
            echo "$name: running (pid $(cat "$DIR/run/$name.pid"))"
        else
            echo "$name: not running"
            up=0
        fi
    done
    ((up)) || return 1
    SLURM_CONF=$DIR/etc/slurm.conf sinfo
}

case $ACTION in
install) install ;;
start) start ;;
stop)
    stop_daemons
    echo "cluster in $DIR stopped"
    ;;
status) status ;;
*) die "usage: slurm/cluster.sh install|start|stop|status [DIR]" ;;
esac
