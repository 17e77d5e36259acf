#!/usr/bin/env bash
# Start a throwaway Docker engine for the image tests (CI and developers' machines).
#
# Installs docker.io + debootstrap when missing, starts dockerd in the background with flags that keep
# it off the host's network configuration (no bridge, no iptables, no forwarding, no masquerading:
# containers then only get --network host or none), writes its PID to $EDGETFTP_DOCKER_STATE/dockerd.pid
# and waits for the API socket.  docker/stop-engine.sh stops it by that PID.
#
# An engine that already answers is left alone (no PID file is written, so stop-engine.sh won't touch it).
set -euo pipefail

STATE_DIR="${EDGETFTP_DOCKER_STATE:-/tmp/edgetftp-docker}"
PID_FILE="$STATE_DIR/dockerd.pid"
LOG_FILE="$STATE_DIR/dockerd.log"
WAIT_SECONDS="${EDGETFTP_DOCKER_WAIT:-60}"

engine_answers() {
    docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

install_missing() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    if ((${#missing[@]})); then
        echo "start-engine: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

if engine_answers; then
    echo "start-engine: an engine is already running; leaving it alone"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "start-engine: needs root (to install packages and run dockerd)" >&2
    exit 1
fi

install_missing
mkdir -p "$STATE_DIR"
if [[ -s $PID_FILE ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    echo "start-engine: dockerd $(cat "$PID_FILE") is starting; waiting for it"
else
    # setsid: the engine outlives this script; stop-engine.sh ends it by PID.
    setsid dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
        >"$LOG_FILE" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    echo "start-engine: dockerd started, PID $(cat "$PID_FILE"), log $LOG_FILE"
fi

for _ in $(seq 1 "$WAIT_SECONDS"); do
    if engine_answers; then
        echo "start-engine: engine $(docker version --format '{{.Server.Version}}') ready"
        exit 0
    fi
    if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        echo "start-engine: dockerd exited; last log lines:" >&2
        tail -n 20 "$LOG_FILE" >&2
        rm -f "$PID_FILE"
        exit 1
    fi
    sleep 1
done
echo "start-engine: engine did not answer within ${WAIT_SECONDS}s; log: $LOG_FILE" >&2
exit 1
