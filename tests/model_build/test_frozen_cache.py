"""The cached-frozen-features path: the same network, the same logits, the same training loop."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from model_build.config import TrainConfig
from model_build.curriculum import CurriculumSampler
from model_build.demo import small_dataset, tiny_config
from model_build.frozen_cache import FrozenCache, FrozenPart, FrozenRunner, TailModel, run_frozen
from model_build.models import create_backbone
from model_build.run import train_run
from model_build.train_basic import freeze_early_layers
from model_build.training_views import TrainViews


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_dataset(tmp_path_factory.mktemp("frozen") / "data", n_per_class=4, seed=5, size=(192, 256))


def test_tail_on_frozen_maps_gives_the_full_models_logits() -> None:
    torch.manual_seed(0)
    model = create_backbone(0.3, arch="efficientnet_lite0").eval()
    x = torch.randn(4, 3, 224, 224)
    with torch.inference_mode():
        full = model(x)
        maps = run_frozen(FrozenPart(model, 4), x)  # stored in float16
        tail = TailModel(model, 4).eval()(maps)
        exact = TailModel(model, 4).eval()(FrozenPart(model, 4)(x))
    assert maps.dtype == torch.float16 and tuple(maps.shape[1:]) == (80, 14, 14)
    torch.testing.assert_close(exact, full, atol=1e-5, rtol=1e-5)  # the same network
    torch.testing.assert_close(tail, full, atol=2e-2, rtol=2e-2)  # float16 storage of the maps only


def test_the_cache_covers_the_drawable_items_with_map_augmentation(data: Path) -> None:
    from model_build.dataset import load_dataset

    ds = load_dataset(data)
    paths, labels = [s.path for s in ds.samples[:4]], [s.label for s in ds.samples[:4]]
    views = TrainViews(paths, labels, seed=1)
    model = create_backbone(0.3, arch="efficientnet_lite0")
    freeze_early_layers(model, 3)
    runner = FrozenRunner(FrozenPart(model, 3), 224, threads=2)
    cache = FrozenCache.build(views, runner, {"E_grid", "A_whole"}, variants=2, seed=1)
    x = torch.randn(3, 3, 224, 224)
    torch.testing.assert_close(runner(x).float(), run_frozen(FrozenPart(model, 3), x).float(), atol=2e-3, rtol=2e-3)
    drawable = [i for i, it in enumerate(views.items) if it.stage in ("E_grid", "A_whole")]
    assert cache.maps.shape[:2] == (len(drawable), 2) and cache.maps.dtype == torch.float16
    assert (cache.slot[drawable] >= 0).all() and (np.delete(cache.slot, drawable) == -1).all()
    assert not torch.equal(cache.maps[:, 0], cache.maps[:, 1])  # the second variant is colour-jittered
    m0, label, _ = cache[drawable[0]]
    cache.set_epoch(1)
    m1, _, _ = cache[drawable[0]]
    assert label == labels[views.items[drawable[0]].image] and m0.shape == m1.shape
    sampler = CurriculumSampler(views.items, {"E_grid": 2, "A_whole": 1}, seed=1)
    assert all(cache.slot[i] >= 0 for i in sampler)  # every item the curriculum draws is cached
    with pytest.raises(IndexError):
        cache[int(np.flatnonzero(cache.slot == -1)[0])]


def test_a_run_trains_on_the_cache_and_exports_the_full_backbone(data: Path, tmp_path: Path) -> None:
    cfg: TrainConfig = dataclasses.replace(
        tiny_config(0), backbone="efficientnet_lite0", freeze_blocks=3, cache_frozen=True, cache_variants=1
    )
    summary = train_run(data, tmp_path / "run", cfg, log=lambda _: None)
    assert 0.0 <= summary["macro_f1"] <= 1.0
    state = torch.load(tmp_path / "run" / "backbone.pt", weights_only=True)
    assert any(k.startswith("blocks.3.") for k in state) and not any(k.startswith("model_head.") for k in state)
