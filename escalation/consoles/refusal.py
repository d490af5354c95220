"""A refused or failed call in one person-readable form, shared by the platform console and the
workbench (docs/clients.md): ``CODE REASON: message``, the field violations once, and for a service
that cannot be reached the address the person gave and where to change it."""

from __future__ import annotations

import grpc

from escalation.client import ClientError


def refusal_lines(err: ClientError, target: str) -> list[str]:
    """The lines that say why ``err`` happened (no program prefix; the caller adds its own).

    UNAVAILABLE without an ErrorInfo reason is the transport failing (nothing listens at ``target``,
    ``HOST:PORT`` as the person typed it): the library's text (URL-encoded addresses, "last error:
    UNKNOWN") tells them less than the address does. Otherwise ``CODE REASON: message`` (AIP-193; no
    reason, no gap), then each BadRequest field violation the message does not already state.
    """
    if err.code == grpc.StatusCode.UNAVAILABLE and not err.reason:
        return [f"cannot reach {target} — is the service running? (--target)"]
    head = " ".join(part for part in (err.code.name, err.reason) if part)
    lines = [f"{head}: {err.message}" if err.message else head]
    lines.extend(
        f"  {v.field}: {v.description}" for v in err.violations if f"{v.field}: {v.description}" not in err.message
    )
    return lines
