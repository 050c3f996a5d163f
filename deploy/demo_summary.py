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
    for series in json.loads(rsp.read()):
        tags = series["MainDicomTags"]
        count = len(series["Instances"])
        print(f"  {tags.get('Modality', ''):<3} {count} instance(s)  {tags.get('SeriesDescription', '')}")
