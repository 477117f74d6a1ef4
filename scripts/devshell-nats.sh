#!/usr/bin/env bash
# The devshell's local JetStream: `nix develop` runs `devshell-nats.sh enter $$` from its shell
# hook. The first shell starts a supervisor in the background, which starts nats-server (the
# same flags and store as `just up`: 127.0.0.1:4222, monitoring on 8222, data in .data/nats)
# and stops it once no registered shell is alive any more. Every shell registers its pid; the
# call returns at once (it never waits for the server, so `nix develop -c <cmd>` is not held up).
#
#   devshell-nats.sh enter PID    register shell PID, start the supervisor unless one runs
#   devshell-nats.sh status       the supervisor, the server and the registered shells
#   devshell-nats.sh stop         stop the supervisor and its server now
#   devshell-nats.sh supervise    (internal) the supervisor itself
#
# Nothing is started when NATS_ES_DEVSHELL_NATS=0 (the opt-out), when NATS_URL points to another
# host, or when something already answers on the port (it is used as it is).
#
# Environment: NATS_ES_STATE [.data of the checkout] (data, logs, pid files), NATS_URL
# [nats://127.0.0.1:4222] (its port is the server's), NATS_ES_MONITOR_PORT [8222],
# NATS_SERVER_BIN [nats-server], NATS_ES_POLL_SECS [1] (how often the supervisor looks at shells).
set -euo pipefail

