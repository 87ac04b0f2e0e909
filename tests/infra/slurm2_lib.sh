# Shared by slurm2_up.sh, slurm2_down.sh and slurm2_node.sh (sourced, not run): the layout of the
# two-node test cluster and the few operations they all need. Expects STATE (absolute) and ME
# (the script's name, for messages) to be set.
#
# Knobs (environment): MESHREC_SLURM2_NET (first three octets of the private /24, default 10.77.0;
# the host's bridge gets .1, node1 .11, node2 .12), MESHREC_SLURM2_BRIDGE (default mrbr0),
# MESHREC_SLURM2_PORT (slurmctld's port, default 6827; the slurmds use the next one),
# MESHREC_SLURM2_CPUS (CPUs each node advertises, default 2), MESHREC_SLURM2_TIMEOUT (seconds to
# wait for each daemon, default 90).

CLUSTER=meshrec2
PARTITION=two
NODES=(node1 node2)
NET=${MESHREC_SLURM2_NET:-10.77.0}
BRIDGE=${MESHREC_SLURM2_BRIDGE:-mrbr0}
CTLD_PORT=${MESHREC_SLURM2_PORT:-6827}
SLURMD_PORT=$((CTLD_PORT + 1))
CPUS=${MESHREC_SLURM2_CPUS:-2}
TIMEOUT=${MESHREC_SLURM2_TIMEOUT:-90}
HOST_IP=$NET.1
HOST_NAME=meshrec2-host  # the host as the nodes see it (an /etc/hosts name for HOST_IP)
HOSTS_BEGIN="# BEGIN meshrec two-node test cluster (tests/infra/slurm2_up.sh)"
HOSTS_END="# END meshrec two-node test cluster"

export SLURM_CONF="$STATE/slurm.conf"

exec 3>&2  # progress and errors reach the caller even from commands whose output is discarded
log() { echo "$ME: $*" >&3; }
START_LOG="$STATE/log/daemon-start.log"

node_ip() { echo "$NET.$((10 + ${1#node}))"; }  # node1 -> NET.11
node_ns() { echo "meshrec-$1"; }                  # the node's network namespace
node_veth() { echo "mr2-$1"; }                    # host end of its veth pair (eth0 inside)
node_pidfile() { echo "$STATE/run/slurmd-$1.pid"; }  # SlurmdPidFile=…/slurmd-%n.pid
node_log() { echo "$STATE/log/slurmd-$1.log"; }

# shellcheck source=tests/infra/slurm_common.sh
# alive, wait_for, common_slurm_conf, stop_cluster
. "$(dirname "${BASH_SOURCE[0]}")/slurm_common.sh"

ctld_ok() { timeout 10 scontrol ping 2>/dev/null | grep -q "is UP"; }

node_state() {  # sinfo's state of one node (idle, down*, …), empty if slurmctld does not answer
  timeout 10 sinfo -h -n "$1" -o %T 2>/dev/null | head -n 1
}

start_slurmd() {  # node: slurmd in the node's network namespace, plus a UTS namespace whose
  # hostname is the node's name (`hostname` in its jobs says node1; gloo/NCCL resolve it to the
  # node's address) and a mount namespace in which /etc/slurm and /etc/resolv.conf are those of
  # /etc/netns/<ns>/ (this cluster's slurm.conf; a resolver that fails at once, as the nodes reach
  # no DNS server and every lookup of a name not in /etc/hosts would otherwise hang 10 s).
  # Not `ip netns exec`: it remounts /sys without /sys/fs/cgroup, and slurmd 22.05 then fails
  # ("Unable to initialize cgroup plugin") even with proctrack/linuxproc and task/none.
  local node=$1 ns
  ns=$(node_ns "$node")
  nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation slave \
    sh -c 'hostname "$1" && mount --bind "$3/slurm" /etc/slurm &&
           mount --bind "$3/resolv.conf" /etc/resolv.conf && exec slurmd -f "$2" -N "$1"' \
    sh "$node" "$SLURM_CONF" "/etc/netns/$ns" </dev/null >>"$START_LOG" 2>&1 3>&-
}

wait_node_usable() {  # node [seconds]: until sinfo calls it idle/mixed/allocated/completing.
  # A DOWN node whose slurmd runs is told to resume once (ReturnToService=2 usually makes that
  # unnecessary: the node returns when its slurmd registers).
  local node=$1 secs=${2:-$TIMEOUT} deadline state resumed=0 since=$SECONDS
  deadline=$((SECONDS + secs))
  while :; do
    state=$(node_state "$node" || true)
    case "$state" in
      idle | mixed | allocated | completing) log "$node $state"; return 0 ;;
      down* | drain* | fail*)
        if [ "$resumed" = 0 ] && [ $((SECONDS - since)) -ge 3 ] &&
          alive "$(node_pidfile "$node")"; then
          scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
          resumed=1
        fi ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "ERROR: node $node is '${state:-unknown}', not usable, after ${secs}s"
      return 1
    fi
    sleep 0.3
  done
}

show_tails() {  # files...: their last lines on stderr (fd 3)
  local f
  for f in "$@"; do
    [ -s "$f" ] && { echo "---- last lines of $f" >&3; tail -n 25 "$f" >&3; }
  done
  return 0
}
