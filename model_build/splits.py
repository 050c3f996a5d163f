"""Case/patient-level stratified splits: train / model-selection / calibration / test.

Images of one group (patient if known, else case) always land in the same split, so no split sees an
image of a case another split holds. Groups are stratified by their (majority) label and assigned with
a fixed seed. The calibration split is used only for temperatures, conformal quantiles and OOD
thresholds; the selection split only for early stopping.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from model_build.dataset import Dataset

SPLITS = ("train", "selection", "calibration", "test")
DEFAULT_FRACTIONS = (0.6, 0.1, 0.15, 0.15)


def _allocate(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Split n items by fractions (largest remainder), giving every non-empty split one item when n allows."""
    positive = [1 if f > 0 else 0 for f in fractions]
    base = positive if n >= sum(positive) else [0] * len(fractions)
    rest = n - sum(base)
    exact = [f * rest for f in fractions]
    counts = [int(e) for e in exact]
    order = sorted(range(len(fractions)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in order[: rest - sum(counts)]:
        counts[i] += 1
    return [b + c for b, c in zip(base, counts, strict=True)]


def split_groups(
    dataset: Dataset, fractions: tuple[float, ...] = DEFAULT_FRACTIONS, seed: int = 42
) -> dict[str, list[int]]:
    """Sample indices per split name; stratified by class at the group level."""
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be {len(SPLITS)} non-negative numbers summing to 1, got {fractions}")
    members: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(dataset.samples):
        members[s.group].append(i)
    by_class: dict[int, list[str]] = defaultdict(list)
    for g, idx in sorted(members.items()):
        label = Counter(dataset.samples[i].label for i in idx).most_common(1)[0][0]
        by_class[label].append(g)
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {name: [] for name in SPLITS}
    for label in sorted(by_class):
        groups = by_class[label]
        order = rng.permutation(len(groups))
        start = 0
        for name, count in zip(SPLITS, _allocate(len(groups), fractions), strict=True):
            for j in order[start : start + count]:
                out[name].extend(members[groups[j]])
            start += count
    return {name: sorted(idx) for name, idx in out.items()}
