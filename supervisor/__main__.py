"""``python -m supervisor`` is the ``wsup`` command."""

import sys

from .cli import main

sys.exit(main())
