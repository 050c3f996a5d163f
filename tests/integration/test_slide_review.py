"""Issue 24: a reviewer reviews a referred whole slide in real headless Chromium.

Real daemon, real Orthanc, the tiny bundle, a synthetic slide sent with dcmtk: sign in, open the slide case,
OpenSeadragon loads Deep Zoom tiles from the review app (HTTP 200, JPEG), the AI's fields are drawn, a field
opens with its image and heatmap, it is marked diagnostic, a decision closes the case and its verified 3D SR
(the examined field, the diagnostic one) reaches Orthanc. ``CDS_UPDATE_SCREENSHOT=1`` also writes the slide
view and the field view to docs/.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from cds_daemon.common.manifest import read_manifest
from cds_daemon.reports.uids import derived_uid
from tests.integration.test_browser import FAST_EGRESS, PASSWORD, _cli
from tests.support.browser import sign_in
from tests.support.processes import REPO, DaemonProcess, OrthancProcess, free_port, storescu, wait_for_port
from tests.support.slides import write_slide
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

CONFIG = FAST_EGRESS + "[slides]\nquiet_s = 2\n[reports]\ncase_sr = false\n"


def _get(url: str, cookie: str | None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as rsp:
            return rsp.status, rsp.headers.get("Content-Type", ""), rsp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def test_a_reviewer_reviews_a_slide_in_the_browser_and_the_verified_sr_reaches_orthanc(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, orthanc: OrthancProcess, browser, tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    version = read_manifest(tiny_bundle).version
    web_port = free_port()
    viewer = f"http://127.0.0.1:{orthanc.http_port}/wsi/app/viewer.html?series={{orthanc_series_id}}"
    daemon = make_daemon(
        bundle=tiny_bundle,
        destinations=[("pacs", "ORTHANC", orthanc.dicom_port)],
        web_port=web_port,
        extra_config=CONFIG,
        extra_env={"CDS_WEB__WSI_VIEWER_URL": viewer},
    ).start()
    wait_for_port(web_port, proc=daemon.proc)
    added = _cli(daemon, "user", "add", "dr.ana", "--full-name", "Smith, Ana", "--password-stdin", stdin=PASSWORD)
    assert added.returncode == 0, added.stderr
    written, _ = write_slide(tmp_path / "slide", "malignant", seed=24)
    for port in (daemon.port, orthanc.dicom_port):  # the PACS holds the slide too (its own viewer shows it)
        sent = storescu(port, *written.paths, extra=("-xy",))
        assert sent.returncode == 0, sent.stderr

    def item() -> dict[str, object] | None:
        items = json.loads(_cli(daemon, "worklist", "list", "--json").stdout)["items"]
        return items[0] if items else None

    case = wait_until(item, 180, "the slide in the worklist")
    (representative,) = case["images"]  # type: ignore[misc]
    base = f"http://127.0.0.1:{web_port}"
    dzi = f"{base}/slides/{written.series_uid}.dzi"
    assert _get(dzi, None)[0] == 401, "tiles need a login"

    d = browser
    sign_in(d, base, "dr.ana", PASSWORD)
    d.get(f"{base}/case/{case['id']}")
    assert d.find_element(By.ID, "slide-viewer")

    def tiles_loaded() -> bool:
        return bool(
            d.execute_script(
                "const i = window.CDSSlide && CDSSlide.viewer.world.getItemAt(0);"
                "return Boolean(i && i.getFullyLoaded());"
            )
        )

    wait_until(tiles_loaded, 60, "the slide's tiles in the viewer")
    urls = d.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('_files/'));"
    )
    assert urls, "the viewer requested no tile"
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in d.get_cookies())
    for url in urls[:5]:
        status, kind, body = _get(url, cookie)
        assert status == 200 and kind == "image/jpeg" and body[:2] == b"\xff\xd8", url
    status, kind, body = _get(dzi, cookie)
    width = pydicom.dcmread(written.paths[0], stop_before_pixels=True).TotalPixelMatrixColumns
    assert status == 200 and b"deepzoom" in body and f'Width="{width}"'.encode() in body

    boxes = d.find_elements(By.CSS_SELECTOR, "#slide-viewer .field-box")
    fields = d.find_elements(By.CSS_SELECTOR, ".field-item")
    assert boxes and len(boxes) == len(fields), "every field is drawn on the slide"
    link = d.find_element(By.ID, "pacs-viewer").get_attribute("href")
    orthanc_series = link.rsplit("series=", 1)[1]
    assert orthanc.get(f"/series/{orthanc_series}")["MainDicomTags"]["SeriesInstanceUID"] == written.series_uid

    shots = tmp_path / "shots"
    shots.mkdir()
    ActionChains(d).send_keys("h").perform()  # the fields' heatmap layer
    wait_until(lambda: "heat-loaded" in d.find_element(By.ID, "slide-viewer").get_attribute("class"), 30, "heatmap")
    d.save_screenshot(str(shots / "review_slide_view.png"))

    first = fields[0]
    number = int(first.get_attribute("data-number"))
    first.click()  # the most suspicious field: the slide zooms to it
    assert "selected" in first.get_attribute("class")
    assert not d.find_element(By.ID, "field-view").is_displayed()
    first.click()  # again: its own view
    wait_until(
        lambda: d.execute_script("return document.getElementById('field-image').naturalWidth") > 0, 30, "the field"
    )
    assert d.find_element(By.ID, "field-view").is_displayed()
    assert d.find_elements(By.CSS_SELECTOR, "#field-probs .prob")
    ActionChains(d).send_keys("d").perform()  # the diagnostic field
    assert d.find_element(By.ID, "diagnostic-field").get_attribute("value") == str(number)
    wait_until(
        lambda: d.execute_script("return document.getElementById('field-heatmap').naturalWidth") > 0, 30, "its heatmap"
    )
    d.save_screenshot(str(shots / "review_slide_field.png"))
    if os.environ.get("CDS_UPDATE_SCREENSHOT") == "1":
        for shot in shots.iterdir():
            shutil.copyfile(shot, REPO / "docs" / shot.name)
    ActionChains(d).send_keys("\ue00c").perform()  # Esc: back to the slide
    assert not d.find_element(By.ID, "field-view").is_displayed()

    ActionChains(d).send_keys("c").perform()  # confirm the slide's AI category
    wait_until(lambda: "Case complete" in d.page_source, 30, "the decision")
    review_uid = derived_uid(representative, version, "review-sr:1")
    orthanc_id = wait_until(lambda: orthanc.instance_id(review_uid), 60, "the verified SR in Orthanc")
    data = orthanc.file(str(orthanc_id))
    sr = pydicom.dcmread(io.BytesIO(data))
    assert sr.VerificationFlag == "VERIFIED"
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34", "a slide's review SR is a 3D SR, like the AI's"
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == derived_uid(representative, version, "sr")
    groups = hd.sr.srread(io.BytesIO(data)).content.get_planar_roi_measurement_groups()
    assert [g.tracking_uid for g in groups] == [derived_uid(representative, version, f"field:{number}")]
    (examined,) = groups
    assert isinstance(examined.roi, hd.sr.ImageRegion3D)
    assert examined.roi.frame_of_reference_uid == written.frame_of_reference_uid
    names = {e.name.value: e.value.meaning for e in examined.get_qualitative_evaluations()}
    assert names["DIAGNOSTIC-FIELD"] == "Yes" and names["FIELD-EXAMINED"] == "Yes"

    # The next slide's similar confirmed cases include this one, shown by the field marked diagnostic.
    second, _ = write_slide(tmp_path / "second", "malignant", seed=25)
    assert storescu(daemon.port, *second.paths, extra=("-xy",)).returncode == 0
    nxt = wait_until(item, 180, "the second slide in the worklist")
    d.get(f"{base}/case/{nxt['id']}")
    (neighbour,) = d.find_elements(By.CSS_SELECTOR, ".similar-list li")
    assert "dr.ana" in neighbour.text
    wait_until(
        lambda: d.execute_script("return document.querySelector('.similar-list img').naturalWidth") > 0,
        30,
        "the confirmed slide's example field",
    )

    import sqlite3

    with sqlite3.connect(daemon.data_dir / "cds.sqlite3") as db:
        actions = {r[0] for r in db.execute("SELECT action FROM audit WHERE actor = 'dr.ana'")}
    assert {"web:view-slide", "web:view-slide-tiles", "web:view-field", "web:view-heatmap"} <= actions
