"""``python -m xsciml demo`` — same as the ``xsciml`` console script."""

import sys

from .cli import main

sys.exit(main())
