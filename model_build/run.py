"""``train``: dataset -> splits -> Basic -> frozen features -> Premium -> calibration -> test metrics.

Writes a run directory that ``export`` turns into a bundle:
  config.json, dataset.json (source, labels SHA-256, per-split counts and files), history.json,
  backbone.pt, aggregator.pt, calibration.json, ood_stats.npz, metrics.json, test_predictions.csv,
  run.json (timings, versions, git commit) and report/ (unless another report directory is given).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from tqdm import tqdm

from cds_daemon.common.binomial import binomial_upper_bound
from model_build import metrics
from model_build.ceiling import bayes_ceiling
from model_build.config import TrainConfig
from model_build.curriculum import CurriculumSampler
from model_build.dataset import Dataset, load_dataset
from model_build.decision import Batch, Calibration, OODStats, apply, fit_calibration, referrals
from model_build.device import resolve_device
from model_build.features import extract_all
from model_build.frozen_cache import FrozenCache, FrozenPart, FrozenRunner, TailModel
from model_build.models import BackboneOutputs, count_parameters, create_backbone
from model_build.ood import fit_gaussian, fit_mahalanobis
from model_build.report import write_report
from model_build.splits import SPLITS, split_groups
from model_build.train_basic import EpochLog, freeze_early_layers, history_json, train_backbone, whole_views
from model_build.train_premium import aggregator_logits, train_aggregator
from model_build.training_views import TrainViews

Log = Callable[[str], None]


def git_commit() -> str | None:
    """HEAD of the repository holding this package, or None (no git, no commit yet)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def dataset_summary(ds: Dataset, splits: dict[str, list[int]]) -> dict[str, Any]:
    return {
        "source": ds.source,
        "labels_sha256": ds.labels_sha256,
        "n_images": len(ds.samples),
        "n_groups": len({s.group for s in ds.samples}),
        "counts": {name: ds.counts(idx) for name, idx in splits.items()},
    }


