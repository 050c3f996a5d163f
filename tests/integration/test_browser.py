"""A reviewer in a real headless Chromium: login, first case, heatmap, confirm; the verified SR reaches Orthanc.

Real daemon process, real Orthanc, the tiny bundle. ``CDS_UPDATE_SCREENSHOT=1`` also writes the case view
to docs/review_case_view.png.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from cds_daemon.common.manifest import read_manifest
from cds_daemon.reports.uids import derived_uid
from dicom_fixtures.synth import make_bad_field, make_field
from dicom_fixtures.wrap import wrap_image, write_dicom
from tests.support.browser import sign_in
from tests.support.processes import REPO, DaemonProcess, OrthancProcess, free_port, storescu, wait_for_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

FAST_EGRESS = "[egress]\nretry_base_s = 0.3\nretry_max_s = 1.0\npoll_s = 0.5\ntimeout_s = 5\n"
PASSWORD = "a long password"


def _cli(daemon: DaemonProcess, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CDS_CONFIG": str(daemon.config_path)}
    return subprocess.run(
        [sys.executable, "-m", "cds_daemon", *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


def _send_case(daemon: DaemonProcess, out: Path) -> list[str]:
    """Two fields of one study; if the model refers neither, an empty field that the quality gate refers."""
    seed = 4242
    files = []
    for n, pixels in enumerate([make_field("indeterminate", seed), make_field("benign", seed + 1)], start=1):
        ds = wrap_image(pixels, "vl-microscopic", "explicit", seed=seed, instance_number=n)
        files.append(write_dicom(ds, out / f"{n}.dcm"))
    assert storescu(daemon.port, *files).returncode == 0

    def reported() -> bool:
        counts = json.loads(daemon.cli("status", "--json").stdout)["instances"]
        return counts["received"] == counts["processing"] == 0 and counts["reported"] + counts["delivered"] >= 2

    wait_until(reported, 120, "the images to be analysed")
    if not json.loads(_cli(daemon, "worklist", "list", "--json").stdout)["items"]:
        ds = wrap_image(make_bad_field("blank", seed), "vl-microscopic", seed=seed, instance_number=3)
        blank = write_dicom(ds, out / "3.dcm")
        assert storescu(daemon.port, blank).returncode == 0

    def waiting() -> list[dict[str, object]]:
        return list(json.loads(_cli(daemon, "worklist", "list", "--json").stdout)["items"])

    items = wait_until(waiting, 120, "a referred case")
    return list(items[0]["images"])  # type: ignore[index]


def test_reviewer_confirms_in_the_browser_and_the_verified_sr_arrives_in_orthanc(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, orthanc: OrthancProcess, browser, tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    version = read_manifest(tiny_bundle).version
    web_port = free_port()
    daemon = make_daemon(
        bundle=tiny_bundle,
        destinations=[("pacs", "ORTHANC", orthanc.dicom_port)],
        web_port=web_port,
        extra_config=FAST_EGRESS,
    ).start()
    wait_for_port(web_port, proc=daemon.proc)
    added = _cli(daemon, "user", "add", "dr.ana", "--full-name", "Smith, Ana", "--password-stdin", stdin=PASSWORD)
    assert added.returncode == 0, added.stderr
    (tmp_path / "in").mkdir()
    images = _send_case(daemon, tmp_path / "in")

    d = browser
    d.get(f"http://127.0.0.1:{web_port}/worklist")
    assert "/login" in d.current_url
    d.find_element(By.ID, "username").send_keys("dr.ana")
    d.find_element(By.ID, "password").send_keys(PASSWORD)
    d.find_element(By.CSS_SELECTOR, ".login-card button[type=submit]").click()
    wait_until(lambda: d.find_elements(By.ID, "start-review"), 30, "the worklist")
    assert "FIXTURE" in d.page_source  # the patient is shown to the logged-in reviewer
    d.find_element(By.ID, "start-review").click()

    wait_until(
        lambda: d.execute_script("return document.getElementById('image').naturalWidth") == 1024, 60, "the image"
    )
    uid = d.find_element(By.CSS_SELECTOR, "input[name=image]").get_attribute("value")
    assert uid in images
    heat = d.find_element(By.ID, "heatmap")
    assert "hidden" in heat.get_attribute("class")
    ActionChains(d).send_keys("h").perform()  # the keyboard shortcut toggles the heatmap layer
    wait_until(
        lambda: d.execute_script("return document.getElementById('heatmap').naturalWidth") > 0, 60, "the heatmap"
    )
    assert "hidden" not in heat.get_attribute("class") and d.find_element(By.ID, "heat-toggle").is_selected()
    zoom_before = d.find_element(By.ID, "zoom-level").text
    d.find_element(By.ID, "zoom-in").click()
    assert d.find_element(By.ID, "zoom-level").text != zoom_before

    d.find_element(By.ID, "zoom-fit").click()
    shot = tmp_path / "review_case_view.png"
    d.save_screenshot(str(shot))
    if os.environ.get("CDS_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, REPO / "docs" / "review_case_view.png")

    ActionChains(d).send_keys("c").perform()  # confirm: the common path, one key
    wait_until(lambda: "Decision recorded" in d.page_source or "Case complete" in d.page_source, 30, "the decision")

    review_uid = derived_uid(uid, version, "review-sr:1")
    orthanc_id = wait_until(lambda: orthanc.instance_id(review_uid), 60, "the verified SR in Orthanc")
    sr = pydicom.dcmread(io.BytesIO(orthanc.file(str(orthanc_id))))
    assert sr.VerificationFlag == "VERIFIED"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Smith^Ana"
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == derived_uid(uid, version, "sr")
    assert orthanc.instance_id(predecessor.ReferencedSOPInstanceUID) is not None


def _send_fields(daemon: DaemonProcess, out: Path, seed: int, categories: list[str]) -> None:
    """The fields of one case (one study: ``wrap_image`` derives the study from ``seed``)."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for n, category in enumerate(categories, start=1):
        ds = wrap_image(make_field(category, seed + n), "vl-microscopic", "explicit", seed=seed, instance_number=n)
        files.append(write_dicom(ds, out / f"{n}.dcm"))
    assert storescu(daemon.port, *files).returncode == 0


