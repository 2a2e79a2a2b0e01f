"""``python -m tools.virtualboard --flash DIR [--port N]``: run a virtual board."""

import sys

from tools.virtualboard import main

sys.exit(main())