STATE=${NATS_ES_STATE:-$PWD/.data}
case $STATE in /*) ;; *) STATE=$PWD/$STATE ;; esac
DIR=$STATE/devshell
SHELLS=$DIR/shells
NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
MONITOR_PORT=${NATS_ES_MONITOR_PORT:-8222}
POLL=${NATS_ES_POLL_SECS:-1}

say() { printf '[devshell-nats] %s\n' "$*" >&2; }

# host and port of NATS_URL (the first URL if several); empty port = not a nats:// URL we know
url_host() { local u=${NATS_URL%%,*}; u=${u#*://}; u=${u##*@}; echo "${u%%:*}"; }
url_port() { local u=${NATS_URL%%,*}; u=${u#*://}; u=${u##*@}; [[ $u == *:* ]] && echo "${u##*:}" || echo 4222; }

port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A pid is "the same process" when it is alive and started at the recorded time (pids recycle).
started_at() { ps -o lstart= -p "$1" 2>/dev/null | tr -s ' ' || true; }
same_process() { # pid file
  local pid
  pid=$(head -n1 "$1" 2>/dev/null) || return 1
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && [[ "$(started_at "$pid")" == "$(sed -n 2p "$1")" ]]
}
record() { printf '%s\n%s\n' "$1" "$(started_at "$1")" >"$2"; }

# mkdir is atomic: a lock that needs no flock (which macOS lacks)
lock() {
  local i
  for ((i = 0; i < 200; i++)); do
    mkdir "$DIR/lock" 2>/dev/null && return 0
    sleep 0.05
  done
  # a holder that died without unlocking: take it over
  rm -rf "$DIR/lock"
  mkdir "$DIR/lock"
}
unlock() { rm -rf "$DIR/lock"; }

live_shells() { # prunes dead shells, prints how many are alive
  local f n=0
  shopt -s nullglob
  for f in "$SHELLS"/*; do
    if same_process "$f"; then n=$((n + 1)); else rm -f "$f"; fi
  done
  echo "$n"
}

cmd_enter() {
  local pid=${1:?usage: devshell-nats.sh enter PID} host port
  if [[ ${NATS_ES_DEVSHELL_NATS:-1} == 0 ]]; then return 0; fi
  host=$(url_host)
  port=$(url_port)
  case $host in
    127.0.0.1 | localhost) ;;
    *) say "NATS_URL points to $host: no local nats-server started"; return 0 ;;
  esac
  [[ $port =~ ^[0-9]+$ ]] || { say "cannot read a port from NATS_URL=$NATS_URL: no local nats-server started"; return 0; }
  mkdir -p "$SHELLS"
  lock
  trap unlock RETURN
  record "$pid" "$SHELLS/$pid"
  if same_process "$DIR/supervisor.pid"; then return 0; fi
  if port_answers "$port"; then
    rm -f "$SHELLS/$pid"
    say "something already answers on 127.0.0.1:$port: using it, none started"
    return 0
  fi
  local nats=${NATS_SERVER_BIN:-nats-server}
  command -v "$nats" >/dev/null || { say "nats-server not found: none started"; return 0; }
  mkdir -p "$STATE/logs"
  # detached: own session, no inherited descriptors (a CI runner waiting for EOF is not held)
  rm -f "$DIR/supervisor.pid"
  NATS_ES_STATE=$STATE NATS_URL=$NATS_URL setsid "$0" supervise "$port" \
    </dev/null >>"$STATE/logs/devshell-nats.log" 2>&1 &
  # the supervisor records itself (setsid may fork, so `$!` is not its pid); wait for that
  # under the lock, so that a second shell entering now cannot start another one
  local i
  for ((i = 0; i < 100; i++)); do
    same_process "$DIR/supervisor.pid" && break
    sleep 0.03
  done
  say "nats-server starting on 127.0.0.1:$port (data $STATE/nats, log $STATE/logs/devshell-nats.log; stops with the last shell; opt out: NATS_ES_DEVSHELL_NATS=0)"
}

cmd_supervise() {
  local port=$1 nats=${NATS_SERVER_BIN:-nats-server} server pdeath=()
  # on Linux the server dies with its supervisor, even a SIGKILLed one: no orphan
  if command -v setpriv >/dev/null && setpriv --help 2>&1 | grep -q pdeathsig; then pdeath=(setpriv --pdeathsig TERM --); fi
  record "$$" "$DIR/supervisor.pid"
  mkdir -p "$STATE/nats"
  "${pdeath[@]}" "$nats" -js -a 127.0.0.1 -p "$port" -m "$MONITOR_PORT" -sd "$STATE/nats" \
    --server_name nats-es-local &
  server=$!
  record "$server" "$DIR/nats.pid"
  stop_server() {
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -f "$DIR/nats.pid" "$DIR/supervisor.pid"
  }
  trap 'stop_server; exit 0' TERM INT HUP
  say "$(date -u +%FT%TZ) supervisor $$: nats-server pid $server on 127.0.0.1:$port"
  while true; do
    sleep "$POLL" &
    wait $! || true
    if ! kill -0 "$server" 2>/dev/null; then
      say "$(date -u +%FT%TZ) nats-server exited; supervisor ends"
      rm -f "$DIR/nats.pid" "$DIR/supervisor.pid"
      exit 1
    fi
    lock
    if (($(live_shells) == 0)); then
      say "$(date -u +%FT%TZ) the last shell has left: stopping nats-server"
      stop_server
      unlock
      exit 0
    fi
    unlock
  done
}

cmd_status() {
  local f
  if same_process "$DIR/supervisor.pid"; then echo "supervisor: pid $(head -n1 "$DIR/supervisor.pid")"; else echo "supervisor: not running"; fi
  if same_process "$DIR/nats.pid"; then echo "nats-server: pid $(head -n1 "$DIR/nats.pid")"; else echo "nats-server: not running"; fi
  shopt -s nullglob
  for f in "$SHELLS"/*; do
    if same_process "$f"; then echo "shell: pid $(head -n1 "$f")"; fi
  done
}

cmd_stop() {
  local pid
  if same_process "$DIR/supervisor.pid"; then
    pid=$(head -n1 "$DIR/supervisor.pid")
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    say "stopped"
  else
    say "not running"
  fi
}

case ${1:-} in
  enter) shift; cmd_enter "$@" ;;
  supervise) shift; cmd_supervise "$@" ;;
  status) cmd_status ;;
  stop) cmd_stop ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
