"""``python -m model_build evaluate BUNDLE DATA``: the bundle exactly as the daemon runs it, on a labelled folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from model_build.demo import work_dir
from model_build.evaluate import format_summary, run_evaluate


def test_evaluate_reports_finalisation_and_similar_case_retrieval(tiny_bundle: Path, tmp_path: Path) -> None:
    data = work_dir(tiny_bundle) / "data"
    result = run_evaluate(tiny_bundle, data, tmp_path / "report", threads=2, n_boot=50)
    assert result["n"] == 12
    retrieval = result["retrieval"]
    assert retrieval["k"] == 5 and 0.0 <= retrieval["precision"] <= 1.0
    assert abs(retrieval["random"] - 3 / 11) < 1e-9  # 4 per class: 3 of the 11 others share the label
    text = format_summary(result)
    assert "precision@5 of the category" in text and "finalised without review" in text
    cli = subprocess.run(
        [sys.executable, "-m", "model_build", "evaluate", str(tiny_bundle), str(data)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0 and "similar cases: precision@5" in cli.stdout, cli.stderr[-500:]
