"""`python -m genloom.cli` (how the torchrun tests launch it)."""

import sys

from genloom.cli.app import main

sys.exit(main())
