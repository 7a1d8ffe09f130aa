#!/usr/bin/env bash
# A one-node SLURM on 127.0.0.1 for testing the SLURM profile (tests/test_cluster.py, marker `slurm`): munge,
# slurmctld and slurmd of Debian's slurm-wlm, no accounting (so Snakemake needs --slurm-status-command squeue),
# proctrack/linuxproc and task/none (no cgroups needed), select/cons_tres. Needs root.
#
#   bash workflow/scripts/slurm_local.sh install   # apt-get install slurm-wlm munge (once; needs the network)
#   bash workflow/scripts/slurm_local.sh start     # write /etc/slurm/slurm.conf, start the daemons, wait for the node
#   bash workflow/scripts/slurm_local.sh stop      # stop every daemon it started, by PID
#   bash workflow/scripts/slurm_local.sh status
#
# The configuration must sit at /etc/slurm/slurm.conf: job steps do not pass SLURM_CONF on. An existing
# slurm.conf is kept as slurm.conf.bak-slurm-local and restored by `stop`. State, logs and PID files live in
# $SLURM_LOCAL_DIR (default /tmp/slurm-local). Partition: `local` (the node's CPUs and memory).
set -euo pipefail

DIR="${SLURM_LOCAL_DIR:-/tmp/slurm-local}"
CONF=/etc/slurm/slurm.conf
PARTITION=local

die() { echo "slurm_local.sh: $*" >&2; exit 1; }

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    echo "slurm-wlm and munge are installed"; return
  fi
  [[ $(id -u) == 0 ]] || die "install needs root (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
  local cpus mem
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))  # MiB, 1 GiB left to the system
  mkdir -p /etc/slurm "$DIR"/{ctld,d,log}
  if [[ -f $CONF && ! -f $CONF.bak-slurm-local ]] && ! grep -q "slurm_local.sh" "$CONF"; then
    cp "$CONF" "$CONF.bak-slurm-local"
  fi
  cat > "$CONF" <<EOF
# written by workflow/scripts/slurm_local.sh: one node on 127.0.0.1, no accounting
ClusterName=local
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${SLURM_LOCAL_PORT:-6817}
SlurmdPort=$(( ${SLURM_LOCAL_PORT:-6817} + 1 ))
AuthType=auth/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
InactiveLimit=0
KillWait=10
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  command -v slurmctld >/dev/null || die "slurm-wlm is not installed: run '$0 install' first"
  [[ $(id -u) == 0 ]] || die "start needs root (munge and slurmd run as root here)"
  write_conf
  mkdir -p /etc/munge /run/munge
  [[ -s /etc/munge/munge.key ]] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
  chmod 400 /etc/munge/munge.key
  if ! running "$DIR/munged.pid"; then
    # as root (--force), with its own PID file and log; the socket is the default one the SLURM daemons use
    chown root:root /etc/munge/munge.key /etc/munge /run/munge
    munged --force --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log"
    for _ in $(seq 20); do [[ -s $DIR/munged.pid ]] && break; sleep 0.5; done
    running "$DIR/munged.pid" || die "munged did not start (see $DIR/log/munged.log)"
  fi
  running "$DIR/slurmctld.pid" || slurmctld
  running "$DIR/slurmd.pid" || slurmd
  for _ in $(seq 60); do
    if sinfo -h -N -o "%T" 2>/dev/null | grep -qE "^(idle|mixed|allocated)"; then
      sinfo; return 0
    fi
    sleep 1
  done
  sinfo -N -l || true
  tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
  die "the node did not become idle within 60 s"
}

stop() {
  local name pidfile pid
  for name in slurmd slurmctld munged; do
    pidfile="$DIR/$name.pid"
    if [[ -f $pidfile ]]; then
      pid=$(cat "$pidfile")
      if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        echo "stopped $name (pid $pid)"
      fi
      rm -f "$pidfile"
    fi
  done
  if [[ -f $CONF.bak-slurm-local ]]; then
    mv "$CONF.bak-slurm-local" "$CONF"
  elif [[ -f $CONF ]] && grep -q "slurm_local.sh" "$CONF"; then
    rm -f "$CONF"
  fi
}

status() {
  local name
  for name in munged slurmctld slurmd; do
    if running "$DIR/$name.pid"; then echo "$name: running (pid $(cat "$DIR/$name.pid"))"; else echo "$name: stopped"; fi
  done
  running "$DIR/slurmctld.pid" && sinfo || true
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
