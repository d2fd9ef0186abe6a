#!/usr/bin/env bash
# slurm-test-cluster.sh -- a throw-away single-node Slurm cluster on this host,
# for testing `snakemake --profile profiles/slurm` (see docs/slurm.md).
#
# Usage: scripts/slurm-test-cluster.sh start|stop|status
#
#   start   install slurm-wlm + munge with apt-get if missing, write the munge
#           key (only if absent), /etc/slurm/slurm.conf and gres.conf, start
#           munged, slurmctld and slurmd directly (no systemd), resume the node,
#           wait until it is idle, then submit two smoke jobs (cpu and gpu).
#           Idempotent: a second `start` with an unchanged config only checks.
#   stop    stop the three daemons started here (by their pid files).
#   status  print daemon and node state; exit 0 if the cluster accepts jobs.
#
# The cluster: one node (this host, NodeAddr 127.0.0.1) with its real CPU
# count and ~90 % of its memory, one fake GPU (gres gpu:1 backed by /dev/null,
# so jobs asking --gpus=1 get CUDA_VISIBLE_DEVICES=0), and two partitions on
# that same node: `cpu` (default) and `gpu` -- the names profiles/slurm uses.
# select/cons_tres, proctrack/linuxproc, no accounting (so snakemake needs
# `slurm-status-command: squeue` and `slurm-no-account: true`), MinJobAge=3600
# so finished jobs stay visible in `scontrol show job` for an hour.
#
# Exit codes: 0 ok; 1 the cluster did not come up (daemon log tails printed);
# 2 usage; 3 impossible here (not root, or Slurm missing and no apt-get).
#
# Environment: SLURM_TEST_MEM_PERCENT (default 90) share of RAM given to Slurm;
# SLURM_TEST_TIMEOUT (default 60) seconds to wait for the node to be idle.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
GRES=$CONF_DIR/gres.conf
STATE_DIR=/var/lib/slurm-test
LOG_DIR=/var/log/slurm-test
RUN_DIR=/run/slurm-test
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge
MEM_PERCENT=${SLURM_TEST_MEM_PERCENT:-90}
TIMEOUT=${SLURM_TEST_TIMEOUT:-60}

log() { printf 'slurm-test-cluster: %s\n' "$*" >&2; }
impossible() { log "cannot run a test cluster here: $*"; exit 3; }
fail() { log "FAILED: $*"; dump_logs; exit 1; }

dump_logs() {
    local f
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
        [[ -r $f ]] && { log "--- last lines of $f"; tail -n 15 "$f" >&2; }
    done
    return 0
}

pid_alive() {  # pid_alive PIDFILE
    local pid
    [[ -r $1 ]] || return 1
    pid=$(<"$1")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE
    local pid i
    if pid_alive "$2"; then
        pid=$(<"$2")
        log "stopping $1 (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$2"
}

