"""Preprocessing, splits, cluster detector, curriculum order, OOD statistics and decision rules."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cds_daemon.analysis.engine import stitch_tiles
from cds_daemon.analysis.numeric import (
    energy_score,
    ensemble_logits,
    mahalanobis_score,
    prediction_sets,
    softmax,
)
from cds_daemon.analysis.tiles import IMAGENET_MEAN, IMAGENET_STD, grid_boxes, make_view_pixels, make_views
from cds_daemon.analysis.triage import model_reasons, reason_codes
from model_build.clusters import detect_clusters, focus_image
from model_build.curriculum import CurriculumSampler, epoch_order
from model_build.dataset import load_dataset
from model_build.ood import fit_mahalanobis
from model_build.splits import SPLITS, split_groups
from model_build.stages import STAGES
from model_build.training_views import TrainViews

torch.set_num_threads(2)
CLASSES = ("benign", "indeterminate", "malignant")


def _field(seed: int, size: tuple[int, int] = (192, 256), blobs: int = 10) -> np.ndarray:
    """Pale background with dark purple blobs: enough structure for the detector and the views."""
    rng = np.random.default_rng(seed)
    img = np.full((*size, 3), 232, np.uint8)
    img = (img.astype(np.int16) + rng.integers(-8, 8, img.shape)).clip(0, 255).astype(np.uint8)
    for _ in range(blobs):
        y, x = rng.integers(0, size[0] - 12), rng.integers(0, size[1] - 12)
        img[y : y + 10, x : x + 10] = (80, 40, 130)
    return img


def _csv_dataset(root: Path, n_patients: int = 30, seed: int = 0) -> Path:
    """Patients with 1-2 cases each, cases with 1-3 images, every image of a patient sharing its label."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = CLASSES[p % 3]
        for c in range(int(rng.integers(1, 3))):
            for i in range(int(rng.integers(1, 4))):
                rel = f"img/p{p}_c{c}_{i}.png"
                rows.append((rel, label, f"case-{p}-{c}", f"patient-{p}"))
    (root / "img").mkdir(parents=True)
    for rel, *_ in rows:
        Image.fromarray(_field(len(rel), (32, 32), 1)).save(root / rel)
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "case_id", "patient_id"])
        w.writerows(rows)
    return root


# --- views -------------------------------------------------------------------------------------------


