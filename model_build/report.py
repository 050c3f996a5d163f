"""Evaluation report: report.json, report.md and PNG figures.

``result`` is either one ``metrics.evaluate()`` dict or a dict with a ``"models"`` mapping of names to
such dicts plus any run-level entries (temperature, alpha, ...). The figures are drawn from ``probs`` /
``labels`` (the primary model); ``probs_before`` adds the uncalibrated curves to the reliability and
risk-coverage plots. matplotlib is imported lazily and only through its Agg canvas (no pyplot global
state), so this module is safe to import in headless processes and threads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model_build import metrics

FIGURES = {
    "confusion_matrix": "confusion_matrix.png",
    "roc": "roc.png",
    "reliability": "reliability.png",
    "risk_coverage": "risk_coverage.png",
}


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, float) for x in v):
        return f"[{v[0]:.4f}, {v[1]:.4f}]"
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _models(result: Mapping[str, Any], title: str) -> dict[str, Mapping[str, Any]]:
    if "models" in result:
        return dict(result["models"])
    return {title: result}


def _summary_rows(models: Mapping[str, Mapping[str, Any]]) -> list[list[Any]]:
    first = next(iter(models.values()))
    names = first["class_names"]

    def get(m: Mapping[str, Any], *path: str) -> Any:
        for p in path:
            if not isinstance(m, Mapping) or p not in m:
                return None
            m = m[p]
        return m

    spec: list[tuple[str, tuple[str, ...]]] = [
        ("images", ("n",)),
        ("accuracy", ("accuracy",)),
        ("macro-F1", ("macro_f1",)),
        ("macro-F1 95% CI", ("bootstrap", "macro_f1_ci")),
        ("weighted-F1", ("weighted_f1",)),
        (f"recall {names[metrics.INDETERMINATE_INDEX]}", ("indeterminate_recall",)),
        *[(f"AUC {c}", ("per_class", c, "auc")) for c in names],
        ("macro AUC", ("macro_auc",)),
        (f"ECE ({first.get('ece_n_bins', metrics.N_BINS)} bins)", ("ece",)),
        ("ECE 95% CI", ("bootstrap", "ece_ci")),
        ("NLL", ("nll",)),
        ("Brier", ("brier",)),
        ("AURC", ("aurc",)),
        ("AURC (oracle)", ("aurc_optimal",)),
    ]
    return [[label, *(get(m, *path) for m in models.values())] for label, path in spec]


def _model_section(name: str, m: Mapping[str, Any]) -> list[str]:
    names = m["class_names"]
    lines = [f"## {name}", ""]
    lines += _table(
        ["class", "precision", "recall", "F1", "AUC", "support"],
        [[c, *(m["per_class"][c][k] for k in ("precision", "recall", "f1", "auc", "support"))] for c in names],
    )
    lines += ["Confusion matrix (rows = true, columns = predicted):", ""]
    lines += _table(["true \\ pred", *names], [[c, *row] for c, row in zip(names, m["confusion_matrix"], strict=True)])
    if "conformal" in m:
        conf = m["conformal"]
        lines += ["Conformal prediction sets:", ""]
        rows = [["coverage (all)", conf["coverage"]]]
        rows += [[f"coverage {c}", v] for c, v in conf["coverage_by_class"].items()]
        rows += [[f"sets of size {s}", v] for s, v in conf["set_size_histogram"].items()]
        rows += [["mean set size", conf["mean_set_size"]], ["singleton accuracy", conf["singleton_accuracy"]]]
        lines += _table(["", "value"], rows)
    if "referral" in m:
        lines += ["Referral:", ""]
        lines += _table(["", "value"], [[k.replace("_", " "), v] for k, v in m["referral"].items()])
    if "mcnemar" in m:
        lines += ["McNemar (A = this model, B = comparator; b = only A right, c = only B right):", ""]
        lines += _table(["", "value"], [[k, v] for k, v in m["mcnemar"].items()])
    return lines


def render_markdown(result: Mapping[str, Any], title: str, figures: Sequence[str] = ()) -> str:
    """The human-readable report: run settings, a model-by-metric table, then per-model detail."""
    models = _models(result, title)
    # Run-level entries exist only in the {"models": ...} form; a bare evaluate() dict is all model.
    run_level = {k: v for k, v in result.items() if k != "models"} if "models" in result else {}
    lines = [f"# {title}", ""]
    scalars = [[k, v] for k, v in run_level.items() if not isinstance(v, Mapping | list)]
    if scalars:
        lines += _table(["setting", "value"], scalars)
    lines += _table(["metric", *models], _summary_rows(models))
    for name, m in models.items():
        lines += _model_section(name, m)
    for k, v in run_level.items():
        if isinstance(v, Mapping | list):
            lines += [f"## {k}", "", "```json", json.dumps(v, indent=2), "```", ""]
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    return "\n".join(lines)


def _new_figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: Path, title: str) -> None:
    cm = np.asarray(cm)
    fig, (ax,) = _new_figure(6.4, 5.0)
    row_frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(row_frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, label="fraction of true class")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            color = "white" if row_frac[i, j] > 0.5 else "black"
            ax.text(j, i, f"{cm[i, j]}\n{row_frac[i, j]:.0%}", ha="center", va="center", color=color)
    ticks = np.arange(len(class_names))
    wrapped = [c.replace("/", "/\n") for c in class_names]
    ax.set_xticks(ticks, wrapped)
    ax.set_yticks(ticks, wrapped)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.suptitle(f"{title}\nconfusion matrix", fontsize="medium")
    fig.savefig(path, dpi=110)


def plot_roc(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: Path, title: str) -> None:
    fig, (ax,) = _new_figure(5.0, 4.8)
    auc = metrics.roc_auc_ovr(probs, labels)
    for k, name in enumerate(class_names):
        fpr, tpr = metrics.roc_curve(probs[:, k], labels == k)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc[k]:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize="small")
    fig.suptitle(f"{title}\none-vs-rest ROC", fontsize="medium")
    fig.savefig(path, dpi=110)


def plot_reliability(panels: Sequence[tuple[str, np.ndarray]], labels: np.ndarray, path: Path, title: str) -> None:
    fig, axes = _new_figure(4.6 * len(panels), 4.6, ncols=len(panels))
    for ax, (name, probs) in zip(axes, panels, strict=True):
        rb = metrics.reliability_bins(probs, labels)
        edges = rb["edges"]
        width = np.diff(edges)
        filled = rb["count"] > 0
        centers = (edges[:-1] + edges[1:])[filled] / 2.0
        acc, conf, count = rb["accuracy"][filled], rb["confidence"][filled], rb["count"][filled]
        ax.bar(
            centers,
            acc,
            width=width[filled],
            edgecolor="black",
            color="tab:blue",
            alpha=0.7,
            label="accuracy",
        )
        # Gap = the vertical segment from a bin's accuracy to its mean confidence.
        ax.vlines(centers, acc, conf, color="tab:red", linewidth=2)
        ax.plot(centers, conf, "o", color="tab:red", markersize=4, label="mean confidence")
        for x, n in zip(centers, count, strict=True):
            ax.text(x, 0.02, f"n={n}", ha="center", va="bottom", rotation=90, fontsize="x-small")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("top-label confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}: ECE {metrics.ece(probs, labels):.3f}")
        ax.legend(loc="upper left", fontsize="small")
    fig.suptitle(f"{title}\nreliability ({metrics.N_BINS} equal-width bins)", fontsize="medium")
    fig.savefig(path, dpi=110)


def plot_risk_coverage(curves: Sequence[tuple[str, np.ndarray]], labels: np.ndarray, path: Path, title: str) -> None:
    fig, (ax,) = _new_figure(5.0, 4.2)
    for name, probs in curves:
        cov, risk = metrics.risk_coverage_curve(probs, labels)
        ax.plot(cov, risk, label=f"{name} (AURC {risk.mean():.4f})")
    ax.set_xlabel("coverage (fraction of images accepted)")
    ax.set_ylabel("selective risk (error rate among accepted)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize="small")
    fig.suptitle(f"{title}\nrisk-coverage", fontsize="medium")
    fig.savefig(path, dpi=110)


def finalisation_curve(
    confidence: np.ndarray, wrong: np.ndarray, candidate: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coverage over all images, error among finalised, threshold) as the threshold sweeps the candidates."""
    order = np.argsort(-confidence[candidate], kind="mergesort")
    conf, err = confidence[candidate][order], wrong[candidate][order].astype(np.float64)
    m = np.arange(1, conf.size + 1)
    return m / max(confidence.size, 1), np.cumsum(err) / m, conf


