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

:class:`Lockout` throttles password guessing: after a number of failed checks for one user name
or from one address, further attempts are refused for a while without being checked.

>>> ae.on_user_identity(store.identity_handler(), lockout=Lockout(max_failures=5))
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import secrets
import tempfile
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import anyio

from .errors import UsersFileError
from .log import get_logger
from .protocol.negotiation import IdentityDecision
from .protocol.pdu import AssociateRQ, UserIdentityRQSubItem

__all__ = [
    "SCRYPT_N",
    "SCRYPT_P",
    "SCRYPT_R",
    "USERNAME",
    "USERNAME_AND_PASSCODE",
    "Lockout",
    "LockoutAttempt",
    "PasswordHash",
    "UserStore",
    "UsersFileError",
    "check_username",
    "hash_password",
    "identity_user_name",
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


def _stamp(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """What tells a changed file: inode (a file saved by renaming a new one over it), size and
    modification time."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UsersFileError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _read(path: str | os.PathLike[str]) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsersFileError(f"cannot read {str(path)!r}: {reason}") from None
    return text.splitlines()


class UserStore:
    """Users and their password hashes, as read from (and written to) a users file.

    ``allow_username_only``: accept identity type 1 (a user name without passcode) for a user
    in the store.  Type 1 identifies; it does not authenticate: turn it off to require a
    passcode.

    A store read with :meth:`load` follows its file: before each check it looks whether the
    file changed (one ``stat``, in the worker thread of the check) and reads it again, so
    users added, changed or removed with ``asyncdicom users`` take effect without a restart.
    A file that has become unreadable or malformed is not used: the users read last stay in
    force and a warning is logged (once per change of the file).
    """

    def __init__(
        self, users: dict[str, PasswordHash] | None = None, *, allow_username_only: bool = True
    ) -> None:
        self.users: dict[str, PasswordHash] = dict(users or {})
        self.allow_username_only = allow_username_only
        #: the file followed (set by :meth:`load`), and what it looked like when last read
        self.path: Path | None = None
        self._stamp: tuple[int, int, int] | None = None

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
        stamp = _stamp(path)
        store = cls.parse(_read(path), allow_username_only=allow_username_only)
        store.path = Path(path)
        store._stamp = stamp
        return store

    def refresh(self) -> bool:
        """Read the file again if it changed since it was last read (see the class); True
        when the users were replaced.  Never raises: a bad file is logged and ignored."""
        path = self.path
        if path is None:
            return False
        try:
            stamp = _stamp(path)
        except UsersFileError as exc:
            stamp = None
            problem = str(exc)
        else:
            if stamp == self._stamp:
                return False
            try:
                fresh = UserStore.parse(_read(path))
            except UsersFileError as exc:
                problem = str(exc)
            else:
                self.users = fresh.users
                self._stamp = stamp
                get_logger().info("users_file_reloaded", path=str(path), users=len(self.users))
                return True
        if stamp != self._stamp:
            get_logger().warning(
                "users_file_not_reloaded", path=str(path), problem=problem, kept=len(self.users)
            )
            self._stamp = stamp  # warn once per change, not at every check
        return False

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
        """The decision for a User Identity sub-item of type 1 or 2 (others are refused);
        the file is looked at first (:meth:`refresh`)."""
        self.refresh()
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
            from .services.base import call

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


# ------------------------------------------------------------------------------- lock-out

#: the longest user name kept as it is in the audit trail, logs and lock-out keys
MAX_REPORTED_NAME = 256


def identity_user_name(item: UserIdentityRQSubItem) -> str | None:
    """The user name of a User Identity sub-item of type 1 or 2, fit for logs and audit
    trails (undecodable bytes replaced, control characters written ``\\xNN``, longer names cut
    to 256 characters and marked with ``...``), else ``None``: the primary field of the other
    types (Kerberos ticket, SAML assertion, JWT) is a credential, and the secondary field (the
    passcode) is never read here."""
    if item.identity_type not in (USERNAME, USERNAME_AND_PASSCODE):
        return None
    name = item.primary_field.decode("utf-8", errors="replace")
    if any(_is_control(ch) for ch in name):
        name = "".join(f"\\x{ord(ch):02x}" if _is_control(ch) else ch for ch in name)
    if len(name) > MAX_REPORTED_NAME:
        name = name[:MAX_REPORTED_NAME] + "..."
    return name


def _is_control(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code < 0xA0 or ch in "\u2028\u2029"


@dataclass(frozen=True, slots=True)
class LockoutAttempt:
    """An identity check that :meth:`Lockout.admit` let through; hand it back to
    :meth:`Lockout.finish` with the outcome."""

    user: str | None
    host: str | None
    keys: tuple[str, ...]


class _Record:
    """What a :class:`Lockout` knows about one user name or address."""

    __slots__ = ("failures", "locked_until", "pending")

    def __init__(self, max_failures: int) -> None:
        #: times of the recent failed checks (at most ``max_failures``)
        self.failures: deque[float] = deque(maxlen=max_failures)
        #: checks in progress
        self.pending = 0
        self.locked_until = -math.inf


_USER = "user\0"
_HOST = "host\0"


class Lockout:
    """Lock-out against password guessing, for :meth:`asyncdicom.AE.on_user_identity`.

    After ``max_failures`` failed identity checks within ``window`` seconds for one user name,
    or from one peer address, further attempts for that user or from that address are refused
    for ``duration`` seconds without being checked (the identity handler is not called).  The
    peer gets the same A-ASSOCIATE-RJ as for a wrong password; only the audit trail and the log
    say "locked out".  A successful check clears the failures of its user name (not those of
    its address: one valid account must not reset the count of an address that tries others).
    Attempts made during a lock-out neither count nor extend it.

    Checks that run at the same time count too: while the failures plus the checks in progress
    for a user name or address would reach ``max_failures``, a new attempt waits for one of
    them to finish, so parallel connections get no more guesses than sequential ones.

    At most ``max_keys`` user names and addresses are tracked (the least recently failed are
    forgotten first), whatever the peers send; a user name longer than 256 characters is
    tracked by its hash.  ``clock`` (default :func:`anyio.current_time`) gives the time in
    seconds; tests pass a clock of their own.  Use one instance from one event loop.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 60.0,
        duration: float = 60.0,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not 1 <= max_failures <= 1000:
            raise ValueError(f"max_failures must be 1 to 1000, not {max_failures}")
        for name, value in (("window", window), ("duration", duration)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, not {value}")
        if max_keys < 2:
            raise ValueError(f"max_keys must be at least 2, not {max_keys}")
        #: failed checks that start a lock-out
        self.max_failures = max_failures
        #: seconds within which the failures are counted
        self.window = float(window)
        #: seconds a lock-out lasts
        self.duration = float(duration)
        #: user names and addresses tracked at most
        self.max_keys = max_keys
        self._clock = clock or anyio.current_time
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._changed: anyio.Event | None = None

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        """How many user names and addresses are tracked."""
        return len(self._records)

    @staticmethod
    def _keys(user: str | None, host: str | None) -> tuple[str, ...]:
        keys: list[str] = []
        if user is not None:
            if len(user) > MAX_REPORTED_NAME:
                digest = hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()
                user = f"sha256:{digest}"
            keys.append(_USER + user)
        if host is not None:
            keys.append(_HOST + host)
        return tuple(keys)

    def locked_by(self, user: str | None = None, host: str | None = None) -> tuple[str, ...]:
        """Which of ``user`` and ``host`` is locked out right now: ``("user",)``,
        ``("address",)``, both, or ``()``."""
        now = self._clock()
        out: list[str] = []
        for key in self._keys(user, host):
            record = self._records.get(key)
            if record is not None and record.locked_until > now:
                out.append("user" if key.startswith(_USER) else "address")
        return tuple(out)

    # ------------------------------------------------------------------ checks

    async def admit(self, user: str | None, host: str | None) -> LockoutAttempt | None:
        """Before an identity check for ``user`` (``None`` for a token type) from ``host``:
        ``None`` if either is locked out (refuse without checking), else the attempt to pass
        to :meth:`finish`.  Waits while the checks in progress could use up the last tries."""
        keys = self._keys(user, host)
        while True:
            now = self._clock()
            if self.locked_by(user, host):
                return None
            if all(self._room(key, now) for key in keys):
                break
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()
        for key in keys:
            self._record(key).pending += 1
        return LockoutAttempt(user, host, keys)

    def finish(self, attempt: LockoutAttempt, *, accepted: bool | None) -> tuple[str, ...]:
        """After the check of ``attempt``: ``accepted`` True (a success clears the user's
        failures), False (a failure, counted for the user name and the address) or ``None``
        (no outcome: the check was cancelled).  Returns what this failure locked out,
        ``("user",)``, ``("address",)``, both or ``()``."""
        now = self._clock()
        locked: list[str] = []
        for key in attempt.keys:
            is_user = key.startswith(_USER)
            record = self._record(key) if accepted is False else self._records.get(key)
            if record is None:
                continue  # forgotten while the check ran (the table was full)
            record.pending = max(0, record.pending - 1)
            if accepted is False:
                self._prune(record, now)
                record.failures.append(now)
                self._records.move_to_end(key)
                if len(record.failures) >= self.max_failures:
                    record.failures.clear()
                    record.locked_until = now + self.duration
                    locked.append("user" if is_user else "address")
            elif accepted and is_user:
                record.failures.clear()
                record.locked_until = -math.inf
            if not record.pending and not record.failures and record.locked_until <= now:
                del self._records[key]
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        return tuple(locked)

    # ------------------------------------------------------------------ bookkeeping

    def _prune(self, record: _Record, now: float) -> None:
        horizon = now - self.window
        while record.failures and record.failures[0] <= horizon:
            record.failures.popleft()

    def _room(self, key: str, now: float) -> bool:
        record = self._records.get(key)
        if record is None:
            return True
        self._prune(record, now)
        return len(record.failures) + record.pending < self.max_failures

    def _record(self, key: str) -> _Record:
        record = self._records.get(key)
        if record is None:
            if len(self._records) >= self.max_keys:
                self._evict()
            record = self._records[key] = _Record(self.max_failures)
        return record

    def _evict(self) -> None:
        """Forget the least recently failed key that has no check in progress (or, if every
        key has one, the oldest)."""
        for key, record in self._records.items():
            if not record.pending:
                del self._records[key]
                return
        self._records.popitem(last=False)
