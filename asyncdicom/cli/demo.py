"""``asyncdicom demo``: an SCP and an SCU in one process, echo and store sample files."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..ae import AE
from ..protocol import uids
from .common import add_common, ok
from .storescu import _contexts_for, _StoreItem

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Add the ``demo`` sub-command to ``sub``."""
    p = sub.add_parser("demo", help="SCP and SCU in one process: echo and store samples")
    add_common(p)
    p.set_defaults(func=run)


def _sample_files() -> list[Path]:
    import pydicom.data

    folder = Path(pydicom.data.__file__).parent / "test_files"
    names = [
        "CT_small.dcm",
        "MR_small.dcm",
        "rtplan.dcm",
        "rtdose.dcm",
        "waveform_ecg.dcm",
        "JPEG2000.dcm",
        "MR_small_RLE.dcm",
        "SC_rgb.dcm",
    ]
    return [folder / n for n in names if (folder / n).exists()]


async def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..storage.files import read_part10_for_send

    console = Console()
    files = _sample_files()
    received: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="asyncdicom-demo-") as tmp:
        scp = AE("DEMO-SCP", accept_any_storage=True)

        @scp.on_store
        async def on_store(request: Any) -> int:
            path = await request.save_to(tmp)
            received[request.message.affected_sop_instance_uid] = path
            return 0x0000

        table = Table(title=f"asyncdicom {__version__} demo ({args.backend})")
        for col in ("operation", "object", "size", "status", "ms"):
            table.add_column(col)
        ok_all = True
        async with scp.server("127.0.0.1", 0) as server:
            scu = AE("DEMO-SCU")
            sources = [read_part10_for_send(f) for f in files]
            contexts = _contexts_for(
                [
                    _StoreItem(f, s.sop_class_uid, s.transfer_syntax_uid, f.stat().st_size)
                    for f, s in zip(files, sources, strict=True)
                ]
            )
            async with scu.associate(
                "127.0.0.1",
                server.port,
                called_aet="DEMO-SCP",
                contexts=[uids.VERIFICATION, *contexts],
            ) as assoc:
                stored = 0
                t0 = time.perf_counter()
                status = (await assoc.echo()).status
                ok_all &= status == 0
                table.add_row(
                    "C-ECHO",
                    "Verification",
                    "-",
                    f"0x{status:04X}",
                    f"{(time.perf_counter() - t0) * 1000:.1f}",
                )
                for f, src in zip(files, sources, strict=True):
                    t0 = time.perf_counter()
                    status = (await assoc.store(f)).status
                    ms = (time.perf_counter() - t0) * 1000
                    good = ok(status) and src.sop_instance_uid in received
                    stored += good
                    ok_all &= good
                    table.add_row(
                        "C-STORE",
                        f.name,
                        f"{f.stat().st_size // 1024} KiB",
                        f"0x{status:04X}" + ("" if good else " (not received)"),
                        f"{ms:.1f}",
                    )
        console.print(table)
        console.print(
            f"{stored} of {len(files)} instances stored and written as Part 10 files"
            f" ({len(received)} distinct SOP Instance UIDs)"
            + ("; all good." if ok_all else "; FAILURES above.")
        )
    return 0 if ok_all else 1
