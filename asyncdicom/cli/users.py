"""``asyncdicom users``: manage the users file of ``storescp --users`` / ``qrscp --users``.

``asyncdicom users add FILE USER (--password PW | --password-stdin)`` adds a user, or sets the
password of one that exists, with a salted scrypt hash (:mod:`asyncdicom.users`); the file is
created if needed (readable by its owner only) and always rewritten atomically.
``asyncdicom users remove FILE USER`` removes one, ``asyncdicom users list FILE`` prints the
user names (one per line, on standard output) and ``asyncdicom users check FILE USER
(--password PW | --password-stdin)`` tells whether a password is the user's (exit status 0) or
not (1), without an association.  ``--password-stdin`` reads the password from the first line
of standard input, which keeps it out of the process list and the shell history; prefer it to
``--password``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..users import UsersFileError, UserStore, check_username
from .apps import APPS
from .options import add_common
from .output import err, notice

__all__ = ["ACTIONS", "add_parser", "run", "user_name"]

#: what ``asyncdicom users`` does
ACTIONS = ("add", "remove", "list", "check")


def user_name(text: str) -> str:
    """An argparse type: a user name the users file can hold."""
    try:
        return check_username(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _file(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("the file name is empty")
    return Path(text)


def add_parser(sub: Any) -> None:
    """Add the ``users`` sub-command to ``sub``."""
    p = sub.add_parser(
        "users",
        help=APPS["users"],
        description="Add, remove, list or check users of a users file: one USER:scrypt$... "
        "line each, never the password itself.",
    )
    p.add_argument(
        "users_action",
        choices=ACTIONS,
        metavar="ACTION",
        help="add: add a user, or set a new password for one; remove: remove a user; "
        "list: print the user names; check: exit 0 if the password is the user's, else 1",
    )
    p.add_argument("file", metavar="FILE", type=_file, help="the users file (add creates it)")
    p.add_argument(
        "user",
        metavar="USER",
        type=user_name,
        nargs="?",
        default=None,
        help="the user name (not with list)",
    )
    secret = p.add_mutually_exclusive_group()
    secret.add_argument(
        "--password",
        default=None,
        metavar="PW",
        help="add, check: the password (visible in the process list: prefer --password-stdin)",
    )
    secret.add_argument(
        "--password-stdin",
        action="store_true",
        help="add, check: read the password from the first line of standard input",
    )
    add_common(p)
    p.set_defaults(func=run)


def _read(path: Path, *, create: bool) -> UserStore | None:
    if create and not path.exists():
        return UserStore()
    try:
        return UserStore.load(path)
    except UsersFileError as exc:
        err(str(exc) if str(exc).startswith("cannot read") else f"{path}: {exc}")
        return None


def _password(args: argparse.Namespace) -> str | None:
    """The password of ``add``/``check`` from --password or --password-stdin (None: an error
    was reported)."""
    if args.password is None and not args.password_stdin:
        err(f"users {args.users_action}: one of --password and --password-stdin is required")
        return None
    password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else args.password
    if not password:
        err("the password is empty")
        return None
    return str(password)


async def run(args: argparse.Namespace) -> int:
    """Add, remove, list or check users; 0 on success, 1 if the file cannot be read or
    written (or ``check`` does not match), 2 for a command-line error."""
    path: Path = args.file
    action = args.users_action
    if action == "list":
        if args.user is not None:
            err("users list: takes no USER")
            return 2
    elif args.user is None:
        err(f"users {action}: USER is required")
        return 2
    if action in ("list", "remove") and (args.password is not None or args.password_stdin):
        err(f"users {action}: takes no password")
        return 2
    user = str(args.user or "")  # "" only for list
    if action == "list":
        store = _read(path, create=False)
        if store is None:
            return 1
        for name in store.users:
            print(name, flush=True)
        return 0
    if action == "check":
        password = _password(args)
        if password is None:
            return 2
        store = _read(path, create=False)
        if store is None:
            return 1
        if user not in store:
            err(f"{path}: no user {user!r}")
            return 1
        if not store.verify(user, password):
            err(f"{path}: that is not the password of {user!r}")
            return 1
        notice(f"users: the password of {user!r} matches", "user_check", user=user)
        return 0
    if action == "add":
        password = _password(args)
        if password is None:
            return 2
        store = _read(path, create=True)
        if store is None:
            return 1
        new = store.add(user, password)
        what = "added" if new else "password changed for"
    else:
        store = _read(path, create=False)
        if store is None:
            return 1
        if not store.remove(user):
            err(f"{path}: no user {user!r}")
            return 1
        what = "removed"
    try:
        store.save(path)
    except OSError as exc:
        err(f"cannot write {str(path)!r}: {exc.strerror or exc}")
        return 1
    notice(f"users: {what} {user!r} in {path}", f"user_{action}", user=user)
    return 0
