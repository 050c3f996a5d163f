"""Login sessions, CSRF tokens, roles and response headers for the review web page.

The session cookie is signed (Flask) and also names a server-side session id, so logging out
or disabling a user ends the session at once, and a daemon restart ends every session.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Response, abort, g, redirect, request, session, url_for

from cds_daemon.common.clock import timestamp_in
from cds_daemon.store import Store, User

F = TypeVar("F", bound=Callable[..., Any])

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def load_secret_key(path: Path) -> bytes:
    """The cookie-signing key: read, or made once (mode 0600) so sessions survive a page reload, not a leak."""
    try:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(48)
    tmp = path.with_suffix(f".{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)  # fails if another node made the key first (shared data_dir): then use theirs
    except FileExistsError:
        key = path.read_bytes()
    finally:
        tmp.unlink(missing_ok=True)
    return key


class SessionRegistry:
    """Live login sessions, in the store: any node of a cluster serves any reviewer, and a restart keeps
    them. The cookie carries the session id; the store keeps only its SHA-256 (a stolen database holds
    no usable session)."""

    def __init__(self, store: Store, lifetime_s: float) -> None:
        self.store = store
        self.lifetime_s = lifetime_s

    @staticmethod
    def _key(sid: str) -> str:
        return hashlib.sha256(sid.encode()).hexdigest()

    def open(self, username: str) -> str:
        sid = secrets.token_urlsafe(24)
        self.store.session_open(self._key(sid), username, timestamp_in(self.lifetime_s))
        return sid

    def user_of(self, sid: str | None) -> str | None:
        """The user of a live session (None: unknown, closed or expired)."""
        return self.store.session_user(self._key(sid)) if sid else None

    def close(self, sid: str | None) -> None:
        if sid:
            self.store.session_close(self._key(sid))


def csrf_token() -> str:
    """The session's CSRF token (made on first use); every form posts it back."""
    token = session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return str(token)


def csrf_ok() -> bool:
    expected = session.get("csrf")
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    # compare_digest takes str only when it is ASCII: compare bytes, so a stray "é" is a refusal, not a 500
    return bool(expected) and hmac.compare_digest(str(expected).encode(), sent.encode("utf-8", "replace"))


def load_user(store: Store, registry: SessionRegistry) -> User | None:
    """The logged-in, still active user of this request, else None (and a stale session is dropped)."""
    username = registry.user_of(session.get("sid"))
    user = store.get_user(username) if username else None
    if user is None or user.disabled:
        if session.get("sid"):
            registry.close(session.get("sid"))
            session.pop("sid", None)
        return None
    return user


def safe_next(target: str | None) -> str:
    """Only a local path may follow a login: never another site."""
    if not target:
        return url_for("worklist")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("worklist")
    return target


#: Requests of the page's images and tiles: answered 401 (not the login page) without a login.
MEDIA_SUFFIXES = (".png", ".jpeg", ".dzi")


def login_required(view: F) -> F:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if g.user is None:
            if request.method == "GET" and not request.path.endswith(MEDIA_SUFFIXES):
                return redirect(url_for("login", next=request.full_path.rstrip("?")))
            abort(401)
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def admin_required(view: F) -> F:
    @functools.wraps(view)
    @login_required
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if g.user.role != "admin":
            abort(403)
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def secure_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    if not request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-store"
    return response
