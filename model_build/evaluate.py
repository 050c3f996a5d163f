"""``evaluate``: a bundle, exactly as the daemon runs it, on a labelled folder of a site's own images.

Every image goes through the daemon's steps (input-quality gate, ONNX Runtime ensemble, stain and
feature OOD gates, the triage rule with the bundle's finalisation threshold), so the figures are the
ones the site will see: macro-F1, per-class recall, calibration (ECE with its bootstrap interval),
the share finalised without review with its error, its upper bound and Benign<->Malignant swaps, and
how often the reviewers would be called. This is how a site validates a bundle before use; the
figures in the README come from synthetic images and from the paper's logits only.

``resplits``: how much the bundle's own rule depended on its calibration split (the rule refitted on random
halves of the calibration data in the manifest, :func:`model_build.robustness.bundle_resplits`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cds_daemon.analysis.engine import Engine
from cds_daemon.analysis.policy import bundle_policy
from cds_daemon.analysis.quality import assess
from cds_daemon.analysis.triage import decide
from cds_daemon.common.binomial import binomial_upper_bound
from cds_daemon.common.config import QualitySettings, Settings, TriageSettings
from cds_daemon.common.vocabulary import TriageMode
from cds_daemon.review.similar import precision_at_k
from model_build import metrics
from model_build.dataset import load_dataset, read_rgb
from model_build.report import write_report
from model_build.robustness import bundle_resplits, format_resplit_line, read_finalisation_block, without_runs


def run_evaluate(
    bundle: Path,
    data: Path,
    out_dir: Path | None = None,
    *,
    threads: int = 2,
    n_boot: int = 1000,
    seed: int = 0,
    resplits: int = 0,
) -> dict[str, Any]:
    engine = Engine(bundle, threads=threads)
    ds = load_dataset(Path(data))
    names = list(engine.classes)
    policy = bundle_policy(Settings(triage=TriageSettings(mode=TriageMode.BUNDLE)), engine.rules)
    probs, labels, referred, reasons, features = [], [], [], [], []
    for sample in tqdm(ds.samples, desc="evaluate", leave=False, dynamic_ncols=True):
        rgb = read_rgb(sample.path)
        quality = assess(rgb, was_colour=True, settings=QualitySettings())
        pred = engine.predict(rgb)
        triage = decide(pred, quality, TriageSettings(), policy)
        probs.append([pred.probs[c] for c in names])
        if pred.embedding is not None:
            features.append(pred.embedding)
        labels.append(sample.label)
        referred.append(triage.referred)
        reasons.append(triage.reasons)
    p, y, r = np.asarray(probs), np.asarray(labels), np.asarray(referred, dtype=bool)
    result: dict[str, Any] = {
        "title": f"{engine.manifest.name} {engine.manifest.version} on {ds.source}",
        "bundle": str(bundle),
        "data": ds.source,
        "n": int(y.shape[0]),
        "models": {"ensemble": metrics.evaluate(p, y, class_names=names, referral=r, n_boot=n_boot, seed=seed)},
        "finalisation": finalised(p, y, r, engine),
        "referral_reasons": _count(reasons),
    }
    if len(features) == len(labels) and len(labels) > 5:
        precision, chance = precision_at_k(np.stack(features), np.asarray(labels), k=5)
        result["retrieval"] = {"k": 5, "precision": precision, "random": chance}
    if resplits:
        result["resplits"] = without_runs(bundle_resplits(read_finalisation_block(bundle), resplits, seed=seed))
    if out_dir is not None:
        write_report(result, Path(out_dir), p, y, names, result["title"])
    return result


def finalised(probs: np.ndarray, labels: np.ndarray, referred: np.ndarray, engine: Engine) -> dict[str, Any]:
    rule = engine.finalisation()
    delta = rule.delta if rule is not None else 0.1
    final = ~referred
    predicted = probs.argmax(axis=1)
    wrong = final & (predicted != labels)
    extremes = [0, metrics.MALIGNANT_INDEX]
    swaps = wrong & np.isin(predicted, extremes) & np.isin(labels, extremes)
    n, k = int(final.sum()), int(wrong.sum())
    return {
        "rule": None if rule is None else rule.to_json(),
        "finalised": n,
        "coverage": n / max(int(labels.shape[0]), 1),
        "errors": k,
        "error": k / n if n else None,
        "upper_bound": binomial_upper_bound(k, n, delta),
        "swaps": int(swaps.sum()),
    }


def _count(reasons: list[tuple[str, ...]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rs in reasons:
        for code in rs:
            counts[code] = counts.get(code, 0) + 1
    return dict(sorted(counts.items()))


def format_summary(result: dict[str, Any]) -> str:
    m, f = result["models"]["ensemble"], result["finalisation"]
    ci = m.get("bootstrap", {}).get("ece_ci")
    ece = f"{m['ece']:.4f}" + (f" [95% CI {ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
    error = "n/a" if f["error"] is None else f"{f['error']:.2%}"
    retrieval = result.get("retrieval")
    similar = (
        []
        if retrieval is None
        else [
            f"similar cases: precision@{retrieval['k']} of the category {retrieval['precision']:.3f} "
            f"(random retrieval {retrieval['random']:.3f}), leave-one-out over these images"
        ]
    )
    return "\n".join(
        [
            result["title"],
            f"images {result['n']}: macro-F1 {m['macro_f1']:.4f}, accuracy {m['accuracy']:.4f}, ECE {ece}",
            "per-class recall: " + ", ".join(f"{name} {v['recall']:.3f}" for name, v in m["per_class"].items()),
            f"finalised without review: {f['coverage']:.1%} ({f['finalised']}), {f['errors']} wrong = {error} "
            f"(upper bound {f['upper_bound']:.2%}), Benign<->Malignant swaps {f['swaps']}",
            f"referral reasons: {result['referral_reasons']}",
            *similar,
            *(format_resplit_line(name, s) for name, s in result.get("resplits", {}).get("scores", {}).items()),
        ]
    )
