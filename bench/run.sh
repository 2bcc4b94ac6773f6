#!/usr/bin/env bash
# Side-by-side benchmark: mailauthd vs Cyrus saslauthd 2.1.x (-a ldap), same
# slapd, same closed-loop load generator (bench/loadgen), same socket
# protocol. Prints one table, the ratios measured in this run, and
# mailauthd's resident memory with 10,000 cached users over a long run.
# The same two mailauthd daemons (no cache, cache) are also measured through
# nginx's auth_http (listen.http, loadgen -mode http): the auth_http rows.
#
# usage: bench/run.sh [path/to/mailauthd]      (make bench passes bin/mailauthd)
#
# Knobs (environment): BENCH_USERS (10000), BENCH_CONCURRENCY ("1 8 32"),
# BENCH_DURATION per cell (4s), BENCH_WARMUP (1s), BENCH_LONG_STEPS and
# BENCH_LONG_STEP (4 x 30s: the memory-growth run at c=32), BENCH_PAIRS
# (3: throttling on/off cell pairs per concurrency), BENCH_RESULTS
# (also copy the raw JSON lines there), BENCH_KEEP=1 (keep the temp dir),
# BENCH_ONLY=dovecot (only the Dovecot rows and the daemons they ask) or
# BENCH_ONLY=throttle (only the throttling on/off pairs),
# BENCH_BASELINE=DIR (DIR/mailauthd and DIR/mailauthd.lua of another build:
# its daemons and script measured as rows "dovecot-lua*@base", each cell
# right after this build's, so old and new meet the same neighbours).
#
# Everything runs on loopback in a temp dir; everything started is stopped on
# exit. Needs slapd and saslauthd (scripts/install-deps.sh) and Go.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
bin=${1:-bin/mailauthd}
users=${BENCH_USERS:-10000}
concs=${BENCH_CONCURRENCY:-"1 8 32"}
dur=${BENCH_DURATION:-4s}
warm=${BENCH_WARMUP:-1s}
long_steps=${BENCH_LONG_STEPS:-4}
long_step=${BENCH_LONG_STEP:-30s}
pairs=${BENCH_PAIRS:-3}
only=${BENCH_ONLY:-}
baseline=${BENCH_BASELINE:-}
case $only in "" | dovecot | throttle) ;; *) echo "bench: BENCH_ONLY must be empty, dovecot or throttle" >&2; exit 2 ;; esac
if [ -n "$baseline" ] && { [ ! -x "$baseline/mailauthd" ] || [ ! -f "$baseline/mailauthd.lua" ]; }; then
  echo "bench: BENCH_BASELINE=$baseline needs mailauthd and mailauthd.lua there" >&2; exit 2
fi
if [ -n "$baseline" ]; then baseline=$(realpath "$baseline"); fi
# The workload every cell uses: 90% of requests for a hot set of 100 users,
# the rest spread over the whole directory; 5% wrong passwords.
load=(-users "$users" -hot 100 -hotfrac 0.9 -wrong 0.05 -d "$dur" -warmup "$warm")

