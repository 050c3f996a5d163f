"""Command line: each subcommand writes what it promises and rejects bad arguments."""

import csv
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from dicom_fixtures.cli import main
from dicom_fixtures.identity import FAKE_PATIENT_ID_RE
from dicom_fixtures.synth import CLASSES
from tests.support.processes import REPO


def read_labels(root: Path) -> list[dict[str, str]]:
    with (root / "labels.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["path", "label", "case_id", "patient_id"]
        return list(reader)


def test_make_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    assert main(["make-dataset", str(out), "--n-per-class", "5", "--seed", "3"]) == 0
    assert "wrote 15 images" in capsys.readouterr().out
    rows = read_labels(out)
    assert len(rows) == 15
    assert {label: sum(r["label"] == label for r in rows) for label in CLASSES} == dict.fromkeys(CLASSES, 5)
    case_labels, case_patients = defaultdict(set), defaultdict(set)
    for row in rows:
        path = out / row["path"]
        assert path.parent.name == row["label"]
        assert Image.open(path).size == (1024, 768)
        assert FAKE_PATIENT_ID_RE.fullmatch(row["patient_id"])
        case_labels[row["case_id"]].add(row["label"])
        case_patients[row["case_id"]].add(row["patient_id"])
    assert all(len(v) == 1 for v in case_labels.values())
    assert all(len(v) == 1 for v in case_patients.values())
    assert max(sum(r["case_id"] == c for r in rows) for c in case_labels) > 1  # multi-image cases exist


def test_make_dataset_refuses_non_empty_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "old.txt").write_text("previous run")
    assert main(["make-dataset", str(tmp_path), "--n-per-class", "1", "--seed", "0"]) == 1
    assert "not empty" in capsys.readouterr().err


def test_make_dataset_is_deterministic(tmp_path: Path) -> None:
    args = ["--n-per-class", "2", "--seed", "8", "--format", "png"]
    assert main(["make-dataset", str(tmp_path / "a"), *args]) == 0
    assert main(["make-dataset", str(tmp_path / "b"), *args]) == 0
    rows = read_labels(tmp_path / "a")
    assert rows == read_labels(tmp_path / "b")
    for row in rows:
        assert (tmp_path / "a" / row["path"]).read_bytes() == (tmp_path / "b" / row["path"]).read_bytes()


def test_label_noise_flips_whole_cases(tmp_path: Path) -> None:
    out = tmp_path / "noisy"
    args = "--n-per-class 8 --seed 1 --label-noise 0.5"
    assert main(["make-dataset", str(out), *args.split()]) == 0
    rows = read_labels(out)
    truth = json.loads((out / "dataset.json").read_text())["true_labels"]
    flipped = [r for r in rows if r["label"] != truth[r["path"]]]
    assert 0 < len(flipped) < len(rows)
    by_case = defaultdict(set)
    for row in rows:
        by_case[row["case_id"]].add((row["label"], truth[row["path"]]))
    assert all(len(v) == 1 for v in by_case.values())


def test_make_dicom(tmp_path: Path) -> None:
    out = tmp_path / "dcm"
    args = "--n 3 --iod vl-slide-microscopic --ts jpeg-baseline --seed 4 --label malignant"
    assert main(["make-dicom", str(out), *args.split()]) == 0
    files = sorted(out.glob("*.dcm"))
    assert [f.name for f in files] == ["0001_malignant.dcm", "0002_malignant.dcm", "0003_malignant.dcm"]
    datasets = [pydicom.dcmread(f) for f in files]
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == 3
    assert datasets[0].pixel_array.shape == (768, 1024, 3)


def test_make_dicom_multiframe_and_studies(tmp_path: Path) -> None:
    out = tmp_path / "mf"
    args = "--n 2 --iod mf-true-color-sc --ts rle --seed 0 --frames 2 --images-per-study 1"
    assert main(["make-dicom", str(out), *args.split()]) == 0
    a, b = (pydicom.dcmread(f) for f in sorted(out.glob("*.dcm")))
    assert a.NumberOfFrames == 2 and a.pixel_array.shape == (2, 768, 1024, 3)
    assert a.StudyInstanceUID != b.StudyInstanceUID and a.PatientID != b.PatientID
    assert "benign" in a.ImageComments and "indeterminate" in b.ImageComments


def test_make_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["make-corpus", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "corpus.json").is_file()
    assert "huge-20000" in capsys.readouterr().out


def test_contact_sheet(tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    assert main(["contact-sheet", str(out), "--per-class", "2", "--seed", "1"]) == 0
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[0] > 4 * 100 and img.shape[1] > 6 * 150  # 3 class rows + bad row, 6 bad kinds wide
    assert out.stat().st_size < 1_500_000


def test_bench_prints_rate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--n-per-class", "1", "--no-pin"]) == 0
    out = capsys.readouterr().out
    assert "make_field 768x1024, 3 images:" in out and "/CPU-s" in out


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("make-dataset x --seed 1", "--n-per-class"),
        ("make-dataset x --n-per-class 0 --seed 1", "positive integer"),
        ("make-dataset x --n-per-class 2 --seed -3", "non-negative integer seed"),
        ("make-dataset x --n-per-class 2 --seed 1 --difficulty 2", "[0, 1]"),
        ("make-dataset x --n-per-class 2 --seed 1 --label-noise 1", "below 1"),
        ("make-dicom x --n 1 --iod ct --ts rle --seed 1", "invalid choice"),
        ("make-dicom x --n 1 --iod sc --ts jxl --seed 1", "invalid choice"),
        ("make-dicom x --n 1 --iod sc --ts rle --seed 1 --frames 2", "only mf-true-color-sc"),
        ("contact-sheet x.png --per-class zero", "positive integer"),
        ("frobnicate", "invalid choice"),
        ("", "required"),
    ],
)
def test_bad_arguments_exit_nonzero_with_message(
    command: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(command.split())
    assert exc.value.code != 0
    assert message in capsys.readouterr().err


def test_module_entry_point(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dicom_fixtures", "make-dicom", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 2
    assert "the following arguments are required" in out.stderr


def test_unwritable_output_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["make-corpus", str(blocker / "sub")]) == 1
    assert "error" in capsys.readouterr().err
