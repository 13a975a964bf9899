"""``python -m ted_sglang.engine --model ...``: the reference engine's HTTP server."""

import sys

from ted_sglang.engine.cli import main

sys.exit(main())
