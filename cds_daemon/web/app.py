"""The reviewers' Flask application: login, worklist, case view, decisions, admin statistics.

Every page needs a login; every POST needs the session's CSRF token; every action is audited.
Patient identifiers appear only in pages for logged-in users and never in a log line.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import (
    Flask,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from cds_daemon.analysis import calibration
from cds_daemon.analysis.policy import BundleRules, resolve
from cds_daemon.common.config import Settings
from cds_daemon.common.vocabulary import TriageMode
from cds_daemon.ops.logs import get_logger
from cds_daemon.review.audit import Alert, check_for
from cds_daemon.review.auth import LoginThrottle, authenticate
from cds_daemon.review.jobs import age_text
from cds_daemon.review.service import ReviewError, ReviewService
from cds_daemon.review.similar import SimilarIndex
from cds_daemon.store import Store, StoreUnavailable, WorklistItem
from cds_daemon.web import imaging, plots, present, slide_view
from cds_daemon.web.security import (
    MEDIA_SUFFIXES,
    SessionRegistry,
    admin_required,
    csrf_ok,
    csrf_token,
    load_secret_key,
    load_user,
    login_required,
    safe_next,
    secure_headers,
)
from cds_daemon.web.slide_tiles import SlideTiles

if TYPE_CHECKING:
    from cds_daemon.analysis.engine import Engine

log = get_logger("web")

STATUS_FILTERS = {
    "active": "Active",
    "open": "Open",
    "in_review": "In review",
    "escalated": "Escalated",
    "done": "Done",
}


SIMILAR_K = 5  # similar confirmed cases shown beside an image


@dataclass
class WebContext:
    settings: Settings
    store: Store
    review: ReviewService
    engine: Engine | None = None
    alerts: Callable[[], list[Alert]] = field(default=lambda: [])  # the production checks now failing
    registry: SessionRegistry = field(init=False)
    throttle: LoginThrottle = field(init=False)
    images: imaging.ImageCache = field(default_factory=lambda: imaging.ImageCache(24))
    thumbnails: imaging.ImageCache = field(default_factory=lambda: imaging.ImageCache(64))
    similar: SimilarIndex = field(init=False)
    heatmaps: imaging.ImageCache = field(default_factory=lambda: imaging.ImageCache(64))
    tiles: SlideTiles = field(init=False)
    _rules: BundleRules | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.tiles = SlideTiles(self.settings.web_scratch, cache_bytes=self.settings.web.slide_cache_mb * 2**20)
        self.registry = SessionRegistry(self.store, self.settings.web.session_minutes * 60)
        self.similar = SimilarIndex(self.store)
        free = self.settings.web.max_failed_logins
        self.throttle = LoginThrottle(free, address_free=4 * free)

    @property
    def engine_sha(self) -> str | None:
        return None if self.engine is None else self.engine.identity

    def bundle_rules(self) -> BundleRules | None:
        """The loaded bundle's identity and own rule (read from the bundle when this process has no engine)."""
        if self.engine is not None:
            return self.engine.rules
        if self._rules is None and self.settings.model_bundle is not None:
            try:
                self._rules = BundleRules.of(self.settings.model_bundle)
            except (OSError, ValueError):
                return None
        return self._rules

    def triage_notice(self) -> tuple[str, str] | None:
        """("alert" | "info", text) for the banner: why every case is reviewed, when it is."""
        rules = self.bundle_rules()
        if rules is None:
            return None
        try:
            policy = resolve(self.settings, rules, self.store)
        except StoreUnavailable:
            return ("alert", "the database does not answer")
        if policy.mode != TriageMode.SHADOW:
            return None
        return ("alert" if policy.configured == TriageMode.LIVE else "info", policy.why)


MAX_USERNAME = 64
MAX_PASSWORD = 1024


def _audit(actor: str, action: str, uid: str | None, **detail: Any) -> None:
    """An audit row of a web action, always with the client's address."""
    current_app.config["CDS_STORE"].audit(actor, action, uid, address=request.remote_addr, **detail)


def _actor() -> str:
    return g.user.username if g.get("user") is not None else "anonymous"


def _item_or_404(ctx: WebContext, item_id: int) -> WorklistItem:
    item = ctx.store.worklist_get(item_id)
    if item is None:
        abort(404)
    return item


