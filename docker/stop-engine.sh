#!/usr/bin/env bash
# Stop the engine docker/start-engine.sh started, by the PID it recorded (never by name).
set -euo pipefail

STATE_DIR="${EDGETFTP_DOCKER_STATE:-/tmp/edgetftp-docker}"
PID_FILE="$STATE_DIR/dockerd.pid"

if [[ ! -s $PID_FILE ]]; then
    echo "stop-engine: no PID file ($PID_FILE); nothing of ours to stop"
    exit 0
fi
pid=$(cat "$PID_FILE")
if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    # dockerd stops its containers first (10 s each by default); give it time, then insist.
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "stop-engine: dockerd $pid still running after 60 s; sending SIGKILL" >&2
        kill -KILL "$pid"
    fi
fi
rm -f "$PID_FILE"
echo "stop-engine: dockerd $pid stopped"
