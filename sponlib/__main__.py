"""`python -m sponlib ...`: see sponlib.cli."""

import sys

from .cli import main

sys.exit(main())
