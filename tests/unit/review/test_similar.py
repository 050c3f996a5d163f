"""Similar-case retrieval: centred cosine, leave-one-out precision@k against chance."""

from __future__ import annotations

import numpy as np

from cds_daemon.review.similar import precision_at_k, similarities


def test_centred_cosine_separates_what_a_shared_offset_hides() -> None:
    rng = np.random.default_rng(0)
    offset = np.full(64, 50.0, dtype=np.float32)  # what post-activation features share
    a, b = rng.normal(size=64).astype(np.float32), rng.normal(size=64).astype(np.float32)
    rows = np.stack([offset + a, offset + b, offset - a])
    scores = similarities(rows, offset + a + 0.01)
    assert int(np.argmax(scores)) == 0 and scores[2] < 0  # raw cosine would score all three near 1


def test_precision_at_k_on_separable_and_on_random_features() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 20)
    centres = rng.normal(size=(3, 32)) * 10
    separable = centres[labels] + rng.normal(size=(60, 32))
    precision, chance = precision_at_k(separable, labels, k=5)
    assert precision == 1.0 and abs(chance - 19 / 59) < 1e-9
    noise = rng.normal(size=(60, 32))
    precision, chance = precision_at_k(noise, labels, k=5)
    assert abs(precision - chance) < 0.15  # no signal: about what random retrieval gets
