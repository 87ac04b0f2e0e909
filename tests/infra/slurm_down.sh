#!/usr/bin/env bash
# Stop the one-node cluster started by slurm_up.sh: cancels its jobs, stops slurmctld and slurmd,
# slurmdbd, its MariaDB, and munged if slurm_up.sh started it. Configs, accounting data and logs
# stay in STATE_DIR (delete it for a clean slate). Safe to run when nothing is up.
#
#   bash tests/infra/slurm_down.sh [STATE_DIR]        # default STATE_DIR=/tmp/meshrec-slurm
set -euo pipefail

STATE=$(realpath -m "${1:-/tmp/meshrec-slurm}")
export SLURM_CONF="$STATE/slurm.conf"

log() { echo "slurm_down: $*" >&2; }
# shellcheck source=tests/infra/slurm_common.sh
. "$(dirname "$0")/slurm_common.sh"

if [ ! -f "$SLURM_CONF" ]; then
  log "no cluster config in $STATE: nothing to stop"
  exit 0
fi

if timeout 10 scontrol ping 2>/dev/null | grep -q "is UP"; then
  stop_cluster
fi
stop_pidfile slurmd "$STATE/run/slurmd.pid"
stop_pidfile slurmctld "$STATE/run/slurmctld.pid"
stop_pidfile slurmdbd "$STATE/run/slurmdbd.pid"
stop_pidfile mariadbd "$STATE/mysqld/mysqld.pid"
if [ -e "$STATE/started/munge" ]; then
  stop_pidfile munged /run/munge/munged.pid
fi
rm -f "$STATE"/started/*
