"""`python -m kit RECIPE key=value ...`: see kit.cli."""

import sys

from kit.cli import main

sys.exit(main())
