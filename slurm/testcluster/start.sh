#!/usr/bin/env bash
# Start a real 2-node Slurm cluster on this machine, for the launcher tests.
#
# Debian's slurmctld + two `slurmd -N` processes (multiple-slurmd build) + munged, all state,
# logs and pids under $PRETRAIN_SLURM_DIR (default /tmp/pretrain-slurm). Installs the packages
# with apt-get when missing. Idempotent: a running cluster is left as it is. Prints the
# SLURM_CONF path on its last line; every client command needs SLURM_CONF set to it.
# Settings that matter (see docs/cluster.md): sched_interval=2 and cred_expire=10 make a
# requeued job start again within about 20 s instead of 2 to 3 minutes.
set -euo pipefail

DIR=${PRETRAIN_SLURM_DIR:-/tmp/pretrain-slurm}
NODES=${PRETRAIN_SLURM_NODES:-2}
CPUS=${PRETRAIN_SLURM_CPUS:-4}
PORT_BASE=${PRETRAIN_SLURM_PORT:-17000}
# pgid: a signal to a step reaches each task's process group (torchrun's workers, in their own
# sessions, only through the agent). linuxproc: every descendant, as proctrack/cgroup does on
# most GPU clusters (the tests of forward_signal=false run a second cluster with it).
PROCTRACK=${PRETRAIN_SLURM_PROCTRACK:-pgid}
HOST=$(hostname -s)
CONF=$DIR/etc/slurm.conf

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null && return
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; then
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
    fi
}

write_config() {
    mkdir -p "$DIR"/{etc,state,spool,log,run,munge}
    chmod 0755 "$DIR/munge"  # munged refuses a socket directory others cannot traverse
    local nodes=""
    for i in $(seq 1 "$NODES"); do
        nodes+="NodeName=n$i NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((PORT_BASE + i)) CPUs=$CPUS State=UNKNOWN"$'\n'
    done
    cat >"$CONF" <<EOF
ClusterName=pretrain-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT_BASE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
ProctrackType=proctrack/$PROCTRACK
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SchedulerParameters=sched_interval=2,bf_interval=1
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
MinJobAge=3600
MailProg=/bin/true
$nodes
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    alive "$DIR/munge/munged.pid" && return
    [[ -f $DIR/munge/munge.key ]] || mungekey --create --keyfile="$DIR/munge/munge.key"
    chmod 0600 "$DIR/munge/munge.key"
    munged --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munge.seed"
}

start_slurm() {
    export SLURM_CONF=$CONF
    alive "$DIR/run/slurmctld.pid" || slurmctld -c -i -f "$CONF"
    for i in $(seq 1 "$NODES"); do
        alive "$DIR/run/slurmd-n$i.pid" || slurmd -N "n$i" -f "$CONF"
    done
}

wait_until_idle() {
    for _ in $(seq 1 60); do
        if [[ $(SLURM_CONF=$CONF sinfo -h -N -t idle,mix,alloc -o %N 2>/dev/null | sort -u | wc -l) -ge $NODES ]]; then
            return 0
        fi
        sleep 0.5
    done
    echo "start.sh: the nodes did not come up; see $DIR/log/" >&2
    return 1
}

install_packages
if ! alive "$DIR/run/slurmctld.pid"; then write_config; fi
start_munge
start_slurm
wait_until_idle
echo "$CONF"
