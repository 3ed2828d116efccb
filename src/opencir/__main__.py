"""``python -m opencir``: the same as the ``opencir`` command."""
from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
