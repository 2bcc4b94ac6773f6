#!/usr/bin/env bash
# Installs the real peers the demo, tests and benchmarks run against.
# Idempotent: does nothing when everything is already there.
set -euo pipefail
pkgs=(slapd ldap-utils sasl2-bin libsasl2-modules postfix swaks dovecot-core
      libpam0g-dev libpam-modules openssl ca-certificates systemd
      389-ds-base samba samba-ad-dc samba-ad-provision winbind ldb-tools faketime
      dovecot-auth-lua lua-socket debootstrap lua5.4 dovecot-ldap)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
# Postfix and slapd ask questions at install time; answer them so nothing waits on a terminal.
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
echo "slapd slapd/no_configuration boolean true" | $SUDO debconf-set-selections
# Wait for a concurrent apt or dpkg (an unattended upgrade) instead of failing.
lock=(-o DPkg::Lock::Timeout=600)
$SUDO apt-get "${lock[@]}" update -qq
$SUDO apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages start system daemons we do not use; tests start their own copies.
for s in slapd saslauthd postfix dovecot dirsrv.target samba-ad-dc smbd nmbd winbind; do
  $SUDO systemctl stop "$s" 2>/dev/null || $SUDO service "$s" stop 2>/dev/null || true
done
