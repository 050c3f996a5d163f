"""How much the finalisation rule depends on which images calibrate it (``evaluate-logits --resplits / --power /
--site-simulation``, ``evaluate --resplits``).

One val/test split gives one rule and one coverage; the rule's guarantee is over calibration draws, so a single
split can look far better (or worse) than what a site should expect. Three views of that variability:

- resplits: pool val + test of the paper's logits, draw random stratified halves (calibration / measured), fit the
  rule on one half and measure it on the other (:func:`resplit_logits`); for a bundle, the same on the calibration
  data stored in its manifest (:func:`bundle_resplits`).
- power: expected coverage against calibration size, by bootstrap from the pool (:func:`power_logits`, a thin layer
  over :func:`cds_daemon.analysis.risk.power_curve`).
- site simulation: the pool streamed in random order as shadow-mode reviews, a rule certified every ``step``
  reviews on what was reviewed so far and measured on the images still to come (:func:`site_simulation`).

All three summarise their runs with :func:`summarise`. Error convention throughout: a run that finalises nothing
has error 0 (it cannot be wrong), both in the error mean and in P(error > alpha).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cds_daemon.analysis.risk import fit_finalisation, power_curve, reviews_for_stable_rule
from model_build import metrics
from model_build.evaluate_logits import DAEMON_FINALISATION, finalisation_scores, finalise
from model_build.report import _new_figure

RESPLITS_PNG = "resplits.png"
POWER_PNG = "power.png"
SITE_SIMULATION_PNG = "site_simulation.png"
POWER_SIZES = (271, 542, 1000, 2000, 4000)
BUNDLE_RESPLIT_NAME = "bundle calibration"


def summarise(
    coverage: Sequence[float],
    error: Sequence[float | None],
    swaps: Sequence[int] | None,
    *,
    alpha: float,
    delta: float,
) -> dict[str, Any]:
    """Mean / p10 / p50 of the coverage over runs, the mean error among finalised and P(error > alpha).

    ``error`` None (nothing finalised) counts as 0 in both. ``swaps`` None: not measurable (no labels)."""
    cov = np.asarray(coverage, dtype=np.float64)
    err = np.asarray([0.0 if e is None else e for e in error], dtype=np.float64)
    if cov.size == 0 or cov.shape != err.shape:
        raise ValueError("coverage and error must be non-empty and of one length")
    return {
        "alpha": alpha,
        "delta": delta,
        "n": int(cov.size),
        "coverage_mean": float(cov.mean()),
        "coverage_p10": float(np.quantile(cov, 0.1)),
        "coverage_p50": float(np.quantile(cov, 0.5)),
        "error_mean": float(err.mean()),
        "p_error_above_alpha": float((err > alpha).mean()),
        "share_nothing_finalised": float((cov == 0).mean()),
        "swaps_mean": None if swaps is None else float(np.mean(swaps)),
    }


def format_resplit_line(name: str, s: Mapping[str, Any]) -> str:
    swaps = "n/a" if s["swaps_mean"] is None else f"{s['swaps_mean']:.3f}"
    return (
        f"resplits [{name}] alpha={s['alpha']} delta={s['delta']} N={s['n']}: coverage mean "
        f"{s['coverage_mean']:.3f} p10 {s['coverage_p10']:.3f} p50 {s['coverage_p50']:.3f}, error mean "
        f"{s['error_mean']:.4f}, P(error > alpha) {s['p_error_above_alpha']:.3f}, swaps mean {swaps}, "
        f"nothing finalised in {s['share_nothing_finalised']:.1%}"
    )


def stratified_half(strata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of a random half: ``floor(n_s / 2)`` of every stratum's members."""
    strata = np.asarray(strata)
    mask = np.zeros(strata.shape[0], dtype=bool)
    for value in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == value))
        mask[members[: members.size // 2]] = True
    return mask


def resplit_logits(
    z: np.ndarray, y: np.ndarray, n: int, *, alpha: float, delta: float, seed: int = 0
) -> dict[str, Any]:
    """``n`` random halves of the pool stratified by true label (the calibration half: floor of half of each
    class, 270 of the paper's 542), every finalisation score fitted (temperatures too) on it and measured on the
    rest with :func:`model_build.evaluate_logits.finalise`. Per score: the :func:`summarise` figures and the
    per-resplit coverage."""
    if n < 1:
        raise ValueError(f"resplits must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    runs: dict[str, dict[str, list[Any]]] = {}
    n_cal = 0
    for _ in range(n):
        cal = stratified_half(y, rng)
        n_cal = int(cal.sum())
        for name, scores in finalisation_scores(z[cal], y[cal], z[~cal]).items():
            f = finalise(scores, y[cal], y[~cal], alpha=alpha, delta=delta)
            run = runs.setdefault(name, {"coverage": [], "error": [], "swaps": []})
            run["coverage"].append(f["test_coverage"])
            run["error"].append(f["test_error"])
            run["swaps"].append(f["test_swaps"])
    return {
        "stratified_by": "true label",
        "seed": seed,
        "n_pool": int(y.shape[0]),
        "n_calibration": n_cal,
        "n_measured": int(y.shape[0]) - n_cal,
        "scores": {
            name: {
                **summarise(r["coverage"], r["error"], r["swaps"], alpha=alpha, delta=delta),
                "coverage": r["coverage"],
            }
            for name, r in runs.items()
        },
    }


def daemon_score_on_pool(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(confidence, errors, candidates) of the daemon's score on the pool, temperatures fitted on the pool."""
    _, _, probs, confidence = finalisation_scores(z, y, z)[DAEMON_FINALISATION]
    pred = probs.argmax(axis=1)
    return confidence, pred != y, pred != metrics.INDETERMINATE_INDEX


def power_logits(
    z: np.ndarray,
    y: np.ndarray,
    *,
    alpha: float,
    delta: float,
    sizes: tuple[int, ...] = POWER_SIZES,
    reps: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Expected coverage of the daemon's score against calibration size (bootstrap from the pool, coverage measured
    on the pool), and how many reviews beyond the pool a stable rule needs."""
    confidence, errors, candidates = daemon_score_on_pool(z, y)
    points = power_curve(confidence, errors, candidates, sizes, alpha=alpha, delta=delta, reps=reps, seed=seed)
    have = int(y.shape[0])
    return {
        "score": DAEMON_FINALISATION,
        "alpha": alpha,
        "delta": delta,
        "reps": reps,
        "seed": seed,
        "n_pool": have,
        "points": [p.to_json() for p in points],
        "have": have,
        "reviews_for_stable_rule": reviews_for_stable_rule(points, have),
    }


def site_simulation(
    z: np.ndarray, y: np.ndarray, orders: int, *, alpha: float, delta: float, step: int = 100, seed: int = 0
) -> dict[str, Any]:
    """The pool streamed in ``orders`` random orders as shadow-mode reviews: after every ``step`` reviews the daemon's
    rule (temperatures and threshold) is certified on the reviews so far and measured on the images not yet
    streamed. One row per checkpoint with the :func:`summarise` figures over the orders."""
    if orders < 1:
        raise ValueError(f"orders must be >= 1, got {orders}")
    n = int(y.shape[0])
    checkpoints = list(range(step, n, step))
    rng = np.random.default_rng(seed)
    runs: dict[int, dict[str, list[Any]]] = {k: {"coverage": [], "error": [], "swaps": []} for k in checkpoints}
    for _ in range(orders):
        order = rng.permutation(n)
        for k in checkpoints:
            seen, rest = order[:k], order[k:]
            scores = finalisation_scores(z[seen], y[seen], z[rest])[DAEMON_FINALISATION]
            f = finalise(scores, y[seen], y[rest], alpha=alpha, delta=delta)
            runs[k]["coverage"].append(f["test_coverage"])
            runs[k]["error"].append(f["test_error"])
            runs[k]["swaps"].append(f["test_swaps"])
    rows = [
        {"reviews": k, "n_rest": n - k, **summarise(r["coverage"], r["error"], r["swaps"], alpha=alpha, delta=delta)}
        for k, r in runs.items()
    ]
    return {"score": DAEMON_FINALISATION, "orders": orders, "step": step, "seed": seed, "n_pool": n, "rows": rows}


def read_finalisation_block(bundle: Path) -> dict[str, Any]:
    """The ``finalisation`` block of ``bundle/manifest.json``, read as plain JSON: only its calibration data are
    needed, so neither the rest of the manifest nor the ONNX files are checked here."""
    path = Path(bundle) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (is {bundle} a model bundle?)")
    block = json.loads(path.read_text(encoding="utf-8")).get("finalisation")
    if not isinstance(block, dict) or not isinstance(block.get("calibration"), dict):
        raise ValueError(f"{path}: no finalisation block with calibration data")
    return block


def bundle_resplits(
    block: Mapping[str, Any], n: int, *, seed: int = 0, alpha: float | None = None, delta: float | None = None
) -> dict[str, Any]:
    """``n`` random halves of a bundle's finalisation calibration data ({confidence, error, candidate}), stratified by
    the error flag (so both halves hold half the errors, as the logits' halves hold half of each class); the rule
    is fitted on one half and measured on the other. alpha, delta: the bundle's unless given. No labels are stored,
    so Benign<->Malignant swaps cannot be counted."""
    if n < 1:
        raise ValueError(f"resplits must be >= 1, got {n}")
    data = block["calibration"]
    conf = np.asarray(data["confidence"], dtype=np.float64)
    wrong = np.asarray(data["error"], dtype=bool)
    cand = np.asarray(data["candidate"], dtype=bool)
    if not conf.shape == wrong.shape == cand.shape or conf.ndim != 1 or conf.size < 2:
        raise ValueError("calibration confidence, error and candidate must be 1-D lists of one length (>= 2)")
    alpha = float(block["alpha"]) if alpha is None else alpha
    delta = float(block["delta"]) if delta is None else delta
    rng = np.random.default_rng(seed)
    coverage: list[float] = []
    error: list[float | None] = []
    for _ in range(n):
        cal = stratified_half(wrong, rng)
        rule = fit_finalisation(conf[cal], wrong[cal], cand[cal], alpha=alpha, delta=delta)
        threshold = np.inf if rule.threshold is None else rule.threshold
        final = cand[~cal] & (conf[~cal] >= threshold)
        k, m = int((final & wrong[~cal]).sum()), int(final.sum())
        coverage.append(m / int((~cal).sum()))
        error.append(k / m if m else None)
    return {
        "stratified_by": "error flag",
        "seed": seed,
        "n_pool": int(conf.size),
        "scores": {
            BUNDLE_RESPLIT_NAME: {**summarise(coverage, error, None, alpha=alpha, delta=delta), "coverage": coverage}
        },
    }


def without_runs(block: Mapping[str, Any]) -> dict[str, Any]:
    """A resplits block without the per-resplit coverage lists (for report.json / report.md)."""
    out = dict(block)
    out["scores"] = {k: {f: v for f, v in s.items() if f != "coverage"} for k, s in block["scores"].items()}
    return out


def format_power(block: Mapping[str, Any]) -> list[str]:
    lines = [
        f"power n={p['size']} [{block['score']}] alpha={block['alpha']} delta={block['delta']} reps={block['reps']}: "
        f"coverage mean {p['coverage_mean']:.3f} p10 {p['coverage_p10']:.3f} p50 {p['coverage_p50']:.3f}, "
        f"error mean {p['error_mean']:.4f}"
        for p in block["points"]
    ]
    more = block["reviews_for_stable_rule"]
    answer = "not reached on this curve" if more is None else f"{more} more reviews"
    return [*lines, f"power: reviews_for_stable_rule(have={block['have']}): {answer}"]


def format_site_simulation(block: Mapping[str, Any]) -> list[str]:
    head = (
        f"site simulation [{block['score']}] orders={block['orders']} (rule certified on the reviews so far, "
        "measured on the images still to come)"
    )
    cols = f"{'reviews':>8} {'rest':>5} {'coverage mean':>14} {'p10':>6} {'error mean':>11} {'P(error > alpha)':>17}"
    rows = [
        f"{r['reviews']:>8} {r['n_rest']:>5} {r['coverage_mean']:>14.3f} {r['coverage_p10']:>6.3f} "
        f"{r['error_mean']:>11.4f} {r['p_error_above_alpha']:>17.3f}"
        for r in block["rows"]
    ]
    return [head, cols, *rows]


def plot_resplits(block: Mapping[str, Any], path: Path, title: str) -> None:
    """One histogram of the per-resplit coverage per score, mean and p10 marked."""
    scores = block["scores"]
    fig, axes = _new_figure(4.2 * len(scores), 3.6, ncols=len(scores))
    top = max(max(s["coverage"]) for s in scores.values())
    bins = np.linspace(0.0, max(0.05, top) + 1e-9, 26)
    for ax, (name, s) in zip(axes, scores.items(), strict=True):
        ax.hist(s["coverage"], bins=bins, color="tab:blue", alpha=0.75, edgecolor="black")
        ax.axvline(s["coverage_mean"], color="tab:red", label=f"mean {s['coverage_mean']:.3f}")
        ax.axvline(s["coverage_p10"], color="tab:orange", linestyle="--", label=f"p10 {s['coverage_p10']:.3f}")
        ax.set_title(f"{name}\nP(error > alpha) {s['p_error_above_alpha']:.3f}", fontsize="medium")
        ax.set_xlabel("share of measured half finalised")
        ax.set_ylabel("resplits")
        ax.legend(loc="upper right", fontsize="small")
    any_score = next(iter(scores.values()))
    fig.suptitle(
        f"{title}\ncoverage over {any_score['n']} resplits (alpha {any_score['alpha']}, delta {any_score['delta']})",
        fontsize="medium",
    )
    fig.savefig(path, dpi=110)


def plot_power(block: Mapping[str, Any], path: Path, title: str) -> None:
    fig, (ax,) = _new_figure(5.8, 4.2)
    sizes = [p["size"] for p in block["points"]]
    ax.plot(sizes, [p["coverage_mean"] for p in block["points"]], "o-", label="mean")
    ax.plot(sizes, [p["coverage_p10"] for p in block["points"]], "s--", label="p10")
    ax.axvline(block["have"], color="grey", linestyle=":", linewidth=1, label=f"pool {block['have']}")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("calibration size (reviewed images)")
    ax.set_ylabel("expected share finalised")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize="small")
    fig.suptitle(
        f"{title}\npower of {block['score']} (alpha {block['alpha']}, delta {block['delta']}, {block['reps']} draws)",
        fontsize="medium",
    )
    fig.savefig(path, dpi=110)


def plot_site_simulation(block: Mapping[str, Any], path: Path, title: str) -> None:
    fig, (ax,) = _new_figure(5.0, 4.0)
    reviews = [r["reviews"] for r in block["rows"]]
    ax.plot(reviews, [r["coverage_mean"] for r in block["rows"]], "o-", label="coverage mean")
    ax.plot(reviews, [r["coverage_p10"] for r in block["rows"]], "s--", label="coverage p10")
    ax.plot(reviews, [r["p_error_above_alpha"] for r in block["rows"]], "^:", label="P(error on rest > alpha)")
    ax.set_xlabel("shadow-mode reviews so far")
    ax.set_ylabel("share")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize="small")
    fig.suptitle(f"{title}\nsite simulation over {block['orders']} random orders", fontsize="medium")
    fig.savefig(path, dpi=110)


def run_robustness(
    z: np.ndarray,
    y: np.ndarray,
    out_dir: Path | None,
    *,
    alpha: float,
    delta: float,
    resplits: int = 0,
    power: bool = False,
    power_reps: int = 200,
    site_orders: int = 0,
    seed: int = 0,
    title: str = "ThyroidEffi 1.0 per-image logits (val + test pooled)",
) -> dict[str, Any]:
    """The analyses asked for (0 / False: skipped) on the pool, as result-dict entries without the per-run lists;
    their PNGs go to ``out_dir`` when given."""
    out: dict[str, Any] = {}
    figures: list[tuple[Callable[[Mapping[str, Any], Path, str], None], Mapping[str, Any], str]] = []
    if resplits:
        block = resplit_logits(z, y, resplits, alpha=alpha, delta=delta, seed=seed)
        out["resplits"] = {**without_runs(block), "figure": RESPLITS_PNG}
        figures.append((plot_resplits, block, RESPLITS_PNG))
    if power:
        out["power"] = {**power_logits(z, y, alpha=alpha, delta=delta, reps=power_reps, seed=seed), "figure": POWER_PNG}
        figures.append((plot_power, out["power"], POWER_PNG))
    if site_orders:
        block = site_simulation(z, y, site_orders, alpha=alpha, delta=delta, seed=seed)
        out["site_simulation"] = {**block, "figure": SITE_SIMULATION_PNG}
        figures.append((plot_site_simulation, block, SITE_SIMULATION_PNG))
    if out_dir is not None and figures:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for plot, data, name in figures:
            plot(data, Path(out_dir) / name, title)
    return out


def format_robustness(result: Mapping[str, Any]) -> list[str]:
    """The stdout lines of whichever analyses ``result`` holds."""
    lines: list[str] = []
    if "resplits" in result:
        lines += [format_resplit_line(name, s) for name, s in result["resplits"]["scores"].items()]
    if "power" in result:
        lines += format_power(result["power"])
    if "site_simulation" in result:
        lines += format_site_simulation(result["site_simulation"])
    return lines
