"""How much to read from a socket at a time.

A read allocates a ``bytes`` object of the requested size, however little arrives.  256 KiB is
above glibc's mmap threshold, and for a stream of small messages (C-ECHO round trips) that
allocation was measured to cost page faults worth up to 10 % of a round trip; for big transfers
(C-STORE) large reads are what keeps the per-read costs low.  So: large reads by default and
while data fills them, small ones once several reads in a row came back small.
"""

from __future__ import annotations

__all__ = ["LARGE_READ", "SMALL_READ", "ReadSizer"]

SMALL_READ = 64 * 1024
LARGE_READ = 256 * 1024
#: reads of less than this count as small
_SMALL_DATA = 16 * 1024
#: this many small reads in a row switch to small reads
_SMALL_STREAK = 8


class ReadSizer:
    """Tracks the reads of one connection; :attr:`size` is what to ask for next."""

    __slots__ = ("_streak", "size")

    def __init__(self) -> None:
        self.size = LARGE_READ
        self._streak = 0

    def update(self, received: int) -> int:
        """Account for a read that returned ``received`` bytes; returns the next size."""
        if received >= _SMALL_DATA:
            self._streak = 0
            self.size = LARGE_READ
        elif self.size == LARGE_READ:
            self._streak += 1
            if self._streak >= _SMALL_STREAK:
                self.size = SMALL_READ
        return self.size
