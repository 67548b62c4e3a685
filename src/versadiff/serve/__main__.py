"""`python -m versadiff.serve [CHECKPOINT ...] [--host ...] [--port ...]` (the same as `versadiff serve`)."""

import sys

from versadiff.serve.command import main

sys.exit(main())
