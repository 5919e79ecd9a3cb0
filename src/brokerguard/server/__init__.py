"""The HTTP server: status page, JSON status, Prometheus metrics, control endpoints."""

from brokerguard.server.app import create_app
from brokerguard.server.runner import StatusServer

__all__ = ["StatusServer", "create_app"]
