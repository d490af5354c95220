"""Escalation: real-time platform ↔ merchant verification sessions that become service tickets."""

__version__ = "0.1.0"
