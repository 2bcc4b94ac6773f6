#!/usr/bin/env bash
# Builds dist/mailauthd_<version>_<arch>.deb with dpkg-buildpackage and
# debhelper (packaging/deb/debian), then runs lintian on it when installed
# and fails on any lintian error.
#
# The source tree is copied to a scratch directory with debian/ at its top,
# so the build leaves nothing in the work tree but dist/. The version comes
# from scripts/version.sh (or the first argument); debian/changelog is
# written for it from the git history, so the package's changelog says what
# is in it.
#
# Needs: dpkg-dev, debhelper, go-md2man, libpam0g-dev (dpkg-buildpackage
# checks the Build-Depends), and a Go toolchain on PATH that go.mod accepts.
set -euo pipefail
cd "$(dirname "$0")/../.."
top=$(pwd)
version=${1:-$(scripts/version.sh)}
version=${version#v}
case "$version" in
[0-9]*) ;;
*) echo "build.sh: version '$version' does not start with a digit" >&2; exit 1 ;;
esac
command -v go >/dev/null || { echo "build.sh: no go on PATH" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
src="$stage/mailauthd-$version"
mkdir -p "$src" dist

# The files git knows or would add, as they are in the work tree (uncommitted edits
# included; scripts/version.sh then says .dirty).
if git rev-parse --git-dir >/dev/null 2>&1; then
	git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
		[ -e "$f" ] && printf '%s\0' "$f"
	done | tar --null -T - -cf - | tar -xf - -C "$src"
else
	tar --exclude=./.git --exclude=./dist --exclude=./bin -cf - . | tar -xf - -C "$src"
fi
rm -rf "$src/debian"
cp -a packaging/deb/debian "$src/debian"

# debian/changelog: one entry for this build, listing the commits since the
# last release tag (at most 40), dated by the commit, so rebuilding the same
# commit gives the same package.
{
	echo "mailauthd ($version) unstable; urgency=medium"
	echo
	if git rev-parse --git-dir >/dev/null 2>&1; then
		tag=$(git describe --tags --abbrev=0 --match 'v[0-9]*.[0-9]*.[0-9]*' --match '[0-9]*.[0-9]*.[0-9]*' 2>/dev/null || true)
		range=HEAD
		[ -n "$tag" ] && range="$tag..HEAD"
		total=$(git rev-list --count "$range")
		echo "  * Built from git commit $(git rev-parse --short=12 HEAD)${tag:+, $total commits after $tag}."
		git log --no-merges --format='%s' -n 40 "$range" | sed 's/^/  * /' | fold -s -w 76 | sed '/^  \* /!s/^/    /'
		[ "$total" -gt 40 ] && echo "  * ... and $((total - 40)) earlier commits."
		date=$(git log -1 --format=%cD HEAD)
	else
		echo "  * Built from a source tree without git history."
		date=$(date -R)
	fi
	echo
	echo " -- mailauthd developers <mailauthd@example.org>  $date"
} >"$src/debian/changelog"

(cd "$src" && dpkg-buildpackage -us -uc -b)

arch=$(dpkg --print-architecture)
deb="dist/mailauthd_${version}_${arch}.deb"
mv "$stage/mailauthd_${version}_${arch}.deb" "$deb"

if command -v lintian >/dev/null; then
	# Errors fail the build; warnings and info are printed.
	lintian --fail-on error --info "$deb" >&2
fi
echo "$top/$deb"
