#!/usr/bin/env bash
# Builds dist/mailauthd_<version>_<arch>.deb from `make install` into a
# staging tree. Plain dpkg-deb: no debhelper needed on the build machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
version=$(printf '%s' "${1:-0.0.0}" | sed 's/^v//; s/[^A-Za-z0-9.+~-]/+/g')
case "$version" in [0-9]*) ;; *) version="0.0.0+$version" ;; esac
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
chmod 0755 "$stage"
trap 'rm -rf "$stage"' EXIT
make --no-print-directory install DESTDIR="$stage" >/dev/null
mkdir -p "$stage/DEBIAN" dist
cat > "$stage/DEBIAN/control" <<CONTROL
Package: mailauthd
Version: $version
Architecture: $arch
Maintainer: mailauthd developers <mailauthd@example.org>
Depends: libc6, libpam0g
Suggests: postfix, dovecot-core, sasl2-bin
Section: mail
Priority: optional
Description: LDAP authentication daemon for Postfix, Cyrus and Dovecot
 Speaks the Cyrus saslauthd socket protocol and Dovecot's checkpassword,
 decides with LDAP search+bind and host/service attribute rules, and
 watches the PAM service files mail depends on (pamcheck).
CONTROL
printf '/etc/mailauthd/mailauthd.yaml\n/etc/apt/apt.conf.d/50mailauthd-pamcheck\n' > "$stage/DEBIAN/conffiles"
cat > "$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  systemd-sysusers mailauthd.conf 2>/dev/null || \
    getent passwd mailauthd >/dev/null || adduser --system --group --no-create-home --home /nonexistent mailauthd
  systemd-tmpfiles --create mailauthd.conf 2>/dev/null || true
  chgrp mailauthd /etc/mailauthd/mailauthd.yaml 2>/dev/null || true
  systemctl daemon-reload 2>/dev/null || true
fi
POSTINST
chmod 0755 "$stage/DEBIAN/postinst"
out="dist/mailauthd_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$out" >/dev/null
echo "$out"
