"""The HTTP server: status page, JSON status, Prometheus metrics, control endpoints."""

from brokerguard.server.app import create_app
from brokerguard.server.body import CONTROL_BODY_LIMIT_BYTES
from brokerguard.server.runner import StatusServer

__all__ = ["CONTROL_BODY_LIMIT_BYTES", "StatusServer", "create_app"]
