#!/usr/bin/env bash
# One command on a fresh Debian machine: set up, build the demo model bundle (once, cached in
# var/demo-bundle; about 12 minutes on 2 cores), start a demo PACS (Orthanc on 4242/8042) and
# cds-daemon on its embedded defaults (THYROID_CDS on 127.0.0.1:11112, data in var/data), send
# sample microscope images and one whole slide with dcmtk's storescu, and show the results that came back
# into the PACS (its WSI viewer shows the slide).
#   bash deploy/demo.sh           keeps both running until Ctrl-C
#   bash deploy/demo.sh --once    stops them after showing the result (exit 1 if a result is missing)
#   CDS_DEMO_BUNDLE=tiny bash deploy/demo.sh --once
#                                 the same run with a barely trained bundle built in under a minute
#                                 (var/demo-bundle-tiny): what CI runs
# Each run starts from an empty demo PACS and daemon data directory (var/demo, var/data).
set -euo pipefail
cd "$(dirname "$0")/.."
ONCE=0; [ "${1:-}" = "--once" ] && ONCE=1

bash deploy/setup.sh
PY=.venv/bin/python
case "${CDS_DEMO_BUNDLE:-full}" in
  full) BUNDLE=var/demo-bundle; BUILD=(); WHAT="the demo model bundle (first run only, about 12 minutes)" ;;
  tiny) BUNDLE=var/demo-bundle-tiny; BUILD=(--tiny); WHAT="the tiny demo bundle (barely trained, under a minute)" ;;
  *) echo "demo: CDS_DEMO_BUNDLE must be full or tiny, not '$CDS_DEMO_BUNDLE'" >&2; exit 2 ;;
esac
echo "demo: $WHAT in $BUNDLE"
# Reuses a finished bundle; writes a new one in one rename, so an interrupted build leaves none.
$PY -m model_build demo-bundle "$BUNDLE" "${BUILD[@]}"
export CDS_MODEL_BUNDLE=$BUNDLE
# The demo finalises with the bundle's own rule (triage.mode = "bundle") to show what finalisation looks like.
# An installation starts in shadow mode: every case is reviewed until a rule certified on the site's own
# reviewed cases is activated (cds-daemon calibration; docs/operations.md, "Going live").
export CDS_TRIAGE__MODE=${CDS_TRIAGE__MODE:-bundle}
echo "demo: triage.mode = $CDS_TRIAGE__MODE (the bundle's own rule); a site certifies its own rule in shadow mode first"
# The finalisation rule at the default alpha (0.02). A bundle trained for minutes on 2 cores may not
# be able to show that bound on its calibration split, and then finalises nothing: the demo says so and
# runs at alpha 0.05 to show what finalisation looks like. A site validates its own bundle instead.
if [ -z "${CDS_TRIAGE__RISK_ALPHA:-}" ]; then
  if ! $PY -c "import json,sys; f=json.load(open('$BUNDLE/manifest.json')).get('finalisation') or {}; sys.exit(f.get('threshold') is None)"; then
    echo "demo: at alpha 0.02 this bundle finalises nothing (its calibration split cannot bound the error that low);"
    echo "      the demo runs with triage.risk_alpha = 0.05, where it may finalise some (the status below says whether)."
    echo "      Never do this in clinical use."
    export CDS_TRIAGE__RISK_ALPHA=0.05
  fi
fi

wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "demo: nothing listening on port $1; the last lines of var/demo/*.log:" >&2
  tail -n 5 var/demo/*.log >&2
  exit 1
}
for port in 4242 8042 11112 8043 8044; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: port $port is already in use; stop what runs there (a system Orthanc? an earlier demo?) and retry" >&2
    exit 1
  fi
done

rm -rf var/demo var/data
mkdir -p var/demo/orthanc var/demo/samples/explicit var/demo/samples/jpeg
# A slide is analysed once none of its levels has arrived for slides.quiet_s (120 s installed): 5 s here.
export CDS_SLIDES__QUIET_S=${CDS_SLIDES__QUIET_S:-5}
export CDS_WEB__WSI_VIEWER_URL=${CDS_WEB__WSI_VIEWER_URL:-"http://127.0.0.1:8042/wsi/app/viewer.html?series={orthanc_series_id}"}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

echo "demo: starting Orthanc (DICOM 4242, web http://127.0.0.1:8042, storage in var/demo/orthanc)"
/usr/sbin/Orthanc deploy/orthanc-demo.json > var/demo/orthanc.log 2>&1 & pids+=($!)
echo "demo: starting cds-daemon (AE THYROID_CDS, port 11112, data in var/data)"
.venv/bin/cds-daemon serve > var/demo/daemon.log 2>&1 & pids+=($!)
wait_port 4242; wait_port 11112

.venv/bin/cds-daemon check
# The cytopathologist's view: a demo account for the review page (the demo's data directory is new each run).
DEMO_USER=demo DEMO_PASSWORD=thyroid-demo-review
echo "$DEMO_PASSWORD" | .venv/bin/cds-daemon user add "$DEMO_USER" --role admin --full-name "Demo, Reviewer" --password-stdin >/dev/null
echo "demo: writing sample images (VL Microscopic; explicit LE and JPEG baseline)"
$PY -m dicom_fixtures make-dicom var/demo/samples/explicit --n 3 --iod vl-microscopic --ts explicit --seed 1 --label benign --difficulty 0.4
$PY -m dicom_fixtures make-dicom var/demo/samples/jpeg --n 3 --iod vl-microscopic --ts jpeg-baseline --seed 2 --label malignant --difficulty 0.4
# dcmtk's storescu by its path: with the venv on PATH, "storescu" is pynetdicom's console script.
STORESCU=/usr/bin/storescu
echo "demo: sending with dcmtk's storescu (-xy proposes JPEG baseline for the compressed ones)"
$STORESCU -aet STORESCU -aec THYROID_CDS 127.0.0.1 11112 var/demo/samples/explicit/*.dcm
$STORESCU -xy -aet STORESCU -aec THYROID_CDS 127.0.0.1 11112 var/demo/samples/jpeg/*.dcm
echo "demo: writing and sending one whole slide (VL Whole Slide Microscopy, 3 levels, JPEG tiles; truth.json says where the cells are)"
$PY -m dicom_fixtures make-slide var/demo/samples/slide --label malignant --seed 5 --grid 3 4 --cells 4 --blood 2
# -R: propose the SOP classes the files hold (storescu's default list has no VL Whole Slide Microscopy)
$STORESCU -R -xy -aet STORESCU -aec THYROID_CDS 127.0.0.1 11112 var/demo/samples/slide/*.dcm
$STORESCU -R -xy -aet STORESCU -aec ORTHANC 127.0.0.1 4242 var/demo/samples/slide/*.dcm  # the PACS holds the slide too
echo "demo: received by the daemon (JSON log lines):"
grep '"instance_received"' var/demo/daemon.log | tail -n 9
echo "demo: waiting for the results to reach the PACS (the slide after its ${CDS_SLIDES__QUIET_S} s quiet period)"
counts() { .venv/bin/cds-daemon status --json | $PY -c "$1"; }
for _ in $(seq 1 240); do
  pending=$(counts 'import json,sys; s=json.load(sys.stdin); print(s["instances"]["received"]+s["instances"]["processing"]+s["outbox"]["pending"])')
  [ "$pending" -eq 0 ] && break
  sleep 0.5
done
$PY deploy/demo_summary.py var/demo/daemon.log http://127.0.0.1:8042
.venv/bin/cds-daemon status
sr=$(grep -l -a "AI cytology result" var/data/results/*/*.dcm 2>/dev/null | head -n 1 || true)
if [ -n "$sr" ]; then echo "demo: one AI structured report (dsrdump):"; dsrdump -q "$sr" | head -n 60; fi

delivered=$(counts 'import json,sys; s=json.load(sys.stdin); print(s["instances"]["delivered"])')
if [ "$delivered" -ne 9 ]; then
  echo "demo: FAILED: $delivered of 9 instances (6 images, 3 slide levels) have all their results in the PACS (see var/demo/daemon.log)" >&2
  exit 1
fi
echo "demo: all 6 images and the slide analysed and their results delivered to the PACS"
echo "demo: the review page (the cytopathologist's worklist of referred cases, and Site calibration for admins):"
echo "        http://127.0.0.1:8043/   sign in as '$DEMO_USER' with password '$DEMO_PASSWORD'"
echo "      the slide is a case there too: its slide view pans and zooms over the smear with the AI's fields"
echo "      this demo finalises with the bundle's own rule; an installation starts in shadow mode and a site"
echo "      certifies its own rule on its reviewed cases (cds-daemon calibration status; docs/operations.md)"

if [ "$ONCE" -eq 1 ]; then exit 0; fi
echo "demo: running (PACS http://127.0.0.1:8042, review page http://127.0.0.1:8043); logs in var/demo/*.log. Ctrl-C stops both."
wait
