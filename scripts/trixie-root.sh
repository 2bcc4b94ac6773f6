#!/usr/bin/env bash
# Builds the Debian 13 (trixie) root: Dovecot 2.4.1 with the Lua passdb for
# internal/dovecottest, and everything `make test` needs, so the whole suite
# can run on trixie through scripts/in-trixie.sh. Cached; prints the root's
# path (MAILAUTHD_TRIXIE_ROOT, default /var/cache/mailauthd/trixie-root).
# The recipe is scripts/debian-root.sh's, which builds Debian 12's root the
# same way.
exec bash "$(dirname "$0")/debian-root.sh" trixie
