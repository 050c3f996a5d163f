"""Training data on disk: a folder per class, or a CSV ``path,label,case_id[,patient_id]``.

Labels are class names (case-insensitive) or class indices. Every dataset carries the SHA-256 of its
labels file (the CSV itself, or a canonical ``path,label,case_id`` listing for a folder dataset) so a
bundle names the exact data it was trained on.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cds_daemon.common.manifest import CLASSES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LABELS_CSV = "labels.csv"


@dataclass(frozen=True)
class Sample:
    """One image; ``group`` is the unit splits respect (patient if known, else case)."""

    path: Path
    label: int
    case_id: str
    patient_id: str | None = None

    @property
    def group(self) -> str:
        return self.patient_id or self.case_id


@dataclass(frozen=True)
class Dataset:
    samples: tuple[Sample, ...]
    source: str
    labels_sha256: str
    class_names: tuple[str, ...] = CLASSES

    def counts(self, indices: list[int] | None = None) -> dict[str, int]:
        """Images per class name over ``indices`` (all images when None)."""
        idx = range(len(self.samples)) if indices is None else indices
        c = Counter(self.samples[i].label for i in idx)
        return {name: c.get(k, 0) for k, name in enumerate(self.class_names)}


def parse_label(value: str, class_names: tuple[str, ...] = CLASSES) -> int:
    """Class index of a label cell: a class name (any case) or an index."""
    v = value.strip().lower()
    names = [n.lower() for n in class_names]
    if v in names:
        return names.index(v)
    if v.isdigit() and int(v) < len(class_names):
        return int(v)
    raise ValueError(f"unknown label {value!r}; expected one of {list(class_names)} or an index")


def _from_csv(csv_path: Path, class_names: tuple[str, ...]) -> Dataset:
    raw = csv_path.read_bytes()
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    missing = {"path", "label", "case_id"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)}")
    samples = []
    for line, row in enumerate(rows, start=2):
        path = Path(row["path"])
        path = path if path.is_absolute() else csv_path.parent / path
        try:
            label = parse_label(row["label"], class_names)
        except ValueError as e:
            raise ValueError(f"{csv_path}:{line}: {e}") from e
        if not row["case_id"].strip():
            raise ValueError(f"{csv_path}:{line}: empty case_id")
        patient = (row.get("patient_id") or "").strip() or None
        samples.append(Sample(path, label, row["case_id"].strip(), patient))
    return Dataset(tuple(samples), str(csv_path), hashlib.sha256(raw).hexdigest(), class_names)


def _from_folders(root: Path, class_names: tuple[str, ...]) -> Dataset:
    samples = []
    for k, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                samples.append(Sample(p, k, f"{name}/{p.stem}"))
    listing = "".join(f"{s.path.relative_to(root).as_posix()},{class_names[s.label]},{s.case_id}\n" for s in samples)
    return Dataset(tuple(samples), str(root), hashlib.sha256(listing.encode()).hexdigest(), class_names)


def load_dataset(data: Path, class_names: tuple[str, ...] = CLASSES) -> Dataset:
    """A CSV file, a directory holding ``labels.csv``, or a directory with one sub-folder per class."""
    data = Path(data)
    if data.is_file():
        ds = _from_csv(data, class_names)
    elif (data / LABELS_CSV).is_file():
        ds = _from_csv(data / LABELS_CSV, class_names)
    elif data.is_dir():
        ds = _from_folders(data, class_names)
    else:
        raise FileNotFoundError(f"dataset not found: {data}")
    if not ds.samples:
        raise ValueError(f"{data}: no labelled images found")
    absent = [p for p in (s.path for s in ds.samples) if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} image(s) listed but missing, first: {absent[0]}")
    return ds


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
