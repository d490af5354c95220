"""Terminal consoles on the public API (escalation.client): `escalation platform`."""
