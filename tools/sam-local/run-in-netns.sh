#!/usr/bin/env bash
# Run a command inside a private network namespace (only loopback, which is brought up)
# together with
#   - a podman system service on a unix socket  -> DOCKER_HOST=unix://.../podman.sock
#   - a moto server on 127.0.0.1:$HARMONY_MOTO_PORT -> AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL
# so that `sam local invoke ... --docker-network host` runs Lambda containers that reach
# moto over loopback, and nothing touches the machine's own network (podman's bridge,
# iptables rules and ip_forward stay inside the namespace; with --docker-network host
# there is no bridge at all).
#
# Usage: tools/sam-local/run-in-netns.sh <command> [args...]
# Everything started here is stopped on exit (trap); the whole run is bounded by
# HARMONY_NETNS_TIMEOUT seconds (default 3000), each start-up wait by 60 s.
#
# Env in:
#   HARMONY_NETNS_TIMEOUT  seconds for the command (default 3000)
#   HARMONY_MOTO_PORT      moto's port inside the namespace (default 5055)
#   HARMONY_MOTO_BIND      moto's bind address inside the namespace (default 0.0.0.0: the
#                          namespace's loopback and podman's bridge gateway, nothing else)
#   HARMONY_MOTO_SERVER    moto server command (default: <repo>/.venv/bin/moto_server,
#                          else `python3 -m moto.server`)
#   CONTAINERS_CONF        podman config (default: tools/lambda-image/containers.conf)
# Env out (to the command):
#   DOCKER_HOST            unix:///<tmp>/podman.sock
#   HARMONY_MOTO_ENDPOINT, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL   http://127.0.0.1:<port>
#   HARMONY_MOTO_CONTAINER_ENDPOINT  http://<podman bridge gateway>:<port>, moto as seen from
#                          a Lambda container (pass it with `sam local invoke --env-vars`)
#   AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (testing, unless set), AWS_DEFAULT_REGION
#   (us-east-1 unless set), SAM_CLI_TELEMETRY=0, HARMONY_NETNS=1, HARMONY_NETNS_DIR
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
TIMEOUT="${HARMONY_NETNS_TIMEOUT:-3000}"

log() { printf '[netns %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

[ $# -ge 1 ] || { echo "usage: $0 <command> [args...]" >&2; exit 2; }

# ------------------------------------------------------------------ outer: enter the netns
if [ "${HARMONY_NETNS_INNER:-}" != 1 ]; then
  [ "$(id -u)" = 0 ] || { log "must run as root (unshare --net, rootful podman)"; exit 2; }
  export HARMONY_NETNS_INNER=1
  # --kill-child=SIGTERM: if this unshare dies, the inner script gets TERM and cleans up.
  # The outer timeout is a last resort above the inner one (which cleans up properly).
  exec timeout --kill-after=20 "$((TIMEOUT + 120))" \
    unshare --net --fork --kill-child=SIGTERM -- bash "$HERE/run-in-netns.sh" "$@"
fi

# ------------------------------------------------------------------ inner: in the netns
export CONTAINERS_CONF="${CONTAINERS_CONF:-$REPO/tools/lambda-image/containers.conf}"
PORT="${HARMONY_MOTO_PORT:-5055}"
# 0.0.0.0 *inside this namespace* = its loopback + podman's bridge gateway (the only
# interfaces here), so Lambda containers on podman's default bridge can reach moto.
MOTO_BIND="${HARMONY_MOTO_BIND:-0.0.0.0}"
RUN_DIR="$(mktemp -d /tmp/harmony-netns.XXXXXX)"
SOCK="$RUN_DIR/podman.sock"
PODMAN_PID=""; MOTO_PID=""; CMD_PID=""

ip link set lo up

BEFORE_CONTAINERS="$(podman ps -aq --no-trunc 2>/dev/null | sort || true)"

stop_pid() {  # pid name: TERM, wait up to 10 s, then KILL
  local pid="$1" name="$2" i
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  log "$name ($pid) did not stop on TERM; killing"
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ -n "$CMD_PID" ] && stop_pid "$CMD_PID" command
  # Containers made during this run (SAM normally removes its own).
  local c
  for c in $(comm -13 <(echo "$BEFORE_CONTAINERS") \
                      <(timeout 20 podman ps -aq --no-trunc 2>/dev/null | sort || true)); do
    timeout 30 podman rm -f -t 2 "$c" >/dev/null 2>&1 || true
  done
  stop_pid "$MOTO_PID" moto
  stop_pid "$PODMAN_PID" "podman service"
  rm -rf "$RUN_DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' INT TERM

wait_for() {  # description timeout_s command...
  local what="$1" t="$2"; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then log "timed out waiting for $what"; return 1; fi
    sleep 0.3
  done
}

# --- podman service
podman system service --time=0 "unix://$SOCK" > "$RUN_DIR/podman-service.log" 2>&1 &
PODMAN_PID=$!
if ! wait_for "podman service" 60 timeout 5 podman --url "unix://$SOCK" version; then
  cat "$RUN_DIR/podman-service.log" >&2; exit 1
fi
export DOCKER_HOST="unix://$SOCK"

# --- moto server
if [ -n "${HARMONY_MOTO_SERVER:-}" ]; then
  read -r -a MOTO_CMD <<< "$HARMONY_MOTO_SERVER"
elif [ -x "$REPO/.venv/bin/moto_server" ]; then
  MOTO_CMD=("$REPO/.venv/bin/moto_server")
else
  MOTO_CMD=(python3 -m moto.server)
fi
"${MOTO_CMD[@]}" -H "$MOTO_BIND" -p "$PORT" > "$RUN_DIR/moto.log" 2>&1 &
MOTO_PID=$!
if ! wait_for "moto server on 127.0.0.1:$PORT" 60 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT"; then
  cat "$RUN_DIR/moto.log" >&2; exit 1
fi

export HARMONY_NETNS=1 HARMONY_NETNS_DIR="$RUN_DIR"
export HARMONY_MOTO_ENDPOINT="http://127.0.0.1:$PORT"
export AWS_ENDPOINT_URL_S3="$HARMONY_MOTO_ENDPOINT" AWS_ENDPOINT_URL="$HARMONY_MOTO_ENDPOINT"
# What a Lambda container must use: `sam local invoke --docker-network host` does NOT give
# the container host networking (SAM 1.170 only skips network.connect for "host"); the
# container sits on podman's default bridge, whose gateway is this namespace.
GW="$(timeout 20 podman network inspect podman --format '{{range .Subnets}}{{.Gateway}}{{end}}' 2>/dev/null | head -n1 || true)"
export HARMONY_MOTO_CONTAINER_ENDPOINT="http://${GW:-10.88.0.1}:$PORT"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}" AWS_REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}"
export SAM_CLI_TELEMETRY=0
unset HARMONY_NETNS_INNER
log "podman service at $DOCKER_HOST, moto at $HARMONY_MOTO_ENDPOINT (containers: $HARMONY_MOTO_CONTAINER_ENDPOINT); running: $*"

# The command runs in the background so that a TERM to this script reaches the trap.
set +e
timeout --kill-after=20 "$TIMEOUT" "$@" &
CMD_PID=$!
wait "$CMD_PID"; RC=$?
CMD_PID=""
set -e
[ $RC -eq 124 ] && log "command timed out after $TIMEOUT s"
exit $RC
