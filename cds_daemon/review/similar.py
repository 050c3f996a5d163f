"""Similar reviewer-confirmed cases (content-based retrieval) for the case view.

The query is an image's pooled backbone features (the whole-image view, what the engine computes anyway);
the candidates are the images a reviewer confirmed or corrected, with their reviewer's category. Cosine
similarity of the features centred on the candidates' mean (pooled activations share a large common
component that would make every pair look alike), exact: one matrix-vector product over all confirmed
images of the same model (features of another model are not comparable). At 1280 float32 features an
image takes 5 KiB, so 100,000 confirmed images are 488 MiB and a query 17 ms (measured, 2 cores): beyond that, an
approximate index (HNSW, e.g. hnswlib or pgvector on the PostgreSQL store) would replace the exact search.
The matrix is loaded once and reloaded when a decision has been recorded since (``confirmed_version``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from cds_daemon.store import Confirmed, Store


@dataclass(frozen=True)
class Neighbour:
    sop_instance_uid: str
    final_class: str
    reviewer: str
    decided_at: str
    similarity: float


@dataclass(frozen=True)
class _Loaded:
    """The confirmed images of one model as of decision ``version``, their features centred and unit-length
    once here rather than at every query."""

    version: int
    rows: list[Confirmed]
    by_uid: dict[str, Confirmed]
    centre: np.ndarray  # (D,)
    unit: np.ndarray  # (N, D)


class SimilarIndex:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._cache: dict[str, _Loaded] = {}  # model hash -> its confirmed images

    def _load(self, model_sha256: str) -> _Loaded:
        version = self.store.confirmed_version()
        with self._lock:
            cached = self._cache.get(model_sha256)
        if cached is not None and cached.version == version:
            return cached
        rows = self.store.confirmed(model_sha256)
        matrix = np.stack([np.frombuffer(r.vector, dtype=np.float32) for r in rows]) if rows else np.zeros((0, 1))
        centre = centre_of(matrix)
        loaded = _Loaded(version, rows, {r.sop_instance_uid: r for r in rows}, centre, _unit(matrix - centre))
        with self._lock:
            self._cache[model_sha256] = loaded
        return loaded

    def neighbours(self, sop_instance_uid: str, k: int = 5, *, exclude_case: str | None = None) -> list[Neighbour]:
        """The ``k`` confirmed images most similar to this one (itself and its own case left out)."""
        found = self.store.embedding(sop_instance_uid)
        if found is None:
            return []
        model, vector = found
        index = self._load(model)
        query = np.frombuffer(vector, dtype=np.float32)
        if not index.rows or index.unit.shape[1] != query.shape[0]:
            return []
        scores = index.unit @ _unit((query - index.centre)[None, :])[0]
        out: list[Neighbour] = []
        for i in np.argsort(-scores):
            row = index.rows[int(i)]
            if row.sop_instance_uid == sop_instance_uid or (exclude_case and row.case_key == exclude_case):
                continue
            out.append(Neighbour(row.sop_instance_uid, row.final_class, row.reviewer, row.decided_at, float(scores[i])))
            if len(out) == k:
                break
        return out

    def is_confirmed(self, sop_instance_uid: str) -> bool:
        """Whether an image is one the index may show (a reviewer's category, features on file)."""
        return self.confirmed_row(sop_instance_uid) is not None

    def confirmed_row(self, sop_instance_uid: str) -> Confirmed | None:
        """The image's confirmed row (its latest decision), if the index may show it."""
        found = self.store.embedding(sop_instance_uid)
        if found is None:
            return None
        return self._load(found[0]).by_uid.get(sop_instance_uid)


def centre_of(matrix: np.ndarray) -> np.ndarray:
    """The rows' mean, taken out before the cosine (with a single row there is no mean to take out)."""
    return matrix.mean(axis=0) if matrix.shape[0] > 1 else np.zeros(matrix.shape[1], dtype=np.float32)


def similarities(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine similarity of ``query`` (D,) to each row of ``matrix`` (N, D), both centred on the rows' mean."""
    centre = centre_of(matrix)
    return np.asarray(_unit(matrix - centre) @ _unit((query - centre)[None, :])[0])


def precision_at_k(features: np.ndarray, labels: np.ndarray, k: int = 5) -> tuple[float, float]:
    """Leave-one-out retrieval on a labelled set: the share of each image's ``k`` nearest others (as the case
    view ranks them) with its own label, and the same share for a random ranking (its expectation)."""
    n = features.shape[0]
    hits = []
    chance = []
    for i in range(n):
        others = np.delete(np.arange(n), i)
        scores = similarities(features[others], features[i])
        top = others[np.argsort(-scores)[:k]]
        hits.append(float(np.mean(labels[top] == labels[i])))
        chance.append(float(np.mean(labels[others] == labels[i])))
    return float(np.mean(hits)), float(np.mean(chance))


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.asarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)
