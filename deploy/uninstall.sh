#!/usr/bin/env bash
# Remove the service and the code. Configuration and data stay unless --purge is given.
#   sudo bash deploy/uninstall.sh [--purge]
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "uninstall: run as root" >&2; exit 1; }
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl disable --now thyroid-cds.service 2>/dev/null || true
fi
rm -f /etc/systemd/system/thyroid-cds.service /usr/lib/sysusers.d/thyroid-cds.conf /usr/lib/tmpfiles.d/thyroid-cds.conf
rm -rf /opt/thyroid-cds
if [ "${1:-}" = "--purge" ]; then
  rm -rf /etc/thyroid-cds /var/lib/thyroid-cds
  userdel thyroid-cds 2>/dev/null || true
  echo "uninstall: removed code, configuration, data and user"
else
  echo "uninstall: removed the service and code; kept /etc/thyroid-cds and /var/lib/thyroid-cds"
fi
