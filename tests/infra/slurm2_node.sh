#!/usr/bin/env bash
# Fail or bring back one node of the two-node cluster (slurm2_up.sh), for tests.
#
#   bash tests/infra/slurm2_node.sh kill NODE [STATE_DIR]     # NODE: node1 or node2
#   bash tests/infra/slurm2_node.sh revive NODE [STATE_DIR]
#
# kill: SIGKILL to every process in the node's network namespace (its slurmd, slurmstepds and job
# tasks: a dead machine, nothing gets a chance to clean up), then `scontrol update state=down`,
# so that slurmctld ends its jobs at once (NODE_FAIL; --requeue jobs go back to the queue) instead
# of noticing after SlurmdTimeout.
# revive: starts the node's slurmd again in its namespace and waits until the node is usable
# (ReturnToService=2 returns it on registration; a node still DOWN is told to resume).
# Both print nothing on stdout; progress and errors on stderr; exit 1 on failure.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ACTION=${1:-}
NODE=${2:-}
STATE=$(realpath -m "${3:-/tmp/meshrec-slurm2}")
ME="slurm2_node $ACTION $NODE"
# shellcheck source=tests/infra/slurm2_lib.sh
. "$HERE/slurm2_lib.sh"

die() {
  log "ERROR: $1"
  show_tails "${@:2}"
  exit 1
}

case " ${NODES[*]} " in
  *" $NODE "*) ;;
  *) die "usage: slurm2_node.sh kill|revive node1|node2 [STATE_DIR]" ;;
esac
[ "$(id -u)" -eq 0 ] || die "must run as root"
ns=$(node_ns "$NODE")
ip netns list | awk '{print $1}' | grep -qx "$ns" ||
  die "no namespace $ns: is the cluster up? (slurm2_up.sh)"

case "$ACTION" in
  kill)
    for _ in $(seq 50); do  # processes forked while we kill are caught by the next round
      pids=$(ip netns pids "$ns" || true)
      [ -n "$pids" ] || break
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
      sleep 0.1
    done
    [ -z "$(ip netns pids "$ns" || true)" ] ||
      die "processes survive in $ns: $(ip netns pids "$ns")"
    scontrol update nodename="$NODE" state=down reason="killed by slurm2_node.sh" ||
      die "scontrol could not set $NODE down" "$STATE/log/slurmctld.log"
    log "$NODE killed and DOWN"
    ;;
  revive)
    if ! alive "$(node_pidfile "$NODE")"; then
      start_slurmd "$NODE" ||
        die "slurmd for $NODE did not start" "$(node_log "$NODE")" "$START_LOG"
    fi
    wait_node_usable "$NODE" ||
      die "$NODE did not come back" "$(node_log "$NODE")" "$STATE/log/slurmctld.log" "$START_LOG"
    ;;
  *) die "usage: slurm2_node.sh kill|revive node1|node2 [STATE_DIR]" ;;
esac
