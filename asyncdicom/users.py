"""A users file for User Identity negotiation (PS3.7 D.3.3.7) on the acceptor.

One line per user, ``USER:scrypt$N$R$P$SALT$HASH``: the password is never stored, only its
scrypt hash (:func:`hashlib.scrypt`) with a random 16-byte salt per user, both in URL-safe
base64 without padding; ``N``, ``R`` and ``P`` are the scrypt costs the hash was made with, so
a file stays readable when the defaults change.  Blank lines and lines starting with ``#`` are
ignored.

>>> store = UserStore.load("users.txt")
>>> ae.on_user_identity(store.identity_handler())

The handler accepts identity type 2 (username and passcode) when the passcode matches, and type
1 (username only) when the user exists and ``allow_username_only`` is true; the other types
(Kerberos, SAML, JWT) go to the ``fallback`` handler given, and are refused without one.  Every
check of a passcode runs the hash, also for a user who does not exist, so the time taken does
not tell which user names exist; the comparison is :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .protocol.negotiation import IdentityDecision
from .protocol.pdu import AssociateRQ, UserIdentityRQSubItem

__all__ = [
    "SCRYPT_N",
    "SCRYPT_P",
    "SCRYPT_R",
    "USERNAME",
    "USERNAME_AND_PASSCODE",
    "PasswordHash",
    "UserStore",
    "UsersFileError",
    "check_username",
    "hash_password",
]

#: User Identity types (PS3.7 Table D.3-14)
USERNAME = 1
USERNAME_AND_PASSCODE = 2

#: scrypt costs of new hashes: 2**14 blocks of 8 x 128 bytes (16 MiB, tens of milliseconds)
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
#: bounds on the costs read from a file: a corrupt line must not make a check take minutes
#: or gigabytes
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16

IdentityCallback = Callable[
    [AssociateRQ, UserIdentityRQSubItem], Awaitable[IdentityDecision] | IdentityDecision
]


class UsersFileError(ValueError):
    """A users file that cannot be read or has a line that is not ``USER:HASH``."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    # strict: a character outside the alphabet is an error, not skipped
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def check_username(name: str) -> str:
    """``name`` if it can be a user of the file (1-256 characters, no ``:``, no control
    characters, not starting with ``#``, no leading or trailing spaces); else ``ValueError``."""
    if not name:
        raise ValueError("the user name is empty")
    if len(name) > 256:
        raise ValueError("the user name is longer than 256 characters")
    if ":" in name or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise ValueError(f"the user name {name!r} has a ':' or a control character")
    if name.startswith("#") or name != name.strip():
        raise ValueError(f"the user name {name!r} starts with '#' or has surrounding spaces")
    return name


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A salted scrypt hash, as ``scrypt$N$R$P$SALT$HASH``."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        """Read ``scrypt$N$R$P$SALT$HASH``; ``ValueError`` if it is not one."""
        parts = text.split("$")
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError("not a scrypt$N$R$P$SALT$HASH password hash")
        try:
            n, r, p = (int(x, 10) for x in parts[1:4])
            salt, digest = _unb64(parts[4]), _unb64(parts[5])
        except ValueError:
            raise ValueError("a malformed scrypt$N$R$P$SALT$HASH password hash") from None
        if n < 2 or n & (n - 1) or n > _MAX_N or not 1 <= r <= _MAX_R or not 1 <= p <= _MAX_P:
            raise ValueError(f"scrypt costs out of range: N={n} r={r} p={p}")
        if not salt or not 16 <= len(digest) <= 64:
            raise ValueError("a scrypt hash without salt or with a bad length")
        return cls(n, r, p, salt, digest)

    def __str__(self) -> str:
        return f"scrypt${self.n}${self.r}${self.p}${_b64(self.salt)}${_b64(self.digest)}"

    def _derive(self, password: bytes) -> bytes:
        return hashlib.scrypt(
            password,
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=256 * self.n * self.r + 1024 * 1024,
            dklen=len(self.digest),
        )

    def verify(self, password: bytes) -> bool:
        """Whether ``password`` has this hash (constant-time comparison)."""
        return hmac.compare_digest(self._derive(password), self.digest)


def hash_password(password: str | bytes) -> PasswordHash:
    """A new scrypt hash of ``password`` (UTF-8 if text) with a fresh random salt."""
    raw = password.encode("utf-8") if isinstance(password, str) else password
    if not raw:
        raise ValueError("the password is empty")
    salt = secrets.token_bytes(_SALT_BYTES)
    template = PasswordHash(SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, b"\0" * _HASH_BYTES)
    return PasswordHash(SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, template._derive(raw))


#: hashed against when the user does not exist, so that the answer takes as long
_DUMMY = PasswordHash(SCRYPT_N, SCRYPT_R, SCRYPT_P, b"\0" * _SALT_BYTES, b"\0" * _HASH_BYTES)


class UserStore:
    """Users and their password hashes, as read from (and written to) a users file.

    ``allow_username_only``: accept identity type 1 (a user name without passcode) for a user
    in the store.  Type 1 identifies; it does not authenticate: turn it off to require a
    passcode.
    """

    def __init__(
        self, users: dict[str, PasswordHash] | None = None, *, allow_username_only: bool = True
    ) -> None:
        self.users: dict[str, PasswordHash] = dict(users or {})
        self.allow_username_only = allow_username_only

    # ------------------------------------------------------------------ the file

    @classmethod
    def parse(cls, lines: Iterable[str], *, allow_username_only: bool = True) -> UserStore:
        """A store from the lines of a users file; :class:`UsersFileError` names a bad line."""
        users: dict[str, PasswordHash] = {}
        for number, line in enumerate(lines, 1):
            text = line.rstrip("\r\n")
            if not text.strip() or text.startswith("#"):
                continue
            name, sep, hashed = text.rpartition(":")
            try:
                if not sep:
                    raise ValueError("expected USER:scrypt$N$R$P$SALT$HASH")
                check_username(name)
                if name in users:
                    raise ValueError(f"the user {name!r} is listed twice")
                users[name] = PasswordHash.parse(hashed)
            except ValueError as exc:
                raise UsersFileError(f"line {number}: {exc}") from None
        return cls(users, allow_username_only=allow_username_only)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, allow_username_only: bool = True) -> UserStore:
        """Read a users file; :class:`UsersFileError` if it cannot be read or is malformed."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise UsersFileError(f"cannot read {str(path)!r}: {reason}") from None
        return cls.parse(text.splitlines(), allow_username_only=allow_username_only)

    def dumps(self) -> str:
        """The users file text (users sorted by name)."""
        return "".join(f"{name}:{self.users[name]}\n" for name in sorted(self.users))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the file atomically (a temporary file renamed over it), readable by its owner
        only."""
        target = Path(path)
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(self.dumps())
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temp, 0o600)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def add(self, name: str, password: str | bytes) -> bool:
        """Set ``name``'s password (a new hash and salt); True if the user was new."""
        check_username(name)
        new = name not in self.users
        self.users[name] = hash_password(password)
        return new

    def remove(self, name: str) -> bool:
        """Remove ``name``; False if there was no such user."""
        return self.users.pop(name, None) is not None

    # ------------------------------------------------------------------ checks

    def verify(self, name: str | bytes, password: str | bytes) -> bool:
        """Whether ``name`` exists and ``password`` is its password.  Takes as long for a user
        that does not exist."""
        try:
            user = name.decode("utf-8") if isinstance(name, bytes) else name
        except UnicodeDecodeError:
            user = ""
        raw = password.encode("utf-8") if isinstance(password, str) else password
        stored = self.users.get(user)
        matches = (stored or _DUMMY).verify(raw)
        return stored is not None and matches

    def check(self, item: UserIdentityRQSubItem) -> IdentityDecision:
        """The decision for a User Identity sub-item of type 1 or 2 (others are refused)."""
        if item.identity_type == USERNAME_AND_PASSCODE:
            ok = bool(item.secondary_field) and self.verify(
                item.primary_field, item.secondary_field
            )
            return IdentityDecision(accepted=ok)
        if item.identity_type == USERNAME and self.allow_username_only:
            try:
                user = item.primary_field.decode("utf-8")
            except UnicodeDecodeError:
                return IdentityDecision(accepted=False)
            return IdentityDecision(accepted=user in self.users)
        return IdentityDecision(accepted=False)

    def identity_handler(self, fallback: IdentityCallback | None = None) -> IdentityCallback:
        """A handler for :meth:`asyncdicom.AE.on_user_identity`: types 1 and 2 checked here
        (in a worker thread, since it is a plain function: the hash takes tens of
        milliseconds), any other type passed to ``fallback`` (an LDAP, JWT or Kerberos check
        of the application), refused without one."""

        if fallback is None:

            def handler(rq: AssociateRQ, item: UserIdentityRQSubItem) -> IdentityDecision:
                return self.check(item)

            return handler

        async def with_fallback(rq: AssociateRQ, item: UserIdentityRQSubItem) -> IdentityDecision:
            from .services import call

            decision: IdentityDecision
            if item.identity_type in (USERNAME, USERNAME_AND_PASSCODE):
                decision = await call(self.check, item)
            else:
                decision = await call(fallback, rq, item)
            return decision

        return with_fallback

    def __len__(self) -> int:
        return len(self.users)

    def __contains__(self, name: object) -> bool:
        return name in self.users