for tool in /usr/sbin/slapd /usr/sbin/saslauthd; do
  [ -x "$tool" ] || { echo "bench: $tool missing; run scripts/install-deps.sh (make deps)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/mailauthd-bench.XXXXXX)
# Dovecot's auth process (user dovecot) runs checkpassword from here and
# connects to the daemons' control sockets: the tree must be traversable.
chmod 0755 "$work"
pids=()
cyrus_dirs=()
cleanup() {
  set +e
  for d in "${cyrus_dirs[@]}"; do
    [ -s "$d/saslauthd.pid" ] && kill "$(cat "$d/saslauthd.pid")" 2>/dev/null
  done
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null
  done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  # slapd belongs to the loadgen slapd helper; if that died hard, stop slapd by its pid file.
  [ -s "$work/slapd/slapd.pid" ] && kill "$(cat "$work/slapd/slapd.pid")" 2>/dev/null
  if [ "${BENCH_KEEP:-}" = 1 ]; then echo "bench: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf 'bench: %s\n' "$*" >&2; }

wait_for() { # wait_for FILE-OR-SOCKET PID WHAT
  for _ in $(seq 300); do
    [ -e "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || { log "$3 exited during start-up"; return 1; }
    sleep 0.1
  done
  log "$3 not ready after 30s"
  return 1
}

log "building loadgen and mailauthd"
go build -o "$work/loadgen" ./bench/loadgen
if [ ! -x "$bin" ]; then
  go build -o "$work/mailauthd" ./cmd/mailauthd
  bin=$work/mailauthd
fi
bin=$(realpath "$bin")
lg=$work/loadgen

log "starting slapd with $users generated users"
"$lg" slapd -dir "$work/slapd" -users "$users" -ready "$work/ldap-url" >"$work/slapd.log" 2>&1 &
pids+=($!)
wait_for "$work/ldap-url" "${pids[-1]}" slapd || { cat "$work/slapd.log" >&2; exit 1; }
url=$(cat "$work/ldap-url")
# The search account: the directory's admin DN, because slapd's default size
# limit (500) would cut the mirror's full load short; a site gives its
# service account "limits dn.exact=... size=unlimited" instead. Both daemons
# use the same account, so the comparison stays even.
service_dn="cn=admin,dc=example,dc=org"
service_pw=adminpw
base="ou=people,dc=example,dc=org"

# The LDAP settings, the same for both daemons: Cyrus's saslauthd.conf,
# and mailauthd's YAML ldap: section below.
conf=$work/saslauthd.conf
cat >"$conf" <<EOF
ldap_servers: $url
ldap_bind_dn: $service_dn
ldap_bind_pw: $service_pw
ldap_search_base: $base
ldap_filter: (uid=%u)
ldap_scope: sub
ldap_timeout: 5
ldap_time_limit: 5
EOF
chmod 600 "$conf"
printf '%s\n' "$service_pw" >"$work/service.pw"
chmod 600 "$work/service.pw"

# Cyrus: daemonized (-d would log every request), 5 workers as Debian ships it.
start_cyrus() { # start_cyrus NAME [saslauthd flags...]
  local dir=$work/$1; shift
  mkdir -p "$dir"
  cyrus_dirs+=("$dir")
  /usr/sbin/saslauthd -a ldap -n 5 -O "$conf" -m "$dir" "$@"
  for _ in $(seq 100); do [ -S "$dir/mux" ] && [ -s "$dir/saslauthd.pid" ] && return 0; sleep 0.1; done
  log "Cyrus saslauthd ($dir) did not start"; return 1
}

# mailauthd: the same LDAP settings; its host rule stays on (the generated
# users carry host: *), so it does strictly more than Cyrus.
start_mailauthd() { # start_mailauthd NAME CACHE_TTL [MIRROR_REFRESH] [EXTRA_YAML]; the binary: $daemon_bin or $bin
  local dir=$work/$1
  mkdir -p "$dir"
  cat >"$dir/mailauthd.yaml" <<EOF
listen:
  saslauthd:
    - path: $dir/mux
      mode: "0666"
  control:
    path: $dir/control
    mode: "0666"
  http:
    - path: $dir/http
      mode: "0666"
auth_http:
  backends:
    smtp: {server: 127.0.0.1, port: 25}
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
log:
  level: warn
${4:-}
EOF
  "${daemon_bin:-$bin}" serve --config "$dir/mailauthd.yaml" >"$dir/log" 2>&1 &
  pids+=($!)
  echo $! >"$dir/pid"
  wait_for "$dir/mux" "$!" "mailauthd ($1)" || { cat "$dir/log" >&2; return 1; }
}

results=$work/results.jsonl
cell() { # cell LABEL C [loadgen run flags...]
  local label=$1 c=$2; shift 2
  "$lg" run -label "$label" -c "$c" -out "$results" "$@" >/dev/null ||
    log "cell $label c=$c failed"
}

if [ -z "$only" ]; then
  start_cyrus cyrus
  start_cyrus cyrus-cache -c
fi
start_mailauthd mailauthd 0s
start_mailauthd mailauthd-cache 60s
daemons=(cyrus mailauthd mailauthd-nothrottle cyrus-cache mailauthd-cache)
if [ "$only" != dovecot ]; then
  # The same daemon with throttling off: what throttling costs a normal load.
  start_mailauthd mailauthd-nothrottle 0s "" "throttle: {enabled: false}"
fi
# The opt-in one-bind path (package mirror), if this build has it.
mirror_ok() { "$1" serve --check --config <(printf 'ldap:\n  urls: [%s]\n  base: %s\n  mirror_refresh: 60s\n' "$url" "$base") >/dev/null 2>&1; }
if mirror_ok "$bin"; then
  start_mailauthd mailauthd-mirror 0s 60s
  daemons=(cyrus mailauthd mailauthd-nothrottle mailauthd-mirror cyrus-cache mailauthd-cache)
  sleep 2 # first mirror load
fi
# The baseline's daemons, for its Dovecot rows.
if [ -n "$baseline" ]; then
  daemon_bin=$(realpath "$baseline/mailauthd")
  start_mailauthd base-mailauthd 0s
  start_mailauthd base-mailauthd-cache 60s
  if mirror_ok "$daemon_bin"; then start_mailauthd base-mailauthd-mirror 0s 60s; sleep 2; fi
  unset daemon_bin
fi

# Dovecot rows (Dovecot 2.3's auth process, bench/loadgen dovecot): its own
# LDAP passdb, checkpassword standalone and via the daemon, and the Lua
# script via the daemon without cache, with the mirror, with the cache.
# Needs root (Dovecot's master) and dovecot-core, dovecot-ldap,
# dovecot-auth-lua, lua-socket.
dovecots=()
start_dovecot() { # start_dovecot NAME [loadgen dovecot flags...]
  local name=$1; shift
  "$lg" dovecot -ready "$work/$name.ready" "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  wait_for "$work/$name.ready" "$!" "Dovecot ($name)" || { cat "$work/$name.log" >&2; return 1; }
  dovecots+=("$name")
}
if [ "$only" != throttle ] && [ "$(id -u)" = 0 ] && [ -x /usr/sbin/dovecot ] && [ -e /usr/lib/dovecot/modules/auth/libauthdb_lua.so ] &&
  [ -e /usr/lib/dovecot/modules/auth/libauthdb_ldap.so ] && /usr/sbin/dovecot --version | grep -q '^2\.3\.'; then
  log "starting Dovecot 2.3 auth processes for the Dovecot rows"
  # The checkpassword program runs as dovecot: its own copy of the binary,
  # and (standalone) the service account's password file.
  mkdir -p "$work/bin" && cp "$bin" "$work/bin/mailauthd" && chmod 0755 "$work/bin" "$work/bin/mailauthd"
  chgrp dovecot "$work/service.pw" && chmod 0640 "$work/service.pw"
  chmod 0755 "$work/mailauthd" && chmod 0644 "$work/mailauthd/mailauthd.yaml"
  start_dovecot dovecot-lua-noop -kind lua-noop
  start_dovecot dovecot-ldap -kind ldap -url "$url" -base "$base" -binddn "$service_dn" -bindpw "$service_pw"
  start_dovecot dovecot-checkpassword -kind checkpassword -standalone -bin "$work/bin/mailauthd" -config "$work/mailauthd/mailauthd.yaml"
  start_dovecot dovecot-checkpassword-daemon -kind checkpassword -bin "$work/bin/mailauthd" -config "$work/mailauthd/mailauthd.yaml"
  # Each Lua row right after its baseline, so that a noisy neighbour hits
  # both alike.
  for row in lua:mailauthd lua-mirror:mailauthd-mirror lua-cache:mailauthd-cache; do
    d=${row#*:}
    if [ -n "$baseline" ] && [ -e "$work/base-$d/control" ]; then
      start_dovecot "dovecot-${row%%:*}@base" -kind lua -script "$baseline/mailauthd.lua" -socket "$work/base-$d/control"
    fi
    if [ -e "$work/$d/control" ]; then
      start_dovecot "dovecot-${row%%:*}" -kind lua -socket "$work/$d/control"
    fi
  done
elif [ "$only" != throttle ]; then
  log "no Dovecot rows: they need root and Dovecot 2.3 with dovecot-ldap and dovecot-auth-lua (scripts/install-deps.sh)"
fi
# The daemon behind each Dovecot row ("" for none).
dovecot_daemon() {
  case $1 in
    dovecot-checkpassword-daemon | dovecot-lua) echo mailauthd ;;
    dovecot-lua-mirror) echo mailauthd-mirror ;;
    dovecot-lua-cache) echo mailauthd-cache ;;
    dovecot-lua@base) echo base-mailauthd ;;
    dovecot-lua-mirror@base) echo base-mailauthd-mirror ;;
    dovecot-lua-cache@base) echo base-mailauthd-cache ;;
  esac
}
dovecot_flags() { # dovecot_flags NAME: loadgen flags for a Dovecot row
  local sock pgid d
  read -r sock pgid <"$work/$1.ready"
  echo "-mode dovecot -service imap -socket $sock -dovecotpgid $pgid -slapdpid $slapd_pid"
  d=$(dovecot_daemon "$1")
  if [ -n "$d" ]; then echo "-cpupids $(cat "$work/$d/pid")"; fi
}
# Dovecot 2.3 holds every failed login for its 500 ms failure timer even with
# auth_failure_delay = 0, so the Dovecot rows send good passwords only.
dovecot_load=(-users "$users" -hot 100 -hotfrac 0.9 -wrong 0 -d "$dur" -warmup "$warm")

