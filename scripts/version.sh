#!/bin/sh
# Prints the version of this tree in a form Debian's version comparison
# sorts correctly (dpkg --compare-versions), for the binary and the .deb:
#   on a release tag vX.Y.Z (or X.Y.Z)   X.Y.Z
#   after the last release tag           X.Y.Z+gitYYYYMMDDhhmm.<hash>
#   before any release tag               0~gitYYYYMMDDhhmm.<hash>
#   uncommitted changes                  ... .dirty appended
# The timestamp is the commit's (UTC), so a later commit sorts higher
# whatever its hash; "git describe" of an untagged tree gave a bare hash,
# which sorts at random against older builds.
set -eu
cd "$(dirname "$0")/.."
if ! git rev-parse --git-dir >/dev/null 2>&1; then
	echo "0~unknown"
	exit 0
fi
hash=$(git rev-parse --short=7 HEAD)
stamp=$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d%H%M HEAD)
dirty=""
if ! git diff --quiet HEAD -- 2>/dev/null; then
	dirty=.dirty
fi
tag=$(git describe --tags --abbrev=0 --match 'v[0-9]*.[0-9]*.[0-9]*' --match '[0-9]*.[0-9]*.[0-9]*' 2>/dev/null || true)
if [ -z "$tag" ]; then
	echo "0~git$stamp.$hash$dirty"
	exit 0
fi
rel=${tag#v}
if [ "$(git rev-list -n1 "$tag")" = "$(git rev-parse HEAD)" ]; then
	echo "$rel${dirty:++git$stamp.$hash$dirty}"
else
	echo "$rel+git$stamp.$hash$dirty"
fi
