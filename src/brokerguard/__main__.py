"""Entry point for ``python -m brokerguard``."""

import sys

from brokerguard.demo import main

sys.exit(main())
