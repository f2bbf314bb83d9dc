"""Logging: events readable under any logging set-up, exceptions never lost.

* a handler that raises is logged at error level with its traceback, also when the application
  configured no logging at all (Python's last-resort handler shows warnings and errors);
* under a plain ``logging.basicConfig()`` an event is one ``event key=value`` line, not a dict;
* the CLI's JSON mode writes only JSON objects, with the traceback text in ``exception``; its
  text mode writes a plain traceback (no local variables).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncdicom import AE, log
from asyncdicom.protocol import uids

pytestmark = pytest.mark.anyio

GUARD = 30.0


class _Boom(RuntimeError):
    pass


async def _echo_to_failing_handler() -> int:
    """One C-ECHO to an SCP whose handler raises; the status the SCU got."""
    scp = AE("SCP")

    @scp.on_echo
    async def on_echo(request: Any) -> int:
        raise _Boom("the handler broke")

    with anyio.fail_after(GUARD):
        async with (
            scp.server("127.0.0.1", 0) as server,
            AE("SCU").associate(
                "127.0.0.1", server.port, called_aet="SCP", contexts=[uids.VERIFICATION]
            ) as assoc,
        ):
            return (await assoc.echo()).status


@pytest.fixture
def asyncdicom_logger() -> Iterator[logging.Logger]:
    """The ``asyncdicom`` logger, restored after the test (configure_cli_logging changes it)."""
    logger = logging.getLogger("asyncdicom")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    json_mode = getattr(log, "_json_mode", False)
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved
    log._json_mode = json_mode


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# --------------------------------------------------------------------------- in-process


async def test_handler_error_is_logged_with_its_traceback(
    asyncdicom_logger: logging.Logger,
) -> None:
    handler = _ListHandler()
    asyncdicom_logger.addHandler(handler)
    asyncdicom_logger.setLevel(logging.WARNING)
    status = await _echo_to_failing_handler()
    assert status != 0x0000
    failed = [r for r in handler.records if r.getMessage().startswith("handler_failed ")]
    assert len(failed) == 1, [r.getMessage() for r in handler.records]
    record = failed[0]
    assert record.levelno == logging.ERROR
    assert "message=C-ECHO-RQ" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], _Boom)
    text = logging.Formatter().format(record)
    assert "Traceback (most recent call last)" in text
    assert 'raise _Boom("the handler broke")' in text


async def test_cli_json_mode_is_json_with_tracebacks(
    asyncdicom_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    log.configure_cli_logging(verbose=1, json=True)
    await _echo_to_failing_handler()
    try:
        raise ValueError("not from structlog")
    except ValueError:
        logging.getLogger("asyncdicom.elsewhere").exception("plain_stdlib_record")
    lines = capsys.readouterr().err.splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    by_event = {r["event"]: r for r in records}
    assert "association_accepted" in by_event
    failed = by_event["handler_failed"]
    assert failed["level"] == "error"
    assert "exc_info" not in failed
    assert failed["exception"].startswith("Traceback (most recent call last)")
    assert "_Boom: the handler broke" in failed["exception"]
    plain = by_event["plain_stdlib_record"]
    assert plain["level"] == "error" and "ValueError: not from structlog" in plain["exception"]


async def test_cli_text_mode_shows_errors_by_default_with_a_plain_traceback(
    asyncdicom_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    log.configure_cli_logging()  # no -v: warnings and errors only
    await _echo_to_failing_handler()
    text = capsys.readouterr().err
    assert "association_accepted" not in text  # info is hidden by default
    lines = text.splitlines()
    assert sum("handler_failed" in line for line in lines) == 1, text
    assert "Traceback (most recent call last)" in text
    assert "_Boom: the handler broke" in text
    # a plain traceback: no boxes, no local variables
    assert not any(ch in text for ch in "╭│╰"), text
    assert len(lines) < 40, text


# --------------------------------------------------------------------------- subprocesses


_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    import anyio
    from asyncdicom import AE
    from asyncdicom.protocol import uids

    if sys.argv[2] == "basic":
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

    async def main():
        scp = AE("SCP")

        @scp.on_echo
        async def on_echo(request):
            raise RuntimeError("boom in the handler")

        async with scp.server("127.0.0.1", 0) as server:
            async with AE("SCU").associate(
                "127.0.0.1", server.port, called_aet="SCP", contexts=[uids.VERIFICATION]
            ) as assoc:
                print(f"status 0x{(await assoc.echo()).status:04X}")

    anyio.run(main, backend=sys.argv[1])
    """
)


async def _run_script(tmp_path: Path, backend: str, mode: str) -> tuple[str, str]:
    script = tmp_path / "app.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with anyio.fail_after(GUARD):
        result = await anyio.run_process(
            [sys.executable, str(script), backend, mode], cwd=tmp_path, env=env, check=False
        )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode(), result.stderr.decode()


async def test_handler_error_shows_without_logging_configuration(
    tmp_path: Path, anyio_backend: str
) -> None:
    stdout, stderr = await _run_script(tmp_path, anyio_backend, "none")
    assert stdout.strip() == "status 0x0110"
    lines = stderr.splitlines()
    assert lines[0].startswith("handler_failed "), stderr
    assert "message=C-ECHO-RQ" in lines[0]
    assert "Traceback (most recent call last)" in stderr
    assert lines[-1] == "RuntimeError: boom in the handler"
    assert "association_accepted" not in stderr  # info stays silent


async def test_basic_config_gives_readable_lines(tmp_path: Path, anyio_backend: str) -> None:
    _stdout, stderr = await _run_script(tmp_path, anyio_backend, "basic")
    ours = [line for line in stderr.splitlines() if " asyncdicom " in line]
    assert any(line.startswith("INFO asyncdicom association_accepted ") for line in ours), stderr
    assert any(line.startswith("ERROR asyncdicom handler_failed ") for line in ours), stderr
    assert not any("{" in line for line in ours), stderr
    accepted = next(line for line in ours if "association_accepted" in line)
    assert "assoc_id=" in accepted and "calling_aet=SCU" in accepted
    assert "RuntimeError: boom in the handler" in stderr  # the traceback follows the record
