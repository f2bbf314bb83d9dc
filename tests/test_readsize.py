"""Socket read sizes: large by default and for big transfers, small for a run of small reads."""

from __future__ import annotations

from asyncdicom._readsize import LARGE_READ, SMALL_READ, ReadSizer


def test_starts_large_and_shrinks_after_a_run_of_small_reads() -> None:
    sizer = ReadSizer()
    assert sizer.size == LARGE_READ
    sizes = [sizer.update(100) for _ in range(8)]
    assert sizes[:7] == [LARGE_READ] * 7  # a few small reads (a command between data) keep it
    assert sizes[7] == SMALL_READ


def test_a_big_read_restores_large_reads_and_the_run_starts_over() -> None:
    sizer = ReadSizer()
    for _ in range(8):
        sizer.update(100)
    assert sizer.update(SMALL_READ) == LARGE_READ
    for _ in range(7):
        assert sizer.update(200) == LARGE_READ
    assert sizer.update(LARGE_READ) == LARGE_READ
    assert sizer.update(200) == LARGE_READ  # the run was broken by the big read