def test_views_are_whole_field_then_row_major_tiles() -> None:
    rgb = np.zeros((300, 400, 3), np.uint8)
    boxes = grid_boxes(400, 300)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        rgb[int(y0) : int(y1), int(x0) : int(x1)] = (i * 20, 255 - i * 20, 7)
    pix = make_view_pixels(rgb)
    assert pix.shape == (13, 224, 224, 3)
    assert boxes[1] == (100.0, 0.0, 200.0, 100.0) and boxes[4] == (0.0, 100.0, 100.0, 200.0)
    for i in range(12):  # each tile view is the flat colour of its own tile
        assert np.abs(pix[1 + i, 10:-10, 10:-10].astype(int) - (i * 20, 255 - i * 20, 7)).max() <= 1
    whole = np.asarray(Image.fromarray(rgb).resize((224, 224), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(pix[0], whole)


def test_views_normalise_with_imagenet_statistics() -> None:
    rgb = np.full((768, 1024, 3), 128, np.uint8)
    v = make_views(rgb)
    assert v.shape == (13, 3, 224, 224) and v.dtype == np.float32 and v.flags.c_contiguous
    want = (128 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(v[:, :, 5, 5], np.tile(want, (13, 1)), atol=1e-6)


def test_views_reject_non_rgb_input() -> None:
    with pytest.raises(ValueError, match="RGB"):
        make_views(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        make_views(np.zeros((64, 64, 3), np.float32))


def test_stitch_places_tiles_row_major() -> None:
    tiles = np.arange(12, dtype=float)[:, None, None] * np.ones((12, 7, 7))
    m = stitch_tiles(tiles, (3, 4))
    assert m.shape == (21, 28)
    assert m[0, 7] == 1 and m[7, 0] == 4 and m[20, 27] == 11


# --- dataset and splits ------------------------------------------------------------------------------


def test_split_keeps_each_patient_and_case_in_one_split(tmp_path: Path) -> None:
    ds = load_dataset(_csv_dataset(tmp_path))
    splits = split_groups(ds, seed=7)
    assert sorted(i for idx in splits.values() for i in idx) == list(range(len(ds.samples)))
    owner: dict[str, str] = {}
    for name, idx in splits.items():
        for i in idx:
            s = ds.samples[i]
            for key in (s.patient_id, s.case_id):
                assert owner.setdefault(f"{key}", name) == name, f"{key} in {owner[key]} and {name}"
    for name in SPLITS:  # stratified: every class in every split
        assert all(v > 0 for v in ds.counts(splits[name]).values()), name
    assert split_groups(ds, seed=7) == splits
    assert split_groups(ds, seed=8) != splits


def test_folder_dataset_and_labels_hash(tmp_path: Path) -> None:
    for k, name in enumerate(CLASSES):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(_field(k * 10 + i, (32, 32), 1)).save(tmp_path / name / f"{i}.png")
    ds = load_dataset(tmp_path)
    assert ds.counts() == {"benign": 2, "indeterminate": 2, "malignant": 2}
    assert len({s.case_id for s in ds.samples}) == 6 and len(ds.labels_sha256) == 64
    (tmp_path / "benign" / "2.png").write_bytes((tmp_path / "benign" / "0.png").read_bytes())
    assert load_dataset(tmp_path).labels_sha256 != ds.labels_sha256


def test_csv_dataset_rejects_unknown_label(tmp_path: Path) -> None:
    Image.fromarray(_field(0, (32, 32), 1)).save(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("path,label,case_id\na.png,bethesda-ii,c1\n")
    with pytest.raises(ValueError, match=r"labels\.csv:2: unknown label"):
        load_dataset(tmp_path)


# --- cluster detector ---------------------------------------------------------------------------------


def test_detector_finds_the_dense_cluster_and_fills_up_to_k() -> None:
    rng = np.random.default_rng(1)
    rgb = np.full((768, 1024, 3), 235, np.uint8)
    for _ in range(120):  # dense nuclei around (x=800, y=200)
        y, x = rng.integers(120, 280), rng.integers(720, 880)
        rgb[y : y + 8, x : x + 8] = (70, 30, 120)
    clusters = detect_clusters(rgb, 8)
    assert len(clusters) == 8
    x0, y0, x1, y1 = clusters[0].box
    assert clusters[0].detected and x0 <= 800 <= x1 and y0 <= 200 <= y1
    blank = detect_clusters(np.full((768, 1024, 3), 235, np.uint8), 8)
    assert len(blank) == 8 and not any(c.detected for c in blank)
    sides = sorted(round(c.box[2] - c.box[0]) for c in blank)
    assert sides == [512] * 6 + [768] * 2  # the paper's predefined 512 and 768 px fill-ins
    focused = focus_image(rgb, clusters)
    assert (focused[200, 800] == rgb[200, 800]).all() and focused[700, 50].mean() >= rgb[700, 50].mean() - 3


# --- curriculum ---------------------------------------------------------------------------------------


def _stage_views(tmp_path: Path, n: int = 3) -> TrainViews:
    paths = []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        Image.fromarray(_field(i)).save(p)
        paths.append(p)
    return TrainViews(paths, [i % 3 for i in range(n)], seed=0)


def test_epoch_order_is_local_to_global_and_respects_counts(tmp_path: Path) -> None:
    views = _stage_views(tmp_path)
    per_stage = {"E_grid": 3, "D_focus_grid": 2, "C_clusters": 2, "B_focus": 1, "A_whole": 1}
    order = epoch_order(views.items, per_stage, epoch=0, seed=0)
    stages = [STAGES.index(views.items[i].stage) for i in order]
    assert stages == sorted(stages) and len(order) == 3 * 9 and len(set(order)) == len(order)
    for stage, n in per_stage.items():
        for img in range(3):
            assert sum(views.items[i].stage == stage and views.items[i].image == img for i in order) == n
    shuffled = epoch_order(views.items, per_stage, epoch=0, seed=0, curriculum=False)
    ranks = [STAGES.index(views.items[i].stage) for i in shuffled]
    assert sorted(ranks) == sorted(stages) and ranks != sorted(ranks)
    assert epoch_order(views.items, per_stage, epoch=1, seed=0) != order


@pytest.mark.parametrize("curriculum", [True, False])
def test_curriculum_order_reaches_the_optimiser(tmp_path: Path, curriculum: bool) -> None:
    from model_build.config import TrainConfig
    from model_build.models import create_backbone
    from model_build.train_basic import train_backbone

    views = _stage_views(tmp_path, n=2)
    per_stage = {"E_grid": 2, "D_focus_grid": 1, "C_clusters": 1, "B_focus": 1, "A_whole": 1}
    sampler = CurriculumSampler(views.items, per_stage, seed=3, curriculum=curriculum)
    cfg = TrainConfig(epochs=1, batch_size=4, per_stage=per_stage, curriculum=curriculum)
    seen_stages: list[int] = []
    seen_labels: list[int] = []

    def on_step(labels: torch.Tensor, stages: torch.Tensor) -> None:
        seen_stages.extend(stages.tolist())
        seen_labels.extend(labels.tolist())

    torch.manual_seed(0)
    model = create_backbone()
    before = [p.detach().clone() for p in model.parameters()][-1]
    empty = torch.empty(0, 3, 224, 224)
    history = train_backbone(
        model, views, sampler, empty, torch.empty(0, dtype=torch.long), cfg, on_step=on_step, log=lambda _: None
    )
    planned = list(sampler)  # the epoch-0 order the sampler handed to the DataLoader
    assert seen_stages == [STAGES.index(views.items[i].stage) for i in planned]
    assert seen_labels == [views.labels[views.items[i].image] for i in planned]
    assert (seen_stages == sorted(seen_stages)) is curriculum
    assert history[0].steps == 3 and not torch.equal(before, list(model.parameters())[-1])


# --- OOD and decision rules ---------------------------------------------------------------------------


def test_mahalanobis_separates_shifted_features() -> None:
    rng = np.random.default_rng(0)
    d = 64
    labels = np.repeat(np.arange(3), 40)
    centres = rng.normal(0, 3, (3, d))
    x = centres[labels] + rng.normal(0, 1, (120, d))
    stats = fit_mahalanobis(x, labels, 3)
    assert 0 <= stats.shrinkage <= 1
    np.testing.assert_allclose(stats.precision, stats.precision.T)
    assert np.linalg.eigvalsh(stats.precision).min() > 0
    inside = mahalanobis_score(centres[labels[:30]] + rng.normal(0, 1, (30, d)), stats.class_means, stats.precision)
    outside = mahalanobis_score(rng.normal(0, 1, (30, d)) + 12, stats.class_means, stats.precision)
    assert inside.max() < outside.min()
    one = mahalanobis_score(x[0], stats.class_means, stats.precision)
    assert np.isclose(one, mahalanobis_score(x[:1], stats.class_means, stats.precision)[0])


def test_shared_rules() -> None:
    rng = np.random.default_rng(0)
    probs = softmax(rng.normal(0, 2, (200, 3)))
    q = np.array([0.3, 0.6, 0.45])
    np.testing.assert_array_equal(prediction_sets(probs[0], q), prediction_sets(probs, q)[0])  # any leading shape
    b, p = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    np.testing.assert_allclose(ensemble_logits(b, p, 2.0, 0.5), (b / 2 + p / 0.5) / 2)
    z = np.array([[1.0, 2.0, 3.0]])
    assert np.isclose(energy_score(z)[0], -np.log(np.exp(z).sum()))
    ok = reason_codes(
        model_reasons(
            predicted="benign",
            confidence=0.9,
            conformal_set=("benign",),
            basic_label="benign",
            premium_label="benign",
            mahalanobis_ood=False,
            energy_ood=False,
            confidence_threshold=0.6,
        )
    )
    assert ok == ()
    bad = reason_codes(
        model_reasons(
            predicted="indeterminate",
            confidence=0.5,
            conformal_set=(),
            basic_label="benign",
            premium_label="malignant",
            mahalanobis_ood=True,
            energy_ood=True,
            confidence_threshold=0.6,
        )
    )
    assert bad == (
        "conformal_set_not_singleton",
        "indeterminate_class",
        "low_confidence",
        "basic_premium_disagree",
        "ood_mahalanobis",
        "ood_energy",
    )


def test_cli_registers_build_commands() -> None:
    from model_build.__main__ import build_parser

    args = build_parser().parse_args(["train", "data", "--out", "run", "--no-curriculum", "--per-stage", "2,1,2,1,1"])
    assert args.command == "train" and args.out == Path("run") and args.no_curriculum
    assert args.per_stage == {"E_grid": 2, "D_focus_grid": 1, "C_clusters": 2, "B_focus": 1, "A_whole": 1}
    assert build_parser().parse_args(["export", "run", "--out", "b"]).run_dir == Path("run")
    assert build_parser().parse_args(["demo-bundle", "o", "--seed", "3"]).seed == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "data", "--out", "run", "--per-stage", "1,2"])


def test_finish_request_skips_to_whole_fields(tmp_path: Path) -> None:
    views = _stage_views(tmp_path)
    per_stage = {"E_grid": 4, "D_focus_grid": 2, "C_clusters": 2, "B_focus": 1, "A_whole": 1}
    sampler = CurriculumSampler(views.items, per_stage, seed=1)
    full = list(sampler)
    it = iter(sampler)
    head = [next(it) for _ in range(5)]
    sampler.request_finish()  # e.g. the time budget ran out after 5 items
    rest = list(it)
    assert head == full[:5] and rest == [i for i in full[5:] if views.items[i].stage == "A_whole"] and len(rest) == 3
    sampler.set_epoch(1)
    assert len(list(sampler)) == len(full)
    plain = CurriculumSampler(views.items, per_stage, seed=1, curriculum=False)
    it = iter(plain)
    next(it)
    plain.request_finish()
    assert list(it) == []
