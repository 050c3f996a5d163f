"""Reviewer accounts: scrypt password hashes, user creation and login checks.

Hashes are ``scrypt$n$r$p$salt$hash`` (base64 salt and hash) so the cost can be raised
later without invalidating existing passwords.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time

from cds_daemon.common.vocabulary import UserRole
from cds_daemon.store import Store, User

MIN_PASSWORD_LENGTH = 10
_USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
_N, _R, _P = 2**14, 8, 1
_DUMMY_HASH: str | None = None


class AuthError(ValueError):
    """A user name, role or password that cannot be accepted; the message says why."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=64 * 2**20, dklen=32)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=64 * 2**20,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def check_username(username: str) -> str:
    if not _USERNAME_RE.match(username):
        raise AuthError("a user name is 2-64 characters: lower-case letters, digits, '.', '_' or '-'")
    return username


def add_user(store: Store, username: str, password: str, role: str, full_name: str = "", *, actor: str) -> None:
    """Create the user, or replace the password/role of an existing one (which also re-enables it)."""
    check_username(username)
    if role not in {str(r) for r in UserRole}:
        raise AuthError(f"role must be one of {', '.join(UserRole)}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AuthError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    store.create_user(username, hash_password(password), role, full_name.strip(), actor=actor)


def authenticate(store: Store, username: str, password: str) -> User | None:
    """The active user with this password, else None. Unknown users cost the same scrypt run."""
    global _DUMMY_HASH
    user = store.get_user(username)
    if user is None or user.disabled:
        _DUMMY_HASH = _DUMMY_HASH or hash_password(secrets.token_hex(8))
        verify_password(password, _DUMMY_HASH)
        return None
    return user if verify_password(password, user.password_hash) else None


class LoginThrottle:
    """Counts failed logins per user name; after ``limit`` within ``window_s`` that name is locked."""

    def __init__(self, limit: int, window_s: float = 900.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, username: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(username, []) if now - t < self.window_s]
        self._failures[username] = times
        return times

    def locked(self, username: str) -> bool:
        with self._lock:
            return len(self._recent(username, time.monotonic())) >= self.limit

    def failed(self, username: str) -> None:
        with self._lock:
            self._recent(username, time.monotonic()).append(time.monotonic())

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._failures.pop(username, None)
