"""Print what the demo produced: each image's result (from the daemon's JSON log) and the PACS's series."""

from __future__ import annotations

import json
import sys
import urllib.request

log_path, orthanc_url = sys.argv[1], sys.argv[2]
print("demo: results")
with open(log_path) as fh:
    for line in fh:
        if not line.startswith("{"):
            continue
        e = json.loads(line)
        if e.get("event") != "instance_reported":
            continue
        flag = "REFERRED: " + ", ".join(e["reasons"]) if e["referred"] else "not referred"
        print(f"  ...{e['sop_instance_uid'][-20:]}  {e['predicted']:<13} confidence {e['confidence']:.2f}  {flag}")
print(f"demo: the PACS now holds ({orthanc_url}):")
with urllib.request.urlopen(f"{orthanc_url}/series?expand", timeout=10) as rsp:
    for series in json.loads(rsp.read()):
        tags = series["MainDicomTags"]
        count = len(series["Instances"])
        print(f"  {tags.get('Modality', ''):<3} {count} instance(s)  {tags.get('SeriesDescription', '')}")
