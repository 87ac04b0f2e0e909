#!/usr/bin/env bash
# Start one `mlflow server` process: SQLite store and proxied artifacts under DIR.
#
#   bash tests/infra/mlflow_up.sh [PORT] [DIR] [HOST]  # defaults: 5000, /tmp/meshrec-mlflow,
#                                                      # 127.0.0.1 (HOST: the address it listens on)
#
# Prints the tracking URI (http://HOST:PORT) on stdout once /health answers; progress and
# errors go to stderr. Idempotent: a healthy server already started for DIR is reused.
# Uses the mlflow of $PYTHON (default python3). Stop with mlflow_down.sh [DIR].
set -euo pipefail

PORT=${1:-5000}
DIR=$(realpath -m "${2:-/tmp/meshrec-mlflow}")
PYTHON=${PYTHON:-python3}
TIMEOUT=${MESHREC_MLFLOW_TIMEOUT:-60}
HOST=${3:-127.0.0.1}
URI="http://$HOST:$PORT"
PIDFILE="$DIR/mlflow.pid"
LOG="$DIR/mlflow.log"

log() { echo "mlflow_up: $*" >&2; }

healthy() {
  "$PYTHON" -c "import sys, urllib.request
try:
    ok = urllib.request.urlopen(sys.argv[1] + '/health', timeout=2).status == 200
except OSError:
    ok = False
sys.exit(0 if ok else 1)" "$1"
}

mkdir -p "$DIR/artifacts"
if [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  if [ "$(cat "$DIR/mlflow.uri" 2>/dev/null)" = "$URI" ] && healthy "$URI"; then
    echo "$URI"
    exit 0
  fi
  log "a server for $DIR already runs as pid $(cat "$PIDFILE"), at another address; stop it first"
  exit 1
fi
if healthy "$URI"; then
  log "port $PORT already serves something else"
  exit 1
fi

# Without job execution and with one worker the server is one process (~0.5 GB), not ~14 (~3 GB).
# setsid: the server gets its own process group, which mlflow_down.sh stops as a whole.
cd "$DIR"
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$PYTHON" -m mlflow server \
  --backend-store-uri "sqlite:///$DIR/mlflow.db" --artifacts-destination "$DIR/artifacts" \
  --host "$HOST" --port "$PORT" --workers 1 </dev/null >"$LOG" 2>&1 &
echo $! >"$PIDFILE"
echo "$URI" >"$DIR/mlflow.uri"

deadline=$((SECONDS + TIMEOUT))
until healthy "$URI"; do
  if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
    log "ERROR: mlflow server did not become healthy at $URI within ${TIMEOUT}s"
    echo "---- last lines of $LOG" >&2
    tail -n 25 "$LOG" >&2
    exit 1
  fi
  sleep 0.3
done
log "mlflow server up at $URI (pid $(cat "$PIDFILE"), data in $DIR)"
echo "$URI"
