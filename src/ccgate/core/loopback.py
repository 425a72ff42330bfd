"""The names that mean "this machine": one set for the sidecar's Host check, its bind address and own-URL checks."""

from __future__ import annotations

# Host names as URL parsers and bind addresses spell them: IPv6 without brackets.
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback_name(name: str) -> bool:
    """`name` (any case; an IPv6 address with or without brackets: `[::1]`) is this machine."""
    if name.startswith("[") and name.endswith("]") and ":" in name:
        name = name[1:-1]
    return name.lower() in LOOPBACK_NAMES


def is_loopback_host(host: str | None) -> bool:
    """An HTTP Host header (`name`, `name:port`, `[v6]:port` or a bare v6 address) names this machine."""
    if not host:
        return False
    name = host
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return False
        name = host[: end + 1]
    elif host.count(":") == 1:
        name = host.split(":", 1)[0]
    return is_loopback_name(name)
