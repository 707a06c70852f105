"""``python -m app.cli URL [ID] ...``: the same as ``bin/stream``."""

from __future__ import annotations

import sys

from app.cli.stream import main

sys.exit(main())
