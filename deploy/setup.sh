#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine: system packages and the Python venv.
#   bash deploy/setup.sh            daemon + model_build + test extras in ./.venv
# Environment: VENV (default ./.venv), CDS_SETUP_EXTRAS (default "model,test").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRAS=${CDS_SETUP_EXTRAS:-model,test}

need_apt=()
command -v storescu >/dev/null || need_apt+=(dcmtk)
command -v dciodvfy >/dev/null || need_apt+=(dicom3tools)
[ -x /usr/sbin/Orthanc ] || need_apt+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
command -v OrthancWSIDicomizer >/dev/null || need_apt+=(orthanc-wsi)  # the demo PACS's slide viewer; test slides
command -v curl >/dev/null || need_apt+=(curl)
if [[ ",$EXTRAS," == *",test,"* ]]; then
  command -v chromium >/dev/null || need_apt+=(chromium)
  command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
  command -v gdcmconv >/dev/null || need_apt+=(libgdcm-tools)  # third-party test files
  [ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15)  # the tests start their own server
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} (apt)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian starts a system Orthanc on 4242/8042 (and a PostgreSQL cluster); the demo and tests run their own.
  if command -v systemctl >/dev/null && systemctl is-active --quiet orthanc 2>/dev/null; then
    $SUDO systemctl disable --now orthanc || true
  fi
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages [$EXTRAS] (torch comes from local wheels; first run takes minutes)"
  "$VENV/bin/pip" install -q -e ".[${EXTRAS}]" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import cds_daemon, pynetdicom, onnxruntime" 
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
echo "setup: ready ($VENV)"
