"""Evaluate the ThyroidEffi paper's own per-image logits: calibration, conformal triage, report.

Protocol (val = calibration split, test = reported split; train is in-sample for the model and unused):
1. Temperature T fitted by NLL on val row 0 (whole-image view).
2. Models on test: Basic = row 0, raw and T-scaled; 13-view mean = softmax of the mean of the 13 logit
   rows (argmax of the mean equals argmax of the sum; averaging *probabilities* instead would give a
   different classifier, macro-F1 0.9072 rather than the paper's 0.8946).
3. Class-conditional conformal thresholds fitted on val with T-scaled row-0 probabilities, applied to test.
4. Referral: set size != 1, or predicted Indeterminate/Suspicious, or calibrated confidence < threshold.
5. McNemar of Basic against the 13-view mean on test.
6. Finalisation without review (``cds_daemon.analysis.risk``): the Learn-then-Test rule fitted on val
   at (risk_alpha, risk_delta), for two confidences: Basic (row 0, T-scaled) and the views ensemble
   (T-scaled row 0 and T-scaled 13-view mean averaged, then an ensemble temperature: the closest
   these logits come to the daemon's Basic + Premium ensemble). Indeterminate/Suspicious is never
   finalised. On test: share finalised, errors with their upper bound, Benign<->Malignant swaps, and a
   risk-coverage curve of the rule (finalisation.png) with its AURC.
7. Optionally (:mod:`model_build.robustness`), on val + test pooled: the rule refitted on random halves
   (``resplits``), coverage against calibration size (``power``), and a simulated site's shadow mode
   (``site_simulation``); one split's coverage says little on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cds_daemon.analysis.numeric import ensemble_logits, prediction_sets, softmax
from cds_daemon.analysis.risk import finalisation_confidence, fit_finalisation
from cds_daemon.common.binomial import binomial_upper_bound
from model_build import metrics
from model_build.calibration import fit_temperature, nll
from model_build.conformal import class_conditional_quantiles
from model_build.logits_csv import CLASS_NAMES, PACKAGED_DATA_DIR, default_data_dir, load_split, split_path
from model_build.report import finalisation_aurc, plot_finalisation, write_report

TITLE = "ThyroidEffi 1.0 per-image logits (test split)"
BASIC_RAW = "basic_raw"
BASIC_SCALED = "basic_scaled"
VIEW_MEAN = "view_mean13"
BASIC_FINALISATION = "basic"
VIEWS_FINALISATION = "views_ensemble"
#: The rule the daemon applies: the lower of the ensemble's and Basic's calibrated confidence.
DAEMON_FINALISATION = "min(views_ensemble, basic)"
FINALISATION_PNG = "finalisation.png"


def check_data_dir(data_dir: Path) -> None:
    """Raise FileNotFoundError naming the missing file and how to point at the data."""
    for split in ("val", "test"):
        p = split_path(data_dir, split)
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} not found; pass --data-dir (a folder with {{val,test}}_not_aug.csv), or leave it out to use "
                f"the copy in the package ({PACKAGED_DATA_DIR}) or $CDS_SHARED_DIR/data/thyroideffi_logits"
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
    risk_alpha: float = 0.02,
    risk_delta: float = 0.1,
    n_boot: int = 1000,
    seed: int = 0,
    resplits: int = 0,
    power: bool = False,
    power_reps: int = 200,
    site_simulation: int = 0,
) -> dict[str, Any]:
    """Run the protocol above; write the report to ``out_dir`` when given and return the result dict.

    ``resplits`` (halves), ``power`` (with ``power_reps`` bootstraps) and ``site_simulation`` (random orders) add
    step 7's entries under those keys, at (risk_alpha, risk_delta) with ``seed``; 0 / False skips them."""
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
    scores = finalisation_scores(z_val, y_val, z_test)
    result["finalisation"] = {
        name: finalise(score, y_val, y_test, alpha=risk_alpha, delta=risk_delta) for name, score in scores.items()
    }
    if resplits or power or site_simulation:
        # Imported here: robustness builds on this module's finalisation_scores / finalise.
        from model_build.robustness import run_robustness

        result |= run_robustness(
            np.concatenate([z_val, z_test]),
            np.concatenate([y_val, y_test]),
            out_dir,
            alpha=risk_alpha,
            delta=risk_delta,
            resplits=resplits,
            power=power,
            power_reps=power_reps,
            site_orders=site_simulation,
            seed=seed,
        )
    if out_dir is not None:
        write_report(result, Path(out_dir), p_scaled, y_test, names, TITLE, probs_before=p_raw)
        curves = []
        for name, (_, _, p_t, conf) in scores.items():
            pred = p_t.argmax(axis=1)
            threshold = result["finalisation"][name]["threshold"]
            curves.append((name, conf, pred != y_test, pred != metrics.INDETERMINATE_INDEX, threshold))
        plot_finalisation(curves, risk_alpha, Path(out_dir) / FINALISATION_PNG, TITLE)
    return result


