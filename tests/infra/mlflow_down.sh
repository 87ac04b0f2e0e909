#!/usr/bin/env bash
# Stop the mlflow server that mlflow_up.sh started for DIR (its whole process group).
#
#   bash tests/infra/mlflow_down.sh [DIR]            # default /tmp/meshrec-mlflow
set -euo pipefail

DIR=$(realpath -m "${1:-/tmp/meshrec-mlflow}")
PIDFILE="$DIR/mlflow.pid"

[ -s "$PIDFILE" ] || exit 0
pid=$(cat "$PIDFILE")
if kill -0 "$pid" 2>/dev/null; then
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 75); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "mlflow_down: server $pid ignored SIGTERM for 15 s: killing it" >&2
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
fi
rm -f "$PIDFILE" "$DIR/mlflow.uri"