slapd_pid=$(cat "$work/slapd/slapd.pid")
cyrus_pids() { # the master and its workers
  local m; m=$(cat "$work/$1/saslauthd.pid")
  echo "$m $(pgrep -P "$m" | tr '\n' ' ')" | tr -s ' ' ','
}
daemon() { # daemon NAME: loadgen flags naming its socket and processes
  if [ -s "$work/$1/saslauthd.pid" ]; then
    echo "-socket $work/$1/mux -cpupids $(cyrus_pids "$1") -slapdpid $slapd_pid"
  else
    echo "-socket $work/$1/mux -cpupids $(cat "$work/$1/pid") -pid $(cat "$work/$1/pid") -slapdpid $slapd_pid"
  fi
}

log "measuring (each cell $warm warm-up + $dur)"
for c in $concs; do
  if [ -z "$only" ]; then
    cell ldap-bind "$c" -mode bind -url "$url" -base "$base" -slapdpid "$slapd_pid" "${load[@]}"
    cell ldap-search+bind "$c" -mode searchbind -url "$url" -base "$base" -binddn "$service_dn" -bindpw "$service_pw" \
      -slapdpid "$slapd_pid" "${load[@]}"
    # Interleaved, so that a noisy neighbour hits both sides of a ratio alike.
    for d in "${daemons[@]}"; do
      # shellcheck disable=SC2046 # word splitting wanted: daemon prints flags
      cell "$d" "$c" $(daemon "$d") "${load[@]}"
    done
  fi
  if [ "$only" != dovecot ]; then
    # What throttling costs: the same daemon with it on and off, alternated
    # BENCH_PAIRS times, so that drift on a shared machine hits both sides.
    for _ in $(seq "$pairs"); do
      for d in mailauthd mailauthd-nothrottle; do
        # shellcheck disable=SC2046
        cell "pair:$d" "$c" $(daemon "$d") "${load[@]}"
      done
    done
  fi
  if [ -z "$only" ]; then
    # nginx's auth_http into the same two daemons (cache off, on).
    for d in mailauthd mailauthd-cache; do
      # shellcheck disable=SC2046
      cell "${d/mailauthd/auth_http}" "$c" -mode http $(daemon "$d" | sed "s|$work/$d/mux|$work/$d/http|") "${load[@]}"
    done
  fi
  for d in "${dovecots[@]}"; do
    # shellcheck disable=SC2046 # word splitting wanted: dovecot_flags prints flags
    cell "$d" "$c" $(dovecot_flags "$d") "${dovecot_load[@]}"
  done
