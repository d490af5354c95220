"""Generated from proto/escalation/v1 by `make proto`. Do not edit."""
