"""This software's version, as installed (``pyproject.toml``): shown per node in ``status``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def software_version() -> str:
    try:
        return version("thyroid-cds")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+source"
