"""Status codes and their classification (PS3.7 Annex C)."""

from __future__ import annotations

import pytest
from pynetdicom.status import code_to_category

from asyncdicom.protocol.status import (
    Status,
    StatusCategory,
    category,
    describe,
    fit_error_comment,
    is_final,
)


def _oracle(code: int) -> StatusCategory:
    """The classification table of PS3.7 Annex C, written as explicit sets and ranges."""
    if code == 0x0000:
        return StatusCategory.SUCCESS
    if code in (0xFF00, 0xFF01):
        return StatusCategory.PENDING
    if code == 0xFE00:
        return StatusCategory.CANCEL
    if code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF:
        return StatusCategory.WARNING
    return StatusCategory.FAILURE


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0x0000, StatusCategory.SUCCESS),
        (0xFF00, StatusCategory.PENDING),
        (0xFF01, StatusCategory.PENDING),
        (0xFE00, StatusCategory.CANCEL),
        (0x0001, StatusCategory.WARNING),
        (0x0107, StatusCategory.WARNING),
        (0x0116, StatusCategory.WARNING),
        (0xB000, StatusCategory.WARNING),
        (0xB007, StatusCategory.WARNING),
        (0xBFFF, StatusCategory.WARNING),
        (0xA700, StatusCategory.FAILURE),
        (0xA801, StatusCategory.FAILURE),
        (0xA900, StatusCategory.FAILURE),
        (0xAA04, StatusCategory.FAILURE),
        (0xC000, StatusCategory.FAILURE),
        (0xCFFF, StatusCategory.FAILURE),
        (0x0105, StatusCategory.FAILURE),
        (0x0106, StatusCategory.FAILURE),
        (0x0110, StatusCategory.FAILURE),
        (0x0122, StatusCategory.FAILURE),
        (0x0124, StatusCategory.FAILURE),
        (0x0210, StatusCategory.FAILURE),
        (0x0213, StatusCategory.FAILURE),
    ],
)
def test_category_table(code: int, expected: StatusCategory) -> None:
    assert category(code) is expected


def test_category_exhaustive_against_table_and_pynetdicom() -> None:
    for code in range(0x10000):
        ours = category(code)
        assert ours is _oracle(code), hex(code)
        theirs = code_to_category(code)
        # pynetdicom answers "Unknown" for codes outside the table; we call those failures.
        if theirs == "Unknown":
            assert ours is StatusCategory.FAILURE, hex(code)
        else:
            assert ours.value == theirs, hex(code)


def test_undefined_codes_are_failures() -> None:
    for code in (0x0002, 0x0300, 0xD000, 0xFF02, 0xFE01, 0x8000):
        assert category(code) is StatusCategory.FAILURE


@pytest.mark.parametrize("code", [-1, 0x10000, 1 << 20])
def test_category_rejects_non_16_bit(code: int) -> None:
    with pytest.raises(ValueError):
        category(code)


def test_is_final() -> None:
    assert not is_final(0xFF00)
    assert not is_final(0xFF01)
    assert is_final(0x0000)
    assert is_final(0xFE00)
    assert is_final(0xB000)
    assert is_final(0xA700)


def test_enum_values_match_standard_numbers() -> None:
    expected = {
        "SUCCESS": 0x0000,
        "PENDING": 0xFF00,
        "PENDING_WARNING": 0xFF01,
        "CANCEL": 0xFE00,
        "ATTRIBUTE_LIST_ERROR": 0x0107,
        "SOP_CLASS_NOT_SUPPORTED": 0x0122,
        "MOVE_DESTINATION_UNKNOWN": 0xA801,
        "RESOURCE_LIMITATION": 0x0213,
        "ELEMENTS_DISCARDED": 0xB006,
        "UNABLE_TO_PROCESS": 0xC000,
    }
    assert {name: int(Status[name]) for name in expected} == expected
    # Aliases share a value with the primary name.
    assert Status["SUB_OPERATIONS_COMPLETE_WITH_FAILURES"] is Status["COERCION_OF_DATA_ELEMENTS"]
    assert (
        Status["IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS"] is Status["DATA_SET_DOES_NOT_MATCH_SOP_CLASS"]
    )


def test_every_named_status_has_a_specific_description() -> None:
    for status in Status:
        text = describe(status)
        assert text.startswith(f"0x{int(status):04X} {category(status).value}: ")
        assert "not defined" not in text
        assert "unassigned" not in text


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        (0x0000, "Success: success"),
        (0x0112, "Failure: no such SOP instance"),
        (0xFE00, "Cancel"),
        (0xA7F3, "out of resources"),
        (0xA9A0, "does not match SOP class"),
        (0xC123, "unable to process"),
        (0xB123, "Warning: warning (service-specific"),
        (0xA123, "Failure: failure (service-specific"),
        (0x01FF, "unassigned general code"),
        (0xD000, "not defined by PS3.7"),
        (0xB000, "C-STORE"),
        (0xB000, "C-MOVE"),
    ],
)
def test_describe(code: int, fragment: str) -> None:
    assert fragment in describe(code)


@pytest.mark.parametrize(
    ("code", "command", "text"),
    [
        (0xB000, "C-GET-RSP", "0xB000 Warning: warning: sub-operations complete, one or more "
         "failures or warnings"),
        (0xB000, "C-MOVE", "0xB000 Warning: warning: sub-operations complete, one or more "
         "failures or warnings"),
        (0xB000, "C-STORE", "0xB000 Warning: warning: coercion of data elements"),
        (0xA900, "C-MOVE-RSP", "0xA900 Failure: error: identifier does not match SOP class"),
        (0xA900, "C-STORE-RSP", "0xA900 Failure: error: data set does not match SOP class"),
        # a code with one meaning is described the same whatever the command
        (0xA801, "C-MOVE", "0xA801 Failure: refused: move destination unknown"),
    ],
)  # fmt: skip
def test_describe_for_a_command_gives_that_commands_meaning(
    code: int, command: str, text: str
) -> None:
    assert describe(code, command) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("short enough", "short enough"),
        ("x" * 64, "x" * 64),
        # the example: never cut inside a word
        (
            "no presentation context for CT Image Storage in transfer syntax "
            "1.2.840.10008.1.2.4.50",
            "no presentation context for CT Image Storage in transfer...",
        ),
        ("move destination DEST: cannot connect to 127.0.0.1:1: Connection refused",
         "move destination DEST: cannot connect to 127.0.0.1:1..."),
        ("y" * 70, "y" * 61 + "..."),
    ],
)  # fmt: skip
def test_error_comments_fit_an_lo_at_a_word(text: str, expected: str) -> None:
    fitted = fit_error_comment(text)
    assert fitted == expected
    assert len(fitted) <= 64
