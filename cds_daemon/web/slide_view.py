"""The slide view's routes: Deep Zoom tiles of the stored slide, its fields' images and heatmaps.

Every request needs a login. The tiles of a slide are many requests per look: the page's ``.dzi`` request
is audited each time (``web:view-slide``), its tiles once per reviewer, slide and Deep Zoom level in
``TILE_AUDIT_S`` (``web:view-slide-tiles``: which magnifications were looked at), each field's image each time
(``web:view-field``). URLs carry the Series Instance UID and numbers, nothing of the patient.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flask import Flask, Response, abort, g

from cds_daemon.analysis.slide_reader import SlideUnreadable
from cds_daemon.ops.logs import get_logger
from cds_daemon.reports.case_sr import suspicion
from cds_daemon.review.service import Labels, slide_fields
from cds_daemon.store import Confirmed, PredictionRecord, SlideField, WorklistItem
from cds_daemon.web import imaging
from cds_daemon.web.security import login_required
from cds_daemon.web.slide_tiles import DeepZoom, TileNotFound

if TYPE_CHECKING:
    from cds_daemon.web.app import WebContext

log = get_logger("web")

TILE_AUDIT_S = 300.0
FIELD_SIDE = 1024  # a field's view, pixels a side at most
THUMB_SIDE = 160
HEATMAP_SIDE = 1024  # the whole slide's heatmap layer


@dataclass(frozen=True)
class FieldRow:
    """One analysed field in the slide view's list."""

    number: int  # as in the slide SR ("Field n")
    box: tuple[int, int, int, int]
    predicted: str
    name: str
    probability: float
    probabilities: list[tuple[str, str, float]]  # (code, short name, p)
    referred: bool
    reasons: list[str]
    cellularity: float


@dataclass(frozen=True)
class SlideContext:
    """What the slide view shows besides the case's common parts."""

    series_uid: str
    fields: list[FieldRow]  # most suspicious first
    proposals: int
    repairs: list[str]
    viewer_link: str | None


def orthanc_series_id(patient_id: str, study_uid: str, series_uid: str) -> str:
    """Orthanc's public identifier of a series (SHA-1 of its patient, study and series keys, in 5 groups)."""
    digest = hashlib.sha1(f"{patient_id}|{study_uid}|{series_uid}".encode()).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def field_rows(prediction: PredictionRecord, labels: Labels, reason_label: Any) -> list[FieldRow]:
    rows = []
    for number, f in enumerate(slide_fields(prediction), start=1):
        probs = [float(p) for p in f.get("probabilities") or ()]
        predicted = str(f.get("predicted") or "")
        p = probs[labels.classes.index(predicted)] if predicted in labels.classes and probs else 0.0
        rows.append(
            FieldRow(
                number=number,
                box=tuple(int(v) for v in f["box"]),  # type: ignore[arg-type]
                predicted=predicted,
                name=labels.short(predicted or None),
                probability=p,
                probabilities=[(c, labels.short(c), q) for c, q in zip(labels.classes, probs, strict=False)],
                referred=bool(f.get("referred")),
                reasons=list(dict.fromkeys(reason_label(r) for r in f.get("reasons") or ())),
                cellularity=float(f.get("cellularity") or 0.0),
            )
        )
    return sorted(rows, key=lambda r: suspicion(r.predicted, r.probability), reverse=True)


def slide_context(
    ctx: WebContext, uid: str, prediction: PredictionRecord, labels: Labels, reason_label: Any
) -> SlideContext | None:
    """The slide view's data for the slide ``uid`` represents; None for a camera image."""
    slide = prediction.detail.get("slide")
    instance = ctx.store.get_instance(uid)
    if not isinstance(slide, dict) or instance is None or instance.series_instance_uid is None:
        return None
    link = None
    template = ctx.settings.web.wsi_viewer_url
    if template:
        header = imaging.read_header(instance.spool_path) if instance.on_disk else None
        link = template.format(
            series_uid=instance.series_instance_uid,
            study_uid=instance.study_instance_uid or "",
            orthanc_series_id=orthanc_series_id(
                header.patient_id if header else "", instance.study_instance_uid or "", instance.series_instance_uid
            ),
        )
    return SlideContext(
        series_uid=instance.series_instance_uid,
        fields=field_rows(prediction, labels, reason_label),
        proposals=int(slide.get("proposals") or 0),
        repairs=[str(r) for r in slide.get("repairs") or ()],
        viewer_link=link,
    )


