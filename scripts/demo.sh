#!/usr/bin/env bash
# make demo: a throwaway slapd with the fixture directory, the daemon on a
# temporary socket, and a few real logins through it. Cleans up after itself.
set -euo pipefail
BIN=$(realpath "${1:-bin/mailauthd}")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/mailauthd-demo.XXXXXX)
chmod 0755 "$WORK"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@" || true; }

say "Starting a throwaway slapd (testdata/ldap/users.ldif) on a free loopback port"
go build -o "$WORK/testslapd" "$ROOT/internal/slapdtest/testslapd"
MAILAUTHD_LDAP_TESTDATA="$ROOT/testdata/ldap" "$WORK/testslapd" -dir "$WORK/slapd" -env "$WORK/ldap.env" &
pids+=($!)
for _ in $(seq 100); do [ -s "$WORK/ldap.env" ] && break; sleep 0.1; done
[ -s "$WORK/ldap.env" ] || { echo "slapd did not start" >&2; exit 1; }
. "$WORK/ldap.env"
echo "slapd at $LDAP_URL"

printf '%s\n' "$LDAP_SERVICE_PW" > "$WORK/service.pw"
chmod 0600 "$WORK/service.pw"
cat > "$WORK/mailauthd.yaml" <<YAML
listen:
  saslauthd: [{path: $WORK/run/mux, mode: "0666"}]
  control: {path: $WORK/run/control, mode: "0600"}
ldap:
  urls: [$LDAP_URL]
  bind_dn: "$LDAP_SERVICE_DN"
  bind_password_file: $WORK/service.pw
  base: "$LDAP_BASE"
  filter: (uid=%u)
  timeout: 3s
access:
  # This demo pretends to be mail.example.org, so the fixture users' host
  # attributes mean the same on every machine.
  hostnames: [mail.example.org, mail]
  host_attribute: host
  # The domain this host serves: alice@example.org is alice; a login for
  # any other domain is refused, whatever password it brings.
  realms: [example.org]
YAML
say "Configuration ($WORK/mailauthd.yaml)"
cat "$WORK/mailauthd.yaml"

say "Starting mailauthd serve"
"$BIN" serve --config "$WORK/mailauthd.yaml" 2> "$WORK/daemon.log" &
pids+=($!)
for _ in $(seq 100); do [ -S "$WORK/run/mux" ] && break; sleep 0.1; done
[ -S "$WORK/run/mux" ] || { cat "$WORK/daemon.log" >&2; exit 1; }

say "alice (host: mail.example.org) with the right password: accepted"
run "$BIN" test -f "$WORK/run/mux" -s smtp -u alice -p alicepw
say "alice with a wrong password: refused"
run "$BIN" test -f "$WORK/run/mux" -s smtp -u alice -p Wr0ng-Pass
say "negated (host: * and !mail.example.org): refused by its host attribute"
run "$BIN" test -f "$WORK/run/mux" -s smtp -u negated -p negatedpw
say "... and why, step by step (mailauthd test --explain)"
run "$BIN" test --explain --config "$WORK/mailauthd.yaml" -s smtp -u negated -p negatedpw
say "alice@example.org (the served domain) accepted; alice@evil.test refused, same password"
run "$BIN" test -f "$WORK/run/mux" -s smtp -u alice@example.org -p alicepw
run "$BIN" test -f "$WORK/run/mux" -s smtp -u alice@evil.test -p alicepw
say "The real Cyrus client, testsaslauthd, against the same socket"
run testsaslauthd -f "$WORK/run/mux" -s smtp -u alice -p alicepw
run testsaslauthd -f "$WORK/run/mux" -s smtp -u star -p Wr0ng-Pass

say "The daemon's decision log (no passwords in it)"
cat "$WORK/daemon.log"
if grep -q -e alicepw -e negatedpw -e Wr0ng-Pass "$WORK/daemon.log"; then
  echo "a password reached the log" >&2; exit 1
fi
say "Done; stopping slapd and the daemon"