Scores = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # p_val, conf_val, p_test, conf_test


def finalisation_scores(z_val: np.ndarray, y_val: np.ndarray, z_test: np.ndarray) -> dict[str, Scores]:
    """Calibrated probabilities on val and test, and the confidence the rule thresholds, per candidate rule.

    The daemon's rule (:func:`cds_daemon.analysis.risk.finalisation_confidence`) is the first: the paper's
    views ensemble (Basic with the mean of the tile views, the Premium analogue in these logits) as the
    prediction, and the lower of its and Basic's confidences as the score; where the two disagree on the
    class the field is referred (score 0), as the daemon refers ensemble disagreement.
    """
    t_basic = fit_temperature(z_val[:, 0], y_val)
    t_mean = fit_temperature(z_val.mean(axis=1), y_val)

    def views(z: np.ndarray) -> np.ndarray:
        return np.asarray(ensemble_logits(z[:, 0], z.mean(axis=1), t_basic, t_mean))

    t_views = fit_temperature(views(z_val), y_val)
    out: dict[str, Scores] = {}
    pb_v, pb_t = softmax(z_val[:, 0], t_basic), softmax(z_test[:, 0], t_basic)
    pv_v, pv_t = softmax(views(z_val), t_views), softmax(views(z_test), t_views)

    def both(p_views: np.ndarray, p_basic: np.ndarray) -> np.ndarray:
        agree = p_views.argmax(axis=1) == p_basic.argmax(axis=1)
        return np.where(agree, finalisation_confidence(p_views.max(axis=1), p_basic.max(axis=1)), 0.0)

    out[DAEMON_FINALISATION] = (pv_v, both(pv_v, pb_v), pv_t, both(pv_t, pb_t))
    out[BASIC_FINALISATION] = (pb_v, pb_v.max(axis=1), pb_t, pb_t.max(axis=1))
    out[VIEWS_FINALISATION] = (pv_v, pv_v.max(axis=1), pv_t, pv_t.max(axis=1))
    return out


def finalise(scores: Scores, y_val: np.ndarray, y_test: np.ndarray, *, alpha: float, delta: float) -> dict[str, Any]:
    """Fit the finalisation rule on val (candidates: not Indeterminate/Suspicious) and measure it on test."""
    p_val, c_val, p_test, c_test = scores
    rule = fit_finalisation(
        c_val,
        p_val.argmax(axis=1) != y_val,
        p_val.argmax(axis=1) != metrics.INDETERMINATE_INDEX,
        alpha=alpha,
        delta=delta,
    )
    pred = p_test.argmax(axis=1)
    threshold = np.inf if rule.threshold is None else rule.threshold
    final = (pred != metrics.INDETERMINATE_INDEX) & (c_test >= threshold)
    wrong = final & (pred != y_test)
    extremes = [0, metrics.MALIGNANT_INDEX]
    swaps = wrong & np.isin(pred, extremes) & np.isin(y_test, extremes)
    n, k = int(final.sum()), int(wrong.sum())
    cand = pred != metrics.INDETERMINATE_INDEX
    return {
        **rule.to_json(),
        "test_n": int(y_test.shape[0]),
        "test_finalised": n,
        "test_coverage": n / y_test.shape[0],
        "test_errors": k,
        "test_error": k / n if n else None,
        "test_upper_bound": binomial_upper_bound(k, n, delta),
        "test_swaps": int(swaps.sum()),
        "test_aurc": finalisation_aurc(c_test, pred != y_test, cand),
    }


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
    for name, f in result.get("finalisation", {}).items():
        err = "n/a" if f["test_error"] is None else f"{f['test_error']:.2%}"
        lines.append(
            f"finalisation [{name}] alpha={f['alpha']} delta={f['delta']}: threshold "
            f"{'none' if f['threshold'] is None else format(f['threshold'], '.4f')} (val: {f['n_finalised']} "
            f"finalised, {f['errors']} wrong); test: {f['test_coverage']:.1%} finalised "
            f"({f['test_finalised']}/{f['test_n']}), error {err} ({f['test_errors']}, bound "
            f"{f['test_upper_bound']:.2%}), Benign<->Malignant swaps {f['test_swaps']}, AURC {f['test_aurc']:.4f}"
        )
    from model_build.robustness import format_robustness  # see run_evaluate_logits

    lines += format_robustness(result)
    return "\n".join(lines)
