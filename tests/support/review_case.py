"""Referred cases made in-process by the worker's steps (real bundle, real report builders, real store)."""

from __future__ import annotations

import io
from pathlib import Path

from cds_daemon.analysis.engine import Engine
from cds_daemon.analysis.pipeline import prediction_record, process_image
from cds_daemon.common.config import Destination, Settings, StorageSettings, TriageSettings, WebSettings
from cds_daemon.common.vocabulary import TriageMode
from cds_daemon.reports.files import write_objects
from cds_daemon.store import Store, WorklistItem
from cds_daemon.store.spool import Spool
from dicom_fixtures.synth import make_bad_field, make_field
from dicom_fixtures.wrap import wrap_image
from tests.support.received import receive


def review_settings(data_dir: Path, bundle: Path, database_url: str | None = None) -> Settings:
    return Settings(
        storage=StorageSettings(data_dir=data_dir, min_free_mb=1, max_used_percent=100, database_url=database_url),
        model_bundle=bundle,
        destinations=[Destination(name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=4242)],
        web=WebSettings(port=0, max_failed_logins=3),
        triage=TriageSettings(mode=TriageMode.BUNDLE),
    )


def receive_and_process(store: Store, settings: Settings, engine: Engine, pixels_list: list, seed: int) -> list[str]:
    """Wrap each image as one study (same seed = same patient and accession), store and run the worker."""
    spool = Spool(settings.storage.spool_dir)
    results = Spool(settings.storage.results_dir)
    destinations = [d.name for d in settings.destinations]
    uids = []
    for n, pixels in enumerate(pixels_list, start=1):
        ds = wrap_image(pixels, "vl-microscopic", "explicit", seed=seed, instance_number=n)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        uid = receive(store, spool, buf.getvalue())
        instance = store.claim_next(actor="test")
        assert instance is not None
        processed = process_image(Path(instance.spool_path), engine, settings)  # what the worker's stages run
        outputs = write_objects(results, processed.objects)
        embedding = processed.prediction.embedding
        store.record_result(
            uid,
            prediction_record(processed),
            outputs,
            destinations,
            actor="worker",
            embedding=None if embedding is None else embedding.tobytes(),
        )
        uids.append(uid)
    return uids


def referred_case(store: Store, settings: Settings, engine: Engine, seed: int = 7) -> WorklistItem:
    """A case with a cytology field and an empty (blank) field; the quality gate always refers the blank one."""
    pixels = [make_field("indeterminate", seed=seed), make_bad_field("blank", seed)]
    uids = receive_and_process(store, settings, engine, pixels, seed)
    items = [i for i in store.worklist() if uids[1] in i.images]
    assert len(items) == 1, "the blank field must be referred"
    return items[0]
