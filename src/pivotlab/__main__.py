"""``python -m pivotlab`` (and ``accelerate launch -m pivotlab``) runs the command line."""

import sys

from pivotlab.cli import main

sys.exit(main())
