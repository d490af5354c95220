"""SPEC R4/§3: URLs in messages that the ticketing system and merchant clients will fetch.

A URL is accepted when it is ``https``, carries no userinfo, and names a host that is either an ASCII
DNS name (not ``localhost``) or an IP literal of a public address. IP literals are read the way
browsers and HTTP clients read them (WHATWG URL host parsing): ``https://2130706433/``,
``https://0x7f.1/``, ``https://0177.0.0.1/`` and ``https://127.1/`` are all 127.0.0.1; IPv6 literals are
bracketed and may embed an IPv4 address (``[::ffff:127.0.0.1]``). Hosts with anything a client would
decode or map first (percent-escapes, non-ASCII such as full-width digits, backslashes) are refused
rather than guessed at. Names that resolve to private addresses are a matter for the fetcher's egress
policy: no DNS lookup happens here.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")  # fullmatch, one DNS label (RFC 1123)
_DECIMAL, _HEX, _OCTAL = re.compile(r"0|[1-9][0-9]*"), re.compile(r"0[xX][0-9a-fA-F]*"), re.compile(r"0[0-7]+")
MAX_HOST = 253

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ipv4_number(part: str) -> int | None:
    """One part of a WHATWG IPv4 host: decimal, 0x-hex (0x alone is 0) or 0-octal; None if none of them."""
    if _HEX.fullmatch(part):
        return int(part[2:] or "0", 16)
    if _OCTAL.fullmatch(part):
        return int(part, 8)
    if _DECIMAL.fullmatch(part):
        return int(part, 10)
    return None


def _whatwg_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address a client reads from an IPv4 host in any of its forms (1 to 4 parts); None when invalid."""
    parts = host.split(".")
    if len(parts) > 4:
        return None
    numbers = [_ipv4_number(p) for p in parts]
    if any(n is None for n in numbers):
        return None
    values = [n for n in numbers if n is not None]
    *leading, last = values
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(values)):
        return None
    address = last
    for i, n in enumerate(leading):
        address += n << (8 * (3 - i))
    return ipaddress.IPv4Address(address)


def _ends_in_a_number(host: str) -> bool:
    """WHATWG's test for "this host is an IPv4 address": its last label is a number (decimal or 0x-hex)."""
    last = host.split(".")[-1]
    return bool(re.fullmatch(r"[0-9]+", last) or _HEX.fullmatch(last))


def _not_public(address: Address) -> bool:
    """Loopback, private, link-local, unspecified, multicast, reserved, shared (CGNAT), documentation…"""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None and _not_public(embedded):
            return True
    return not address.is_global or address.is_multicast or address.is_reserved


def fetchable_url_problem(value: str) -> str | None:
    """Why ``value`` is not a URL safe to hand to fetchers, as a field description; None when it is.

    Rules (SPEC §3 "Image URLs are https, without userinfo, not to loopback/link-local/private IP
    literals"): scheme ``https``; no ``user:pass@``; a host that is a lower- or upper-case ASCII DNS
    name other than ``localhost``/``*.localhost`` (RFC 6761), or a bracketed IPv6 / IPv4 literal (in
    any WHATWG form) of a globally routable unicast address; a valid port if any.
    """
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unbalanced or invalid bracketed host
        return "must be an https:// URL"
    if parts.scheme != "https" or not parts.netloc:
        return "must be an https:// URL"
    if "\\" in value:
        return "must not contain a backslash (clients read it as '/')"
    if "@" in parts.netloc:
        return "must not contain userinfo (user:password@)"
    try:
        parts.port  # noqa: B018 - parsing it is the check: a bad port raises
        hostname = parts.hostname or ""
    except ValueError:
        return "has an invalid port or host"
    bracketed = parts.netloc.startswith("[")
    host = hostname if bracketed else hostname.rstrip(".")
    if bracketed:
        try:
            address: Address = ipaddress.IPv6Address(host)  # a zone id ("%eth0") is refused here too
        except ValueError:
            return "has an invalid IPv6 host"
    elif not host or len(host) > MAX_HOST or not all(_LABEL.fullmatch(label) for label in host.split(".")):
        return "must name its host as an ASCII DNS name or an IP address (internationalised names in xn-- form)"
    elif _ends_in_a_number(host):
        parsed = _whatwg_ipv4(host)
        if parsed is None:
            return "has an invalid IPv4 host"
        address = parsed
    elif host == "localhost" or host.endswith(".localhost"):
        return "must not point at localhost"
    else:
        return None
    if _not_public(address):
        return "must not point at a loopback, private, link-local, multicast or otherwise non-public IP address"
    return None
