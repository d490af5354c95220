"""`escalation workbench`: a merchant agent's terminal app on the public API (docs/clients.md).

The pure parts (``urgency``, ``state``, ``cards``, ``quick_replies``) import no Textual and are
unit-tested alone; ``app`` draws them with Textual; ``main`` is the command line.
"""
