# Shared by the SLURM test-cluster scripts (sourced, not run): daemon checks, waiting, writing a
# config only when it changed, the slurm.conf settings both clusters use, stopping a cluster
# and its daemons.
# Callers define log().

alive() {  # pid file -> true if its process runs. A killed daemon can stay a zombie for many
  # seconds here (nothing reaps orphans promptly), and kill -0 succeeds on a zombie; a daemon
  # removes its file as it exits.
  local pid
  pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

wait_for() {  # message, seconds, command...; polls the command until it succeeds, then logs
  local what=$1 secs=$2 deadline
  shift 2
  deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.3
  done
  log "$what"
}

write_if_changed() {  # path mode <content on stdin>; returns 0 if the file changed
  local tmp
  tmp=$(mktemp "$1.XXXXXX")
  cat >"$tmp"
  chmod "$2" "$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1"; then
    rm -f "$tmp"
    return 1
  fi
  mv -f "$tmp" "$1"
}

common_slurm_conf() {  # the slurm.conf lines both test clusters share
  cat <<CONF
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Short credential lifetime: a requeued job may restart ~11 s after it stopped, not ~121 s.
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Start jobs within a second of submission instead of after a scheduling cycle of up to a minute.
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
CONF
}

stop_cluster() {  # cancel the jobs of the cluster SLURM_CONF names, then stop its daemons
  local jobs
  jobs=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    log "cancelling jobs: $(echo $jobs)"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 50); do
      [ -z "$(timeout 10 squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  scontrol shutdown >/dev/null 2>&1 || true  # stops the slurmd(s) and slurmctld
}

stop_pid() {  # pidfile: SIGTERM, then wait up to 20 s (true if it stopped)
  alive "$1" || return 0
  kill "$(cat "$1" 2>/dev/null)" 2>/dev/null || true
  for _ in $(seq 100); do
    alive "$1" || return 0
    sleep 0.2
  done
  return 1
}

stop_pidfile() {  # name pidfile: stop_pid, then SIGKILL if it ignored SIGTERM
  local name=$1 pidfile=$2 pid
  alive "$pidfile" || return 0
  pid=$(cat "$pidfile")
  if stop_pid "$pidfile"; then
    log "$name stopped"
    return 0
  fi
  log "$name ($pid) ignored SIGTERM for 20 s: killing it"
  kill -KILL "$pid" 2>/dev/null || true
}
