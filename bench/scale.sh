#!/usr/bin/env bash
# Cost curves by directory size (make bench-scale): for each size in
# BENCH_SCALE_USERS (default "10000 100000 1000000"), one slapd with that
# many generated users, and mailauthd in three modes against it —
# search+bind (no cache), the mirror (ldap.mirror_refresh, one bind per
# login) and the credential cache — plus the one-bind floor (ldap-bind):
# requests/s, p99, daemon and slapd CPU per login and the daemon's RSS at
# c=8 and c=32; the mirror's first load (wall time, CPU of the daemon and of
# slapd, RSS over an idle daemon) and one periodic refresh (the same, and
# its peak RSS over the RSS before it); then a second slapd offering
# content synchronisation (syncprov): the sync session's load, and how long
# 1,000 modifies take to reach the mirror. Prints one table for the run.
#
# usage: bench/scale.sh [path/to/mailauthd]      (make bench-scale passes bin/mailauthd)
#
# Knobs (environment): BENCH_SCALE_USERS, BENCH_CONCURRENCY ("8 32"),
# BENCH_DURATION per cell (4s), BENCH_WARMUP (1s), BENCH_MIRROR_REFRESH
# (120s: the refresh measured is the first periodic one, so the run waits
# that long per size), BENCH_RESULTS (copy the raw JSON lines there),
# BENCH_KEEP=1 (keep the temp dir).
#
# The daemons run with throttle delays off (throttle: {delay: 0s}): the
# throttle still keeps its state and costs its CPU, but the load's repeated
# wrong passwords are not made to wait 250 ms, which measures the policy,
# not the cost of a directory size. 1,000,000 users need ~2 GB of disk in
# the temp dir (slapd's database) and take about a minute to load.
set -euo pipefail

cd "$(dirname "$0")/.."
bin=${1:-bin/mailauthd}
sizes=${BENCH_SCALE_USERS:-"10000 100000 1000000"}
concs=${BENCH_CONCURRENCY:-"8 32"}
dur=${BENCH_DURATION:-4s}
warm=${BENCH_WARMUP:-1s}
refresh=${BENCH_MIRROR_REFRESH:-120s}

[ -x /usr/sbin/slapd ] || { echo "bench: /usr/sbin/slapd missing; run scripts/install-deps.sh (make deps)" >&2; exit 1; }

