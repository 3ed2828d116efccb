"""``python -m opencir ...`` (also how ``torchrun -m opencir ...`` starts each rank)."""
from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
