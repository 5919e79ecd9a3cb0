"""``python -m brokerguard.sim``: serve the Kraken emulator (see :mod:`brokerguard.sim.kraken`)."""

import sys

from brokerguard.sim.kraken import main

sys.exit(main())
