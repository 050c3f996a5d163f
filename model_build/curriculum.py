"""Epoch order for the training views: the paper's curriculum (E -> D -> C -> B -> A) or a plain shuffle.

The order is produced by a torch ``Sampler`` handed to a DataLoader with ``shuffle=False``, so the
optimiser sees batches in exactly this sequence. Each epoch draws ``per_stage[stage]`` regions per image
(without replacement; all of them when the number is at least the stage's region count) and shuffles
within a stage; with ``curriculum=False`` the same draw is shuffled as a whole (the ablation).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
from torch.utils.data import Sampler

from model_build.stages import STAGES
from model_build.training_views import TrainItem


def epoch_order(
    items: list[TrainItem],
    per_stage: Mapping[str, int],
    *,
    epoch: int,
    seed: int,
    curriculum: bool = True,
) -> list[int]:
    """Indices into ``items`` for one epoch."""
    rng = np.random.default_rng([seed, epoch, 0xC0FFEE])
    by_key: dict[tuple[int, str], list[int]] = {}
    for idx, it in enumerate(items):
        by_key.setdefault((it.image, it.stage), []).append(idx)
    stages: dict[str, list[int]] = {s: [] for s in STAGES}
    for (_, stage), idxs in sorted(by_key.items()):
        n = min(per_stage.get(stage, 0), len(idxs))
        if n > 0:
            stages[stage].extend(int(i) for i in rng.choice(idxs, size=n, replace=False))
    if not curriculum:
        flat = [i for s in STAGES for i in stages[s]]
        return [flat[j] for j in rng.permutation(len(flat))]
    order: list[int] = []
    for stage in STAGES:
        chunk = stages[stage]
        order.extend(chunk[j] for j in rng.permutation(len(chunk)))
    return order


class CurriculumSampler(Sampler[int]):
    """Yields one epoch's order; call ``set_epoch`` before each epoch for a fresh draw.

    ``request_finish()`` (e.g. when a time budget runs out mid-epoch) makes the running iteration skip
    ahead: with the curriculum it still yields the remaining whole-field (last-stage) items, so training
    always ends on whole fields; without it the iteration simply stops.
    """

    def __init__(
        self, items: list[TrainItem], per_stage: Mapping[str, int], *, seed: int = 0, curriculum: bool = True
    ) -> None:
        self.items, self.per_stage, self.seed, self.curriculum = items, dict(per_stage), seed, curriculum
        self.epoch = 0
        self._order = self._draw()
        self._finishing = False

    def _draw(self) -> list[int]:
        return epoch_order(self.items, self.per_stage, epoch=self.epoch, seed=self.seed, curriculum=self.curriculum)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._order = self._draw()
        self._finishing = False

    def request_finish(self) -> None:
        self._finishing = True

    def __iter__(self) -> Iterator[int]:
        last = STAGES[-1]
        for i in self._order:
            if self._finishing and (not self.curriculum or self.items[i].stage != last):
                continue
            yield i

    def __len__(self) -> int:
        return len(self._order)