class TileAudit:
    """Whether a tile request is the first of its reviewer, slide and level in ``window_s``."""

    def __init__(self, window_s: float = TILE_AUDIT_S) -> None:
        self.window_s = window_s
        self._last: dict[tuple[str, str, int], float] = {}
        self._lock = threading.Lock()

    def due(self, user: str, series_uid: str, level: int) -> bool:
        now = time.monotonic()
        key = (user, series_uid, level)
        with self._lock:
            if now - self._last.get(key, -self.window_s) < self.window_s:
                return False
            if len(self._last) > 10_000:
                self._last = {k: t for k, t in self._last.items() if now - t < self.window_s}
            self._last[key] = now
            return True


def _cam(stored: SlideField) -> np.ndarray:
    """A field's stored Grad-CAM (uint8) back in [0, 1]."""
    return np.frombuffer(stored.cam or b"", np.uint8).reshape(stored.cam_rows, stored.cam_columns) / 255.0


def _field_z(prediction: PredictionRecord) -> float | None:
    """The focal plane most of the slide's fields were read on (the viewer shows that one)."""
    planes = Counter(float(f["z"]) for f in slide_fields(prediction) if f.get("z") is not None)
    return planes.most_common(1)[0][0] if planes else None


def open_served(ctx: WebContext, series_uid: str) -> tuple[str, DeepZoom]:
    """(representative, open slide) of a slide reviewers may see: while it is a worklist case, or a
    confirmed similar case; 404 otherwise, or when its files are gone or unreadable."""
    found = ctx.store.slide_of_series(series_uid)
    if found is None:
        abort(404)
    representative, parts = found
    if ctx.store.worklist_item_of(representative) is None and not ctx.similar.is_confirmed(representative):
        abort(404)

    def files_and_plane() -> tuple[list[Path], float | None]:
        """Read once, when the slide is not open yet (not on every tile)."""
        prediction = ctx.store.get_prediction(representative)
        files = [Path(p.spool_path) for p in parts if p.on_disk]
        if not files or prediction is None:
            abort(404, description="The slide's files are no longer on disk.")
        return files, _field_z(prediction)

    try:
        return representative, ctx.tiles.slide(series_uid, files_and_plane)
    except SlideUnreadable as exc:
        log.warning("slide_unreadable_for_viewer", series_instance_uid=series_uid, error=str(exc))
        abort(404, description="The slide cannot be read.")


def example_png(ctx: WebContext, confirmed: Confirmed, side: int = 256) -> bytes:
    """A confirmed slide among similar cases: its diagnostic field, else its most suspicious one."""
    instance = ctx.store.get_instance(confirmed.sop_instance_uid)
    prediction = ctx.store.get_prediction(confirmed.sop_instance_uid)
    fields = slide_fields(prediction) if prediction is not None else []
    if instance is None or instance.series_instance_uid is None or prediction is None or not fields:
        abort(404)
    number = confirmed.diagnostic_field
    if number is None or not 1 <= number <= len(fields):
        number = field_rows(prediction, ctx.review.labels, str)[0].number  # the field list's first
    _, dz = open_served(ctx, instance.series_instance_uid)
    try:
        return imaging.png(dz.region(tuple(int(v) for v in fields[number - 1]["box"]), side))  # type: ignore[arg-type]
    except (SlideUnreadable, TileNotFound):
        abort(404)


