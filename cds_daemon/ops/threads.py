"""One BLAS thread in the daemon and its helper (see ``cds_daemon/__init__.py`` for why)."""

from __future__ import annotations

from typing import Any

from threadpoolctl import threadpool_info, threadpool_limits

_LIMIT: list[Any] = []  # the limiter object, kept alive for the life of the process


def limit_blas_threads() -> None:
    """Cap every loaded BLAS library at one thread, even where numpy was imported before our environment."""
    if not _LIMIT:
        _LIMIT.append(threadpool_limits(limits=1, user_api="blas"))


def blas_threads() -> dict[str, int]:
    """Thread count per loaded BLAS library (``status`` and tests show it)."""
    return {str(p["internal_api"]): int(p["num_threads"]) for p in threadpool_info() if p["user_api"] == "blas"}
