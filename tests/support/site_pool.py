"""A site calibration pool from the ThyroidEffi paper's own logits: its val + test images as if a site had
reviewed them in shadow mode (real outputs of a real model; the reviewer's class is the paper's label)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cds_daemon.store import PredictionRecord, Store
from model_build.evaluate_logits import DAEMON_FINALISATION, finalisation_scores
from model_build.logits_csv import default_data_dir, load_split
from tests.unit.store.test_store import _new

CLASSES = ("benign", "indeterminate", "malignant")


def fill_from_paper_logits(store: Store, model_sha256: str, *, limit: int | None = None, seed: int = 0) -> int:
    """Shadow-mode predictions and their reviews in ``store``; returns how many."""
    data = default_data_dir()
    y_val, z_val = load_split("val", data)
    y_test, z_test = load_split("test", data)
    y, z = np.concatenate([y_val, y_test]), np.concatenate([z_val, z_test])
    _, _, probs, confidence = finalisation_scores(z, y, z)[DAEMON_FINALISATION]
    order = np.random.default_rng(seed).permutation(len(y))[:limit]
    store.create_user("site.reviewer", "x", "reviewer", actor="test")
    for n, i in enumerate(order):
        uid = f"1.2.826.0.1.3680043.10.1.{n}"
        accession = f"PAPER{n}"
        new = replace(_new(uid, path=f"/{uid}"), accession_number=accession, case_key=f"accession:{accession}")
        store.record_received(new, actor="test")
        store.claim_next(actor="worker")
        predicted, truth = CLASSES[int(probs[i].argmax())], CLASSES[int(y[i])]
        record = PredictionRecord(
            "ThyroidEffi", "paper", model_sha256, predicted, [float(p) for p in probs[i]], True,
            ["site_validation"], {}, 9, triage_mode="shadow", finalisation_confidence=float(confidence[i]),
            candidate=predicted != "indeterminate",
        )  # fmt: skip
        store.record_result(uid, record, [], [], actor="worker")
        (item,) = [w for w in store.worklist(limit=5) if uid in w.images]
        store.record_decision(
            worklist_id=item.id, sop_instance_uid=uid, reviewer="site.reviewer",
            decision="confirm" if predicted == truth else "change", ai_class=predicted, final_class=truth,
            comment=None, review_sr=None, destinations=[],
        )  # fmt: skip
    return len(order)
