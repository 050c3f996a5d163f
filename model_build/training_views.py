"""The paper's augmented training views (sets A-E) as a torch Dataset, plus photometric augmentation.

Per training image: A = the whole field, B = the field with the detected cell clusters in focus (see
``clusters.focus_image``), C = 8 cluster crops, D = the 12 grid tiles of B, E = the 12 grid tiles of A:
34 views, each labelled with the field's class. Whole fields and tiles go through exactly the daemon's
``cds_daemon.analysis.tiles`` code (same boxes, same Pillow bilinear resize, same normalisation). Random flips,
90-degree rotations and colour jitter (brightness, contrast, saturation, per-channel stain gain) are
applied on top; the randomness is a function of (seed, epoch, item) so runs are reproducible.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset as TorchDataset

from cds_daemon.analysis.tiles import GRID, INPUT_SIZE, crop_resize, grid_boxes, normalize
from model_build.clusters import Cluster, detect_clusters, focus_image
from model_build.dataset import read_rgb
from model_build.stages import N_CLUSTERS, STAGES, regions_of


@dataclass(frozen=True)
class TrainItem:
    image: int  # index into the view set's images
    stage: str
    region: int  # tile or cluster index; 0 for whole-field stages


def jitter(view: np.ndarray, rng: np.random.Generator, strength: float = 0.1) -> np.ndarray:
    """Random flip / rot90 and colour jitter of one (S, S, 3) uint8 view."""
    if rng.random() < 0.5:
        view = view[:, ::-1]
    if rng.random() < 0.5:
        view = view[::-1]
    view = np.rot90(view, int(rng.integers(0, 4)))
    return colour_jitter(view, rng, strength)


def colour_jitter(view: np.ndarray, rng: np.random.Generator, strength: float = 0.1) -> np.ndarray:
    """Saturation, contrast, brightness and per-channel stain gain of one (S, S, 3) uint8 view."""
    x = view.astype(np.float32)
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * (1 + rng.uniform(-strength, strength))  # saturation
    mean = x.mean()
    x = mean + (x - mean) * (1 + rng.uniform(-strength, strength))  # contrast
    x = x * (1 + rng.uniform(-strength, strength))  # brightness
    x = x * (1 + rng.uniform(-strength / 2, strength / 2, size=3))  # stain / white balance
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


class TrainViews(TorchDataset):
    """Every (image, stage, region) item of the training images; returns (view, label, stage index).

    Decoded fields (about 3 MB each as Pillow images) are kept in an LRU cache of ``cache_images`` entries
    and cluster windows are found once per image, when a stage first needs them; the focused field (sets
    B, D) is rebuilt when needed rather than cached, which halves the memory for a few ms per use.
    ``augment=False`` gives the plain views (used by tests and for inspection).
    """

    def __init__(
        self,
        paths: list[Path],
        labels: list[int],
        *,
        input_size: int = INPUT_SIZE,
        seed: int = 0,
        augment: bool = True,
        cache_images: int = 512,
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError("paths and labels differ in length")
        self.paths, self.labels = list(paths), list(labels)
        self.input_size, self.seed, self.augment = input_size, seed, augment
        self.items = [
            TrainItem(i, stage, r) for i in range(len(paths)) for stage in STAGES for r in range(regions_of(stage))
        ]
        self.epoch = 0
        self._cache: OrderedDict[int, Image.Image] = OrderedDict()
        self._clusters: dict[int, list[Cluster]] = {}
        self._cache_size = max(1, cache_images)

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def field(self, image: int) -> Image.Image:
        """The decoded field of one image, cached."""
        if image in self._cache:
            self._cache.move_to_end(image)
            return self._cache[image]
        entry = Image.fromarray(read_rgb(self.paths[image]))
        self._cache[image] = entry
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return entry

    def clusters(self, image: int) -> list[Cluster]:
        """The cluster windows of one image, found once (only the stages B, C and D need them)."""
        if image not in self._clusters:
            rgb = np.asarray(self.field(image))
            self._clusters[image] = detect_clusters(rgb, N_CLUSTERS, seed=self.seed * 100003 + image)
        return self._clusters[image]

    def view_pixels(self, item: TrainItem) -> np.ndarray:
        """The (S, S, 3) uint8 view of an item, before augmentation."""
        field = self.field(item.image)
        if item.stage == "A_whole":
            return crop_resize(field, None, self.input_size)
        if item.stage == "E_grid":
            return crop_resize(field, grid_boxes(field.width, field.height, GRID)[item.region], self.input_size)
        clusters = self.clusters(item.image)
        if item.stage == "C_clusters":
            return crop_resize(field, clusters[item.region].box, self.input_size)
        source = Image.fromarray(focus_image(np.asarray(field), clusters))
        if item.stage == "B_focus":
            return crop_resize(source, None, self.input_size)
        return crop_resize(source, grid_boxes(source.width, source.height, GRID)[item.region], self.input_size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        item = self.items[index]
        view = self.view_pixels(item)
        if self.augment:
            view = jitter(view, np.random.default_rng([self.seed, self.epoch, index]))
        x = torch.from_numpy(normalize(view[None])[0])
        return x, self.labels[item.image], STAGES.index(item.stage)
