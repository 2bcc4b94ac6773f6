#!/usr/bin/env bash
# Installs the real peers the demo, tests and benchmarks run against.
# Idempotent: does nothing when everything is already there.
set -euo pipefail
pkgs=(slapd ldap-utils sasl2-bin libsasl2-modules postfix swaks dovecot-core
      libpam0g-dev libpam-modules openssl ca-certificates systemd
      389-ds-base samba samba-ad-dc samba-ad-provision winbind ldb-tools faketime
      dovecot-auth-lua lua-socket debootstrap redis-server fail2ban
      cyrus-common dpkg-dev debhelper lintian go-md2man git
      nginx libnginx-mod-mail dovecot-imapd pamtester lua5.4 dovecot-ldap
      build-essential)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive

# Cyrus imapd for the doctor's e2e test (a private master from cyrus-common
# runs it): unpacked, not installed, because the cyrus-imapd package
# conflicts with dovecot-imapd (both provide imap-server) and other tests
# need that one.
cyrus_peer=/var/lib/mailauthd-test-peers/cyrus-imapd
unpack_cyrus() {
  [ -x /usr/lib/cyrus/bin/imapd ] || [ -x "$cyrus_peer/usr/lib/cyrus/bin/imapd" ] && return 0
  local tmp; tmp=$(mktemp -d)
  (cd "$tmp" && apt-get -o APT::Sandbox::User=root download cyrus-imapd >/dev/null)
  $SUDO mkdir -p "$cyrus_peer"
  $SUDO dpkg-deb -x "$tmp"/cyrus-imapd_*.deb "$cyrus_peer"
  rm -rf "$tmp"
}
if [ ${#missing[@]} -eq 0 ]; then
  unpack_cyrus
  exit 0
fi
# Postfix and slapd ask questions at install time; answer them so nothing waits on a terminal.
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
echo "slapd slapd/no_configuration boolean true" | $SUDO debconf-set-selections
# Wait for a concurrent apt or dpkg (an unattended upgrade) instead of failing.
lock=(-o DPkg::Lock::Timeout=600)
$SUDO apt-get "${lock[@]}" update -qq
$SUDO apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages start system daemons we do not use; tests start their own copies.
unpack_cyrus
# Not in a chroot (the Debian 13 root of scripts/in-trixie.sh): nothing was
# started there (its policy-rc.d), and init scripts run from inside a
# chroot may reach processes outside it.
if ischroot 2>/dev/null; then
  exit 0
fi
for s in slapd saslauthd postfix dovecot cyrus-imapd dirsrv.target samba-ad-dc smbd nmbd winbind redis-server fail2ban nginx; do
  $SUDO systemctl stop "$s" 2>/dev/null || $SUDO service "$s" stop 2>/dev/null || true
done