def finalisation_aurc(confidence: np.ndarray, wrong: np.ndarray, candidate: np.ndarray) -> float:
    """Area under the finalisation risk-coverage curve, over the coverage the candidates reach."""
    cov, risk, _ = finalisation_curve(confidence, wrong, candidate)
    return float(risk.mean() * cov[-1]) if cov.size else 0.0


def plot_finalisation(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, float | None]],
    alpha: float,
    path: Path,
    title: str,
) -> None:
    """Error among finalised against the share finalised, one curve per score; the fitted threshold marked."""
    fig, (ax,) = _new_figure(5.4, 4.2)
    for name, conf, wrong, cand, threshold in curves:
        cov, risk, thr = finalisation_curve(conf, wrong, cand)
        line = ax.plot(cov, risk, label=f"{name} (AURC {finalisation_aurc(conf, wrong, cand):.4f})")[0]
        if threshold is not None and (thr >= threshold).any():
            i = int(np.flatnonzero(thr >= threshold)[-1])
            ax.plot([cov[i]], [risk[i]], "o", color=line.get_color())
            ax.annotate(f"{cov[i]:.1%}, {risk[i]:.1%}", (cov[i], risk[i]), textcoords="offset points", xytext=(5, 6))
    ax.axhline(alpha, color="grey", linestyle="--", linewidth=1, label=f"alpha = {alpha}")
    ax.set_xlabel("share of images finalised without review")
    ax.set_ylabel("error rate among finalised")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(0.1, 3 * alpha))
    ax.legend(loc="upper left", fontsize="small")
    fig.suptitle(f"{title}\nfinalisation: risk-coverage (test split; dot = fitted threshold)", fontsize="medium")
    fig.savefig(path, dpi=110)


