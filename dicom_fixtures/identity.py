"""Fake but recognisable identities, identifiers, dates and UIDs for fixture datasets.

Every person name starts with ``FIXTURE^`` and every patient ID matches ``FXP-\\d{6}`` so
a privacy test can grep logs for leaked identifiers. All values derive from integer
seeds; nothing reads the clock.
"""

import datetime as dt
import hashlib
import re
from dataclasses import dataclass

from pydicom.uid import generate_uid

FAKE_NAME_PREFIX = "FIXTURE^"
FAKE_PATIENT_ID_RE = re.compile(r"FXP-\d{6}")
FAKE_ACCESSION_RE = re.compile(r"FXA-\d{8}")
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's registered root, with a hash suffix

_FEMALE = ("ANNA", "MARIA", "ELENA", "SOFIA", "LAURA", "IRENE", "CLARA", "NORA", "EVA", "JULIA", "ROSA", "LUCIA")
_MALE = ("PAUL", "MARCO", "JONAS", "LEO", "HUGO", "IVAN", "OSCAR", "TOMAS", "FELIX", "DAVID")


def _digest(*parts: object) -> int:
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


@dataclass(frozen=True)
class PatientInfo:
    name: str  # DICOM PN, e.g. "FIXTURE^ANNA"
    patient_id: str  # e.g. "FXP-000123"
    birth_date: str  # YYYYMMDD
    sex: str  # "F" or "M"


def fake_patient(seed: int) -> PatientInfo:
    """The fixture patient for ``seed``: ID ``FXP-<seed mod 10^6>``, name ``FIXTURE^<GIVEN>``."""
    h = _digest("patient", seed)
    sex = "F" if h % 4 else "M"  # thyroid nodules are about three times commoner in women
    given = (_FEMALE if sex == "F" else _MALE)[(h >> 8) % (len(_FEMALE) if sex == "F" else len(_MALE))]
    birth = dt.date(1940, 1, 1) + dt.timedelta(days=(h >> 16) % (365 * 65))
    return PatientInfo(
        name=f"{FAKE_NAME_PREFIX}{given}",
        patient_id=f"FXP-{seed % 1_000_000:06d}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=sex,
    )


def make_uid(*parts: object) -> str:
    """Deterministic UID under the fixture root from arbitrary parts."""
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[str(p) for p in parts])


def study_datetime(seed: int) -> dt.datetime:
    """Study date/time for ``seed``: a weekday between 2019 and 2024 during clinic hours."""
    h = _digest("study-date", seed)
    day = dt.date(2019, 1, 1) + dt.timedelta(days=h % (365 * 6))
    day -= dt.timedelta(days=max(0, day.weekday() - 4))
    return dt.datetime.combine(day, dt.time(8 + (h >> 20) % 9, (h >> 28) % 60, (h >> 36) % 60))


def accession_number(seed: int) -> str:
    return f"FXA-{_digest('accession', seed) % 100_000_000:08d}"


def age_string(birth_date: str, on: dt.date) -> str:
    """DICOM AS value (e.g. "047Y") for a YYYYMMDD birth date on a given day."""
    born = dt.datetime.strptime(birth_date, "%Y%m%d").date()
    years = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    return f"{max(years, 0):03d}Y"
