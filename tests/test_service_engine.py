"""The handler engine's model for services: meta SOP classes, state per association, an action
after the final response, the default handler a service brings, the no-handler comment, one
way to install a component; and no private import between the service modules."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncdicom import AE, Service, ServiceRequest, Status
from asyncdicom.protocol import messages
from asyncdicom.services import make_response
from asyncdicom.testing import associated

pytestmark = pytest.mark.anyio

META = "1.2.826.0.1.3680043.10.1234.9"  # a private "meta SOP class" (UID for the test)
PART = "1.2.826.0.1.3680043.10.1234.9.1"  # one of its component SOP classes
OTHER_PART = "1.2.826.0.1.3680043.10.1234.9.2"
INSTANCE = "1.2.826.0.1.3680043.10.1234.9.1.1"

SERVICES = Path(__file__).resolve().parents[1] / "asyncdicom" / "services"


class Counter:
    def __init__(self) -> None:
        self.value = 0


def meta_service(**fields: Any) -> Service:
    base: dict[str, Any] = {
        "name": "Private meta",
        "commands": (messages.NActionRQ, messages.NCreateRQ),
        "sop_classes": frozenset({PART, OTHER_PART}),
        "abstract_syntaxes": frozenset({META}),
        "accept_by_default": True,
        "no_handler_status": int(Status.NO_SUCH_ACTION),
        "no_handler_comment": "no {command} here",
        "association_state": Counter,
    }
    return Service(**(base | fields))


async def test_a_meta_sop_class_is_negotiated_and_dispatched_on_its_parts() -> None:
    scp = AE("META")
    scp.add_service(meta_service())
    seen: list[tuple[str, str]] = []

    @scp.on("N-ACTION", sop_class=PART)
    async def on_action(request: ServiceRequest) -> int:
        seen.append((request.context.abstract_syntax, request.sop_class_uid))
        return Status.SUCCESS

    async with associated(scp, contexts=[META]) as assoc:
        assert assoc.find_context(PART) is None  # only the meta SOP class was proposed
        rsp = await assoc.n_action(PART, INSTANCE, 1, abstract_syntax=META)
        assert rsp.status == Status.SUCCESS
        # a component without a handler: the service's default, with its comment
        rsp = await assoc.n_action(OTHER_PART, INSTANCE, 1, abstract_syntax=META)
        assert rsp.status == Status.NO_SUCH_ACTION
        assert rsp.message.error_comment == "no N-ACTION here"  # type: ignore[union-attr]
    assert seen == [(META, PART)]


async def test_state_per_association_created_on_first_use_and_dropped_at_the_end() -> None:
    scp = AE("META")
    scp.add_service(meta_service())
    states: list[Counter] = []

    @scp.on("N-ACTION", sop_class=PART)
    async def on_action(request: ServiceRequest) -> int:
        state: Counter = request.state
        state.value += 1
        states.append(state)
        return 0x0000

    async with associated(scp, contexts=[META]) as first:
        await first.n_action(PART, INSTANCE, 1, abstract_syntax=META)
        await first.n_action(PART, INSTANCE, 1, abstract_syntax=META)
        async with associated(scp, contexts=[META]) as second:
            await second.n_action(PART, INSTANCE, 1, abstract_syntax=META)
    assert [s.value for s in states] == [2, 2, 1]
    assert states[0] is states[1] and states[2] is not states[0]
    # both associations have ended: the engine keeps no state for them
    assert not scp._dispatcher._states


async def test_a_service_without_state_says_so() -> None:
    scp = AE("META")
    scp.add_service(meta_service(association_state=None))
    errors: list[BaseException] = []

    @scp.on("N-ACTION", sop_class=PART)
    async def on_action(request: ServiceRequest) -> int:
        try:
            request.state  # noqa: B018
        except LookupError as exc:
            errors.append(exc)
        return 0x0000

    async with associated(scp, contexts=[META]) as assoc:
        await assoc.n_action(PART, INSTANCE, 1, abstract_syntax=META)
    assert len(errors) == 1


async def test_an_action_after_the_final_response() -> None:
    scp = AE("META")
    scp.add_service(meta_service())
    order: list[str] = []
    answered = anyio.Event()

    @scp.on("N-ACTION", sop_class=PART)
    def on_action(request: ServiceRequest) -> int:  # a plain function, in a worker thread
        request.after_response(lambda: order.append(f"after, answered={request.answered}"))
        request.after_response(answered.set)
        order.append("handler")
        return 0x0000

    async with associated(scp, contexts=[META]) as assoc:
        rsp = await assoc.n_action(PART, INSTANCE, 1, abstract_syntax=META)
        order.append(f"response {rsp.status:#06x}")
        with anyio.fail_after(10):
            await answered.wait()
    assert order[0] == "handler"
    assert "after, answered=True" in order


async def test_the_after_action_runs_when_the_handler_fails_too() -> None:
    scp = AE("META")
    scp.add_service(meta_service())
    ran = anyio.Event()

    @scp.on("N-ACTION", sop_class=PART)
    async def on_action(request: ServiceRequest) -> int:
        request.after_response(ran.set)
        raise RuntimeError("boom")

    async with associated(scp, contexts=[META]) as assoc:
        rsp = await assoc.n_action(PART, INSTANCE, 1, abstract_syntax=META)
        with anyio.fail_after(10):
            await ran.wait()
    assert rsp.status == Status.PROCESSING_FAILURE


async def test_a_default_handler_serves_until_the_application_registers_one() -> None:
    async def brought(request: ServiceRequest) -> int:
        return 0x0001  # a status only this handler answers (hand-picked, a warning)

    scp = AE("META")
    scp.add_service(meta_service(default_handlers=((messages.NActionRQ, brought),)))
    async with associated(scp, contexts=[META]) as assoc:
        first = await assoc.n_action(PART, INSTANCE, 1, abstract_syntax=META)
        scp.on("N-ACTION", sop_class=PART)(lambda request: 0x0000)
        second = await assoc.n_action(PART, INSTANCE, 1, abstract_syntax=META)
    assert (first.status, second.status) == (0x0001, 0x0000)


def test_install_components() -> None:
    installed: list[AE] = []

    class Component:
        def install(self, ae: AE) -> None:
            installed.append(ae)

    ae = AE("HOST")
    ae.install(Component(), Component())
    assert installed == [ae, ae]


def test_ae_shared_state_move_destinations_and_commitments() -> None:
    ae, other = AE("ONE"), AE("TWO")
    ae.move_destinations["DEST"] = ("127.0.0.1", 104)
    assert ae.move_destinations == {"DEST": ("127.0.0.1", 104)}
    assert other.move_destinations == {}
    assert ae.commitments is ae.commitments and ae.commitments is not other.commitments


def test_no_private_import_between_service_modules() -> None:
    """A service module uses another's public names only (the engine's building blocks are
    public: a responder gets a HandlerCall)."""
    found = []
    for path in sorted(SERVICES.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                for alias in node.names:
                    if alias.name.startswith("_"):
                        found.append(f"{path.name}: from .{node.module} import {alias.name}")
    assert found == []


def test_one_no_handler_answer_per_service_no_functions() -> None:
    """The services declare their no-handler answer as data (status and comment)."""
    for path in sorted(SERVICES.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "def _no_handler" not in text, path.name


async def test_a_response_field_that_cannot_be_encoded_is_answered_0110(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scp = AE("META")
    scp.add_service(meta_service())

    @scp.on("N-ACTION", sop_class=PART)
    async def on_action(request: ServiceRequest) -> Any:
        # a backslash is not allowed in an Error Comment (LO, PS3.5 6.2)
        return make_response(request.message, 0xC000, error_comment="a\\b")

    with anyio.fail_after(10):
        async with associated(scp, contexts=[META]) as assoc:
            first = await assoc.n_action(PART, INSTANCE, 1, abstract_syntax=META)
            second = await assoc.n_action(PART, INSTANCE, 1, abstract_syntax=META)
    assert (first.status, second.status) == (0x0110, 0x0110)
    assert caplog.text.count("handler_result_invalid") == 2
