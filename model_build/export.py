"""``export``: a training run directory -> a verified model bundle directory.

The backbone and aggregator are exported with ``torch.onnx.export`` (the dynamo exporter, weights
inlined in one file), then ONNX Runtime (configured as the daemon configures it) is checked against
torch on the 13 views of a fixed field: logits must agree within 1e-4. The bundle is written to a
temporary sibling directory, verified by loading it with the daemon's ``Engine`` (hashes, CAM
self-check) and by re-predicting a few test images against the run's own test probabilities, and only
then moved into place.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cds_daemon.analysis.engine import Engine, open_session, synthetic_field
from cds_daemon.analysis.tiles import GRID, INPUT_SIZE, make_views
from cds_daemon.common.manifest import MANIFEST_NAME
from model_build.bundle import FILES, build_manifest, write_manifest
from model_build.config import TrainConfig
from model_build.dataset import read_rgb
from model_build.models import FEATURE_DIM, BackboneOutputs, PremiumAggregator, create_backbone
from model_build.onnx_graphs import OPSET, export_graphs
from model_build.run import load_calibration

PARITY_TOLERANCE = 1e-4
PROBS_TOLERANCE = 5e-4


class ExportError(RuntimeError):
    """The exported graphs do not reproduce the torch model."""


def load_models(run_dir: Path) -> tuple[BackboneOutputs, PremiumAggregator]:
    cfg = TrainConfig.from_json(json.loads((run_dir / "config.json").read_text(encoding="utf-8")))
    backbone = create_backbone(cfg.dropout, arch=cfg.backbone)
    backbone.load_state_dict(torch.load(run_dir / "backbone.pt", map_location="cpu", weights_only=True))
    saved = torch.load(run_dir / "aggregator.pt", map_location="cpu", weights_only=True)
    aggregator = PremiumAggregator(**saved["config"])
    aggregator.load_state_dict(saved["state_dict"])
    return BackboneOutputs(backbone).eval(), aggregator.eval()


@torch.inference_mode()
def parity(backbone: BackboneOutputs, aggregator: PremiumAggregator, out_dir: Path) -> dict[str, float]:
    """Max |ORT - torch| per output on the 13 views of the fixed self-check field.

    Raises when a logit differs by 1e-4 or more, scaled by the largest |logit| when that exceeds 1:
    float32 rounding is relative, and an overconfident model can have logits in the hundreds on this
    unnatural field, where 1e-4 absolute is below float32 resolution.
    """
    views = make_views(synthetic_field())
    sess = open_session(out_dir / FILES["backbone"], threads=torch.get_num_threads())
    o_logits, o_pooled, o_fmap = sess.run(["logits", "pooled", "feature_map"], {"images": views})
    t_logits, t_pooled, t_fmap = (t.numpy() for t in backbone(torch.from_numpy(views)))
    agg = open_session(out_dir / FILES["aggregator"], threads=torch.get_num_threads())
    (o_agg,) = agg.run(["logits"], {"tokens": o_pooled[None]})
    t_agg = aggregator(torch.from_numpy(o_pooled[None])).numpy()
    diffs = {
        "backbone_logits": float(np.abs(o_logits - t_logits).max()),
        "pooled": float(np.abs(o_pooled - t_pooled).max()),
        "feature_map": float(np.abs(o_fmap - t_fmap).max()),
        "aggregator_logits": float(np.abs(o_agg - t_agg).max()),
    }
    scale = max(1.0, float(np.abs(t_logits).max()), float(np.abs(t_agg).max()))
    bad = {k: v for k, v in diffs.items() if k.endswith("logits") and not v < PARITY_TOLERANCE * scale}
    if bad:
        raise ExportError(f"ONNX Runtime differs from torch beyond {PARITY_TOLERANCE} x {scale:.3g}: {bad}")
    return {**diffs, "logit_scale": scale}


def _check_against_run(engine: Engine, run_dir: Path, n: int = 3) -> int:
    """Engine probabilities of the first test images equal the run's; returns how many were compared."""
    path = run_dir / "test_predictions.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if Path(r["path"]).is_file()][:n]
    for r in rows:
        pred = engine.predict(read_rgb(Path(r["path"])))
        want = np.array([float(r[f"p_{c}"]) for c in engine.classes])
        got = np.array([pred.probs[c] for c in engine.classes])
        if not np.abs(want - got).max() < PROBS_TOLERANCE:
            raise ExportError(f"bundle predicts {got.round(5)} for {r['path']}, the run computed {want.round(5)}")
    return len(rows)


def export_bundle(
    run_dir: Path,
    out_dir: Path,
    *,
    name: str = "thyroideffi",
    version: str | None = None,
    threads: int = 2,
    log: Callable[[str], None] = tqdm.write,
) -> Path:
    """Write and verify the bundle for ``run_dir`` at ``out_dir`` (replacing an earlier bundle there)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
        raise FileExistsError(f"{out_dir} exists and is not a model bundle; refusing to overwrite it")
    torch.set_num_threads(threads)
    backbone, aggregator = load_models(run_dir)
    cal = load_calibration(run_dir)
    run_info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    result = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    dataset = json.loads((run_dir / "dataset.json").read_text(encoding="utf-8"))
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    history = json.loads((run_dir / "history.json").read_text(encoding="utf-8"))
    created = datetime.now(UTC)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it 0700; the daemon runs as another user and must read it
    try:
        export_graphs(backbone, aggregator, staging)
        diffs = parity(backbone, aggregator, staging)
        log("ONNX parity (max |ORT - torch|): " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
        classifier = backbone.model.get_classifier()
        np.savez(
            staging / FILES["cam_weights"],
            W=classifier.weight.detach().numpy().astype(np.float32),
            b=classifier.bias.detach().numpy().astype(np.float32),
        )
        shutil.copyfile(run_dir / "ood_stats.npz", staging / FILES["ood_stats"])
        fmap = INPUT_SIZE // 32
        manifest = build_manifest(
            name=name,
            version=version or f"1.0.0+{created:%Y%m%d%H%M%S}",
            created=created,
            calibration=cal,
            metrics=result["summary"],
            reference=result.get("reference"),
            training={
                "config": config,
                "basic_epochs": len(history["basic"]),
                "premium_epochs": len(history["premium"]),
                "stage_seconds": run_info.get("stage_seconds"),
            },
            dataset={k: v for k, v in dataset.items() if k != "files"},
            git_commit=run_info.get("git_commit"),
            training_time_s=run_info["training_time_s"],
            export={
                "exporter": "torch.onnx.export(dynamo=True)",
                "opset": OPSET,
                "torch": torch.__version__,
                "parity_max_abs_diff": diffs,
                "grid": list(GRID),
            },
            feature_dim=FEATURE_DIM,
            feature_map=(fmap, fmap),
        )
        write_manifest(staging, manifest)
        engine = Engine(staging, threads=threads)
        compared = _check_against_run(engine, run_dir)
        log(f"bundle verified: hashes, CAM self-check, {compared} test image(s) re-predicted identically")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
