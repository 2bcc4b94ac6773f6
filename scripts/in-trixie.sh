#!/usr/bin/env bash
# Runs a command as root inside the Debian 13 (trixie) root that
# scripts/trixie-root.sh builds (and builds it first if needed), with a
# checkout bound at its own path, so the test suite can run against trixie's
# peers:
#
#   scripts/in-trixie.sh [-C CHECKOUT] CMD [ARGS...]
#   scripts/in-trixie.sh go test ./internal/slapdtest/
#   scripts/in-trixie.sh make test
#
# CHECKOUT defaults to the git work tree of the current directory; the command
# starts in the current directory when it lies inside CHECKOUT, otherwise in
# CHECKOUT. Inside: /proc, /sys, /dev, /dev/pts, a private /dev/shm, the host's
# Go toolchain (/usr/local/go, read-only) and module cache (shared, so nothing
# is downloaded twice), the host's CA bundle (SSL_CERT_FILE: the host may
# trust a CA that trixie's ca-certificates does not), /etc/hosts and
# /etc/resolv.conf. The build cache is the root's own (/root/.cache/go-build):
# cgo objects built against bookworm's libc must not be reused on trixie.
#
# All mounts are made in a private mount namespace: the host never sees them,
# and they go away with the last process in it even if this script is killed.
# On exit the script also unmounts them itself and ends the processes the
# command left running inside the root. The exit status is the command's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if [ "${_MAILAUTHD_IN_TRIXIE_NS:-}" != 1 ]; then
  checkout=""
  if [ "${1:-}" = "-C" ]; then
    [ $# -ge 2 ] || { echo "usage: $0 [-C CHECKOUT] CMD [ARGS...]" >&2; exit 2; }
    checkout=$2
    shift 2
  fi
  [ $# -ge 1 ] || { echo "usage: $0 [-C CHECKOUT] CMD [ARGS...]" >&2; exit 2; }
  [ "$(id -u)" -eq 0 ] || { echo "in-trixie: needs root (mount, chroot)" >&2; exit 1; }
  if [ -z "$checkout" ]; then
    checkout=$(git rev-parse --show-toplevel 2>/dev/null || pwd)
  fi
  checkout=$(cd "$checkout" && pwd -P)
  root=$(bash "$here/trixie-root.sh")
  export _MAILAUTHD_IN_TRIXIE_NS=1 _MAILAUTHD_IN_TRIXIE_ROOT=$root _MAILAUTHD_IN_TRIXIE_CHECKOUT=$checkout
  exec unshare --mount --propagation private bash "$0" "$@"
fi

# From here on: inside the private mount namespace.
root=$_MAILAUTHD_IN_TRIXIE_ROOT
checkout=$_MAILAUTHD_IN_TRIXIE_CHECKOUT
unset _MAILAUTHD_IN_TRIXIE_NS _MAILAUTHD_IN_TRIXIE_ROOT _MAILAUTHD_IN_TRIXIE_CHECKOUT

mounted=() # mount points, in the order they were mounted
cleanup() {
  local status=$? mnt i pid ns
  trap - EXIT INT TERM HUP
  # Processes the command left behind (a daemon a failed test did not stop):
  # they run in this namespace with the trixie root as their root.
  ns=$(readlink /proc/$$/ns/mnt)
  for i in 1 2; do
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
      [ "$pid" != $$ ] || continue
      [ "$(readlink "/proc/$pid/ns/mnt" 2>/dev/null)" = "$ns" ] || continue
      [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$root" ] || continue
      if [ $i -eq 1 ]; then
        echo "in-trixie: ending leftover process $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null))" >&2
        kill -TERM "$pid" 2>/dev/null || true
      else
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done
    [ $i -eq 1 ] && sleep 1
  done
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    mnt=${mounted[i]}
    umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null ||
      echo "in-trixie: could not unmount $mnt" >&2
  done
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# bindmount SRC DST [ro]
bindmount() {
  mkdir -p "$2"
  mount --bind "$1" "$2"
  mounted+=("$2")
  if [ "${3:-}" = ro ]; then
    mount -o remount,bind,ro "$2"
  fi
}

# fsmount TYPE OPTIONS DST
fsmount() {
  mount -t "$1" -o "$2" "$1" "$3"
  mounted+=("$3")
}

fsmount proc nosuid,nodev,noexec "$root/proc"
fsmount sysfs ro,nosuid,nodev,noexec "$root/sys"
bindmount /dev "$root/dev"
bindmount /dev/pts "$root/dev/pts"
fsmount tmpfs mode=1777,nosuid,nodev "$root/dev/shm"

goroot=$(go env GOROOT)
bindmount "$goroot" "$root/usr/local/go" ro
modcache=$(go env GOMODCACHE)
mkdir -p "$modcache"
bindmount "$modcache" "$root$modcache"
bindmount "$checkout" "$root$checkout"
# A git worktree keeps its repository elsewhere; make test runs git.
gitcommon=$(git -C "$checkout" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)
if [ -n "$gitcommon" ] && [ -d "$gitcommon" ] && [ "${gitcommon#"$checkout"/}" = "$gitcommon" ]; then
  bindmount "$gitcommon" "$root$gitcommon"
fi

ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
install -m 0644 "$ca" "$root/etc/ssl/mailauthd-host-ca.crt"
cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
cp -L /etc/hosts "$root/etc/hosts"

# A clean environment: the host's Go settings (some live in go env's file,
# which is not inside the root), CI and the MAILAUTHD_* test switches.
envs=(PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
      HOME=/root LANG=C.UTF-8 "TERM=${TERM:-dumb}"
      SSL_CERT_FILE=/etc/ssl/mailauthd-host-ca.crt GOMODCACHE="$modcache")
for v in GOPROXY GOSUMDB GONOSUMDB GOPRIVATE GONOPROXY GOINSECURE GOFLAGS GOTOOLCHAIN; do
  val=$(go env "$v")
  [ -z "$val" ] || envs+=("$v=$val")
done
while IFS= read -r v; do
  case "$v" in
    CI=*|MAILAUTHD_*|GORACE=*|GOMAXPROCS=*|http_proxy=*|https_proxy=*|no_proxy=*) envs+=("$v") ;;
  esac
done < <(env)

dir=$(pwd -P)
[ "${dir#"$checkout"}" != "$dir" ] || dir=$checkout
set +e
chroot "$root" /usr/bin/env -i "${envs[@]}" /bin/sh -c 'cd "$1" && shift && exec "$@"' sh "$dir" "$@"
status=$?
set -e
exit $status
