"""``python -m tools.dev.virtualboard --flash DIR [--port N]``: run a virtual board."""

import sys

from tools.dev.virtualboard import main

sys.exit(main())
