"""What ``getscu`` and ``movescu`` share: the identifier options, the progress display, Ctrl-C,
the summary and the exit status.

A retrieval is one C-GET or C-MOVE on one association.  Each Pending response updates the
progress (a rich progress bar on standard error when it is a terminal; with ``-v`` one line per
response on standard output).  At the end one summary line goes to standard output -- the final
status, the sub-operation counts (and for ``getscu`` the files written) -- followed by one line
per SOP Instance UID in the Failed SOP Instance UID List.  A final status other than Success is
also an error line on standard error, and exit status 1.

Ctrl-C (SIGINT) sends C-CANCEL-RQ and waits for the final response (normally Cancel, 0xFE00,
with the counts reached); a second Ctrl-C stops at once.  Either way the counts so far are
printed and the exit status is 130.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..association import DIMSEResponse
from ..protocol.status import StatusCategory, category, describe
from ..services.query_retrieve import FIND_MODELS
from .findscu import LEVELS, add_key_option, build_query
from .output import err, format_address
from .scu import associate, cancel_on_ctrl_c

if TYPE_CHECKING:
    from ..protocol.negotiation import ContextRequest
    from ..services import Association
    from ..services.retrieve import Retrieval

__all__ = [
    "MAX_CONTEXTS",
    "Outcome",
    "add_identifier_options",
    "describe_final",
    "finish",
    "identifier",
    "retrieve",
    "summary_lines",
]

#: A-ASSOCIATE-RQ holds at most this many presentation contexts (PS3.8 9.3.2.2)
MAX_CONTEXTS = 128

#: Move Destination unknown (PS3.4 C.4.2.1.4)
_MOVE_DESTINATION_UNKNOWN = 0xA801


def add_identifier_options(p: argparse.ArgumentParser, command: str) -> None:
    """``--model``, ``--level`` and ``-k KEY[=VALUE]``: the identifier of the request."""
    p.add_argument(
        "--model",
        choices=tuple(FIND_MODELS),
        default="study",
        help="Query/Retrieve information model (patient root, study root, patient/study only)",
    )
    p.add_argument(
        "--level",
        required=True,
        type=str.upper,
        choices=LEVELS,
        help=f"Query/Retrieve Level (0008,0052) of the {command} identifier",
    )
    add_key_option(
        p,
        "an identifier key: keyword or gggg,eeee with its value, normally the unique key "
        "of the level (e.g. StudyInstanceUID=1.2.3, several UIDs separated by \\)",
    )


# --------------------------------------------------------------------------- progress


def _count(value: int | None) -> int:
    return 0 if value is None else value


class _Progress:
    """The progress of a retrieval: a bar on a terminal, a line per response with ``-v``."""

    def __init__(self, name: str, verbose: bool) -> None:
        self.name = name
        self.verbose = verbose
        self._bar: Any = None
        self._task: Any = None

    @contextlib.contextmanager
    def shown(self) -> Iterator[_Progress]:
        if not sys.stderr.isatty():
            yield self
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with Progress(
            TextColumn(self.name),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            console=Console(stderr=True),
            transient=True,
        ) as bar:
            self._bar = bar
            self._task = bar.add_task("", total=None)
            try:
                yield self
            finally:
                self._bar = None

    def update(self, retrieval: Retrieval) -> None:
        remaining = retrieval.remaining
        completed = _count(retrieval.completed)
        failed = _count(retrieval.failed)
        warning = _count(retrieval.warning)
        done = completed + failed + warning
        if self._bar is not None:
            total = None if remaining is None else done + remaining
            self._bar.update(
                self._task,
                completed=done,
                total=total,
                description=f"failed {failed}" if failed else "",
            )
        if self.verbose:
            left = "?" if remaining is None else str(remaining)
            print(
                f"{self.name}: remaining {left}, completed {completed}, failed {failed}, "
                f"warning {warning}",
                flush=True,
            )


# --------------------------------------------------------------------------- the retrieval


@dataclass
class Outcome:
    """How a retrieval ended."""

    retrieval: Retrieval | None = None
    #: Ctrl-C was pressed (C-CANCEL-RQ sent, or the association given up on a second one)
    interrupted: bool = False
    #: the peer's Failure response (the retrieval raised RetrieveFailed)
    failure: DIMSEResponse | None = None
    #: the failed instances of the final response
    failed_instances: list[str] = field(default_factory=list)

    @property
    def final(self) -> DIMSEResponse | None:
        """The final response, if one came."""
        if self.failure is not None:
            return self.failure
        return None if self.retrieval is None else self.retrieval.final


async def retrieve(
    args: argparse.Namespace,
    name: str,
    contexts: list[ContextRequest],
    start: Callable[[Association], AbstractAsyncContextManager[Retrieval]],
) -> Outcome:
    """Associate with ``contexts``, run the retrieval ``start(assoc)`` opens to its final
    response, showing progress; release.  Ctrl-C is handled as the module describes."""
    from ..services.retrieve import RetrieveFailed

    outcome = Outcome()
    progress = _Progress(name, verbose=args.verbose >= 1)
    async with cancel_on_ctrl_c(name) as interrupt:
        async with associate(args, contexts) as assoc:
            async with start(assoc) as retrieval:
                outcome.retrieval = interrupt.operation = retrieval
                with progress.shown():
                    try:
                        async for _ in retrieval:
                            progress.update(retrieval)
                    except RetrieveFailed as exc:
                        assert isinstance(exc.response, DIMSEResponse)
                        outcome.failure = exc.response
                        outcome.failed_instances = list(exc.failed_instances)
                    else:
                        outcome.failed_instances = list(retrieval.failed_instances)
    outcome.interrupted = interrupt.interrupted
    return outcome


# --------------------------------------------------------------------------- the summary


def describe_final(response: DIMSEResponse) -> str:
    """``0xA801 Failure: refused: move destination unknown`` and the peer's Error Comment."""
    text = describe(response.status, response.message.NAME)
    comment = response.error_comment
    return f"{text} ({comment})" if comment else text


