"""`python -m reciprocalseg` is the same as the `reciprocalseg` command."""

import sys

from .cli.main import main

sys.exit(main())
