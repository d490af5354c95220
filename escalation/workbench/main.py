"""`escalation workbench`: the command line of the merchant agent's terminal app (docs/clients.md).

Imports no Textual until it runs, so `escalation --help` works without the ``workbench`` extra.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import jwt

DEFAULT_TARGET = "localhost:50051"
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `escalation workbench`."""
    parser.add_argument("--target", default=DEFAULT_TARGET, help=f"the service, HOST:PORT (default {DEFAULT_TARGET})")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--token", help="the agent's bearer token (a JWT with role merchant)")
    who.add_argument(
        "--token-env",
        metavar="NAME",
        help="read the token from environment variable NAME instead (keeps it out of `ps`)",
    )
    parser.add_argument(
        "--cursor-file",
        type=Path,
        help="where the last processed event's cursor is kept (default: see docs/clients.md, one per "
        "service, shop and agent under $XDG_STATE_HOME/escalation/workbench)",
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS (the system's trust store)")
    parser.add_argument("--ca-file", type=Path, help="with --tls: PEM CA bundle to trust instead")


def claims(token: str) -> tuple[str, str]:
    """(agent id, merchant id) as the token says, read without verifying it: only to label the screen
    and name the cursor file; the service verifies the token on every call (SPEC §3 Auth).

    Raises ValueError when the token is not a JWT, or lacks the sub or merchant_id claim (saying which,
    and the token's role: a platform or ops token has no merchant_id).
    """
    try:
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise ValueError(f"the token is not a JWT: {exc}") from None
    sub, merchant = payload.get("sub"), payload.get("merchant_id")
    if isinstance(sub, str) and sub and isinstance(merchant, str) and merchant:
        return sub, merchant
    # Say which claim is missing: a platform or ops token has a sub, only no shop.
    missing = [
        name for name, value in (("sub", sub), ("merchant_id", merchant)) if not value or not isinstance(value, str)
    ]
    role = payload.get("role")
    of_role = f" (role {role})" if isinstance(role, str) and role else ""
    claims_word = "claim" if len(missing) == 1 else "claims"
    raise ValueError(
        f"this token has no {' and no '.join(missing)} {claims_word}{of_role}: "
        "the workbench needs a merchant agent's token"
    )


def _safe(part: str) -> str:
    """One path component: other characters than ``A-Za-z0-9._-`` become ``_``, and so does a name
    made of dots only (or nothing), so that no value (the claims are read unverified) leaves the
    directory."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", part)
    return "_" * max(len(safe), 1) if not safe.strip(".") else safe


def default_cursor_file(target: str, merchant_id: str, agent_id: str, env: dict[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/escalation/workbench/<target>/<merchant>/<agent>.cursor`` (XDG_STATE_HOME
    defaulting to ~/.local/state). One file per service, because cursors of two deployments are
    unrelated numbers, and per agent, because each agent's stream has its own position (SPEC R8)."""
    env = dict(os.environ) if env is None else env
    base = Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "escalation" / "workbench" / _safe(target) / _safe(merchant_id) / f"{_safe(agent_id)}.cursor"


def run(args: argparse.Namespace) -> int:
    """Runs the app until the agent quits; returns the exit status (2: bad usage)."""
    token = args.token if args.token is not None else os.environ.get(args.token_env, "")
    if not token:
        print(f"escalation workbench: environment variable {args.token_env} is empty or unset", file=sys.stderr)
        return EXIT_USAGE
    try:
        agent_id, merchant_id = claims(token)
    except ValueError as exc:
        print(f"escalation workbench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        from escalation.workbench.run_app import run as run_app
    except ImportError as exc:  # textual missing: the extra was not installed
        print(
            f"escalation workbench needs the 'workbench' extra ({exc.name} is missing): "
            "pip install 'escalation[workbench]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    cursor_file = args.cursor_file or default_cursor_file(args.target, merchant_id, agent_id)
    return run_app(
        target=args.target,
        token=token,
        agent_id=agent_id,
        merchant_id=merchant_id,
        cursor_file=cursor_file,
        tls=args.tls,
        ca_file=args.ca_file,
    )