def summary_lines(outcome: Outcome, what: str, extra: str = "") -> list[str]:
    """The summary line (``what``: e.g. ``C-MOVE to STORESCP``; ``extra`` is appended, e.g.
    the files written) and one line per failed SOP Instance UID."""
    retrieval = outcome.retrieval
    final = outcome.final
    completed = _count(retrieval.completed if retrieval else None)
    failed = _count(retrieval.failed if retrieval else None)
    warning = _count(retrieval.warning if retrieval else None)
    counts = f"completed {completed}, failed {failed}, warning {warning}"
    remaining = retrieval.remaining if retrieval else None
    if outcome.interrupted and remaining:
        counts += f", remaining {remaining}"
    if final is not None:
        line = f"{what}: {counts}; status {describe_final(final)}"
    else:
        line = f"{what}: {counts} (the last counts received; no final response)"
    if extra:
        line += f"; {extra}"
    if outcome.interrupted:
        line = f"interrupted: {line}"
    return [line, *(f"failed SOP Instance UID {uid}" for uid in outcome.failed_instances)]


def finish(
    outcome: Outcome, args: argparse.Namespace, what: str, extra: str = "", hint: str = ""
) -> int:
    """Print the summary (and the error line for a final status other than Success); the exit
    status: 0 for Success, 130 after Ctrl-C, 1 otherwise."""
    for line in summary_lines(outcome, what, extra):
        print(line, flush=True)
    if outcome.interrupted:
        return 130
    final = outcome.final
    if final is not None and final.status == 0x0000:
        return 0
    peer = format_address(args.host, args.port)
    if final is None:
        err(f"{what} via {peer}: no final response")
        return 1
    text = f"{what} via {peer} ended with status {describe_final(final)}"
    if category(final.status) is StatusCategory.WARNING and outcome.failed_instances:
        text += f": {len(outcome.failed_instances)} sub-operation(s) failed"
    if final.status == _MOVE_DESTINATION_UNKNOWN and hint:
        text += f"; {hint}"
    err(text)
    return 1


def identifier(args: argparse.Namespace) -> Any:
    """The request's identifier from ``--level`` and the ``-k`` keys."""
    return build_query(args.level, args.keys or [])
