"""Review page accounts."""

from __future__ import annotations

from cds_daemon.common.clock import timestamp
from cds_daemon.store.database import StoreBase
from cds_daemon.store.records import User


class UserStore(StoreBase):
    def create_user(self, username: str, password_hash: str, role: str, full_name: str = "", *, actor: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO users (username, password_hash, role, full_name, created_at) VALUES (?,?,?,?,?)"
                " ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, role = excluded.role,"
                " full_name = excluded.full_name, disabled = 0",
                (username, password_hash, role, full_name, timestamp()),
            )
            self._audit(db, actor, "user:set", None, {"username": username, "role": role})

    def get_user(self, username: str) -> User | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        return None if row is None else User(**{**dict(row), "disabled": bool(row["disabled"])})

    def users(self) -> list[User]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM users ORDER BY username").fetchall()
        return [User(**{**dict(r), "disabled": bool(r["disabled"])}) for r in rows]

    def disable_user(self, username: str, *, actor: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE users SET disabled = 1 WHERE username = ?", (username,))
            db.execute("DELETE FROM web_sessions WHERE username = ?", (username,))
            self._audit(db, actor, "user:disable", None, {"username": username})

    def add_token(self, token_sha256: str, username: str, expires_at: str, *, actor: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO user_tokens (token_sha256, username, created_at, expires_at) VALUES (?,?,?,?)",
                (token_sha256, username, timestamp(), expires_at),
            )
            self._audit(db, actor, "user:token", None, {"username": username, "expires_at": expires_at})

    def token_user(self, token_sha256: str) -> str | None:
        """The user name of an unexpired token, else None."""
        with self._lock:
            row = self._db.execute(
                "SELECT username FROM user_tokens WHERE token_sha256 = ? AND expires_at > ?",
                (token_sha256, timestamp()),
            ).fetchone()
        return None if row is None else str(row[0])

    # --- review page sessions: in the database, so that any node serves any reviewer -----------------

    def session_open(self, sid_sha256: str, username: str, expires_at: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM web_sessions WHERE expires_at <= ?", (timestamp(),))
            db.execute(
                "INSERT INTO web_sessions (sid_sha256, username, created_at, expires_at) VALUES (?,?,?,?)",
                (sid_sha256, username, timestamp(), expires_at),
            )

    def session_user(self, sid_sha256: str) -> str | None:
        """The user of a live session, else None (unknown, expired or closed)."""
        with self._lock:
            row = self._db.execute(
                "SELECT username FROM web_sessions WHERE sid_sha256 = ? AND expires_at > ?", (sid_sha256, timestamp())
            ).fetchone()
        return None if row is None else str(row[0])

    def session_close(self, sid_sha256: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM web_sessions WHERE sid_sha256 = ?", (sid_sha256,))
