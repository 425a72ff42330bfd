"""Budget-alert webhook URLs: which addresses a gateway may post to, and how a URL is shown without its secrets."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 prefixes that carry an IPv4 address inside: a NAT64 gateway or a 6to4 relay would take a request for them
# to that IPv4 address, so it is the embedded one that counts.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
# First path segments shown in the clear: common words (Slack's `services`, Discord's `api`), never a segment
# that could be a token (one made of letters only is still a token).
_PLAIN_SEGMENTS = frozenset(
    {"api", "services", "hooks", "hook", "webhook", "webhooks", "alerts", "alert", "notify", "events", "v1", "v2"}
)


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4, Teredo), or None."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or address in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_public(address: IPAddress) -> bool:
    """A globally routable unicast address: not loopback, private, link-local (cloud metadata at 169.254.169.254
    and fd00:ec2::254 included), shared (100.64/10), reserved, unspecified or multicast -- also when an IPv6
    address carries such an IPv4 address inside."""
    inner = embedded_ipv4(address)
    if inner is not None and not is_public(inner):
        return False
    return address.is_global and not address.is_multicast


def literal_address(host: str) -> IPAddress | None:
    """`host` as an IP address when it is written as one (IPv6 with or without brackets), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def refused_host(host: str) -> str | None:
    """Why a webhook host is refused without resolving it (a private literal, `localhost`), or None."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return "localhost is this machine"
    address = literal_address(name)
    if address is not None and not is_public(address):
        return f"{address} is not a public address"
    return None


def redact_webhook_url(url: str | None) -> str | None:
    """What may be shown of a webhook URL: scheme, host, port and a first path segment that is a common word
    (`services`, `api`, `hooks`...), then `…`.

    Webhook URLs often are the secret (a token in the query, userinfo or the path, as Slack's and Discord's
    are), so everything else is left out; the URL is stored and used as given.
    """
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(unparseable URL)"
    host = f"[{host}]" if ":" in host else host
    shown = f"{parts.scheme}://{host}{f':{port}' if port else ''}"
    segments = [s for s in parts.path.split("/") if s]
    if segments and segments[0].lower() in _PLAIN_SEGMENTS:
        shown += f"/{segments[0]}"
        segments = segments[1:]
    hidden = bool(segments or parts.query or parts.fragment or parts.username or parts.password)
    return shown + ("/…" if hidden else "")


def looks_redacted(url: str) -> bool:
    """A URL as `redact_webhook_url` shows it: sending it back (a script copying a budget) would break the hook."""
    return "…" in url or url == "(unparseable URL)"
