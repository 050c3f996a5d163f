"""SR and KOS documents from a template that highdicom built: the same objects at a fraction of the cost.

Measured in the worker's helper (2 vCPU, demo bundle): highdicom's document constructors take most of
the time of an AI SR (51 ms of which about 35 ms are ``ComprehensiveSR.__init__``: a deep copy and
re-parse of the content tree it was just given, and an evidence search through it) and of a KOS (15 ms).
What they add around the content tree is the same for every case of one model and one kind of source:
SOP Common, equipment, document flags, coding schemes, contributing equipment.

So a template is the document highdicom builds for the first case of its kind. The next cases keep the
template's case-independent attributes and get their own: the patient and study modules copied from
their source exactly as highdicom copies them (the root attributes of the source IOD's Patient and Study
modules that the source has), UIDs, dates, series description, character set, evidence, and the content
tree, still built per case with highdicom's content items. Creation date and time are set as highdicom
sets them (now).

The first document made from a template is compared with highdicom's for the same case, element by
element (creation date and time aside); where they differ, that kind of document is built by highdicom
from then on and the log says so. The unit tests compare the two paths on every kind of source.
"""

from __future__ import annotations

import copy
import datetime
import functools
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.valuerep import DA, TM

from cds_daemon.ops.logs import get_logger

log = get_logger("reports")

#: Set by highdicom from the clock at construction: not compared, set anew per case.
CREATION = ("InstanceCreationDate", "InstanceCreationTime")


@dataclass(frozen=True)
class Case:
    """What differs between two documents of one kind: everything the template does not keep."""

    header: Dataset  # the source's header (``source.evidence_of``): patient and study come from it
    content: Dataset  # the root content item (container) highdicom built for this case
    evidence: Sequence[Dataset]  # the instances the document references, in highdicom's order
    fields: dict[str, Any]  # top-level attributes of this case (UIDs, dates, description, character set)


def dated(created: datetime.datetime) -> dict[str, Any]:
    """Content and series date and time of a document made at ``created``, as highdicom sets them."""
    return {
        "ContentDate": DA(created.date()),
        "ContentTime": TM(created.time()),
        "SeriesDate": DA(created.date()),
        "SeriesTime": TM(created.time()),
    }


@functools.cache
def patient_study_keywords(sop_class_uid: str) -> tuple[str, ...]:
    """The root attributes of the Patient and Study modules of a source IOD: what highdicom's
    ``copy_patient_and_study_information`` copies (when the source has them)."""
    iod = get_sop_class_iod_map().get(sop_class_uid)
    if iod is None:
        return ()
    attributes = get_module_attribute_map()
    keywords: list[str] = []
    for module in get_iod_module_map()[iod]:
        if module["ie"] in ("Patient", "Study"):
            keywords += [str(a["keyword"]) for a in attributes[module["key"]] if len(a["path"]) == 0]
    return tuple(dict.fromkeys(keywords))


def evidence_sequence(study_uid: str, evidence: Iterable[Dataset]) -> list[Dataset]:
    """Current Requested Procedure Evidence: the instances of this study, grouped by series (highdicom's form)."""
    series: dict[str, list[Dataset]] = {}
    seen: set[str] = set()
    for ds in evidence:
        if ds.SOPInstanceUID in seen or ds.StudyInstanceUID != study_uid:
            continue
        seen.add(ds.SOPInstanceUID)
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        series.setdefault(str(ds.SeriesInstanceUID), []).append(item)
    if not series:
        return []
    items = []
    for uid, instances in series.items():
        series_item = Dataset()
        series_item.SeriesInstanceUID = uid
        series_item.ReferencedSOPSequence = instances
        items.append(series_item)
    study = Dataset()
    study.StudyInstanceUID = study_uid
    study.ReferencedSeriesSequence = items
    return [study]


def instantiate(template: Dataset, case: Case) -> Dataset:
    """A new document: the template's case-independent attributes, and this case's (same source SOP class).

    Top-level elements are copied, not shared: pydicom's attribute assignment changes an element in place,
    and the template must not change with the documents made from it.
    """
    header = case.header
    from_header = patient_study_keywords(str(header.SOPClassUID))
    per_case = set(from_header) | set(case.fields) | set(CREATION)
    per_case.add("CurrentRequestedProcedureEvidenceSequence")
    replaced = {elem.tag for elem in case.content}
    ds = Dataset()
    ds.preamble = template.preamble
    ds.file_meta = copy.deepcopy(template.file_meta)
    for elem in template:
        if elem.keyword not in per_case and elem.tag not in replaced:
            ds.add(copy.copy(elem))
    for keyword in from_header:
        if keyword in header:
            ds.add(header[keyword])
    for elem in case.content:
        ds[elem.tag] = elem
    now = datetime.datetime.now()
    ds.InstanceCreationDate = DA(now.date())
    ds.InstanceCreationTime = TM(now.time())
    for keyword, value in case.fields.items():
        if value is not None:
            setattr(ds, keyword, value)
    evidence = evidence_sequence(str(ds.StudyInstanceUID), case.evidence)
    if evidence:
        ds.CurrentRequestedProcedureEvidenceSequence = evidence
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    fp = DicomBytesIO()  # the group length, as highdicom's constructor sets it
    write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
    ds.file_meta.FileMetaInformationGroupLength = len(fp.getvalue())
    return ds


def differences(a: Dataset, b: Dataset, ignore: Sequence[str] = CREATION) -> list[str]:
    """Keywords (or tags) of top-level elements that differ between two documents, file meta included."""
    out = []
    for name, x, y in (("meta ", a.file_meta, b.file_meta), ("", a, b)):
        tags = set(x.keys()) | set(y.keys())
        for tag in sorted(tags):
            keyword = x[tag].keyword if tag in x else y[tag].keyword
            if keyword in ignore:
                continue
            if tag not in x or tag not in y or x[tag] != y[tag]:
                out.append(name + (keyword or str(tag)))
    return out


class Templates:
    """Templates per kind of document, made and checked on first use; one per process (the worker's helper).

    ``build`` is highdicom's builder for one case (the reference); ``case`` says what that case's own
    attributes are. A key names one kind: the document type, the model, the source's SOP class.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._templates: dict[tuple[str, ...], Dataset] = {}
        self._refused: set[tuple[str, ...]] = set()

    def make(self, key: tuple[str, ...], case: Case, build: Callable[[], Dataset]) -> Dataset:
        """This case's document: from the template for ``key``, or (first time, or refused) by highdicom."""
        with self._lock:
            template = self._templates.get(key)
            refused = key in self._refused
        if refused:
            return build()
        reference = build() if template is None else None
        if template is None:
            assert reference is not None
            template = reference
            made = instantiate(template, case)
            diff = differences(made, reference)
            with self._lock:
                if diff:
                    self._refused.add(key)
                    log.error(
                        "report_template_refused",
                        kind=key[0],
                        differs=diff[:8],
                        detail="built by highdicom for every case of this kind from now on",
                    )
                else:
                    self._templates[key] = template
            return reference
        return instantiate(template, case)

    def kinds(self) -> dict[str, int]:
        with self._lock:
            return {"templates": len(self._templates), "refused": len(self._refused)}