def _source_path(ctx: WebContext, item: WorklistItem, uid: str) -> Path:
    if uid not in item.images:
        abort(404)
    instance = ctx.store.get_instance(uid)
    if instance is None or not instance.on_disk:
        abort(404)
    return Path(instance.spool_path)


def _numbers(text: str, most: int = 1000) -> list[int]:
    """Field numbers from a form ("3,1,7"); anything else is a malformed request."""
    parts = [p for p in text.replace(" ", "").split(",") if p][:most]
    if not all(p.isdigit() and len(p) <= 6 for p in parts):
        abort(400, description="Malformed field numbers.")
    return [int(p) for p in parts]


def create_app(ctx: WebContext) -> Flask:
    """The WSGI application; ``ctx`` carries the store, the review service and (optionally) the engine."""
    web = ctx.settings.web
    app = Flask(__name__)
    key_file = web.secret_key_file or ctx.settings.storage.data_dir / "web-secret.key"
    app.config.update(
        SECRET_KEY=load_secret_key(key_file),
        SESSION_COOKIE_NAME="cds_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=web.cookie_secure,
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=web.session_minutes),
        MAX_CONTENT_LENGTH=64 * 1024,
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.jinja_env.globals.update(
        csrf_token=csrf_token, reason_label=present.reason_label, alerts=ctx.alerts, triage_notice=ctx.triage_notice
    )
    app.jinja_env.globals.update(STATUS_LABELS=present.STATUS_LABELS, PRIORITY_LABELS=present.PRIORITY_LABELS)
    app.after_request(secure_headers)
    app.config["CDS_STORE"] = ctx.store

    @app.before_request
    def _before() -> Any:
        g.user = load_user(ctx.store, ctx.registry)
        if request.method == "POST" and not csrf_ok():
            _audit(_actor(), "web:csrf-refused", None, path=request.path)
            abort(400, description="The form expired or did not come from this site. Reload the page and try again.")
        return None

    @app.errorhandler(HTTPException)
    def _error(exc: HTTPException) -> Any:
        if request.path.endswith(MEDIA_SUFFIXES) or exc.code is None:
            return exc
        if exc.code == 403:
            _audit(_actor(), "web:forbidden", None, path=request.path)
        return render_template("error.html", error=exc), exc.code

    @app.errorhandler(ReviewError)
    def _review_error(exc: ReviewError) -> Any:
        return render_template("error.html", error=exc, message=str(exc)), 503

    _register_auth(app, ctx)
    _register_worklist(app, ctx)
    _register_case(app, ctx)
    _register_admin(app, ctx)
    _register_calibration(app, ctx)
    slide_view.register(app, ctx, _audit)
    return app


def _register_auth(app: Flask, ctx: WebContext) -> None:
    @app.get("/login")
    def login() -> Any:
        if g.user is not None:
            return redirect(safe_next(request.args.get("next")))
        return render_template("login.html", next=request.args.get("next", ""), no_users=not ctx.store.users())

    @app.post("/login")
    def login_post() -> Any:
        username = request.form.get("username", "").strip().lower()[: MAX_USERNAME + 1]
        password = request.form.get("password", "")[:MAX_PASSWORD]
        target = safe_next(request.form.get("next"))
        address = request.remote_addr or "unknown"
        # A name that is no account is often a mistyped password: it is neither stored nor logged.
        known = len(username) <= MAX_USERNAME and ctx.store.get_user(username) is not None
        named = {"username": username} if known else {}
        wait = ctx.throttle.wait_s(address, username)
        if wait > 0:
            _audit("anonymous", "web:login-throttled", None, wait_s=round(wait), **named)
            flash(f"Too many failed attempts. Try again in {max(1, round(wait))} seconds.", "error")
            return render_template("login.html", next=target, username=username if known else ""), 429
        user = authenticate(ctx.store, username, password) if len(username) <= MAX_USERNAME else None
        if user is None:
            ctx.throttle.failed(address, username)
            _audit("anonymous", "web:login-failed", None, **named)
            log.info("web_login_failed", known_user=known)
            flash("Unknown user name or wrong password.", "error")
            return render_template("login.html", next=target, username=username if known else ""), 401
        ctx.throttle.succeeded(address, username)
        session.clear()
        session.permanent = True
        session["sid"] = ctx.registry.open(user.username)
        csrf_token()
        _audit(user.username, "web:login", None)
        log.info("web_login", username=user.username, role=user.role)
        return redirect(target)

    @app.post("/logout")
    def logout() -> Any:
        if g.user is not None:
            _audit(g.user.username, "web:logout", None)
        ctx.registry.close(session.get("sid"))
        session.clear()
        return redirect(url_for("login"))

    @app.get("/")
    def index() -> Any:
        return redirect(url_for("worklist"))