done

if [ -n "$only" ]; then
  echo
  echo "$only rows -- $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -sr); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  peers="$(/usr/sbin/slapd -VV 2>&1 | grep -o 'slapd [0-9.]*' | head -1)"
  if [ "$only" = dovecot ]; then peers="$peers, Dovecot $(/usr/sbin/dovecot --version)"; fi
  echo "peers: $peers, $users users; cells $warm warm-up + $dur${baseline:+; baseline $baseline}"
  "$lg" table -in "$results"
  if [ -n "${BENCH_RESULTS:-}" ]; then cp "$results" "$BENCH_RESULTS"; fi
  exit 0
fi

# Attacks (docs/security.md). The victim, user0, logs in first, so the
# directory's acceptance of its password is known when the attack starts.
attack() { # attack LABEL DAEMON ATTACKER-FLAGS...: the real user's p99 during the attack
  local label=$1 d=$2; shift 2
  # shellcheck disable=SC2046
  "$lg" run -label "$label: real user" -c 1 $(daemon "$d") -users 1 -hot 1 -hotfrac 1 -wrong 0 -d 300ms -warmup 0s >/dev/null
  # shellcheck disable=SC2046
  "$lg" run -label "$label: attacker" -c 32 $(daemon "$d") "$@" -distinct -wrong 1 -d "$dur" -warmup 1s \
    -out "$results" >/dev/null &
  local atk=$!
  sleep 1
  # shellcheck disable=SC2046
  "$lg" run -label "$label: real user" -c 1 $(daemon "$d") -users 1 -hot 1 -hotfrac 1 -wrong 0 -addr "192.0.2.1;1" \
    -d "$dur" -warmup 0s -out "$results" >/dev/null
  wait "$atk"
}
log "attacks: one account, then one address spraying, against throttling on and off"
for d in mailauthd mailauthd-nothrottle; do
  attack "attack on user0 ($d)" "$d" -users 1 -hot 1 -hotfrac 1 -addr "203.0.113.5;1"
  attack "spray from one address ($d)" "$d" -users "$users" -hot 0 -addr "203.0.113.6;1"
