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

from cds_daemon.common.clock import timestamp_in
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


def issue_token(store: Store, user: User, hours: float, *, actor: str) -> str:
    """A random token that stands for ``user`` on the command line for ``hours``; only its hash is kept."""
    token = secrets.token_urlsafe(32)
    store.add_token(hashlib.sha256(token.encode()).hexdigest(), user.username, timestamp_in(hours * 3600), actor=actor)
    return token


def token_user(store: Store, token: str) -> User | None:
    """The active user a token stands for, else None (unknown, expired, or the user is disabled)."""
    username = store.token_user(hashlib.sha256(token.strip().encode()).hexdigest())
    user = store.get_user(username) if username else None
    return user if user is not None and not user.disabled else None


class LoginThrottle:
    """Exponential backoff of failed logins, per (address, user name) and per address; never a lockout.

    After ``free`` failures for one user name from one address, each further attempt from there must
    wait ``base_s * 2**(failures - free)`` seconds (at most ``max_s``); after ``address_free`` failures
    from one address for any names (password spraying), the same for the whole address. Someone else's
    failures, from another address, never delay a user, and the right password always works once the
    wait is over (a success clears that user's count). Counters are forgotten after ``max_s`` without a
    failure, and at most ``capacity`` are kept, so memory stays bounded whatever names are tried.
    """

    def __init__(
        self,
        free: int = 5,
        *,
        address_free: int = 20,
        base_s: float = 1.0,
        max_s: float = 900.0,
        capacity: int = 10_000,
    ) -> None:
        self.free, self.address_free = free, address_free
        self.base_s, self.max_s, self.capacity = base_s, max_s, capacity
        self._failures: dict[tuple[str, str], tuple[int, float]] = {}  # key -> (count, last failure)
        self._lock = threading.Lock()

    def _delay(self, key: tuple[str, str], free: int, now: float) -> float:
        count, last = self._failures.get(key, (0, 0.0))
        if count < free or now - last > self.max_s:
            return 0.0
        wait = min(self.max_s, self.base_s * 2.0 ** (count - free))
        return max(0.0, last + wait - now)

    def wait_s(self, address: str, username: str) -> float:
        """Seconds until this address may try this user name again (0: now)."""
        now = time.monotonic()
        with self._lock:
            return max(
                self._delay((address, username), self.free, now), self._delay((address, ""), self.address_free, now)
            )

    def failed(self, address: str, username: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in ((address, username), (address, "")):
                count, last = self._failures.get(key, (0, 0.0))
                self._failures[key] = (1 if now - last > self.max_s else count + 1, now)
            if len(self._failures) > self.capacity:
                oldest = sorted(self._failures.items(), key=lambda kv: kv[1][1])[: len(self._failures) // 2]
                for key, _ in oldest:
                    del self._failures[key]

    def succeeded(self, address: str, username: str) -> None:
        with self._lock:
            self._failures.pop((address, username), None)
