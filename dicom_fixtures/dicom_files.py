"""Write synthetic fields as DICOM files grouped into fake patients/studies (``make-dicom``)."""

from pathlib import Path

import numpy as np

from .identity import fake_patient, make_uid
from .morphology import CLASSES
from .synth import make_field
from .wrap import wrap_image, write_dicom


def _derive(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def write_dicom_series(
    out_dir: Path,
    n: int,
    iod: str,
    ts: str,
    seed: int,
    label: str | None = None,
    difficulty: float = 0.5,
    frames: int = 1,
    images_per_study: int | None = None,
    size: tuple[int, int] = (768, 1024),
) -> list[Path]:
    """Write ``n`` files; every ``images_per_study`` files share a patient, study and slide.

    Without ``label`` the class cycles per study (study j is ``CLASSES[j % 3]``), so a
    study never mixes classes. Study j's patient is ``fake_patient(seed + j)``.
    """
    if n < 1 or frames < 1:
        raise ValueError("n and frames must be >= 1")
    per_study = images_per_study or n
    out = Path(out_dir)
    paths = []
    for i in range(n):
        study = i // per_study
        cls = label or CLASSES[study % len(CLASSES)]
        patient_seed = seed + study
        case_seed = _derive(seed, study)
        stack = [make_field(cls, _derive(seed, i, f), difficulty, size, case_seed=case_seed) for f in range(frames)]
        pixels = stack[0] if frames == 1 else np.stack(stack)
        study_uid = make_uid("make-dicom-study", seed, study)
        ds = wrap_image(
            pixels,
            iod,
            ts,
            seed=patient_seed,
            patient=fake_patient(patient_seed),
            study_uid=study_uid,
            instance_number=i % per_study + 1,
            comment=f"synthetic dicom_fixtures field; class={cls}",
        )
        paths.append(write_dicom(ds, out / f"{i + 1:04d}_{cls}.dcm"))
    return paths