work=$(mktemp -d /tmp/mailauthd-scale.XXXXXX)
pids=()
cleanup() {
  set +e
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  for f in "$work"/*/slapd/slapd.pid; do [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
  if [ "${BENCH_KEEP:-}" = 1 ]; then echo "bench: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf 'bench: %s\n' "$*" >&2; }

wait_for() { # wait_for FILE PID WHAT [SECONDS]
  for _ in $(seq $((${4:-30} * 10))); do
    [ -e "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || { log "$3 exited during start-up"; return 1; }
    sleep 0.1
  done
  log "$3 not ready"
  return 1
}

stop() { # stop PID: end one process we started, wait for it, forget it
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=() p
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}

log "building loadgen and mailauthd"
go build -o "$work/loadgen" ./bench/loadgen
if [ ! -x "$bin" ]; then
  go build -o "$work/mailauthd" ./cmd/mailauthd
  bin=$work/mailauthd
fi
bin=$(realpath "$bin")
lg=$work/loadgen
results=$work/results.jsonl
service_dn="cn=admin,dc=example,dc=org"
service_pw=adminpw
base="ou=people,dc=example,dc=org"
printf '%s\n' "$service_pw" >"$work/service.pw"
chmod 600 "$work/service.pw"

start_slapd() { # start_slapd DIR USERS [-syncprov]: sets url, slapd_pid, slapd_helper
  local dir=$1 n=$2; shift 2
  "$lg" slapd -dir "$dir/slapd" -users "$n" -ready "$dir/ldap-url" "$@" >"$dir/slapd.log" 2>&1 &
  slapd_helper=$!
  pids+=("$slapd_helper")
  wait_for "$dir/ldap-url" "$slapd_helper" slapd 600 || { cat "$dir/slapd.log" >&2; exit 1; }
  url=$(cat "$dir/ldap-url")
  slapd_pid=$(cat "$dir/slapd/slapd.pid")
}

start_mailauthd() { # start_mailauthd DIR CACHE_TTL [MIRROR_REFRESH]: sets mpid, started
  local dir=$1
  mkdir -p "$dir"
  cat >"$dir/mailauthd.yaml" <<EOF
listen:
  saslauthd:
    - path: $dir/mux
      mode: "0666"
  control:
    path: $dir/control
  http:
    - path: $dir/http
      mode: "0666"
ldap:
  urls: [$url]
  bind_dn: $service_dn
  bind_password_file: $work/service.pw
  base: $base
  filter: (uid=%u)
  scope: sub
${3:+  mirror_refresh: $3}
cache:
  ttl: $2
  size: 10000
throttle:
  delay: 0s
  max_delay: 0s
log:
  level: warn
EOF
  started=$(date +%s.%N)
  "$bin" serve --config "$dir/mailauthd.yaml" >"$dir/log" 2>&1 &
  mpid=$!
  pids+=("$mpid")
  wait_for "$dir/mux" "$mpid" "mailauthd ($dir)" || { cat "$dir/log" >&2; exit 1; }
}

for n in $sizes; do
  d=$work/$n
  mkdir -p "$d"
  load=(-users "$n" -hot 100 -hotfrac 0.9 -wrong 0.05 -d "$dur" -warmup "$warm" -out "$results")
  log "$n users: slapd"
  start_slapd "$d" "$n"

  start_mailauthd "$d/searchbind" 0s
  sb_pid=$mpid
  "$lg" run -label idle -c 1 -socket "$d/searchbind/mux" -pid "$sb_pid" -users "$n" -hot 0 -wrong 0 -d 200ms -warmup 0s \
    -out "$results" >/dev/null
  log "$n users: mirror, first load"
  start_mailauthd "$d/mirror" 0s "$refresh"
  mirror_pid=$mpid
  "$lg" mirror -phase load -since "$started" -metrics "$d/mirror/http" -pid "$mirror_pid" -slapdpid "$slapd_pid" \
    -label mirror -users "$n" -out "$results" >/dev/null
  log "$n users: mirror, one periodic refresh (waits for it, up to $refresh)"
  "$lg" mirror -phase refresh -interval "$refresh" -metrics "$d/mirror/http" -pid "$mirror_pid" -slapdpid "$slapd_pid" \
    -label mirror -users "$n" -out "$results" >/dev/null
  start_mailauthd "$d/cache" 60s
  cache_pid=$mpid

  log "$n users: logins (each cell $warm + $dur)"
  for c in $concs; do
    "$lg" run -label ldap-bind -mode bind -c "$c" -url "$url" -base "$base" -slapdpid "$slapd_pid" "${load[@]}" >/dev/null
    for m in searchbind mirror cache; do
      pid_var=${m/searchbind/sb}_pid
      label=${m/searchbind/search+bind}
      "$lg" run -label "$label" -c "$c" -socket "$d/$m/mux" -pid "${!pid_var}" -cpupids "${!pid_var}" \
        -slapdpid "$slapd_pid" "${load[@]}" >/dev/null
    done
  done
  stop "$cache_pid"; stop "$mirror_pid"; stop "$sb_pid"; stop "$slapd_helper"

  log "$n users: a slapd with syncprov; the mirror by content synchronisation"
  mkdir -p "$d/sync"
  start_slapd "$d/sync" "$n" -syncprov
  start_mailauthd "$d/sync/mirror" 0s "$refresh"
  "$lg" mirror -phase sync-load -since "$started" -metrics "$d/sync/mirror/http" -pid "$mpid" -slapdpid "$slapd_pid" \
    -label mirror-sync -users "$n" -out "$results" >/dev/null
  "$lg" syncmods -n 1000 -c 4 -url "$url" -binddn "$service_dn" -bindpw "$service_pw" -base "$base" -users "$n" \
    -metrics "$d/sync/mirror/http" -pid "$mpid" -slapdpid "$slapd_pid" -label mirror-sync -out "$results" >/dev/null
  stop "$mpid"; stop "$slapd_helper"
  rm -rf "$d/slapd" "$d/sync/slapd" # the databases: up to ~2 GB each
done

echo
echo "mailauthd cost curves by directory size -- $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -sr); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "peers: $(/usr/sbin/slapd -VV 2>&1 | grep -o 'slapd [0-9.]*' | head -1), generated users (uid, host: *), indexed uid"
echo "load: closed loop, new socket connection per request, 90% of requests to 100 hot users, 10% spread over all; 5% wrong passwords;"
echo "      cells $warm warm-up + $dur; throttle on without delays; mirror_refresh $refresh"
echo
"$lg" scaletable -in "$results"
if [ -n "${BENCH_RESULTS:-}" ]; then cp "$results" "$BENCH_RESULTS"; fi
