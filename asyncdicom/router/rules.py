"""The router's destinations and routing rules (``asyncdicom router --forward``, ``--rules``).

A destination is written ``AET@HOST:PORT`` (an IPv6 address in brackets: ``PACS@[::1]:104``).

The rules file is plain text, one rule per line; ``#`` starts a comment, blank lines are
ignored::

    # every instance to the archive
    to ARCHIVE
    # CT and MR from the scanners whose AE titles start with CT to the review station too
    to REVIEW  modality=CT,MR  calling=CT*
    # a SOP class, by UID, to a destination named in full
    to VIEWER@10.0.0.7:104  sop-class=1.2.840.10008.5.1.4.1.1.4

A rule is ``to DEST[,DEST...]`` followed by zero or more conditions ``KEY=VALUE[,VALUE...]``:

* ``calling``: the Calling AE Title of the association the instance arrived on;
* ``called``: its Called AE Title;
* ``modality``: the data set's Modality (0008,0060);
* ``sop-class``: the SOP Class UID of the C-STORE.

A condition holds when the value matches one of the alternatives (``*`` and ``?`` are
wildcards, the comparison is case-sensitive, as AE titles are); a rule applies when all its
conditions hold (a rule without conditions applies to every instance).  An instance goes to
every destination of every rule that applies to it.  A destination is named by its AE title
when only one ``--forward`` has it, else by ``AET@HOST:PORT`` in full.  Values cannot contain
spaces.

Everything here is pure: :func:`parse_rules` takes the text and the destinations and raises
:class:`RulesError` (a :class:`ValueError` whose message names the line) on any mistake.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from ..errors import RulesError

__all__ = [
    "CONDITION_KEYS",
    "Destination",
    "Rule",
    "RuleSet",
    "RulesError",
    "parse_destination",
    "parse_rules",
]

#: the condition keys of a rule, in the order they are documented
CONDITION_KEYS = ("calling", "called", "modality", "sop-class")

_DESTINATION_RE = re.compile(r"(?P<aet>[^@]+)@(?P<host>\[[^\]]+\]|[^:@\[\]]+):(?P<port>\d+)")


@dataclass(frozen=True, slots=True)
class Destination:
    """Where the router forwards instances: an AE title at a host and port."""

    ae_title: str
    host: str
    port: int

    @property
    def name(self) -> str:
        """``AET@HOST:PORT`` (an IPv6 host in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"

    @property
    def key(self) -> str:
        """The destination's folder name in the queue: :attr:`name` with every character
        other than letters, digits, ``.``, ``-``, ``_`` and ``@`` percent-encoded."""
        return quote(self.name, safe="@.-_")

    def __str__(self) -> str:
        return self.name


def parse_destination(text: str) -> Destination:
    """``AET@HOST:PORT`` as a :class:`Destination`.

    Raises:
        RulesError: the text is not of that form, the AE title is not valid (1 to 16
            characters of ISO 646 without backslash or control characters) or the port is
            not 1..65535.
    """
    match = _DESTINATION_RE.fullmatch(text.strip())
    if match is None:
        raise RulesError(f"{text!r} is not AET@HOST:PORT (e.g. ARCHIVE@10.0.0.5:104)")
    aet = match["aet"].strip(" ")
    if not aet or len(aet) > 16 or any(not (0x20 <= ord(c) < 0x7F) or c == "\\" for c in aet):
        raise RulesError(
            f"{text!r}: the AE title must be 1 to 16 ASCII characters, no backslash or "
            "control characters"
        )
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise RulesError(f"{text!r}: the port must be 1..65535")
    return Destination(aet, match["host"].strip("[]"), port)


@dataclass(frozen=True, slots=True)
class Rule:
    """One line of the rules file: its destinations and its conditions (key -> the
    alternatives, shell wildcards allowed)."""

    line: int
    destinations: tuple[Destination, ...]
    conditions: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def applies(self, values: dict[str, str]) -> bool:
        """Whether every condition holds for ``values`` (key -> the instance's value)."""
        for key, patterns in self.conditions:
            value = values.get(key, "")
            if not any(fnmatch.fnmatchcase(value, p) for p in patterns):
                return False
        return True


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules of a router: :meth:`route` says where an instance goes.

    Without rules (``rules`` is None) every instance goes to every destination.
    """

    destinations: tuple[Destination, ...]
    rules: tuple[Rule, ...] | None = None

    @property
    def needs_modality(self) -> bool:
        """Whether a rule looks at the Modality (the data set must then be read)."""
        return any(key == "modality" for rule in self.rules or () for key, _ in rule.conditions)

    def route(
        self, *, calling: str, called: str, sop_class: str, modality: str = ""
    ) -> tuple[Destination, ...]:
        """The destinations of an instance, in the order of ``--forward``; empty when no
        rule applies."""
        if self.rules is None:
            return self.destinations
        values = {
            "calling": calling,
            "called": called,
            "sop-class": sop_class,
            "modality": modality,
        }
        chosen: set[Destination] = set()
        for rule in self.rules:
            if rule.applies(values):
                chosen.update(rule.destinations)
        return tuple(d for d in self.destinations if d in chosen)

    def unused(self) -> list[Destination]:
        """The destinations no rule sends anything to."""
        if self.rules is None:
            return []
        named = {d for rule in self.rules for d in rule.destinations}
        return [d for d in self.destinations if d not in named]


def _resolve(word: str, destinations: Sequence[Destination], where: str) -> Destination:
    if "@" in word:
        wanted = parse_destination(word)
        if wanted in destinations:
            return wanted
        raise RulesError(f"{where}: {word!r} is not one of the --forward destinations")
    found = [d for d in destinations if d.ae_title == word]
    if not found:
        raise RulesError(
            f"{where}: no --forward destination has the AE title {word!r} "
            f"(destinations: {', '.join(d.name for d in destinations)})"
        )
    if len(found) > 1:
        raise RulesError(
            f"{where}: several --forward destinations have the AE title {word!r}; "
            "name one as AET@HOST:PORT"
        )
    return found[0]


def parse_rules(text: str, destinations: Iterable[Destination]) -> RuleSet:
    """The rules of ``text`` (the format is in the module documentation), naming
    ``destinations``.

    Raises:
        RulesError: a line is not a rule (``line N: ...``), names a destination that is not
            one of ``destinations``, has an unknown or repeated condition key or an empty
            value; or the file has no rule.
    """
    dests = tuple(destinations)
    rules: list[Rule] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"line {number}"
        words = line.split()
        if words[0] != "to" or len(words) < 2:
            raise RulesError(f"{where}: a rule starts with 'to DESTINATION', not {line!r}")
        targets = []
        for name in words[1].split(","):
            if not name:
                raise RulesError(f"{where}: an empty destination name in {words[1]!r}")
            target = _resolve(name, dests, where)
            if target not in targets:
                targets.append(target)
        conditions: dict[str, tuple[str, ...]] = {}
        for word in words[2:]:
            key, sep, value = word.partition("=")
            if not sep:
                raise RulesError(f"{where}: {word!r} is not KEY=VALUE")
            if key not in CONDITION_KEYS:
                raise RulesError(
                    f"{where}: unknown condition {key!r} (known: {', '.join(CONDITION_KEYS)})"
                )
            if key in conditions:
                raise RulesError(f"{where}: the condition {key!r} is given twice")
            alternatives = tuple(value.split(","))
            if not all(alternatives):
                raise RulesError(f"{where}: the condition {key!r} has an empty value")
            conditions[key] = alternatives
        rules.append(Rule(number, tuple(targets), tuple(conditions.items())))
    if not rules:
        raise RulesError("the file has no rule (a rule is 'to DESTINATION [KEY=VALUE...]')")
    return RuleSet(dests, tuple(rules))