def _register_worklist(app: Flask, ctx: WebContext) -> None:
    @app.get("/worklist")
    @login_required
    def worklist() -> Any:
        status = request.args.get("status", "active")
        status = status if status in STATUS_FILTERS else "active"
        sort = request.args.get("sort", "priority")
        sort = sort if sort in present.SORTS else "priority"
        query = request.args.get("q", "")[:100]
        reason = request.args.get("reason", "")
        items = ctx.store.worklist(None if status == "active" else status)
        rows = present.worklist_rows(ctx.store, ctx.review.labels, items)
        reasons = sorted({r for row in rows for r in row.reasons})
        rows = [r for r in rows if r.matches(query) and (not reason or reason in r.reasons)]
        counts = ctx.store.worklist_counts()
        counts["active"] = counts["open"] + counts["in_review"] + counts["escalated"]
        _audit(g.user.username, "web:worklist", None, status=status, shown=len(rows))
        return render_template(
            "worklist.html",
            rows=present.sort_rows(rows, sort),
            counts=counts,
            status=status,
            sort=sort,
            query=query,
            reason=reason,
            reasons=reasons,
            statuses=STATUS_FILTERS,
            sorts=present.SORTS,
        )


def _next_item(ctx: WebContext, after: int, username: str) -> WorklistItem | None:
    """The most urgent other case that is not being reviewed by someone else."""
    for item in ctx.store.worklist():
        if item.id != after and not (item.status == "in_review" and item.assignee not in (None, username)):
            return item
    return None