def register(app: Flask, ctx: WebContext, audit: Any) -> None:
    """The slide routes; ``audit(actor, action, uid, **detail)`` writes the audit row."""
    tile_audit = TileAudit()

    @app.get("/slides/<series_uid>.dzi")
    @login_required
    def slide_dzi(series_uid: str) -> Any:
        representative, dz = open_served(ctx, series_uid)
        audit(g.user.username, "web:view-slide", representative, series_instance_uid=series_uid)
        return Response(dz.dzi(), mimetype="application/xml", headers={"Cache-Control": "private, no-store"})

    @app.get("/slides/<series_uid>_files/<int:level>/<int:col>_<int:row>.jpeg")
    @login_required
    def slide_tile(series_uid: str, level: int, col: int, row: int) -> Any:
        representative, dz = open_served(ctx, series_uid)
        try:
            tile, _ = ctx.tiles.tile(series_uid, dz, level, col, row)
        except TileNotFound:
            abort(404)
        except SlideUnreadable as exc:
            log.warning("slide_tile_unreadable", series_instance_uid=series_uid, level=level, error=str(exc))
            abort(404)
        if tile_audit.due(g.user.username, series_uid, level):
            audit(g.user.username, "web:view-slide-tiles", representative, level=level)
        return Response(tile.data, mimetype="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    def field_of(item_id: int, number: int) -> tuple[WorklistItem, str, dict[str, Any], DeepZoom]:
        item = ctx.store.worklist_get(item_id)
        if item is None:
            abort(404)
        for uid in item.images:
            prediction = ctx.store.get_prediction(uid)
            fields = slide_fields(prediction) if prediction is not None else []
            instance = ctx.store.get_instance(uid)
            if fields and 1 <= number <= len(fields) and instance is not None and instance.series_instance_uid:
                _, dz = open_served(ctx, instance.series_instance_uid)
                return item, uid, fields[number - 1], dz
        abort(404)

    def read_field(dz: DeepZoom, box: tuple[int, int, int, int], side: int) -> np.ndarray:
        try:
            return dz.region(box, side)
        except (SlideUnreadable, TileNotFound):
            abort(404)

    @app.get("/case/<int:item_id>/field/<int:number>.png")
    @login_required
    def field_image(item_id: int, number: int) -> Any:
        item, uid, f, dz = field_of(item_id, number)
        box = tuple(int(v) for v in f["box"])
        audit(g.user.username, "web:view-field", uid, worklist_id=item.id, field=number)
        key = f"{uid}:field:{number}"
        return imaging.png_response(ctx.images.get_or_make(key, lambda: imaging.png(read_field(dz, box, FIELD_SIDE))))  # type: ignore[arg-type]

    @app.get("/case/<int:item_id>/field/<int:number>/thumb.jpeg")
    @login_required
    def field_thumb(item_id: int, number: int) -> Any:
        _, uid, f, dz = field_of(item_id, number)
        box = tuple(int(v) for v in f["box"])
        key = f"{uid}:thumb:{number}"
        data = ctx.thumbnails.get_or_make(key, lambda: imaging.jpeg_bytes(read_field(dz, box, THUMB_SIDE)))  # type: ignore[arg-type]
        return Response(data, mimetype="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/case/<int:item_id>/field/<int:number>/heatmap.png")
    @login_required
    def field_heatmap(item_id: int, number: int) -> Any:
        item, uid, f, _ = field_of(item_id, number)
        stored = {s.number: s for s in ctx.store.slide_fields(uid)}.get(number)
        if stored is None or stored.cam is None:
            abort(404)
        _, _, w, h = (int(v) for v in f["box"])
        k = min(1.0, FIELD_SIDE / max(w, h)) / 4
        cam = _cam(stored)
        audit(g.user.username, "web:view-heatmap", uid, worklist_id=item.id, field=number)
        size = (max(1, round(w * k)), max(1, round(h * k)))
        return imaging.png_response(imaging.png(imaging.heatmap_rgba(cam, size), compress_level=6))

    @app.get("/case/<int:item_id>/slide-heatmap.png")
    @login_required
    def slide_heatmap(item_id: int) -> Any:
        item = ctx.store.worklist_get(item_id)
        if item is None:
            abort(404)
        for uid in item.images:
            prediction = ctx.store.get_prediction(uid)
            if prediction is not None and slide_fields(prediction):
                audit(g.user.username, "web:view-heatmap", uid, worklist_id=item.id)
                key = f"{uid}:slide-heatmap"
                make = functools.partial(slide_heatmap_png, ctx, uid, prediction)
                return imaging.png_response(ctx.heatmaps.get_or_make(key, make))
        abort(404)


def slide_heatmap_png(ctx: WebContext, uid: str, prediction: PredictionRecord) -> bytes:
    """The whole slide at most HEATMAP_SIDE pixels a side, transparent but for its fields' Grad-CAMs."""
    slide = prediction.detail["slide"]
    width, height = int(slide["width"]), int(slide["height"])
    k = HEATMAP_SIDE / max(width, height)
    layer = np.zeros((max(1, round(height * k)), max(1, round(width * k)), 4), np.uint8)
    cams = {s.number: s for s in ctx.store.slide_fields(uid)}
    for number, f in enumerate(slide_fields(prediction), start=1):
        stored = cams.get(number)
        if stored is None or stored.cam is None:
            continue
        x, y, w, h = (int(v) for v in f["box"])
        x0, y0 = round(x * k), round(y * k)
        x1, y1 = (
            min(layer.shape[1], max(x0 + 1, round((x + w) * k))),
            min(layer.shape[0], max(y0 + 1, round((y + h) * k))),
        )
        if x1 <= x0 or y1 <= y0:
            continue
        layer[y0:y1, x0:x1] = imaging.heatmap_rgba(_cam(stored), (x1 - x0, y1 - y0))
    return imaging.png(layer, compress_level=6)
