"""The atheris harnesses, run without atheris: each harness's ``TestOneInput`` on its seed
inputs and on a few thousand deterministic mutations of them (tests/fuzz/fuzz_common.py), so
that the harnesses keep working as the code changes (the campaign itself is
``python tests/fuzz/run.py``, which needs atheris)."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the harnesses import fuzz_common as a sibling module
    sys.path.insert(0, str(HERE))

import fuzz_common  # noqa: E402

HARNESSES = ("codec", "negotiation", "dimse", "acceptor", "dataset")
#: mutations per harness: a few thousand, well within the time budget below
MUTATIONS = {"codec": 5000, "negotiation": 5000, "dimse": 5000, "acceptor": 3000, "dataset": 5000}


def test_harnesses_import_without_atheris() -> None:
    for name in HARNESSES:
        module = importlib.import_module(f"fuzz_{name}")
        assert "atheris" not in vars(module), f"fuzz_{name} imported atheris at import time"
        assert callable(module.TestOneInput)


@pytest.mark.parametrize("name", HARNESSES)
def test_harness_on_seeds_and_mutations(name: str) -> None:
    module = importlib.import_module(f"fuzz_{name}")
    seeds = module.seeds()
    assert seeds, "a harness without seeds"
    # CPU time, not wall time: the budget is the harness's own work, whatever else shares the
    # cores (other pytest-xdist workers, other processes)
    started = time.process_time()
    count = fuzz_common.exercise(module.TestOneInput, seeds, MUTATIONS[name], seed=11)
    assert count == len(seeds) + MUTATIONS[name]
    assert time.process_time() - started < 15, f"fuzz_{name} got too slow for this test"


def test_acceptor_seeds_reach_the_dimse_layer() -> None:
    """The acceptor's seeds get an association accepted and DIMSE requests answered: a
    harness whose seeds stop at the handshake would fuzz much less than it claims to."""
    import fuzz_acceptor
    from fuzz_common import Input, read_cuts

    from asyncdicom.protocol.pdu import AssociateAC, PDataTF, ReleaseRP

    answered = released = 0
    for data in fuzz_acceptor.seeds():
        inp = Input(data)
        selector = inp.u8()
        sizes = read_cuts(inp, 16)
        stream = inp.rest()
        if selector & 0x01:
            stream = fuzz_acceptor.SEED_RQ + stream
        acceptor = fuzz_acceptor.Acceptor(selector)
        acceptor.run(stream, sizes)
        pdus = fuzz_common.split_pdus(bytes(acceptor.out))
        assert pdus and isinstance(pdus[0], AssociateAC)
        answered += any(isinstance(p, PDataTF) for p in pdus)
        released += isinstance(pdus[-1], ReleaseRP)
    assert answered >= 4 and released >= 4, (answered, released)
