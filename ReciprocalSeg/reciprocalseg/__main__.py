"""`python -m reciprocalseg` is the same as the `reciprocalseg` command."""

import sys

from .cli import main

sys.exit(main())
