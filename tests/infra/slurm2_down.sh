#!/usr/bin/env bash
# Stop the two-node cluster started by slurm2_up.sh: cancels its jobs, stops slurmctld and both
# slurmd, kills whatever else still runs in the node namespaces, deletes the namespaces, veths and
# bridge, the /etc/hosts lines and /etc/netns/meshrec-node*. The one-node cluster (munge, MariaDB,
# slurmdbd, its slurmctld and slurmd) is left alone; configs, logs and state stay in STATE_DIR.
# Safe to run when nothing is up.
#
#   bash tests/infra/slurm2_down.sh [STATE_DIR]       # default STATE_DIR=/tmp/meshrec-slurm2
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
STATE=$(realpath -m "${1:-/tmp/meshrec-slurm2}")
ME=slurm2_down
# shellcheck source=tests/infra/slurm2_lib.sh
. "$HERE/slurm2_lib.sh"

if [ -f "$SLURM_CONF" ] && ctld_ok; then
  stop_cluster
fi
for node in "${NODES[@]}"; do stop_pidfile "slurmd $node" "$(node_pidfile "$node")"; done
stop_pidfile slurmctld "$STATE/run/slurmctld.pid"

for node in "${NODES[@]}"; do
  ns=$(node_ns "$node")
  if ip netns list | awk '{print $1}' | grep -qx "$ns"; then
    pids=$(ip netns pids "$ns" || true)
    if [ -n "$pids" ]; then
      log "killing what still runs in $ns: $(echo $pids)"
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
    fi
    ip netns del "$ns"
    log "namespace $ns deleted"
  fi
  ip link del "$(node_veth "$node")" 2>/dev/null || true
  rm -rf "/etc/netns/$ns"
done
rmdir /etc/netns 2>/dev/null || true
if ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link del "$BRIDGE"
  log "bridge $BRIDGE deleted"
fi

if grep -qxF "$HOSTS_BEGIN" /etc/hosts; then
  kept=$(mktemp)
  awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" '$0 == b {skip = 1} !skip {print} $0 == e {skip = 0}' \
    /etc/hosts >"$kept"
  cat "$kept" >/etc/hosts  # in place: /etc/hosts may be a bind mount
  rm -f "$kept"
  log "/etc/hosts entries removed"
fi