def _register_case(app: Flask, ctx: WebContext) -> None:
    @app.get("/case/<int:item_id>")
    @login_required
    def case(item_id: int) -> Any:
        item = _item_or_404(ctx, item_id)
        if not item.images:
            abort(404)
        uid = request.args.get("image") or next((u for u in item.images if u not in item.decided), item.images[0])
        if uid not in item.images:
            abort(404)
        # Looking claims nothing (a link prefetcher looks too): "Take this case" or a decision does.
        taken_by_other = item.status == "in_review" and item.assignee not in (None, g.user.username)
        _audit(g.user.username, "web:view-case", uid, worklist_id=item.id)
        labels = ctx.review.labels
        decisions = ctx.store.decisions(item.id)
        panel = present.image_panel(ctx.store, labels, item, uid, decisions)
        prediction = ctx.store.get_prediction(uid)
        heatmap = (
            ctx.engine is not None
            and prediction is not None
            and prediction.predicted is not None
            and prediction.model_sha256 == ctx.engine_sha
        )
        upcoming = _next_item(ctx, item.id, g.user.username)
        similar = ctx.similar.neighbours(uid, SIMILAR_K, exclude_case=item.case_key)
        slide = (
            None if prediction is None else slide_view.slide_context(ctx, uid, prediction, labels, present.reason_label)
        )
        if slide is not None:
            heatmap = bool(ctx.store.slide_fields(uid))  # the fields' stored Grad-CAMs, no model needed
        return render_template(
            "slide.html" if slide is not None else "case.html",
            slide=slide,
            similar=similar,
            item=item,
            panel=panel,
            labels=labels,
            heatmap=heatmap,
            next_item=upcoming,
            thumbs=[(i, u, u in item.decided) for i, u in enumerate(item.images)],
            others_undecided=sum(1 for u in item.images if u not in item.decided and u != uid),
            age=age_text(item.created_at),
            taken_by_other=taken_by_other,
        )

    @app.get("/similar/<uid>.png")
    @login_required
    def similar_image(uid: str) -> Any:
        """A reviewer-confirmed image shown as a similar case (no other image is served this way)."""
        instance = ctx.store.get_instance(uid)
        confirmed = ctx.similar.confirmed_row(uid)
        if confirmed is None or instance is None or not instance.on_disk:
            abort(404)
        _audit(g.user.username, "web:view-similar", uid)
        if instance.slide_key is not None:  # a slide: its diagnostic field, else its most suspicious one
            return imaging.png_response(
                ctx.thumbnails.get_or_make(f"similar:{uid}", lambda: slide_view.example_png(ctx, confirmed))
            )
        return imaging.png_response(
            ctx.thumbnails.get_or_make(uid, functools.partial(imaging.thumbnail_png, Path(instance.spool_path)))
        )

    @app.post("/case/<int:item_id>/claim")
    @login_required
    def claim(item_id: int) -> Any:
        item = _item_or_404(ctx, item_id)
        if item.status != "done":
            ctx.store.worklist_assign(item.id, g.user.username)
        return redirect(url_for("case", item_id=item.id, image=request.form.get("image") or None))

    @app.get("/case/<int:item_id>/image/<uid>.png")
    @login_required
    def case_image(item_id: int, uid: str) -> Any:
        path = _source_path(ctx, _item_or_404(ctx, item_id), uid)
        _audit(g.user.username, "web:view-image", uid, worklist_id=item_id)
        return imaging.png_response(ctx.images.get_or_make(uid, functools.partial(imaging.image_png, path)))

    @app.get("/case/<int:item_id>/heatmap/<uid>.png")
    @login_required
    def case_heatmap(item_id: int, uid: str) -> Any:
        path = _source_path(ctx, _item_or_404(ctx, item_id), uid)
        prediction = ctx.store.get_prediction(uid)
        if (
            ctx.engine is None
            or prediction is None
            or prediction.predicted is None
            or prediction.model_sha256 != ctx.engine_sha
        ):
            abort(404)
        _audit(g.user.username, "web:view-heatmap", uid, worklist_id=item_id)
        return imaging.png_response(
            ctx.heatmaps.get_or_make(uid, functools.partial(imaging.heatmap_png, path, ctx.engine))
        )

    @app.post("/case/<int:item_id>/decide")
    @login_required
    def decide(item_id: int) -> Any:
        item = _item_or_404(ctx, item_id)
        uid = request.form.get("image", "")
        decision, _, final_class = request.form.get("choice", "").partition(":")
        targets = [uid]
        if request.form.get("scope") == "case":  # one decision for the specimen: every image still undecided
            targets += [u for u in item.images if u not in item.decided and u != uid]
        if (
            item.status != "done"
            and item.assignee != g.user.username
            and not (item.status == "in_review" and item.assignee is not None)
        ):
            ctx.store.worklist_assign(item.id, g.user.username)  # deciding takes an unclaimed case
        viewed = _numbers(request.form.get("fields_viewed", ""))
        diagnostic = _numbers(request.form.get("diagnostic_field", ""))
        try:
            ctx.review.decide(
                item.id,
                decision,
                g.user.username,
                images=targets,
                final_class=final_class or None,
                comment=request.form.get("comment"),
                fields_viewed=viewed,
                diagnostic_field=diagnostic[0] if diagnostic else None,
            )
        except ReviewError as exc:
            flash(str(exc), "error")
            return redirect(url_for("case", item_id=item.id, image=uid))
        item = _item_or_404(ctx, item_id)
        remaining = [u for u in item.images if u not in item.decided]
        if remaining:
            flash("Decision recorded. Next image of this case.", "ok")
            return redirect(url_for("case", item_id=item.id, image=remaining[0]))
        upcoming = _next_item(ctx, item.id, g.user.username)
        if upcoming is not None:
            flash("Case complete: the verified report is on its way to the PACS. Next case.", "ok")
            return redirect(url_for("case", item_id=upcoming.id))
        flash("Case complete: the verified report is on its way to the PACS. The worklist is empty.", "ok")
        return redirect(url_for("worklist"))


