"""Socket plumbing the standard library does not wrap: packet info, interface MTU, address lookup.

Linux-only where it must be (ioctl numbers, /proc); every lookup fails soft (None) elsewhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from dataclasses import dataclass
from functools import lru_cache

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # not exported by Python 3.11
SIOCGIFMTU = 0x8921
SIOCGIFADDR = 0x8915
IPV4_OVERHEAD = 20 + 8 + 4  # IP + UDP + TFTP headers
IPV6_OVERHEAD = 40 + 8 + 4
_IN_PKTINFO = struct.Struct("I4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("16sI")  # addr, ifindex
ANCILLARY_SPACE = socket.CMSG_SPACE(_IN6_PKTINFO.size) + socket.CMSG_SPACE(_IN_PKTINFO.size)


class AddressError(Exception):
    """The listen address cannot be used; the message says why in one line."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno  # the OSError's, when one caused it (EMFILE: out of descriptors)


@dataclass(frozen=True, slots=True)
class Arrival:
    """Where a request arrived: the local address it was sent to and the interface."""

    local_ip: str | None
    ifindex: int | None


def resolve(host: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """First UDP address for host:port (names such as fly-global-services resolve here)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise AddressError(f"cannot resolve {host!r}: {exc.strerror}") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # prefer IPv4: edge UDP is IPv4
    family, _, _, _, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


def is_wildcard(ip: str) -> bool:
    return ipaddress.ip_address(ip.split("%")[0]).is_unspecified


def open_udp_socket(
    family: socket.AddressFamily, address: tuple[str, int], *, want_pktinfo: bool, buffer_bytes: int
) -> socket.socket:
    """A bound, non-blocking UDP socket.  Raises AddressError with a clear line (and the errno)."""
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:  # EMFILE/ENFILE: out of descriptors
        raise AddressError(f"cannot open a UDP socket: {exc.strerror}", exc.errno) from None
    try:
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            # The kernel caps it at rmem_max/wmem_max; a smaller buffer still works.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, buffer_bytes)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if want_pktinfo:
            enable_pktinfo(sock, family)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise AddressError(f"cannot bind UDP {format_address(address)}: {exc.strerror}", exc.errno) from None
    return sock


def bind_udp(host: str, port: int, buffer_bytes: int = 4 * 2**20) -> socket.socket:
    """A listening UDP socket for a ``--listen`` address; packet info on when it is a wildcard.

    Raises AddressError with one line.
    """
    family, address = resolve(host, port)
    return open_udp_socket(family, address, want_pktinfo=is_wildcard(address[0]), buffer_bytes=buffer_bytes)


def enable_pktinfo(sock: socket.socket, family: socket.AddressFamily) -> None:
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


def parse_arrival(ancdata: list[tuple[int, int, bytes]]) -> Arrival:
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _IN_PKTINFO.size:
            ifindex, local, _ = _IN_PKTINFO.unpack_from(data)
            return Arrival(socket.inet_ntop(socket.AF_INET, local), ifindex)
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= _IN6_PKTINFO.size:
            local6, ifindex = _IN6_PKTINFO.unpack_from(data)
            return Arrival(socket.inet_ntop(socket.AF_INET6, local6), ifindex)
    return Arrival(None, None)


def source_address_cmsg(family: socket.AddressFamily, local_ip: str) -> tuple[int, int, bytes]:
    """Ancillary data that makes a reply on a wildcard socket leave from ``local_ip``."""
    if family == socket.AF_INET6:
        return (
            socket.IPPROTO_IPV6,
            socket.IPV6_PKTINFO,
            _IN6_PKTINFO.pack(socket.inet_pton(socket.AF_INET6, local_ip), 0),
        )
    return (
        socket.IPPROTO_IP,
        IP_PKTINFO,
        _IN_PKTINFO.pack(0, socket.inet_pton(socket.AF_INET, local_ip), b"\0" * 4),
    )


@lru_cache(maxsize=256)
def interface_mtu(ifindex: int) -> int | None:
    """The MTU of an interface by index (SIOCGIFMTU), or None when it cannot be read."""
    try:
        name = socket.if_indextoname(ifindex)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            reply = fcntl.ioctl(probe, SIOCGIFMTU, struct.pack("16si12x", name.encode(), 0))
        return int(struct.unpack_from("16si", reply)[1])
    except (OSError, ValueError):
        return None


def ifindex_of_address(ip: str) -> int | None:
    """The interface that holds a local address (for sockets bound to one address)."""
    address = ipaddress.ip_address(ip.split("%")[0])
    if address.version == 6:
        return _ifindex_of_ipv6(address.packed.hex())
    for index, name in socket.if_nameindex():
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                reply = fcntl.ioctl(probe, SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            continue
        if socket.inet_ntoa(reply[20:24]) == str(address):
            return index
    return None


def _ifindex_of_ipv6(packed_hex: str) -> int | None:
    try:
        with open("/proc/net/if_inet6") as table:
            for line in table:
                fields = line.split()
                if fields and fields[0] == packed_hex:
                    return int(fields[1], 16)
    except OSError:
        pass
    return None


def blksize_cap(mtu: int, family: socket.AddressFamily) -> int:
    """The largest blksize whose DATA fits in one packet of ``mtu`` bytes."""
    return mtu - (IPV6_OVERHEAD if family == socket.AF_INET6 else IPV4_OVERHEAD)


def format_address(address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
