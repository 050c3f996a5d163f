"""Training the Basic backbone on cached frozen features: compute what is frozen once, spend the epochs on the
blocks that learn.

With ``freeze_blocks = n`` the stem and the first n stages keep their ImageNet weights (and batch-norm
statistics): their output for a given view never changes. ``FrozenCache`` runs them once over every training
view the curriculum can draw (the stages with a non-zero ``per_stage``) and keeps the maps in float16
(EfficientNet-Lite0 after 4 stages: 80 x 14 x 14 per 224-px view, 31 KB); ``TailModel`` is the rest of the
network, trained on those maps. Geometric augmentation (flips, 90-degree rotations) is applied to the cached
maps; colour jitter cannot be, so ``variants`` colour-jittered copies of each view are cached and one is
drawn per epoch. ``TailModel(model, n)(frozen(x)) == model(x)`` (tests/model_build/test_frozen_cache.py),
so the trained weights are the full backbone's, exported and run by the daemon as before.

Measured on 2 cores (AVX-512), EfficientNet-Lite0, batch 16 at 224 px, in one run: a full training step with
4 frozen stages 0.6 s in the plain path; on the cached maps 277 ms (channels-first) and 159 ms (channels-last);
the frozen part under ONNX Runtime 3.4 ms a view against about 13 ms in torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset as TorchDataset
from tqdm import tqdm

from cds_daemon.analysis.tiles import normalize
from model_build.training_views import TrainViews, colour_jitter


class FrozenPart(nn.Module):
    """The stem and the first ``n_blocks`` stages of a timm EfficientNet (shared modules): images -> maps."""

    def __init__(self, model: nn.Module, n_blocks: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(model.conv_stem, model.bn1, *list(model.blocks)[:n_blocks])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)  # type: ignore[no-any-return]


class TailModel(nn.Module):
    """The trainable rest of a timm EfficientNet: stages n.., head convolution, pooling and classifier."""

    def __init__(self, model: nn.Module, n_blocks: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*list(model.blocks)[n_blocks:])
        self.conv_head, self.bn2 = model.conv_head, model.bn2
        self.model_head = model  # forward_head: pooling, dropout, classifier (shared modules)
        self._classifier = model.get_classifier()
        # channels-last convolutions train 1.7x faster on a CPU here (bench in the docstring's numbers)
        self.to(memory_format=torch.channels_last)

    def get_classifier(self) -> nn.Module:
        return self._classifier

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.conv_head(self.blocks(maps.float().contiguous(memory_format=torch.channels_last))))
        return self.model_head.forward_head(x)  # type: ignore[operator]


@torch.inference_mode()
def run_frozen(frozen: nn.Module, views: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """(N, 3, S, S) normalised views -> (N, C, h, w) float16 maps, in torch (on the frozen part's device)."""
    frozen.eval()
    device = next(frozen.parameters()).device
    out = [
        frozen(views[i : i + batch_size].to(device)).to(torch.float16).cpu()
        for i in range(0, views.shape[0], batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0)


class FrozenRunner:
    """The frozen part as the CPU runs it fastest: exported once to ONNX and run by ONNX Runtime (about 3x
    torch's speed on 2 cores, see ``model_build.features``); on a GPU, torch on the GPU."""

    def __init__(self, frozen: nn.Module, input_size: int, threads: int) -> None:
        self.frozen = frozen.eval()
        self.device = next(frozen.parameters()).device
        self._session = None
        if self.device.type == "cpu":
            import tempfile

            from cds_daemon.analysis.engine import open_session
            from model_build.onnx_graphs import export_module

            with tempfile.TemporaryDirectory(prefix="frozen-") as tmp, torch.inference_mode():
                graph = Path(tmp) / "frozen.onnx"
                example = torch.randn(2, 3, input_size, input_size)
                export_module(self.frozen, example, graph, "images", ["maps"], dynamic_batch=True)
                self._session = open_session(graph, threads=threads)

    def __call__(self, views: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """(N, 3, S, S) normalised views -> (N, C, h, w) float16 maps."""
        if self._session is None:
            return run_frozen(self.frozen, views, batch_size)
        out = [
            torch.from_numpy(self._session.run(["maps"], {"images": views[i : i + batch_size].numpy()})[0]).half()
            for i in range(0, views.shape[0], batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0)


@dataclass
class FrozenCache(TorchDataset):
    """Cached maps of every drawable training item (indexed like ``TrainViews.items``); returns
    (map, label, stage index) with a per-epoch random flip / rotation, as ``TrainViews`` returns views."""

    maps: torch.Tensor  # (n_cached, variants, C, h, w) float16
    slot: np.ndarray  # item index -> row in maps (-1: not drawable, not cached)
    labels: list[int]  # per training image (class weights), as TrainViews.labels
    item_labels: list[int]
    stages: list[int]  # per item
    seed: int
    epoch: int = 0

    @classmethod
    def build(
        cls,
        views: TrainViews,
        frozen: FrozenRunner,
        stages: set[str],
        *,
        variants: int = 1,
        seed: int = 0,
        batch_size: int = 32,
    ) -> FrozenCache:
        """Run the frozen part over the drawable items, image by image (each field decoded once)."""
        from model_build.stages import STAGES

        wanted = [i for i, it in enumerate(views.items) if it.stage in stages]
        slot = np.full(len(views.items), -1, dtype=np.int64)
        slot[wanted] = np.arange(len(wanted))
        chunks: list[torch.Tensor] = []
        pending: list[np.ndarray] = []

        def flush() -> None:
            if pending:
                chunks.append(frozen(torch.from_numpy(normalize(np.stack(pending))), batch_size))
                pending.clear()

        for index in tqdm(wanted, desc="frozen features", leave=False, dynamic_ncols=True):
            view = views.view_pixels(views.items[index])
            for v in range(variants):
                rng = np.random.default_rng([seed, 0xFEED, index, v])
                # variant 0 is the plain view; the others are colour-jittered (geometry is done on the map)
                pending.append(view if v == 0 else colour_jitter(view, rng))
            if len(pending) >= batch_size:
                flush()
        flush()
        maps = torch.cat(chunks) if chunks else torch.zeros(0, 1, 1, 1, dtype=torch.float16)
        maps = maps.reshape(len(wanted), variants, *maps.shape[1:])
        return cls(
            maps=maps,
            slot=slot,
            labels=list(views.labels),
            item_labels=[views.labels[it.image] for it in views.items],
            stages=[STAGES.index(it.stage) for it in views.items],
            seed=seed,
        )

    def __len__(self) -> int:
        return len(self.slot)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def nbytes(self) -> int:
        return int(self.maps.numel() * self.maps.element_size())

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        row = int(self.slot[index])
        if row < 0:
            raise IndexError(f"training item {index} is of a stage that was not cached")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        m = self.maps[row, int(rng.integers(0, self.maps.shape[1]))]
        if rng.random() < 0.5:
            m = m.flip(-1)
        if rng.random() < 0.5:
            m = m.flip(-2)
        m = torch.rot90(m, int(rng.integers(0, 4)), dims=(-2, -1))
        return m, self.item_labels[index], self.stages[index]
