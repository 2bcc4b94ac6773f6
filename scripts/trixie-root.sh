#!/usr/bin/env bash
# Builds a Debian 13 (trixie) root: Dovecot 2.4.1 with the Lua passdb for
# internal/dovecottest, and everything `make test` needs, so the whole suite
# can run on trixie through scripts/in-trixie.sh.
#
# Cached and idempotent: when the root exists and its stamp (recipe version +
# package list) matches, it prints the root's path and does nothing else. A
# changed list or recipe builds a new root beside the old one and swaps it in.
#
#   MAILAUTHD_TRIXIE_ROOT   where the root lives (default /var/cache/mailauthd/trixie-root)
#   MAILAUTHD_DEBIAN_MIRROR the mirror for debootstrap (default: the host's apt mirror)
#
# Prints the root's path on stdout; progress and timings go to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ROOT=${MAILAUTHD_TRIXIE_ROOT:-/var/cache/mailauthd/trixie-root}
ROOT=${ROOT%/}
# Bump when the build steps below change, so existing roots are rebuilt.
recipe=1

# Trixie's peers for the Dovecot 2.4 tests, then the host's test peers (the
# pkgs=(...) list of install-deps.sh, so the two never drift apart), then what
# building and testing a checkout needs.
pkgs=()
eval "$(sed -n '/^pkgs=(/,/)/p' "$here/install-deps.sh")"
[ ${#pkgs[@]} -gt 0 ] || { echo "trixie-root: no pkgs=(...) list in $here/install-deps.sh" >&2; exit 1; }
pkgs=(dovecot-core dovecot-auth-lua lua-socket "${pkgs[@]}" ca-certificates make gcc libc6-dev git)
mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
stamp="recipe=$recipe suite=trixie variant=minbase packages=${pkgs[*]}"
stamp_file=$ROOT/.mailauthd-trixie-root

log() { echo "trixie-root: $*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "needs root (debootstrap, chroot)"; exit 1; }
mkdir -p "$(dirname "$ROOT")"
# One builder at a time; others wait here and then find the stamp.
exec 9>"$ROOT.lock"
flock 9

if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] && [ -x "$ROOT/usr/sbin/dovecot" ]; then
  echo "$ROOT"
  exit 0
fi

if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends debootstrap >/dev/null
fi

mirror=${MAILAUTHD_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  mirror=$(apt-cache policy 2>/dev/null | awk -v s="$codename/main" '$3 == s {print $2; exit}')
  mirror=${mirror:-http://deb.debian.org/debian}
fi

# mounted_under DIR: is anything mounted at or below DIR (in our namespace)?
mounted_under() {
  awk -v d="$1" '$5 == d || index($5, d "/") == 1 {found=1} END {exit !found}' /proc/self/mountinfo
}
# remove DIR, never crossing into a mounted file system (a bound /dev or a
# checkout must not be emptied).
remove_root() {
  [ -e "$1" ] || return 0
  if mounted_under "$1"; then
    log "refusing to remove $1: something is mounted below it"
    exit 1
  fi
  rm -rf --one-file-system "$1"
}

new=$ROOT.new
remove_root "$new" # a build that was interrupted
buildlog=$ROOT.build.log
: >"$buildlog"
log "building $ROOT from $mirror (log: $buildlog)"

t0=$(date +%s.%N)
if ! debootstrap --variant=minbase trixie "$new" "$mirror" >>"$buildlog" 2>&1; then
  log "debootstrap failed:"; tail -20 "$buildlog" >&2; exit 1
fi
t1=$(date +%s.%N)

# No package may start its daemon inside the root; tests start their own.
printf '#!/bin/sh\n# mailauthd trixie-root: never start daemons here.\nexit 101\n' >"$new/usr/sbin/policy-rc.d"
chmod 0755 "$new/usr/sbin/policy-rc.d"
# Postfix and slapd ask questions at install time (as in install-deps.sh).
printf '%s\n' "postfix postfix/main_mailer_type select No configuration" \
  "slapd slapd/no_configuration boolean true" | chroot "$new" debconf-set-selections

# apt and the maintainer scripts get a /proc, in a mount namespace of their
# own: the mount disappears with the last process, whatever happens.
install_script='
set -e
mount -t proc proc "$1/proc"
root=$1; shift
chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  LANG=C.UTF-8 HOME=/root apt-get -o DPkg::Lock::Timeout=600 -q update
chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  LANG=C.UTF-8 HOME=/root apt-get -o DPkg::Lock::Timeout=600 -q install -y --no-install-recommends "$@"
chroot "$root" apt-get clean
'
if ! unshare --mount --propagation private sh -c "$install_script" sh "$new" "${pkgs[@]}" >>"$buildlog" 2>&1; then
  log "package installation failed:"; tail -30 "$buildlog" >&2; exit 1
fi
t2=$(date +%s.%N)

echo "$stamp" >"$new/.mailauthd-trixie-root"
old=$ROOT.old.$$
if [ -e "$ROOT" ]; then
  mv "$ROOT" "$old"
fi
mv "$new" "$ROOT"
remove_root "$old"
times=$(awk -v a="$t0" -v b="$t1" -v c="$t2" \
  'BEGIN {printf "debootstrap %.0fs, packages %.0fs, total %.0fs", b-a, c-b, c-a}')
log "built: $times ($(chroot "$ROOT" dpkg-query -W -f='${Version}' dovecot-core) dovecot-core)"
echo "$(date -u +%FT%TZ) $times" >>"$ROOT.build.times"
echo "$ROOT"
