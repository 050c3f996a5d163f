"""Report writing, the CSV reader, the CLI, and the no-torch / lazy-matplotlib rule."""

from __future__ import annotations

import ast
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cds_daemon.analysis.numeric import softmax
from model_build import metrics
from model_build.__main__ import COMMANDS, build_parser, main
from model_build.logits_csv import PACKAGED_DATA_DIR, default_data_dir, read_logits_csv, shared_dir
from model_build.report import FIGURES, render_markdown, write_report

REPO = Path(__file__).resolve().parents[2]
MODULES = ["metrics", "calibration", "conformal", "report", "logits_csv", "evaluate_logits", "robustness", "__main__"]
NAMES = ["Benign", "Indeterminate/Suspicious", "Malignant"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def synthetic() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 3, 150)
    logits = rng.normal(0, 1.0, (150, 3)) + 3.0 * np.eye(3)[labels]
    return softmax(logits), softmax(logits, 0.5), labels


def test_write_report_single_model(tmp_path: Path, synthetic: tuple[np.ndarray, ...]) -> None:
    probs, probs_before, labels = synthetic
    result = metrics.evaluate(
        probs, labels, class_names=NAMES, sets=probs > 0.3, referral=probs.max(1) < 0.8, n_boot=20
    )
    write_report(result, tmp_path / "r", probs, labels, NAMES, "Synthetic", probs_before=probs_before)
    out = tmp_path / "r"
    assert json.loads((out / "report.json").read_text()) == result
    for name in FIGURES.values():
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    md = (out / "report.md").read_text()
    assert md.startswith("# Synthetic")
    assert f"| macro-F1 | {result['macro_f1']:.4f} |" in md
    cm = result["confusion_matrix"]
    assert f"| Benign | {cm[0][0]} | {cm[0][1]} | {cm[0][2]} |" in md
    assert "coverage Malignant" in md and "| rate |" in md


def test_markdown_multi_model_lists_each_model(synthetic: tuple[np.ndarray, ...]) -> None:
    probs, probs_before, labels = synthetic
    result = {
        "temperature": 2.0,
        "extra": {"a": 1},
        "models": {
            "raw": metrics.evaluate(probs_before, labels, class_names=NAMES, n_boot=0),
            "scaled": metrics.evaluate(probs, labels, class_names=NAMES, n_boot=0),
        },
    }
    md = render_markdown(result, "Two")
    assert "| metric | raw | scaled |" in md
    assert "| temperature | 2.0000 |" in md
    assert "## raw" in md and "## scaled" in md and "## extra" in md
    ece_row = next(line for line in md.splitlines() if line.startswith("| ECE"))
    assert f"{result['models']['raw']['ece']:.4f}" in ece_row


def test_report_refuses_nan(tmp_path: Path, synthetic: tuple[np.ndarray, ...]) -> None:
    probs, _, labels = synthetic
    with pytest.raises(ValueError):
        write_report({"models": {}, "x": float("nan")}, tmp_path, probs, labels, NAMES, "t")


def _write_csv(path: Path, rows: list[tuple[str, int, list[list[float]], int | None]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path_to_image", "label", "predicted_vector", "predicted_label"])
        for p, label, vec, pred in rows:
            w.writerow([p, label, json.dumps(vec), "" if pred is None else pred])


def _vec(top: int) -> list[list[float]]:
    rows = np.zeros((13, 3))
    rows[:, top] = 1.0
    return rows.tolist()


def test_read_logits_csv(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    _write_csv(p, [("./a/test/B2/1.jpg", 0, _vec(0), 0), ("./a/test/B6/2.jpg", 2, _vec(1), 1)])
    labels, logits = read_logits_csv(p)
    np.testing.assert_array_equal(labels, [0, 2])
    assert logits.shape == (2, 13, 3) and logits.dtype == np.float64
    assert logits[1, 0, 1] == 1.0


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (("./B2/1.jpg", 0, [[0.0, 1.0, 2.0]] * 12, None), "shape"),
        (("./B5/1.jpg", 0, _vec(0), None), "contradicts folder"),
        (("./B2/1.jpg", 0, _vec(0), 2), "not the argmax"),
        (("./x/1.jpg", 3, _vec(0), None), "outside"),
    ],
)
def test_read_logits_csv_rejects_bad_rows(tmp_path: Path, row: tuple, match: str) -> None:
    p = tmp_path / "bad.csv"
    _write_csv(p, [row])
    with pytest.raises(ValueError, match=match):
        read_logits_csv(p)


def test_shared_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CDS_SHARED_DIR", raising=False)
    assert shared_dir() == REPO.parent / "shared"
    assert default_data_dir() == PACKAGED_DATA_DIR
    monkeypatch.setenv("CDS_SHARED_DIR", str(tmp_path))
    assert shared_dir() == tmp_path
    assert default_data_dir() == PACKAGED_DATA_DIR  # the variable's folder lacks the CSVs
    logits = tmp_path / "data" / "thyroideffi_logits"
    logits.mkdir(parents=True)
    for split in ("val", "test"):
        (logits / f"{split}_not_aug.csv").write_text("label,predicted_vector\n")
    assert default_data_dir() == logits


def test_cli_parser_and_missing_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["evaluate-logits", "--alpha", "0.2", "--out", str(tmp_path)])
    assert args.alpha == 0.2 and args.confidence_threshold == 0.6 and callable(args.handler)
    assert len(COMMANDS) >= 1
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate-logits", "--alpha", "1.5"])
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert main(["evaluate-logits", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "CDS_SHARED_DIR" in capsys.readouterr().err


@pytest.mark.parametrize("module", MODULES)
def test_no_torch_and_lazy_matplotlib(module: str) -> None:
    tree = ast.parse((REPO / "model_build" / f"{module}.py").read_text())
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module.split(".")[0])
    anywhere = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            anywhere |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            anywhere.add(node.module.split(".")[0])
    assert "torch" not in anywhere
    assert "matplotlib" not in top_level


def test_importing_the_evaluation_modules_loads_neither_torch_nor_matplotlib() -> None:
    code = (
        "import sys, model_build; before = set(sys.modules)\n"
        "import model_build.evaluate_logits, model_build.robustness, model_build.report, model_build.__main__\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(new & {'torch', 'matplotlib'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
