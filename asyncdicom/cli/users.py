"""``asyncdicom users``: manage the users file of ``storescp --users`` / ``qrscp --users``.

``asyncdicom users add FILE USER (--password PW | --password-stdin)`` adds a user, or sets the
password of one that exists, with a salted scrypt hash (:mod:`asyncdicom.users`); the file is
created if needed (readable by its owner only) and always rewritten atomically.
``asyncdicom users remove FILE USER`` removes one.  ``--password-stdin`` reads the password
from the first line of standard input, which keeps it out of the process list and the shell
history; prefer it to ``--password``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..users import UsersFileError, UserStore, check_username
from .common import add_common, err, notice

__all__ = ["add_parser", "run", "user_name"]


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
        help="manage a users file (user identity for storescp/qrscp --users)",
        description="Add or remove users of a users file: one USER:scrypt$... line each, "
        "never the password itself.",
    )
    p.add_argument(
        "users_action",
        choices=("add", "remove"),
        metavar="ACTION",
        help="add: add a user, or set a new password for one; remove: remove a user",
    )
    p.add_argument("file", metavar="FILE", type=_file, help="the users file (add creates it)")
    p.add_argument("user", metavar="USER", type=user_name, help="the user name")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument(
        "--password",
        default=None,
        metavar="PW",
        help="add: the password (visible in the process list: prefer --password-stdin)",
    )
    secret.add_argument(
        "--password-stdin",
        action="store_true",
        help="add: read the password from the first line of standard input",
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


async def run(args: argparse.Namespace) -> int:
    """Add or remove one user; 0 on success, 1 if the file cannot be read or written, 2 for a
    bad password."""
    path: Path = args.file
    if args.users_action == "add":
        if args.password is None and not args.password_stdin:
            err("users add: one of --password and --password-stdin is required")
            return 2
        password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else args.password
        if not password:
            err("the password is empty")
            return 2
        store = _read(path, create=True)
        if store is None:
            return 1
        new = store.add(args.user, password)
        what = "added" if new else "password changed for"
    else:
        if args.password is not None or args.password_stdin:
            err("users remove: takes no password")
            return 2
        store = _read(path, create=False)
        if store is None:
            return 1
        if not store.remove(args.user):
            err(f"{path}: no user {args.user!r}")
            return 1
        what = "removed"
    try:
        store.save(path)
    except OSError as exc:
        err(f"cannot write {str(path)!r}: {exc.strerror or exc}")
        return 1
    notice(f"users: {what} {args.user!r} in {path}", f"user_{args.users_action}", user=args.user)
    return 0