done
log "slowloris: a login while 2,000 connections send one byte and stall"
# shellcheck disable=SC2046
"$lg" run -label "slowloris 2000 stalled (mailauthd-cache)" -c 1 $(daemon mailauthd-cache) -stall 2000 \
  -users 1 -hot 1 -hotfrac 1 -wrong 0 -d "$dur" -warmup 1s -out "$results" >/dev/null

log "memory: a fresh mailauthd with the cache; fill it with all $users users, then ${long_steps} x $long_step at c=32"
start_mailauthd mailauthd-mem 600s
mem_pid=$(cat "$work/mailauthd-mem/pid")
mem_sock=$work/mailauthd-mem/mux
"$lg" run -label "mem:idle" -c 1 -socket "$mem_sock" -pid "$mem_pid" -users "$users" -hot 0 -wrong 0 -d 200ms -warmup 0s -out "$results" >/dev/null
"$lg" run -label "mem:after filling $users users" -c 32 -socket "$mem_sock" -pid "$mem_pid" -users "$users" -hot 0 -wrong 0 -seq \
  -d "${BENCH_FILL:-8s}" -warmup 0s -out "$results" >/dev/null
for i in $(seq "$long_steps"); do
  "$lg" run -label "mem:long run step $i ($long_step, c=32)" -c 32 -socket "$mem_sock" -pid "$mem_pid" \
    -users "$users" -hot 100 -hotfrac 0.5 -wrong 0.05 -d "$long_step" -warmup 0s -out "$results" >/dev/null
done

echo
echo "mailauthd vs Cyrus saslauthd -- $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -sr); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "peers: $(/usr/sbin/slapd -VV 2>&1 | grep -o 'slapd [0-9.]*' | head -1), saslauthd $(/usr/sbin/saslauthd -v 2>&1 | grep -o '[0-9]\+\.[0-9]\+\.[0-9]\+' | head -1) -a ldap -n 5, $users users, indexed uid"
echo "load: closed loop, new socket connection per request (as libsasl2), 90% of requests to 100 hot users, 10% spread, 5% wrong passwords;"
echo "      every answer checked (good password = OK, wrong = NO); cells $warm warm-up + $dur"
echo
"$lg" table -in "$results"
if [ -n "${BENCH_RESULTS:-}" ]; then cp "$results" "$BENCH_RESULTS"; fi