def write_report(
    result: dict,
    out_dir: Path,
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    title: str,
    *,
    probs_before: np.ndarray | None = None,
) -> None:
    """Write report.json, report.md and the PNGs in ``FIGURES`` into ``out_dir`` (created if needed).

    ``probs`` are the reported (calibrated) probabilities; ``probs_before`` the same model before
    calibration, drawn beside them in the reliability diagram and the risk-coverage plot.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    # allow_nan=False: a NaN here is a bug upstream (evaluate() already maps NaN to None).
    (out_dir / "report.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")

    cm = metrics.confusion_matrix(labels, probs.argmax(axis=1), probs.shape[1])
    plot_confusion_matrix(cm, class_names, out_dir / FIGURES["confusion_matrix"], title)
    plot_roc(probs, labels, class_names, out_dir / FIGURES["roc"], title)
    panels = [("after calibration", probs)] if probs_before is not None else [("model", probs)]
    if probs_before is not None:
        panels.insert(0, ("before calibration", np.asarray(probs_before, dtype=np.float64)))
    plot_reliability(panels, labels, out_dir / FIGURES["reliability"], title)
    plot_risk_coverage(panels, labels, out_dir / FIGURES["risk_coverage"], title)

    md = render_markdown(result, title, figures=list(FIGURES.values()))
    (out_dir / "report.md").write_text(md, encoding="utf-8")
