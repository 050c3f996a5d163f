"""The one-batch baseline and the daemon's path, so that benches compare them in the same run.

- baseline: the backbone on all 13 views at once, Mahalanobis recomputed from the class means on every
  call, and numpy's BLAS pool as numpy starts it (one thread per core);
- daemon: the backbone in chunks of ``Settings.backbone_chunk`` views, precomputed Mahalanobis terms,
  one BLAS thread (what ``cds_daemon`` sets).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from cds_daemon.analysis.engine import BACKBONE_CHUNK, Engine
from cds_daemon.analysis.numeric import mahalanobis_score

VARIANTS = ("baseline", "daemon")


class _Textbook:
    """Mahalanobis as it was computed before: (x - mu_k)^T P (x - mu_k) for each class, per call."""

    def __init__(self, engine: Engine) -> None:
        self.means, self.precision = engine.bundle.class_means, engine.bundle.precision

    def score(self, features: np.ndarray) -> float:
        return float(mahalanobis_score(features, self.means, self.precision))


def engine(bundle: Path, threads: int, variant: str, chunk: int = BACKBONE_CHUNK) -> Engine:
    if variant == "baseline":
        e = Engine(bundle, threads=threads, chunk=13)
        e._maha = _Textbook(e)  # type: ignore[assignment]  # the old computation, for comparison only
        return e
    return Engine(bundle, threads=threads, chunk=chunk)


@contextlib.contextmanager
def blas(variant: str) -> Iterator[None]:
    """numpy's BLAS threads for the variant, here and in processes started meanwhile (the helper)."""
    n = (os.cpu_count() or 1) if variant == "baseline" else 1
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = str(n)
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield
    finally:
        if saved is None:
            os.environ.pop("OPENBLAS_NUM_THREADS", None)
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = saved
