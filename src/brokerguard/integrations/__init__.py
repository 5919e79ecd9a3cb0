"""Framework integrations: brokerguard inside the bots people already run.

Each integration is its own module and imports its framework lazily, so importing one never
requires the framework to be installed:

- :mod:`brokerguard.integrations.freqtrade`: a freqtrade strategy mixin that asks the guard
  service's ``/v1`` pre-trade API before every entry, and a client of freqtrade's own REST API
  through which the service supervises a running bot (locks, force exits).
"""
