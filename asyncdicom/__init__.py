"""asyncdicom: DICOM networking (PS3.8 Upper Layer and PS3.7 DIMSE) on async I/O."""

from __future__ import annotations

__version__ = "0.1.0"
