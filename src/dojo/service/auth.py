"""API tokens: made once, stored as argon2 hashes, checked on every request (style rule 16).

A token reads `dojo_<id>_<secret>`: the id (public, 12 hex digits) finds the row, the secret
(32 random bytes, URL-safe) is checked against the argon2id hash stored there. The token itself is
printed once by `dojo admin tenant create` and never stored, logged or echoed in an error.
Verified tokens are remembered in memory for a minute by their SHA-256 (never in clear), so a
polling client does not pay argon2's deliberate cost on every request.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ROLES = ("admin", "member", "read-only")
CACHE_S = 60.0
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)  # OWASP minimum


@dataclass(frozen=True)
class Identity:
    """Who is calling: the tenant, the token's id (the actor in the audit log) and its role."""

    tenant: str
    token_id: str
    role: str

    def can_write(self) -> bool:
        return self.role in ("admin", "member")


def new_token() -> tuple[str, str, str]:
    """(token id, the token to hand out once, its argon2 hash to store)."""
    token_id = secrets.token_hex(6)
    token = f"dojo_{token_id}_{secrets.token_urlsafe(32)}"
    return token_id, token, _hasher.hash(token)


class Verifier:
    """Checks bearer tokens against the store; `check` returns an Identity or None."""

    def __init__(self, lookup: Any) -> None:
        self._lookup = lookup  # token id -> row dict (tenant_id, role, hash, expires_at) or None
        self._cache: dict[str, tuple[float, Identity | None]] = {}  # also recent refusals
        self._lock = threading.Lock()

    def check(self, token: str, now: float | None = None) -> Identity | None:
        now = time.time() if now is None else now
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "dojo" or len(token) > 200:
            return None
        row = self._lookup(parts[1])
        if row is None or (row["expires_at"] is not None and row["expires_at"] <= now):
            return None
        try:
            _hasher.verify(row["hash"], token)
        except (VerificationError, InvalidHashError):
            # The same wrong token again costs no argon2 for a while (a flood of it, no CPU).
            with self._lock:
                self._cache[digest] = (now + CACHE_S, None)
            return None
        who = Identity(row["tenant_id"], row["id"], row["role"])
        until = now + CACHE_S
        if row["expires_at"] is not None:
            until = min(until, row["expires_at"])
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (until, who)
        return who
