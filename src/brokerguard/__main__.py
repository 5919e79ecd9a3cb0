"""Entry point for ``python -m brokerguard`` (the same as the ``brokerguard`` command)."""

import sys

from brokerguard.cli import main

sys.exit(main())
