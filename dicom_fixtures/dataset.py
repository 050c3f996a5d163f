"""Training-set writer: an image folder per class plus labels.csv for case-level splits.

Images of one case come from one slide (shared stain, focus and atypia via ``case_seed``)
and share a class; a case belongs to one patient and some patients have two cases.
Label noise flips the recorded label of whole cases, so a case never has mixed labels.
"""

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .identity import fake_patient
from .morphology import CLASSES, check_difficulty
from .synth import latent_severity, make_field

IMAGES_PER_CASE = (1, 2, 3, 4)
IMAGES_PER_CASE_P = (0.45, 0.25, 0.18, 0.12)
REPEAT_PATIENT_P = 0.15
FORMATS = {"jpg": "JPEG", "png": "PNG"}


@dataclass(frozen=True)
class DatasetRow:
    path: str  # relative to the dataset root
    label: str  # recorded (possibly noisy) label
    case_id: str
    patient_id: str
    true_label: str


def _derive(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def make_dataset(
    out: Path,
    n_per_class: int,
    seed: int,
    difficulty: float = 0.5,
    label_noise: float = 0.0,
    image_format: str = "jpg",
) -> list[DatasetRow]:
    """Write ``n_per_class`` images of each true class under ``out`` and return the rows.

    Folders and labels.csv use the recorded label; with label noise the folder sizes
    therefore differ slightly from ``n_per_class``. ``dataset.json`` keeps the settings
    and the true label of every image.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    if not 0.0 <= label_noise < 1.0:
        raise ValueError(f"label_noise must be within [0, 1), got {label_noise}")
    if image_format not in FORMATS:
        raise ValueError(f"image_format must be one of {', '.join(FORMATS)}, got {image_format!r}")
    check_difficulty(difficulty)
    rng = np.random.default_rng([seed, 0xDA7A])

    cases: list[tuple[str, int]] = []  # (true label, number of images)
    for label in CLASSES:
        left = n_per_class
        while left > 0:
            k = min(left, int(rng.choice(IMAGES_PER_CASE, p=IMAGES_PER_CASE_P)))
            cases.append((label, k))
            left -= k
    order = rng.permutation(len(cases))

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; write a dataset into a new or empty directory")
    for label in CLASSES:
        (out / label).mkdir(parents=True, exist_ok=True)
    rows: list[DatasetRow] = []
    severities: dict[str, float] = {}
    patients: list[int] = []
    for case_no, idx in enumerate(order, start=1):
        true_label, n_images = cases[idx]
        if patients and rng.random() < REPEAT_PATIENT_P:
            patient_seed = patients[int(rng.integers(0, len(patients)))]
        else:
            patient_seed = seed * 10_000 + len(patients) + 1
            patients.append(patient_seed)
        label = true_label
        if rng.random() < label_noise:
            label = str(rng.choice([c for c in CLASSES if c != true_label]))
        case_id = f"FXC-{case_no:06d}"
        case_seed = _derive(seed, case_no)
        for i in range(n_images):
            field_seed = _derive(seed, case_no, i + 1)
            pixels = make_field(true_label, field_seed, difficulty, case_seed=case_seed)
            rel = f"{label}/{case_id}_{i + 1}.{image_format}"
            severities[rel] = latent_severity(true_label, field_seed, difficulty, case_seed=case_seed)
            options = {"quality": 93} if image_format == "jpg" else {}
            Image.fromarray(pixels).save(out / rel, format=FORMATS[image_format], **options)
            rows.append(DatasetRow(rel, label, case_id, fake_patient(patient_seed).patient_id, true_label))

    with (out / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "case_id", "patient_id"])
        writer.writerows([r.path, r.label, r.case_id, r.patient_id] for r in rows)
    settings = {
        "seed": seed,
        "n_per_class": n_per_class,
        "difficulty": difficulty,
        "label_noise": label_noise,
        "format": image_format,
        "true_labels": {r.path: r.true_label for r in rows},
        "severities": severities,  # latent atypia severity of each field (dicom_fixtures.bayes)
    }
    (out / "dataset.json").write_text(json.dumps(settings, indent=1) + "\n")
    return rows
