"""Sign-in, CSRF and one-time form tokens.

* **Passwords**: local users with Argon2id hashes in the settings (``console.users``); an
  unknown name costs the same verification as a wrong password, so timing does not tell
  which names exist.
* **Session**: a cookie signed with ``console.session_secret`` (Starlette's
  ``SessionMiddleware``, itsdangerous), HttpOnly, SameSite=Strict, expiring after
  ``console.session_max_age_s``; it holds the analyst's name and the session's CSRF token.
  Signing in starts a fresh session (no fixation); a user removed from the settings is
  signed out at their next request.
* **CSRF**: every form carries the session's token, compared in constant time on each POST.
* **One-time form tokens**: each case form rendered gets a token of its own, bound to the
  case and the analyst, that a POST redeems once; a replayed or double-submitted form finds
  it gone. The token also keeps, server-side, what the form showed (the audit's ``seen``).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


def hash_password(password: str) -> str:
    """An Argon2id hash (argon2-cffi's defaults: RFC 9106's low-memory profile)."""
    return PasswordHasher().hash(password)


class Passwords:
    def __init__(self, users: dict[str, str]) -> None:
        self.users = dict(users)
        self._hasher = PasswordHasher()
        self._stand_in = self._hasher.hash(secrets.token_urlsafe(16))

    def knows(self, name: str | None) -> bool:
        return name is not None and name in self.users

    def verify(self, name: str, password: str) -> bool:
        hashed = self.users.get(name)
        try:
            self._hasher.verify(hashed or self._stand_in, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return hashed is not None


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(expected: Any, submitted: Any) -> bool:
    return (
        isinstance(expected, str)
        and isinstance(submitted, str)
        and bool(expected)
        and hmac.compare_digest(expected.encode(), submitted.encode())
    )


@dataclass(frozen=True)
class _Issued:
    case_id: str
    analyst: str
    seen: dict[str, Any]
    expires: float


class FormTokens:
    def __init__(
        self, ttl_s: float = 8 * 3600, limit: int = 50_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.limit = limit
        self.clock = clock
        self._issued: dict[str, _Issued] = {}  # in issue order
        self._lock = threading.Lock()

    def issue(self, case_id: str, analyst: str, seen: dict[str, Any]) -> str:
        token = secrets.token_urlsafe(24)
        now = self.clock()
        with self._lock:
            while self._issued and (
                len(self._issued) >= self.limit or next(iter(self._issued.values())).expires <= now
            ):
                del self._issued[next(iter(self._issued))]
            self._issued[token] = _Issued(case_id, analyst, seen, now + self.ttl_s)
        return token

    def redeem(self, token: str, case_id: str, analyst: str) -> dict[str, Any] | None:
        """What the form showed, once; None for a token already used, expired, unknown, or
        issued for another case or analyst (which stays usable by its owner)."""
        with self._lock:
            issued = self._issued.get(token)
            if issued is None or issued.case_id != case_id or issued.analyst != analyst:
                return None
            del self._issued[token]
        return issued.seen if issued.expires > self.clock() else None
