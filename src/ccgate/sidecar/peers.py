"""Who is on the other end of a loopback TCP connection: the uid owning the client's socket (Linux: /proc/net/tcp*).

Requests from sessions that `ccgate install` registered carry no local token (it stays out of settings files), so
the sidecar asks the kernel instead: only a process of the sidecar's own user may use such a session.

The client's socket is matched in any connection state: one that shut its sending side after the request
(FIN_WAIT2) is still that user's, and not finding it would read as "the platform does not say".

This runs on the sidecar's event loop for each such request, so the table is searched as text for the one
connection's exact `local rem` columns (a busy machine lists thousands of sockets) instead of parsing every line.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any

# a socket in these states is no one's connection: TIME_WAIT entries list uid 0, LISTEN has no remote end
NOT_A_CONNECTION = frozenset({"06", "0A"})
TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _normal(name: Any) -> tuple[Address, int] | None:
    """(address, port) from a socket's peername/sockname tuple (IPv4-mapped IPv6 as IPv4); None for anything else."""
    if not isinstance(name, tuple) or len(name) < 2 or not isinstance(name[1], int):
        return None
    try:
        address = ipaddress.ip_address(str(name[0]).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address, name[1]


def _proc_hex(address: Address, *, wide: bool) -> str:
    """An address as /proc/net/tcp (`wide`: tcp6, IPv4 as IPv4-mapped) writes it: 32-bit words in host order."""
    if wide and isinstance(address, ipaddress.IPv4Address):
        address = _mapped(address)
    raw = address.packed
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return raw.hex().upper()


def _columns(peer: tuple[Address, int], local: tuple[Address, int], *, wide: bool) -> str:
    """The client socket's `local_address rem_address` columns: its local end is our peer, its remote end us."""
    return (
        f"{_proc_hex(peer[0], wide=wide)}:{peer[1]:04X} {_proc_hex(local[0], wide=wide)}:{local[1]:04X} "
        if wide or isinstance(peer[0], ipaddress.IPv4Address)
        else ""
    )


def peer_uid(peername: Any, sockname: Any, *, tables: tuple[str, ...] | None = None) -> int | None:
    """The uid owning the client end of the connection `peername` → `sockname`; None where the platform does not say.

    Asks the kernel for that one socket (netlink sock_diag, microseconds); where that does not answer, reads
    /proc/net/tcp* (tens of milliseconds on a busy machine). `tables` forces the /proc path (tests).
    """
    peer, local = _normal(peername), _normal(sockname)
    if peer is None or local is None:
        return None
    if tables is None:
        uid = _diag_uid(peer, local)
        if uid is not None:
            return uid
    return _table_uid(peer, local, tables or TABLES)


# linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
AF_INET, AF_INET6, IPPROTO_TCP = 2, 10, 6
# the uid's offset in struct inet_diag_msg: family, state, timer, retrans (4), sockid (48), expires, rqueue, wqueue
UID_OFFSET = 4 + 48 + 12


def _diag_uid(peer: tuple[Address, int], local: tuple[Address, int]) -> int | None:
    """One exact-socket sock_diag request for the client's socket (IPv4, then as IPv4-mapped IPv6)."""
    import socket
    import struct

    if not hasattr(socket, "AF_NETLINK"):
        return None
    attempts: list[tuple[int, Address, Address]] = []
    if isinstance(peer[0], ipaddress.IPv4Address) and isinstance(local[0], ipaddress.IPv4Address):
        attempts.append((AF_INET, peer[0], local[0]))
        attempts.append((AF_INET6, _mapped(peer[0]), _mapped(local[0])))
    elif isinstance(peer[0], ipaddress.IPv6Address) and isinstance(local[0], ipaddress.IPv6Address):
        attempts.append((AF_INET6, peer[0], local[0]))
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as conn:
            conn.settimeout(1.0)
            for family, src, dst in attempts:
                sockid = (
                    struct.pack("!HH", peer[1], local[1]) + src.packed.ljust(16, b"\0") + dst.packed.ljust(16, b"\0")
                )
                sockid += struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)  # any interface, no cookie
                body = struct.pack("=BBBBI", family, IPPROTO_TCP, 0, 0, 1 << 1) + sockid  # state: ESTABLISHED
                conn.send(struct.pack("=LHHLL", 16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + body)
                reply = conn.recv(65536)
                if len(reply) < 16 + UID_OFFSET + 4:
                    continue
                _, kind, _, _, _ = struct.unpack_from("=LHHLL", reply)
                if kind == NLMSG_ERROR:
                    continue
                return int(struct.unpack_from("=I", reply, 16 + UID_OFFSET)[0])
    except OSError:
        return None
    return None


def _mapped(address: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)


def _table_uid(peer: tuple[Address, int], local: tuple[Address, int], tables: tuple[str, ...]) -> int | None:
    for table in tables:
        try:
            text = Path(table).read_text()
        except OSError:
            continue
        needle = _columns(peer, local, wide=table.endswith("6"))
        start = text.find(needle) if needle else -1
        while start >= 0:
            line_start = text.rfind("\n", 0, start) + 1
            line_end = text.find("\n", start)
            fields = text[line_start : line_end if line_end >= 0 else len(text)].split()
            if len(fields) >= 8 and f"{fields[1]} {fields[2]} " == needle and fields[3] not in NOT_A_CONNECTION:
                try:
                    return int(fields[7])
                except ValueError:
                    return None
            start = text.find(needle, start + 1)
    return None
