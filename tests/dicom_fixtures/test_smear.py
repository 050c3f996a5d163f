"""Synthetic smears and their DICOM whole-slide pyramids (dicom_fixtures.smear, dicom_fixtures.wsm)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from wsidicom import WsiDicom

from cds_daemon.analysis.quality import laplacian_variance
from dicom_fixtures.cli import main
from dicom_fixtures.smear import FIELD_COLS, FIELD_ROWS, make_smear
from dicom_fixtures.wsm import WSM_SOP_CLASS, write_wsm


def test_a_smear_has_its_patches_where_it_says() -> None:
    smear = make_smear("malignant", 4, grid=(3, 4), cell_patches=4, blood_patches=2, focal_planes=3)
    assert smear.shape == (3 * 960, 4 * 1280)
    assert [p.kind for p in smear.patches].count("cells") == 4 and len(smear.patches) == 6
    for a in smear.patches:
        assert (a.width, a.height) == (FIELD_COLS, FIELD_ROWS)
        assert 0 <= a.x <= smear.shape[1] - a.width and 0 <= a.y <= smear.shape[0] - a.height
        for b in smear.patches:
            if a is not b:
                assert a.x + a.width <= b.x or b.x + b.width <= a.x or a.y + a.height <= b.y or b.y + b.height <= a.y
    glass = smear.planes[1][:200, :200].astype(float)
    cells = smear.informative()[0]
    group = smear.planes[1][cells.y : cells.y + cells.height, cells.x : cells.x + cells.width].astype(float)
    assert (group.mean(axis=2) < 160).mean() > 0.02 > (glass.mean(axis=2) < 160).mean(), "nuclei on cells, not glass"
    sharp = [laplacian_variance(p.astype(np.float32).mean(axis=2)[::2, ::2]) for p in smear.planes]
    assert int(np.argmax(sharp)) == smear.sharpest == 1


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="fit"):
        make_smear("benign", 0, grid=(1, 2), cell_patches=2, blood_patches=1)
    with pytest.raises(ValueError, match="odd"):
        make_smear("benign", 0, focal_planes=2)


@pytest.mark.parametrize("jpeg", [True, False])
def test_the_pyramid_is_valid_dicom_that_wsidicom_reads(tmp_path: Path, jpeg: bool) -> None:
    smear = make_smear("benign", 5, grid=(2, 3), cell_patches=2, blood_patches=1, focal_planes=3)
    written = write_wsm(smear, tmp_path, seed=5, jpeg=jpeg)
    assert len(written.paths) == 3
    for path in written.paths:
        check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [ln for ln in check.stderr.splitlines() if ln.startswith("Error")]
        assert not errors, errors
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SOPClassUID == WSM_SOP_CLASS and ds.FrameOfReferenceUID == written.frame_of_reference_uid
    with WsiDicom.open(written.paths) as wsi:
        assert (wsi.size.width, wsi.size.height) == (smear.shape[1], smear.shape[0])
        assert wsi.mpp.width == pytest.approx(0.25)
        assert list(wsi.levels.base_level.focal_planes) == [0.0, 1.0, 2.0]
        p = smear.informative()[0]
        region = np.asarray(wsi.read_region((p.x, p.y), 0, (256, 256), z=1.0))[..., :3].astype(int)
        expected = smear.planes[1][p.y : p.y + 256, p.x : p.x + 256].astype(int)
        assert np.abs(region - expected).mean() < (4 if jpeg else 0.01)


def test_without_pixel_spacing_only_the_imaged_volume_tells_the_scale(tmp_path: Path) -> None:
    smear = make_smear("benign", 6, grid=(1, 2), cell_patches=1, blood_patches=0)
    written = write_wsm(smear, tmp_path, seed=6, pixel_spacing=False)
    ds = pydicom.dcmread(written.paths[0], stop_before_pixels=True)
    assert "PixelSpacing" not in ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(ds.ImagedVolumeWidth) / int(ds.TotalPixelMatrixColumns) * 1000 == pytest.approx(0.25, rel=1e-4)


def test_make_slide_writes_the_pyramid_and_its_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "slide"
    args = ["make-slide", str(out), "--label", "indeterminate", "--seed", "7", "--grid", "2", "2", "--cells", "2"]
    assert main([*args, "--blood", "1"]) == 0
    truth = json.loads((out / "truth.json").read_text())
    assert truth["label"] == "indeterminate" and truth["mpp"] == 0.25
    assert [p["kind"] for p in truth["patches"]] == ["cells", "cells", "blood"]
    assert sorted(truth["files"]) == sorted(p.name for p in out.glob("*.dcm"))
    assert "wrote a 2560x1920 indeterminate slide" in capsys.readouterr().out
    assert main(["make-slide", str(out), "--label", "benign", "--seed", "1", "--grid", "1", "1", "--cells", "2"]) == 1
