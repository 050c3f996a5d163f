"""Print what the demo produced: each image's result (from the daemon's JSON log) and the PACS's series."""

from __future__ import annotations

import json
import sys
import urllib.request

log_path, orthanc_url = sys.argv[1], sys.argv[2]
print("demo: results (FINALISED: the AI result stands without review; REFERRED: a cytopathologist decides)")
counts = {"finalised": 0, "referred": 0, "not analysed": 0}
with open(log_path) as fh:
    for line in fh:
        if not line.startswith("{"):
            continue
        e = json.loads(line)
        if e.get("event") == "instance_not_analysed":
            print(f"  ...{e['sop_instance_uid'][-20:]}  NOT ANALYSED (in the worklist; see cds-daemon worklist list)")
            counts["not analysed"] += 1
        if e.get("event") == "slide_reported":
            print(
                f"  ...{e['sop_instance_uid'][-20:]}  WHOLE SLIDE: {e['fields']} informative fields "
                f"of {e['proposals']} looked at; slide category {e['predicted']} ({e['confidence']:.2f}); "
                "REFERRED (slides are reviewed until a slide-level rule is certified)"
            )
            counts["referred"] += 1
            continue
        if e.get("event") != "instance_reported":
            continue
        head = f"  ...{e['sop_instance_uid'][-20:]}  {e['predicted']:<13} confidence {e['confidence']:.2f}"
        if not e["referred"]:
            print(f"{head}  FINALISED" + (" (also in the blind audit sample)" if e.get("audit") else ""))
            counts["finalised"] += 1
            continue
        counts["referred"] += 1
        print(f"{head}  REFERRED because:")
        for text in e.get("reason_texts") or e["reasons"]:
            print(f"      - {text}")
print("demo: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
print(f"demo: the PACS now holds ({orthanc_url}):")
with urllib.request.urlopen(f"{orthanc_url}/series?expand", timeout=10) as rsp:
    all_series = json.loads(rsp.read())
for series in all_series:
    tags = series["MainDicomTags"]
    count = len(series["Instances"])
    print(f"  {tags.get('Modality', ''):<3} {count} instance(s)  {tags.get('SeriesDescription', '')}")
for series in all_series:
    if series["MainDicomTags"].get("Modality") == "SM":
        print(f"demo: the slide in the PACS's WSI viewer: {orthanc_url}/wsi/app/viewer.html?series={series['ID']}")