def _register_admin(app: Flask, ctx: WebContext) -> None:
    @app.get("/admin")
    @admin_required
    def admin() -> Any:
        agreement = ctx.store.agreement()
        labels = ctx.review.labels
        columns = [*labels.classes, "non_diagnostic"]
        rows = [c for c in [*labels.classes, "none"] if c in agreement["pairs"]]
        counts = ctx.store.worklist_counts()
        _audit(g.user.username, "web:admin", None)
        manifest = ctx.engine.manifest if ctx.engine is not None else None
        monitoring = check_for(ctx.store, manifest, ctx.settings, ctx.engine_sha)
        return render_template(
            "admin.html",
            monitoring=monitoring,
            agreement=agreement,
            columns=columns,
            rows=rows,
            labels=labels,
            counts=counts,
            referral=ctx.store.referral_stats(),
            users=ctx.store.users(),
        )


def _register_calibration(app: Flask, ctx: WebContext) -> None:
    """The site calibration page: pool, certifiable rule, projection, certified rules; certify and activate
    need the admin's password again (a second factor of intent), and every attempt is audited."""

    def rules_or_404() -> BundleRules:
        rules = ctx.bundle_rules()
        if rules is None:
            abort(404)
        return rules

    @app.get("/admin/calibration")
    @admin_required
    def calibration_page() -> Any:
        rules = rules_or_404()
        report = calibration.status(ctx.settings, ctx.store, rules)
        would = report["would_certify"]
        chart = plots.risk_coverage_svg(report["risk_coverage"], report["alpha"], would["threshold"] if would else None)
        _audit(g.user.username, "web:calibration", None)
        return render_template("calibration.html", report=report, chart=Markup(chart), labels=ctx.review.labels)

    def confirmed_admin(action: str) -> str | None:
        """The signed-in admin, after their password; None (flashed, audited) when it is wrong."""
        address = request.remote_addr or "unknown"
        username = g.user.username
        if ctx.throttle.wait_s(address, username) > 0:
            flash("Too many failed attempts. Try again later.", "error")
            return None
        password = request.form.get("password", "")[:MAX_PASSWORD]
        if authenticate(ctx.store, username, password) is None:
            ctx.throttle.failed(address, username)
            _audit(username, f"web:calibration-{action}-refused", None)
            flash("Wrong password: nothing was changed.", "error")
            return None
        ctx.throttle.succeeded(address, username)
        return f"{username} (web)"

    def form_float(name: str, default: float) -> float:
        try:
            value = float(request.form.get(name, "") or default)
        except ValueError:
            abort(400)
        if not 0.0 < value < 1.0:
            abort(400)
        return value

    def act(action: str, do: Callable[[BundleRules, str], str]) -> Any:
        """One change, after the admin's password: flash what was done, or why not; back to the page."""
        rules = rules_or_404()
        actor = confirmed_admin(action)
        if actor is not None:
            try:
                flash(do(rules, actor), "ok")
            except (calibration.CalibrationError, ValueError) as exc:
                flash(str(exc), "error")
        return redirect(url_for("calibration_page"))

    @app.post("/admin/calibration/certify")
    @admin_required
    def calibration_certify() -> Any:
        def do(rules: BundleRules, actor: str) -> str:
            default_alpha, default_delta = ctx.settings.triage.risk_levels()
            alpha, delta = form_float("alpha", default_alpha), form_float("delta", default_delta)
            rule = calibration.certify(ctx.store, rules, alpha=alpha, delta=delta, actor=actor)
            return f"Site rule {rule.id} certified. It is not in force until it is activated."

        return act("certify", do)

    @app.post("/admin/calibration/activate")
    @admin_required
    def calibration_activate() -> Any:
        def do(rules: BundleRules, actor: str) -> str:
            rule = calibration.activate(ctx.store, rules, int(request.form.get("rule_id", "0")), actor=actor)
            return f"Site rule {rule.id} is active: every node finalises with it from the next image."

        return act("activate", do)

    @app.post("/admin/calibration/deactivate")
    @admin_required
    def calibration_deactivate() -> Any:
        def do(rules: BundleRules, actor: str) -> str:
            reason = request.form.get("reason", "").strip()[:500] or "deactivated on the admin page"
            rule = calibration.deactivate(ctx.store, rules, actor=actor, reason=reason)
            return f"Site rule {rule.id} deactivated: every case is reviewed again."

        return act("deactivate", do)
