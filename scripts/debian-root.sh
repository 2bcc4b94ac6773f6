#!/usr/bin/env bash
# Builds a Debian root of another release for the tests, so each release's
# peers can be run whichever Debian the host is:
#
#   scripts/debian-root.sh trixie     # Debian 13: Dovecot 2.4 for
#                                     # internal/dovecottest, and everything
#                                     # `make test` needs (scripts/in-trixie.sh)
#   scripts/debian-root.sh bookworm   # Debian 12: Dovecot 2.3 (Lua,
#                                     # checkpassword, pam, IMAP) for
#                                     # internal/dovecottest on a Debian 13 host
#
# Cached and idempotent: when the root exists and its stamp (recipe version +
# package list) matches, it prints the root's path and does nothing else. A
# changed list or recipe builds a new root beside the old one and swaps it in.
#
#   MAILAUTHD_TRIXIE_ROOT, MAILAUTHD_BOOKWORM_ROOT
#                           where the root lives (default /var/cache/mailauthd/SUITE-root)
#   MAILAUTHD_DEBIAN_MIRROR the mirror for debootstrap (default: the host's apt mirror)
#
# Prints the root's path on stdout; progress and timings go to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
suite=${1:-}

log() { echo "$suite-root: $*" >&2; }

# Dovecot with the Lua passdb: what internal/dovecottest runs from a root.
dovecot_pkgs=(dovecot-core dovecot-auth-lua lua-socket)
case "$suite" in
  trixie)
    ROOT=${MAILAUTHD_TRIXIE_ROOT:-/var/cache/mailauthd/trixie-root}
    # Dovecot, then the host's test peers (the pkgs=(...) list of
    # install-deps.sh, so the two never drift apart), then what building
    # and testing a checkout needs.
    pkgs=()
    eval "$(sed -n '/^pkgs=(/,/)/p' "$here/install-deps.sh")"
    [ ${#pkgs[@]} -gt 0 ] || { log "no pkgs=(...) list in $here/install-deps.sh"; exit 1; }
    pkgs=("${dovecot_pkgs[@]}" "${pkgs[@]}" ca-certificates make gcc libc6-dev git)
    ;;
  bookworm)
    ROOT=${MAILAUTHD_BOOKWORM_ROOT:-/var/cache/mailauthd/bookworm-root}
    # Only the Dovecot 2.3 peer: its IMAP server (e2e's nginx backend) and
    # pam_exec (Dovecot's pam passdb running mailauthd pam).
    pkgs=("${dovecot_pkgs[@]}" dovecot-imapd libpam-modules)
    ;;
  *)
    echo "usage: $0 trixie|bookworm" >&2
    exit 2
    ;;
esac
ROOT=${ROOT%/}
# Bump when the build steps below change, so existing roots are rebuilt.
recipe=1

mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
stamp="recipe=$recipe suite=$suite variant=minbase packages=${pkgs[*]}"
stamp_file=$ROOT/.mailauthd-$suite-root

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
if ! debootstrap --variant=minbase "$suite" "$new" "$mirror" >>"$buildlog" 2>&1; then
  log "debootstrap failed:"; tail -20 "$buildlog" >&2; exit 1
fi
t1=$(date +%s.%N)

# No package may start its daemon inside the root; tests start their own.
printf '#!/bin/sh\n# mailauthd %s-root: never start daemons here.\nexit 101\n' "$suite" >"$new/usr/sbin/policy-rc.d"
chmod 0755 "$new/usr/sbin/policy-rc.d"
# Postfix and slapd ask questions at install time (as in install-deps.sh).
printf '%s\n' "postfix postfix/main_mailer_type select No configuration" \
  "slapd slapd/no_configuration boolean true" | chroot "$new" debconf-set-selections

# apt and the maintainer scripts get a /proc, in a mount namespace of their
# own: the mount disappears with the last process, whatever happens. Inside
# a chroot (building Debian 12's root in Debian 13's, through
# scripts/in-trixie.sh) "/" is no mount point and cannot be made private;
# there every mount is already private (in-trixie.sh's namespace), so the
# new namespace keeps them as they are. With a shared mount in sight that
# would leak the /proc mount: refused.
if unshare --mount --propagation private true 2>/dev/null; then
  propagation=private
elif ! grep -q ' shared:' /proc/self/mountinfo; then
  propagation=unchanged
else
  log "cannot make a private mount namespace here (\"/\" is not a mount point and some mounts are shared)"
  exit 1
fi
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
if ! unshare --mount --propagation "$propagation" sh -c "$install_script" sh "$new" "${pkgs[@]}" >>"$buildlog" 2>&1; then
  log "package installation failed:"; tail -30 "$buildlog" >&2; exit 1
fi
t2=$(date +%s.%N)

echo "$stamp" >"$new/.mailauthd-$suite-root"
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
