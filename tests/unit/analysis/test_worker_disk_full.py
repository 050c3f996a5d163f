"""A results disk that is full is passing: the image stays claimed and is analysed again, never "not analysed"."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

from cds_daemon.analysis.engine import Engine
from cds_daemon.analysis.helper import Offload
from cds_daemon.analysis.worker import Worker
from cds_daemon.common.config import load_settings
from cds_daemon.store import Store
from cds_daemon.store.spool import DiskFullError, Spool
from tests.support.dicom_files import write_images
from tests.support.received import receive


def test_disk_full_leaves_the_image_claimed_and_pauses_new_claims(tiny_bundle: Path, tmp_path: Path) -> None:
    settings = load_settings(None, model_bundle=tiny_bundle, storage={"data_dir": tmp_path / "data"})
    store = Store(settings.storage.database)
    spool = Spool(settings.storage.spool_dir)
    first, second = (receive(store, spool, f.read_bytes()) for f in write_images(tmp_path / "in", 2))
    worker = Worker(settings, store, Engine(tiny_bundle, threads=1))
    claimed = store.claim_next(actor="worker", node=settings.node_id, lease_s=0.01)
    assert claimed is not None and claimed.sop_instance_uid == first

    worker._failed_with(first, DiskFullError("disk full while writing: No space left on device"))

    assert store.get_prediction(first) is None  # no "not analysed" record: it is analysed again later
    assert store.counts_by_state()["processing"] == 1
    worker.offload = Offload(settings)  # not started: a paused worker submits nothing to it
    ahead: deque = deque()
    worker._claim_ahead(ahead)
    assert not ahead and store.counts_by_state()["received"] == 1  # the second image waits too
    time.sleep(0.05)  # the 10 ms lease runs out
    again = store.claim_next(actor="worker", node=settings.node_id)
    assert again is not None and again.sop_instance_uid == first  # its lease ran out: first in line again
    assert second in {i.sop_instance_uid for i in store.instances("received")}
    store.close()