def _open_items(daemon: DaemonProcess, images: int) -> list[dict[str, object]]:
    items = json.loads(_cli(daemon, "worklist", "list", "--json").stdout)["items"]
    return [i for i in items if len(i["images"]) == images]


def test_a_case_decided_at_once_shows_as_similar_confirmed_cases_in_the_next_case(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, browser, tmp_path: Path
) -> None:
    """One decision covers a whole case (the "whole case" box); its images then appear, with their category,
    reviewer and date, as similar confirmed cases on the next case's page."""
    from selenium.webdriver.common.by import By

    web_port = free_port()
    daemon = make_daemon(
        bundle=tiny_bundle,
        web_port=web_port,
        extra_config="[triage]\nconfidence_threshold = 1.0\n",  # refer every field: each case reaches the worklist
    ).start()
    wait_for_port(web_port, proc=daemon.proc)
    added = _cli(daemon, "user", "add", "dr.ana", "--full-name", "Smith, Ana", "--password-stdin", stdin=PASSWORD)
    assert added.returncode == 0, added.stderr
    _send_fields(daemon, tmp_path / "a", 5100, ["malignant", "malignant", "benign"])
    (first,) = wait_until(lambda: _open_items(daemon, 3), 120, "the first case in the worklist")

    d = browser
    sign_in(d, f"http://127.0.0.1:{web_port}", "dr.ana", PASSWORD)
    d.get(f"http://127.0.0.1:{web_port}/case/{first['id']}")
    assert "None yet" in d.page_source  # nothing confirmed so far
    d.find_element(By.ID, "scope-case").click()
    d.find_element(By.ID, "btn-confirm").click()
    wait_until(lambda: "Case complete" in d.page_source, 30, "the case-wide decision")
    decided = json.loads(_cli(daemon, "worklist", "list", "--json", "--status", "done").stdout)["items"]
    assert [i["status"] for i in decided if i["id"] == first["id"]] == ["done"]

    _send_fields(daemon, tmp_path / "b", 6100, ["malignant"])
    (second,) = wait_until(lambda: _open_items(daemon, 1), 120, "the second case in the worklist")
    d.get(f"http://127.0.0.1:{web_port}/case/{second['id']}")
    neighbours = d.find_elements(By.CSS_SELECTOR, ".similar-list li")
    assert len(neighbours) == 3  # every image of the confirmed case, none of this one
    for li in neighbours:
        assert "dr.ana" in li.text and li.find_element(By.CSS_SELECTOR, ".cls").text
    thumbs = ".similar-list img"
    wait_until(
        lambda: d.execute_script(
            f"return Array.from(document.querySelectorAll('{thumbs}')).every(i => i.complete && i.naturalWidth > 0)"
        ),
        30,
        "the thumbnails",
    )
    d.execute_script("document.querySelector('.similar').scrollIntoView()")
    shot = tmp_path / "review_similar_cases.png"
    d.save_screenshot(str(shot))
    if os.environ.get("CDS_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, REPO / "docs" / "review_similar_cases.png")


def test_an_admin_certifies_and_activates_a_site_rule_in_the_browser(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, browser, tmp_path: Path
) -> None:
    """The calibration page of a live-mode daemon whose pool holds the paper's 542 val + test images as shadow
    reviews: the banner says why everything is reviewed; certify and activate, each after the admin's
    password; the banner goes, and the daemon's health says live."""
    from selenium.webdriver.common.by import By

    from cds_daemon.common.manifest import bundle_identity
    from cds_daemon.store import Store
    from tests.support.site_pool import fill_from_paper_logits

    web_port = free_port()
    daemon = make_daemon(bundle=tiny_bundle, web_port=web_port, triage_mode="live")
    daemon.data_dir.mkdir(parents=True)
    store = Store(daemon.data_dir / "cds.sqlite3")
    assert fill_from_paper_logits(store, bundle_identity(tiny_bundle)) == 542
    store.close()
    daemon.start()
    wait_for_port(web_port, proc=daemon.proc)
    added = _cli(daemon, "user", "add", "boss", "--role", "admin", "--full-name", "Jones, Bo", "--password-stdin",
                 stdin=PASSWORD)  # fmt: skip
    assert added.returncode == 0, added.stderr

    d = browser
    sign_in(d, f"http://127.0.0.1:{web_port}", "boss", PASSWORD)
    assert "no site rule is active" in d.find_element(By.ID, "triage-banner").text
    d.get(f"http://127.0.0.1:{web_port}/admin/calibration")
    assert d.find_element(By.ID, "pool-size").text == "542"
    assert "finalises 175 of 542" in d.find_element(By.ID, "would-certify").text
    assert d.find_elements(By.CSS_SELECTOR, "svg.chart polyline")
    shot = tmp_path / "site_calibration.png"
    d.save_screenshot(str(shot))
    d.find_element(By.CSS_SELECTOR, "#certify-form input[name=password]").send_keys(PASSWORD)
    d.find_element(By.CSS_SELECTOR, "#certify-form button").click()
    wait_until(lambda: "certified. It is not in force" in d.page_source, 30, "the certified rule")
    d.find_element(By.CSS_SELECTOR, "#rules input[name=password]").send_keys(PASSWORD)
    d.find_element(By.CSS_SELECTOR, "#rules button").click()
    wait_until(lambda: "is active: every node" in d.page_source, 30, "the activation")
    assert not d.find_elements(By.ID, "triage-banner") and d.find_element(By.ID, "triage-mode").text == "live"
    _, body = daemon.http("/healthz/ready")
    assert json.loads(body)["triage"]["mode"] == "live"
    active = tmp_path / "site_calibration_active.png"
    d.save_screenshot(str(active))
    if os.environ.get("CDS_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, REPO / "docs" / "site_calibration.png")
        shutil.copyfile(active, REPO / "docs" / "site_calibration_active.png")
