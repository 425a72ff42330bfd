"""Who is on the other end of a loopback TCP connection: the uid owning the client's socket (Linux: /proc/net/tcp*).

Requests from sessions that `ccgate install` registered carry no local token (it stays out of settings files), so
the sidecar asks the kernel instead: only a process of the sidecar's own user may use such a session.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any

ESTABLISHED = "01"


def _proc_address(hex_address: str) -> Any:
    """An address as /proc/net/tcp* writes it (32-bit words in host byte order); IPv4-mapped ones as IPv4."""
    raw = bytes.fromhex(hex_address)
    if len(raw) not in (4, 16):
        raise ValueError(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _endpoint(text: str) -> tuple[Any, int]:
    address, _, port = text.partition(":")
    return _proc_address(address), int(port, 16)


def _normal(name: Any) -> tuple[Any, int] | None:
    """(address, port) from a socket's peername/sockname tuple; None for anything else."""
    if not isinstance(name, tuple) or len(name) < 2:
        return None
    try:
        address = ipaddress.ip_address(str(name[0]).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address, int(name[1])


TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def peer_uid(peername: Any, sockname: Any, *, tables: tuple[str, ...] = TABLES) -> int | None:
    """The uid owning the client end of the connection `peername` → `sockname`; None where the platform (or the
    table) does not say. The client's socket is the one whose local end is `peername` and remote end `sockname`."""
    peer, local = _normal(peername), _normal(sockname)
    if peer is None or local is None:
        return None
    for table in tables:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 8 or fields[3] != ESTABLISHED:
                continue
            try:
                if _endpoint(fields[1]) == peer and _endpoint(fields[2]) == local:
                    return int(fields[7])
            except ValueError:
                continue
    return None