ensure_installed() {
    local need=()
    command -v slurmctld >/dev/null || [[ -x /usr/sbin/slurmctld ]] || need+=(slurm-wlm)
    command -v munged >/dev/null || [[ -x /usr/sbin/munged ]] || need+=(munge)
    ((${#need[@]} == 0)) && return 0
    command -v apt-get >/dev/null || impossible "${need[*]} missing and no apt-get (install Slurm >= 22.05 and munge yourself)"
    log "installing ${need[*]} with apt-get (about 20 s)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null 2>&1; then
        apt-get update -q >/dev/null 2>&1 || true
        apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null \
            || impossible "apt-get install slurm-wlm munge failed"
    fi
    [[ -x /usr/sbin/slurmctld && -x /usr/sbin/slurmd && -x /usr/sbin/munged ]] \
        || impossible "slurmctld/slurmd/munged not found after installation"
}

node_name() { hostname -s; }

# Write the desired slurm.conf and gres.conf to $1 and $2.
render_config() {
    local node cpus sockets cores threads boards mem_total mem
    node=$(node_name)
    # Topology as slurmd itself detects it, so the node is never drained for
    # "Low socket*core*thread count"; fall back to nproc.
    local detected
    detected=$(/usr/sbin/slurmd -C 2>/dev/null | head -n 1 || true)
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$detected")
    boards=$(sed -n 's/.*Boards=\([0-9]*\).*/\1/p' <<<"$detected")
    sockets=$(sed -n 's/.*SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$detected")
    cores=$(sed -n 's/.*CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$detected")
    threads=$(sed -n 's/.*ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$detected")
    mem_total=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    mem=$((mem_total * MEM_PERCENT / 100))
    local topo
    if [[ -n $cpus && -n $sockets && -n $cores && -n $threads ]]; then
        topo="CPUs=$cpus Boards=${boards:-1} SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads"
    else
        cpus=$(nproc)
        topo="CPUs=$cpus"
    fi
    cat >"$1" <<EOF
# Written by scripts/slurm-test-cluster.sh -- single-node TEST cluster.
ClusterName=selfres-test
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
GresTypes=gpu
MailProg=/bin/true
ReturnToService=2
MinJobAge=3600
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
Waittime=0
NodeName=$node NodeAddr=127.0.0.1 $topo RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$node Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$node Default=NO MaxTime=INFINITE State=UP
EOF
    cat >"$2" <<EOF
# Written by scripts/slurm-test-cluster.sh -- a fake GPU for dispatch tests.
NodeName=$node Name=gpu File=/dev/null
EOF
}

ensure_munge() {
    mkdir -p /etc/munge "$MUNGE_RUN" /var/log/munge /var/lib/munge
    if [[ ! -s $MUNGE_KEY ]]; then
        log "writing munge key $MUNGE_KEY"
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
    local owner=root
    id munge >/dev/null 2>&1 && owner=munge
    chown "$owner:" "$MUNGE_KEY" /etc/munge "$MUNGE_RUN" /var/log/munge /var/lib/munge
    chmod 0400 "$MUNGE_KEY"; chmod 0700 /etc/munge; chmod 0755 "$MUNGE_RUN"
    if pid_alive "$MUNGE_RUN/munged.pid" && munge -n </dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    log "starting munged"
    rm -f "$MUNGE_RUN/munged.pid"
    if [[ $owner == munge ]]; then
        runuser -u munge -- /usr/sbin/munged || fail "munged did not start"
    else
        /usr/sbin/munged --force || fail "munged did not start"
    fi
    local i
    for i in $(seq 25); do
        munge -n </dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    fail "munge does not answer"
}

node_state() { sinfo -h -N -n "$(node_name)" -o '%T' 2>/dev/null | head -n 1; }

smoke_test() {
    local out rc
    out=$(timeout 60 sbatch --parsable --wait -p cpu -t 1 --mem 10 -o /dev/null \
        -J slurm-test-smoke --wrap true 2>&1) || fail "cpu smoke job failed: $out"
    out=$(timeout 60 sbatch --parsable --wait -p gpu --gpus=1 -t 1 --mem 10 -o /dev/null \
        -J slurm-test-smoke-gpu --wrap 'test "$CUDA_VISIBLE_DEVICES" = 0' 2>&1) \
        || fail "gpu smoke job failed (CUDA_VISIBLE_DEVICES not 0?): $out"
    log "smoke jobs ran (cpu and gpu partitions)"
}

cmd_start() {
    [[ $(id -u) -eq 0 ]] || impossible "must run as root (it installs packages and starts daemons)"
    ensure_installed
    mkdir -p "$CONF_DIR" "$STATE_DIR/ctld" "$STATE_DIR/d" "$LOG_DIR" "$RUN_DIR"
    local changed=0
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    render_config "$tmp/slurm.conf" "$tmp/gres.conf"
    if ! cmp -s "$tmp/slurm.conf" "$CONF" || ! cmp -s "$tmp/gres.conf" "$GRES"; then
        changed=1
        [[ -f $CONF && ! -f $CONF.pre-slurm-test ]] && ! grep -q slurm-test-cluster "$CONF" \
            && cp -p "$CONF" "$CONF.pre-slurm-test"
        install -m 0644 "$tmp/slurm.conf" "$CONF"
        install -m 0644 "$tmp/gres.conf" "$GRES"
        log "wrote $CONF and $GRES"
    fi
    ensure_munge
    if ((changed)); then
        stop_pidfile slurmd "$RUN_DIR/slurmd.pid"
        stop_pidfile slurmctld "$RUN_DIR/slurmctld.pid"
    fi
    if ! pid_alive "$RUN_DIR/slurmctld.pid"; then
        log "starting slurmctld"
        /usr/sbin/slurmctld -f "$CONF" || fail "slurmctld did not start"
    fi
    local i
    for i in $(seq "$TIMEOUT"); do
        scontrol ping >/dev/null 2>&1 && break
        pid_alive "$RUN_DIR/slurmctld.pid" || { sleep 1; pid_alive "$RUN_DIR/slurmctld.pid" || break; }
        sleep 1
    done
    scontrol ping 2>/dev/null | grep -q UP || fail "slurmctld does not answer"
    if ! pid_alive "$RUN_DIR/slurmd.pid"; then
        log "starting slurmd"
        /usr/sbin/slurmd -f "$CONF" || fail "slurmd did not start"
    fi
    local state=""
    for i in $(seq "$TIMEOUT"); do
        state=$(node_state)
        case $state in
            idle|mixed|allocated|completing) break ;;
            *drain*|down*|*fail*) scontrol update nodename="$(node_name)" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 1
    done
    case $state in
        idle|mixed|allocated|completing) ;;
        *) scontrol show node "$(node_name)" >&2 || true
           fail "node $(node_name) is '${state:-unknown}', not idle, after ${TIMEOUT}s" ;;
    esac
    log "node $(node_name) is $state"
    smoke_test
    sinfo
}

cmd_stop() {
    [[ $(id -u) -eq 0 ]] || impossible "must run as root"
    stop_pidfile slurmd "$RUN_DIR/slurmd.pid"
    stop_pidfile slurmctld "$RUN_DIR/slurmctld.pid"
    stop_pidfile munged "$MUNGE_RUN/munged.pid"
    log "stopped"
}

cmd_status() {
    local ok=0 d
    for d in "munged:$MUNGE_RUN/munged.pid" "slurmctld:$RUN_DIR/slurmctld.pid" "slurmd:$RUN_DIR/slurmd.pid"; do
        if pid_alive "${d#*:}"; then echo "${d%%:*}: running (pid $(<"${d#*:}"))"
        else echo "${d%%:*}: not running"; ok=1; fi
    done
    if command -v sinfo >/dev/null && scontrol ping >/dev/null 2>&1; then
        sinfo
        case $(node_state) in idle|mixed|allocated|completing) ;; *) ok=1 ;; esac
    else
        echo "slurmctld: not answering"; ok=1
    fi
    return $ok
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
