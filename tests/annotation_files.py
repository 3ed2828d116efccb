"""Where the tests read the real benchmark annotation files.

The files ship with the repository under tests/fixtures/annotations (byte-for-byte copies
with their licences; read its NOTICE.md), so the suite runs on a fresh clone with nothing
else; ``OPENCIR_ANNOTATIONS=DIR`` points the tests at another copy laid out the same way.
"""
from __future__ import annotations

import os
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent / "fixtures" / "annotations"
ANNOTATIONS = Path(os.environ.get("OPENCIR_ANNOTATIONS") or SHIPPED)
