"""The console's users: people, not access keys. Passwords hashed with argon2id; sessions server-side, the
cookie's token stored only as its SHA-256, each with its own CSRF token; a user is locked out for a while after
repeated failed sign-ins. Every sign-in, failure and lock is an audit event."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from facegate.errors import AccessDeniedException, InvalidParameterException, ResourceNotFoundException
from facegate.store import ConsoleSession, ConsoleUser, Store

if TYPE_CHECKING:
    from facegate.governance import Governance

ROLES = ("reviewer", "operator", "auditor")
MAX_FAILED_LOGINS = 5
LOCKOUT_S = 15 * 60
SESSION_S = 8 * 3600
MIN_PASSWORD = 12
_HASHER = PasswordHasher()  # argon2id with the library's current parameters


@dataclass(frozen=True)
class SignedIn:
    user: ConsoleUser
    session: ConsoleSession
    token: str  # the cookie's value: shown to the browser once, stored only hashed


class ConsoleAccounts:
    def __init__(self, store: Store, governance: Governance) -> None:
        self.store = store
        self.governance = governance

    def create(
        self,
        username: str,
        role: str,
        organisations: tuple[str, ...],
        password: str | None = None,
        actor: str = "operator",
    ) -> str:
        """Create a user; returns the password (a one-time one, to be changed at first sign-in, if none given)."""
        if not username or not username.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise InvalidParameterException(f"Username {username!r}: letters, digits, '-', '_' and '.' only.")
        if role not in ROLES:
            raise InvalidParameterException(f"Role {role!r} is not one of {', '.join(ROLES)}.")
        if not organisations:
            raise InvalidParameterException("A console user needs the organisations it works for (or '*').")
        for org in organisations:
            if org != "*" and self.store.get_organisation(org) is None and org != "default":
                raise ResourceNotFoundException(f"Organisation {org} is not registered.")
        one_time = password is None
        password = password or secrets.token_urlsafe(12)
        _check_password(password)
        user = ConsoleUser(
            username, role, tuple(organisations), _HASHER.hash(password), time.time(), must_change_password=one_time
        )
        self.store.add_console_user(user)
        self.governance.record_event(
            "console_user_created", actor, username=username, role=role, organisations=list(organisations)
        )
        return password

    def sign_in(self, username: str, password: str, source: str) -> SignedIn:
        """A new session, or AccessDeniedException (the same message whether the user exists or not)."""
        refused = AccessDeniedException("Wrong username or password, or the account is locked for a while.")
        plausible = 0 < len(username) <= 64 and "\0" not in username and "\0" not in password
        user = self.store.get_console_user(username) if plausible else None
        now = time.time()
        if user is None:
            _HASHER.hash(password)  # the same time spent as for a real user
            self.governance.record_event("console_sign_in_failed", "console", username=username[:64], source=source)
            raise refused
        if user.locked_until is not None and user.locked_until > now:
            _HASHER.hash(password)  # a locked account answers in the same time as any other
            self.governance.record_event("console_sign_in_refused", "console", username=username, reason="locked")
            raise refused
        try:
            _HASHER.verify(user.password_hash, password)
        except (VerificationError, InvalidHashError):
            failed = self.store.count_failed_login(username)  # counted in the database: parallel guesses each count
            locked = now + LOCKOUT_S if failed >= MAX_FAILED_LOGINS else None
            if locked:
                self.store.update_console_user(username, failed_logins=0, locked_until=locked)
            self.governance.record_event(
                "console_sign_in_failed", "console", username=username, source=source, locked=locked is not None
            )
            raise refused from None
        self.store.update_console_user(username, failed_logins=0, locked_until=None)
        self.governance.record_event("console_signed_in", f"console:{username}", source=source)
        return self._new_session(user)

    def _new_session(self, user: ConsoleUser) -> SignedIn:
        now = time.time()
        token = secrets.token_urlsafe(32)
        session = ConsoleSession(_digest(token), user.username, secrets.token_urlsafe(24), now, now + SESSION_S)
        self.store.add_session(session)
        return SignedIn(user, session, token)

    def session(self, token: str | None) -> tuple[ConsoleUser, ConsoleSession] | None:
        if not token:
            return None
        session = self.store.get_session(_digest(token))
        if session is None or session.expires_at < time.time():
            return None
        user = self.store.get_console_user(session.username)
        return (user, session) if user is not None else None

    def sign_out(self, token: str) -> None:
        self.store.delete_sessions(token_hash=_digest(token))

    def change_password(self, user: ConsoleUser, current: str, new: str) -> SignedIn:
        """The new password, every session of the user ended (whoever used the old one is out) and a new one."""
        try:
            _HASHER.verify(user.password_hash, current)
        except (VerificationError, InvalidHashError):
            raise AccessDeniedException("The current password is wrong.") from None
        _check_password(new)
        self.store.update_console_user(user.username, password_hash=_HASHER.hash(new), must_change_password=False)
        self.store.delete_sessions(username=user.username)
        self.governance.record_event("console_password_changed", f"console:{user.username}")
        return self._new_session(self.store.get_console_user(user.username) or user)

    def users(self) -> list[ConsoleUser]:
        return self.store.list_console_users()


def csrf_matches(session: ConsoleSession, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf_token, sent or "")


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidParameterException(f"A password needs at least {MIN_PASSWORD} characters.")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
