"""Worlds to test and demonstrate brokerguard in: exchange emulators and, later, scenarios."""

from brokerguard.sim.kraken import KrakenEmulator, KrakenPair, RecordedRequest, running_kraken

__all__ = ["KrakenEmulator", "KrakenPair", "RecordedRequest", "running_kraken"]
