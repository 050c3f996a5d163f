#!/usr/bin/env bash
# Install or upgrade cds-daemon as a systemd service (run as root on Debian 12).
#   sudo bash deploy/install.sh [--bundle DIR]
# Code: /opt/thyroid-cds (venv in /opt/thyroid-cds/venv). Config: /etc/thyroid-cds/config.toml
# (kept if present). Data: /var/lib/thyroid-cds (never touched by upgrades or uninstall).
# An upgrade is the same command from a newer checkout: the venv is rebuilt, the database
# migrates at the next start, and the service is restarted.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "install: run as root" >&2; exit 1; }
BUNDLE=""
[ "${1:-}" = "--bundle" ] && BUNDLE=${2:?--bundle needs a directory}

PREFIX=/opt/thyroid-cds
ETC=/etc/thyroid-cds
DATA=/var/lib/thyroid-cds

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv dcmtk >/dev/null

install -D -m 0644 systemd/thyroid-cds.sysusers.conf /usr/lib/sysusers.d/thyroid-cds.conf
install -D -m 0644 systemd/thyroid-cds.tmpfiles.conf /usr/lib/tmpfiles.d/thyroid-cds.conf
if command -v systemd-sysusers >/dev/null; then systemd-sysusers thyroid-cds.conf 2>/dev/null || systemd-sysusers; fi
id thyroid-cds >/dev/null 2>&1 || useradd --system --home-dir "$DATA" --shell /usr/sbin/nologin thyroid-cds
if command -v systemd-tmpfiles >/dev/null; then systemd-tmpfiles --create /usr/lib/tmpfiles.d/thyroid-cds.conf; fi
install -d -m 0750 -o thyroid-cds -g thyroid-cds "$DATA"
install -d -m 0750 -o root -g thyroid-cds "$ETC"

# Code and venv: built beside the old one and swapped, so a failed upgrade leaves the old one running.
mkdir -p "$PREFIX"
rm -rf "$PREFIX/src.new" "$PREFIX/venv.new"
mkdir "$PREFIX/src.new"
# The daemon's dependencies only: model_build's torch extra is not installed here.
cp -r cds_daemon model_build dicom_fixtures pyproject.toml README.md "$PREFIX/src.new/"
python3 -m venv "$PREFIX/venv.new"
"$PREFIX/venv.new/bin/pip" install -q --upgrade pip
"$PREFIX/venv.new/bin/pip" install -q "$PREFIX/src.new"
"$PREFIX/venv.new/bin/python" -c "import cds_daemon.service, onnxruntime"
rm -rf "$PREFIX/src.old" "$PREFIX/venv.old"
[ -d "$PREFIX/venv" ] && mv "$PREFIX/venv" "$PREFIX/venv.old"
[ -d "$PREFIX/src" ] && mv "$PREFIX/src" "$PREFIX/src.old"
mv "$PREFIX/venv.new" "$PREFIX/venv"
mv "$PREFIX/src.new" "$PREFIX/src"
cp README.md "$PREFIX/README.md"

if [ ! -f "$ETC/config.toml" ]; then
  sed -e "s#^data_dir = .*#data_dir = \"$DATA\"#" -e "s#^model_bundle = .*#model_bundle = \"$PREFIX/bundle\"#" \
    deploy/config.example.toml > "$ETC/config.toml"
  chown root:thyroid-cds "$ETC/config.toml"; chmod 0640 "$ETC/config.toml"
  echo "install: wrote $ETC/config.toml from the example: set the AE titles, callers and destinations"
fi
if [ -n "$BUNDLE" ]; then
  # Root's, readable by the service and not writable by it (ProtectSystem=strict keeps /opt read-only too):
  # a compromised daemon cannot rewrite its own model or the hashes that vouch for it.
  rm -rf "$PREFIX/bundle.new"; cp -r "$BUNDLE" "$PREFIX/bundle.new"
  chown -R root:thyroid-cds "$PREFIX/bundle.new"
  find "$PREFIX/bundle.new" -type d -exec chmod 0750 {} +
  find "$PREFIX/bundle.new" -type f -exec chmod 0640 {} +
  rm -rf "$PREFIX/bundle"; mv "$PREFIX/bundle.new" "$PREFIX/bundle"
fi

install -D -m 0644 systemd/thyroid-cds.service /etc/systemd/system/thyroid-cds.service
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable thyroid-cds.service
  systemctl restart thyroid-cds.service
  systemctl --no-pager status thyroid-cds.service | head -n 5
else
  echo "install: systemd is not running here; start with: systemctl start thyroid-cds"
fi
echo "install: done. Check with: sudo -u thyroid-cds $PREFIX/venv/bin/cds-daemon --config $ETC/config.toml check"
