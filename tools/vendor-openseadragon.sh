#!/usr/bin/env bash
# Refresh the vendored OpenSeadragon (the slide view's viewer) from npm: tools/vendor-openseadragon.sh 6.1.1
set -euo pipefail
version="${1:?usage: $0 VERSION}"
here="$(cd "$(dirname "$0")/.." && pwd)"
target="$here/cds_daemon/web/static/vendor/openseadragon"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "openseadragon@$version" >/dev/null && tar xzf openseadragon-*.tgz)
cp "$work/package/build/openseadragon/openseadragon.min.js" "$work/package/LICENSE.txt" "$target/"
sed -i "s/^# OpenSeadragon [0-9.]* (vendored)/# OpenSeadragon $version (vendored)/; s/openseadragon@[0-9.]*/openseadragon@$version/" "$target/README.md"
echo "OpenSeadragon $version vendored in $target"
