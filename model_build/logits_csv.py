"""Reader for the ThyroidEffi 1.0 per-image logits CSVs (``{train,val,test}_not_aug.csv``).

Columns: ``path_to_image`` (folder B2/B5/B6 = label), ``label`` (0 = B2, 1 = B5, 2 = B6),
``predicted_vector`` (JSON 13 x 3 logits: row 0 the whole image, rows 1..12 the 3x4 tiles in row-major
order) and ``predicted_label`` (argmax of row 0). Rows are checked against each other so a file that was
re-exported with another layout fails loudly instead of producing plausible wrong numbers.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

SHARED_ENV = "CDS_SHARED_DIR"
LOGITS_SUBDIR = Path("data") / "thyroideffi_logits"
SPLITS = ("train", "val", "test")
N_VIEWS = 13
CLASS_NAMES = ("Benign", "Indeterminate/Suspicious", "Malignant")
_FOLDER_LABEL = {"B2": 0, "B5": 1, "B6": 2}


class LogitsSplit(NamedTuple):
    labels: np.ndarray  # (N,) int64
    logits: np.ndarray  # (N, 13, 3) float64


#: The copy that ships with the package (``model_build/data/thyroideffi_logits``, with its README naming the source).
PACKAGED_DATA_DIR = Path(__file__).resolve().parent / LOGITS_SUBDIR


def shared_dir() -> Path:
    """The shared folder: $CDS_SHARED_DIR, else ``shared/`` beside the repository root."""
    env = os.environ.get(SHARED_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[1].parent / "shared"


def default_data_dir() -> Path:
    """Folder holding the paper's logits CSVs: ``$CDS_SHARED_DIR/data/thyroideffi_logits`` when that variable is
    set and the folder holds the val and test CSVs, else the copy in the package (works in a plain clone)."""
    if os.environ.get(SHARED_ENV):
        shared = shared_dir() / LOGITS_SUBDIR
        if all(split_path(shared, s).is_file() for s in ("val", "test")):
            return shared
    return PACKAGED_DATA_DIR


def split_path(data_dir: Path, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return Path(data_dir) / f"{split}_not_aug.csv"


def read_logits_csv(path: Path, *, shape: tuple[int, int] = (N_VIEWS, len(CLASS_NAMES))) -> LogitsSplit:
    """Labels (N,) int64 and logits (N, *shape) float64 from one CSV, validating every row."""
    path = Path(path)
    labels: list[int] = []
    logits: list[np.ndarray] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"label", "predicted_vector"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            label = int(row["label"])
            vec = np.asarray(json.loads(row["predicted_vector"]), dtype=np.float64)
            if vec.shape != shape:
                raise ValueError(f"{where}: predicted_vector has shape {vec.shape}, expected {shape}")
            if not np.isfinite(vec).all():
                raise ValueError(f"{where}: non-finite logits")
            if not 0 <= label < shape[1]:
                raise ValueError(f"{where}: label {label} outside [0, {shape[1]})")
            folder = Path(row.get("path_to_image") or "").parent.name
            if folder in _FOLDER_LABEL and _FOLDER_LABEL[folder] != label:
                raise ValueError(f"{where}: label {label} contradicts folder {folder}")
            stored = row.get("predicted_label")
            if stored not in (None, "") and int(stored) != int(vec[0].argmax()):
                raise ValueError(f"{where}: predicted_label {stored} is not the argmax of row 0")
            labels.append(label)
            logits.append(vec)
    if not labels:
        raise ValueError(f"{path}: no rows")
    return LogitsSplit(np.asarray(labels, dtype=np.int64), np.stack(logits))


def load_split(split: str, data_dir: Path | None = None) -> LogitsSplit:
    """Read ``{split}_not_aug.csv`` from ``data_dir`` (default: ``default_data_dir()``)."""
    return read_logits_csv(split_path(data_dir if data_dir is not None else default_data_dir(), split))