def _finite(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf floats become None (e.g. selection scores when that split is empty)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(_finite(obj), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def summary_metrics(
    result: dict[str, Any], ece_before: float, ece_before_ci: tuple[float, float] | None = None
) -> dict[str, Any]:
    """The headline test-split numbers stored in the bundle manifest."""
    ens = result["models"]["ensemble"]
    scaling = result.get("calibration", {}).get("scaling", {})
    return {
        "split": "test",
        "n": ens["n"],
        "macro_f1": ens["macro_f1"],
        "accuracy": ens["accuracy"],
        "macro_auc": ens["macro_auc"],
        "ece_before": ece_before,
        "ece_before_ci": None if ece_before_ci is None else list(ece_before_ci),
        "ece_after": ens["ece"],
        "ece_after_ci": ens.get("bootstrap", {}).get("ece_ci"),
        "calibration_choice": scaling.get("chosen"),
        "indeterminate_recall": ens["indeterminate_recall"],
        "referral_rate": ens["referral"]["rate"],
        "conformal_coverage": ens["conformal"]["coverage"],
        "basic_macro_f1": result["models"]["basic"]["macro_f1"],
        "premium_macro_f1": result["models"]["premium"]["macro_f1"],
        "finalised_coverage": result["finalisation"]["coverage"],
        "finalised_error": result["finalisation"]["error"],
        "finalised_swaps": result["finalisation"]["swaps"],
        **(
            {}
            if result.get("bayes_optimal") is None
            else {
                "bayes_macro_f1": result["bayes_optimal"]["macro_f1"],
                "bayes_finalised_coverage": result["bayes_optimal"]["finalised_coverage"],
            }
        ),
    }


def reference_figures(
    out: Any, cal: Calibration, labels: np.ndarray, referred: np.ndarray, names: tuple[str, ...]
) -> dict[str, Any]:
    """What the daemon should see on images like the test split's: the baseline its drift checks compare with."""
    predicted = out.probs.argmax(axis=1)
    ood = (
        (out.mahalanobis > cal.mahalanobis_threshold)
        | (out.energy > cal.energy_threshold)
        | (out.stain > cal.stain_threshold)
    )
    n = max(int(labels.shape[0]), 1)
    return {
        "split": "test",
        "n": int(labels.shape[0]),
        "predicted_mix": {name: float(np.mean(predicted == k)) for k, name in enumerate(names)},
        "ood_rate": float(ood.sum() / n),
        "referral_rate": float(np.asarray(referred).sum() / n),
    }


def finalised_figures(
    probs: np.ndarray, labels: np.ndarray, referred: np.ndarray, rule: dict[str, Any]
) -> dict[str, Any]:
    """What the finalisation rule leaves without review on a labelled split: share, errors, swaps."""
    finalised = ~np.asarray(referred, dtype=bool)
    predicted = probs.argmax(axis=1)
    wrong = finalised & (predicted != labels)
    extremes = {0, metrics.MALIGNANT_INDEX}
    swaps = finalised & np.isin(predicted, list(extremes)) & np.isin(labels, list(extremes)) & (predicted != labels)
    n = int(finalised.sum())
    return {
        "n": int(labels.shape[0]),
        "finalised": n,
        "coverage": n / max(int(labels.shape[0]), 1),
        "errors": int(wrong.sum()),
        "error": float(wrong.sum() / n) if n else None,
        "upper_bound": binomial_upper_bound(int(wrong.sum()), n, rule["delta"]),
        "swaps": int(swaps.sum()),
        "alpha": rule["alpha"],
        "delta": rule["delta"],
        "threshold": rule["threshold"],
    }


def _train_on_frozen_cache(
    backbone: torch.nn.Module,
    views: TrainViews,
    sampler: CurriculumSampler,
    sel_x: torch.Tensor,
    sel_y: torch.Tensor,
    cfg: TrainConfig,
    log: Log,
) -> list[EpochLog]:
    """``train_backbone`` on the cached output of the frozen stages; the caching counts against the budget."""
    t0 = time.perf_counter()
    freeze_early_layers(backbone, cfg.freeze_blocks)
    backbone.to(cfg.device)
    frozen = FrozenRunner(FrozenPart(backbone, cfg.freeze_blocks), views.input_size, cfg.threads)
    stages = {stage for stage, n in cfg.per_stage.items() if n > 0}
    cache = FrozenCache.build(views, frozen, stages, variants=cfg.cache_variants, seed=cfg.seed)
    sel_maps = frozen(sel_x)
    spent = time.perf_counter() - t0
    log(
        f"basic: frozen stem + {cfg.freeze_blocks} stages run once over {cache.maps.shape[0]} training views x "
        f"{cfg.cache_variants} in {spent:.0f} s ({cache.nbytes / 2**20:.0f} MiB float16); training the rest"
    )
    budget = None if cfg.time_budget_s is None else max(1.0, cfg.time_budget_s - spent)
    tail_cfg = dataclasses.replace(cfg, freeze_blocks=0, time_budget_s=budget)
    return train_backbone(TailModel(backbone, cfg.freeze_blocks), cache, sampler, sel_maps, sel_y, tail_cfg, log=log)


def train_run(
    data: Path, run_dir: Path, cfg: TrainConfig, *, report_dir: Path | None = None, log: Log = tqdm.write
) -> dict[str, Any]:
    """Train, calibrate and evaluate; returns the summary metrics (also in metrics.json)."""
    t_start = time.perf_counter()
    cfg = dataclasses.replace(cfg, device=resolve_device(cfg.device))
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(Path(data))
    names = ds.class_names
    splits = split_groups(ds, cfg.split_fractions, cfg.seed)
    for name in ("train", "calibration", "test"):
        if not splits[name]:
            raise ValueError(f"split {name!r} is empty: {len(ds.samples)} images are too few")
    summary = dataset_summary(ds, splits)
    log(
        f"dataset {ds.source}: {summary['n_images']} images, {summary['n_groups']} cases; "
        + ", ".join(f"{k} {sum(v.values())}" for k, v in summary["counts"].items())
    )
    paths = {k: [ds.samples[i].path for i in idx] for k, idx in splits.items()}
    labels = {k: np.array([ds.samples[i].label for i in idx], dtype=np.int64) for k, idx in splits.items()}

    backbone = create_backbone(
        cfg.dropout, Path(cfg.init_checkpoint) if cfg.init_checkpoint else None, arch=cfg.backbone
    )
    views = TrainViews(paths["train"], labels["train"].tolist(), seed=cfg.seed, cache_images=cfg.cache_images)
    sampler = CurriculumSampler(views.items, cfg.per_stage, seed=cfg.seed, curriculum=cfg.curriculum)
    log(
        f"basic: {count_parameters(backbone) / 1e6:.2f} M parameters, {len(sampler)} training views/epoch "
        f"({'curriculum E->D->C->B->A' if cfg.curriculum else 'shuffled, no curriculum'})"
    )
    t0 = time.perf_counter()
    sel_x = whole_views(paths["selection"])
    sel_y = torch.from_numpy(labels["selection"])
    if cfg.cache_frozen and cfg.freeze_blocks > 0:
        basic_history = _train_on_frozen_cache(backbone, views, sampler, sel_x, sel_y, cfg, log)
    else:
        basic_history = train_backbone(backbone, views, sampler, sel_x, sel_y, cfg, log=log)
    t_basic = time.perf_counter() - t0
    # features, calibration and export run on the CPU, as the daemon does, from plain (channels-first) weights
    backbone.to("cpu").to(memory_format=torch.contiguous_format)

    t0 = time.perf_counter()
    outputs = BackboneOutputs(backbone).eval()
    feats = extract_all(outputs, {k: paths[k] for k in SPLITS}, threads=cfg.threads)
    t_features = time.perf_counter() - t0
    log(f"features: {sum(len(p) for p in paths.values())} images x 13 views in {t_features:.0f} s")

    t0 = time.perf_counter()
    aggregator, premium_history = train_aggregator(
        feats["train"].pooled, labels["train"], feats["selection"].pooled, labels["selection"], cfg, log=log
    )
    t_premium = time.perf_counter() - t0
    premium = {k: aggregator_logits(aggregator, feats[k].pooled) for k in SPLITS}
    batches = {k: Batch(feats[k].logits[:, 0], premium[k], feats[k].pooled[:, 0], feats[k].stain) for k in SPLITS}

    # Held-out in-distribution features: the backbone has memorised its training images, whose features sit
    # closer to the class means than any new field's would.
    ood_source = "selection" if len(labels["selection"]) >= 2 * len(names) else "train"
    ood = OODStats(
        fit_mahalanobis(batches[ood_source].pooled0, labels[ood_source], len(names)),
        fit_gaussian(batches[ood_source].stain),
    )
    cal = fit_calibration(
        batches["calibration"],
        labels["calibration"],
        ood,
        alpha=cfg.alpha,
        ood_percentile=cfg.ood_percentile,
        risk_alpha=cfg.risk_alpha,
        risk_delta=cfg.risk_delta,
        class_names=names,
    )
    rule = cal.finalisation
    log(
        f"finalisation: threshold {rule['threshold']}, {rule['n_finalised']} of {rule['n_calibration']} "
        f"calibration fields finalised with {rule['errors']} errors (bound {rule['upper_bound']:.4f} at "
        f"alpha {rule['alpha']}, delta {rule['delta']})"
    )
    log(
        f"calibration: {cal.scaling['chosen']} (cross-fitted ECE raw {cal.scaling['cv_ece_raw']:.4f}, scaled "
        f"{cal.scaling['cv_ece_scaled']:.4f}); T basic {cal.temperature_basic:.3f}, premium "
        f"{cal.temperature_premium:.3f}, ensemble {cal.temperature_ensemble:.3f}; conformal q "
        f"{np.round(cal.quantiles, 4).tolist()}"
    )

    test = apply(cal, batches["test"], ood)
    referred, reasons = referrals(test, cal, names)
    y = labels["test"]
    result = {
        "title": "ThyroidEffi test split",
        "models": {
            "ensemble": metrics.evaluate(
                test.probs,
                y,
                class_names=names,
                referral=referred,
                sets=test.sets,
                other_pred=test.basic_probs.argmax(1),
                n_boot=cfg.n_boot,
                seed=cfg.seed,
            ),
            "basic": metrics.evaluate(test.basic_probs, y, class_names=names, n_boot=0),
            "premium": metrics.evaluate(test.premium_probs, y, class_names=names, n_boot=0),
        },
        "calibration": cal.to_json(),
    }
    ece_before = metrics.ece(test.ensemble_raw_probs, y)
    ece_before_ci = (
        metrics.ece_ci(test.ensemble_raw_probs, y, n_boot=cfg.n_boot, seed=cfg.seed) if cfg.n_boot > 0 else None
    )
    result["finalisation"] = finalised_figures(test.probs, y, referred, cal.finalisation)
    result["reference"] = reference_figures(test, cal, y, referred, names)
    result["bayes_optimal"] = bayes_ceiling(
        Path(data), paths, labels, risk_alpha=cfg.risk_alpha, risk_delta=cfg.risk_delta
    )
    result["summary"] = summary_metrics(result, ece_before, ece_before_ci)
    report_dir = Path(report_dir) if report_dir is not None else run_dir / "report"
    write_report(
        result,
        report_dir,
        test.probs,
        y,
        list(names),
        "ThyroidEffi ensemble (test split)",
        probs_before=test.ensemble_raw_probs,
    )

    torch.save(backbone.state_dict(), run_dir / "backbone.pt")
    torch.save({"config": aggregator.config, "state_dict": aggregator.state_dict()}, run_dir / "aggregator.pt")
    np.savez(
        run_dir / "ood_stats.npz",
        class_means=ood.mahalanobis.class_means,
        precision=ood.mahalanobis.precision,
        stain_mean=ood.stain.mean,
        stain_precision=ood.stain.precision,
    )
    _write_json(run_dir / "config.json", cfg.to_json())
    _write_json(run_dir / "calibration.json", cal.to_json())
    _write_json(run_dir / "dataset.json", {**summary, "files": {k: [str(p) for p in v] for k, v in paths.items()}})
    _write_json(run_dir / "history.json", {"basic": history_json(basic_history), "premium": premium_history})
    _write_json(run_dir / "metrics.json", result)
    _write_predictions(run_dir / "test_predictions.csv", paths["test"], y, test, referred, reasons, names)
    elapsed = time.perf_counter() - t_start
    _write_json(
        run_dir / "run.json",
        {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "git_commit": git_commit(),
            "training_time_s": round(elapsed, 1),
            "stage_seconds": {
                "basic": round(t_basic, 1),
                "features": round(t_features, 1),
                "premium": round(t_premium, 1),
            },
            "torch": torch.__version__,
            "timm": timm.__version__,
        },
    )
    s = result["summary"]
    log(
        f"test: macro-F1 {s['macro_f1']:.4f}, ECE {s['ece_before']:.4f} -> {s['ece_after']:.4f}, "
        f"Indeterminate recall {s['indeterminate_recall']}, referral rate {s['referral_rate']:.3f} "
        f"(train run {elapsed:.0f} s)"
    )
    return s


def _write_predictions(
    path: Path,
    files: list[Path],
    labels: np.ndarray,
    out: Any,
    referred: np.ndarray,
    reasons: list[tuple[str, ...]],
    names: tuple[str, ...],
) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", *(f"p_{n}" for n in names), "conformal_set", "referred", "reasons"])
        for i, p in enumerate(files):
            row_set = "|".join(n for n, keep in zip(names, out.sets[i], strict=True) if keep)
            w.writerow(
                [
                    str(p),
                    names[labels[i]],
                    *(f"{v:.6f}" for v in out.probs[i]),
                    row_set,
                    int(referred[i]),
                    "|".join(reasons[i]),
                ]
            )


def load_calibration(run_dir: Path) -> Calibration:
    return Calibration(**json.loads((Path(run_dir) / "calibration.json").read_text(encoding="utf-8")))
