"""Interop with odil (Debian's ``odil`` / ``python3-odil``): ``asyncdicom storescu`` to odil's
Storage SCP, on both backends.

Our storescu proposes two presentation contexts for each uncompressed storage SOP class (the
file's own transfer syntax, and the uncompressed fallback). odil accepts both and sends each
C-STORE-RSP on a context of its own choice among those with the request's abstract syntax,
not necessarily the request's (PS3.7 9.3 says the request's). DCMTK's SCU accepts that; so must
ours: the response carries the same SOP class, the instance is stored, and a storescu that
treats it as a failure reports a stored file as not sent and, when it retries, stores it twice.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest
from harness.peers import OdilStoreSCP, instance_differences, instance_uid
from pydicom import dcmread

pytestmark = [pytest.mark.interop, pytest.mark.anyio, pytest.mark.requires_peer("odil")]

GUARD = 120.0
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"}


def _contexts_per_abstract_syntax(log: str) -> list[Counter[str]]:
    """For each association odil accepted (its ``ASSOCIATION`` lines), how many accepted
    contexts each abstract syntax had."""
    associations = []
    for line in log.splitlines():
        if line.startswith("ASSOCIATION "):
            items = line.split()[1:]
            associations.append(Counter(item.split(":")[1] for item in items))
    return associations


async def test_storescu_to_odil_store_scp_answering_on_another_context(
    anyio_backend: str, odil_store_scp: OdilStoreSCP, sample_files: list[Path]
) -> None:
    scp = odil_store_scp
    command = [
        sys.executable, "-m", "asyncdicom", "storescu", scp.host, str(scp.port),
        *map(os.fspath, sample_files), "--called-aet", scp.aet, "--backend", anyio_backend,
    ]  # fmt: skip
    with anyio.fail_after(GUARD):
        result = await anyio.run_process(command, env=ENV, check=False)
    out = result.stdout.decode("utf-8", "replace")
    err = result.stderr.decode("utf-8", "replace")
    # every file is reported sent ...
    assert result.returncode == 0, out + err + scp.log_text()
    assert re.search(rf"^sent {len(sample_files)}, failed 0; ", out, re.M), out + err
    # ... and odil stored each exactly once (a retry after a wrongly failed store repeats it)
    sent = sorted(instance_uid(p) for p in sample_files)
    assert sorted(scp.stored_uids()) == sent, scp.log_text()
    # odil decodes each data set and writes it anew (decimal strings come out reformatted,
    # e.g. in CT_small's Focal Spots): compare UIDs, the set of elements and the pixel data
    received = {instance_uid(p): p for p in scp.received_files()}
    assert sorted(received) == sent
    for source in sample_files:
        problems = instance_differences(received[instance_uid(source)], source)
        assert [p for p in problems if not p.startswith("value of ")] == [], source
    # the case at hand happened: odil accepted two contexts for each SOP class sent
    classes = {str(dcmread(p, stop_before_pixels=True).SOPClassUID) for p in sample_files}
    associations = _contexts_per_abstract_syntax(scp.log_text())
    assert associations, scp.log_text()
    for counts in associations:
        assert all(counts[uid] >= 2 for uid in classes), counts
