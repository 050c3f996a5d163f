"""Evaluate the ThyroidEffi paper's own per-image logits: calibration, conformal triage, report.

Protocol (val = calibration split, test = reported split; train is in-sample for the model and unused):
1. Temperature T fitted by NLL on val row 0 (whole-image view).
2. Models on test: Basic = row 0, raw and T-scaled; 13-view mean = softmax of the mean of the 13 logit
   rows (argmax of the mean equals argmax of the sum; averaging *probabilities* instead would give a
   different classifier, macro-F1 0.9072 rather than the paper's 0.8946).
3. Class-conditional conformal thresholds fitted on val with T-scaled row-0 probabilities, applied to test.
4. Referral: set size != 1, or predicted Indeterminate/Suspicious, or calibrated confidence < threshold.
5. McNemar of Basic against the 13-view mean on test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cds_daemon.analysis.numeric import prediction_sets, softmax
from model_build import metrics
from model_build.calibration import fit_temperature, nll
from model_build.conformal import class_conditional_quantiles
from model_build.logits_csv import CLASS_NAMES, default_data_dir, load_split, split_path
from model_build.report import write_report

TITLE = "ThyroidEffi 1.0 per-image logits (test split)"
BASIC_RAW = "basic_raw"
BASIC_SCALED = "basic_scaled"
VIEW_MEAN = "view_mean13"


def check_data_dir(data_dir: Path) -> None:
    """Raise FileNotFoundError naming the missing file and how to point at the data."""
    for split in ("val", "test"):
        p = split_path(data_dir, split)
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} not found; pass --data-dir, or set CDS_SHARED_DIR to the folder holding "
                "data/thyroideffi_logits"
            )


def referral_mask(
    sets: np.ndarray, probs: np.ndarray, confidence_threshold: float
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The triage policy on calibrated probs; returns the mask and each reason's own mask."""
    reasons = {
        "set_not_singleton": sets.sum(axis=1) != 1,
        "indeterminate": probs.argmax(axis=1) == metrics.INDETERMINATE_INDEX,
        "low_confidence": probs.max(axis=1) < confidence_threshold,
    }
    return np.logical_or.reduce(list(reasons.values())), reasons


def run_evaluate_logits(
    data_dir: Path | None = None,
    out_dir: Path | None = None,
    *,
    alpha: float = 0.1,
    confidence_threshold: float = 0.6,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the protocol above; write the report to ``out_dir`` when given and return the result dict."""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    check_data_dir(data_dir)
    y_val, z_val = load_split("val", data_dir)
    y_test, z_test = load_split("test", data_dir)
    names = list(CLASS_NAMES)

    temperature = fit_temperature(z_val[:, 0], y_val)
    p_val = softmax(z_val[:, 0], temperature)
    p_raw = softmax(z_test[:, 0])
    p_scaled = softmax(z_test[:, 0], temperature)
    p_mean = softmax(z_test.mean(axis=1))

    quantiles = class_conditional_quantiles(p_val, y_val, alpha)
    sets = prediction_sets(p_scaled, quantiles)
    refer, reasons = referral_mask(sets, p_scaled, confidence_threshold)

    common = {"class_names": names, "n_boot": n_boot, "seed": seed}
    models = {
        BASIC_RAW: metrics.evaluate(p_raw, y_test, **common),
        BASIC_SCALED: metrics.evaluate(
            p_scaled, y_test, referral=refer, sets=sets, other_pred=p_mean.argmax(axis=1), **common
        ),
        VIEW_MEAN: metrics.evaluate(p_mean, y_test, **common),
    }
    result: dict[str, Any] = {
        "title": TITLE,
        "data_dir": str(data_dir),
        "calibration_split": "val",
        "evaluation_split": "test",
        "n_val": int(y_val.shape[0]),
        "n_test": int(y_test.shape[0]),
        "temperature": temperature,
        "val_nll_raw": nll(softmax(z_val[:, 0]), y_val),
        "val_nll_scaled": nll(p_val, y_val),
        "alpha": alpha,
        "confidence_threshold": confidence_threshold,
        "referral_policy": (
            f"refer if conformal set size != 1, or predicted {names[metrics.INDETERMINATE_INDEX]}, "
            f"or calibrated confidence < {confidence_threshold}"
        ),
        "mcnemar_comparison": f"A = {BASIC_SCALED} (row 0), B = {VIEW_MEAN}",
        "conformal_quantiles": dict(zip(names, quantiles.tolist(), strict=True)),
        "referral_reasons": {k: int(v.sum()) for k, v in reasons.items()},
        "models": models,
    }
    if out_dir is not None:
        write_report(result, Path(out_dir), p_scaled, y_test, names, TITLE, probs_before=p_raw)
    return result


def format_summary(result: dict[str, Any]) -> str:
    """Short plain-text summary for stdout."""
    cols = [
        ("acc", "accuracy"),
        ("macroF1", "macro_f1"),
        ("wF1", "weighted_f1"),
        ("recall-BV", "indeterminate_recall"),
        ("mAUC", "macro_auc"),
        ("ECE", "ece"),
        ("NLL", "nll"),
        ("Brier", "brier"),
        ("AURC", "aurc"),
    ]
    width = max(len(k) for k in result["models"])
    lines = [f"{'model':<{width}}  " + "  ".join(f"{c:>9}" for c, _ in cols)]
    for name, m in result["models"].items():
        cells = ("n/a" if m[key] is None else f"{m[key]:.4f}" for _, key in cols)
        lines.append(f"{name:<{width}}  " + "  ".join(f"{c:>9}" for c in cells))
    main = result["models"][BASIC_SCALED]
    conf, ref, mc = main["conformal"], main["referral"], main["mcnemar"]
    cov = ", ".join(f"{k} {v:.3f}" for k, v in conf["coverage_by_class"].items())
    sizes = ", ".join(f"{k}:{v}" for k, v in conf["set_size_histogram"].items())
    lines += [
        f"temperature (val row 0, NLL): {result['temperature']:.4f}   "
        f"val NLL {result['val_nll_raw']:.4f} -> {result['val_nll_scaled']:.4f}",
        f"confusion matrix {BASIC_RAW} (rows = true): {result['models'][BASIC_RAW]['confusion_matrix']}",
        f"conformal alpha={result['alpha']}: test coverage {cov}; set sizes {sizes}",
        f"referral rate {ref['rate']:.3f} ({ref['n_referred']}/{main['n']}), "
        f"reasons {result['referral_reasons']}, "
        f"accuracy accepted {ref['accuracy_accepted']:.3f}",
        f"McNemar Basic (row 0) vs {VIEW_MEAN}: b={mc['b']} c={mc['c']} p_exact={mc['p_exact']:.4f} "
        f"p_chi2={mc['p_chi2']:.4f}",
    ]
    return "\n".join(lines)
