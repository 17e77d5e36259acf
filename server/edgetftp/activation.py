"""Socket activation: the UDP sockets a system manager hands over (systemd's sd_listen_fds protocol).

The manager binds the sockets, then starts the server with them open from file descriptor 3 on and
``LISTEN_FDS`` (how many) and ``LISTEN_PID`` (which process they are for) in the environment.  The
server serves on them instead of binding ``--listen`` itself, so it needs no privilege for port 69
(systemd's ``.socket`` unit, or ``systemd-socket-activate -d -l 69 edgetftp DIR``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

SD_LISTEN_FDS_START = 3  # the first inherited descriptor, fixed by the protocol
ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
UDP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class ActivationError(Exception):
    """The inherited sockets cannot be served on; the message says why in one line."""


def inherited_udp_sockets(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """The UDP sockets passed to this process, or [] when none were.

    The variables are removed whichever way it goes, so that child processes never take them for
    their own.  Raises ActivationError when sockets were passed but are not usable UDP sockets.
    """
    env = os.environ if environ is None else environ
    listen_pid, listen_fds = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    for name in ACTIVATION_VARIABLES:
        env.pop(name, None)
    if listen_pid is None or listen_fds is None:
        return []
    if not _is_for_this_process(listen_pid):
        return []  # meant for a parent that exec'd us without clearing them
    count = _descriptor_count(listen_fds)
    return [_adopt(fd) for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count)]


def _is_for_this_process(listen_pid: str) -> bool:
    return listen_pid.strip().isdigit() and int(listen_pid) == os.getpid()


def _descriptor_count(listen_fds: str) -> int:
    text = listen_fds.strip()
    if not text.isdigit() or int(text) == 0:
        raise ActivationError(f"LISTEN_FDS={listen_fds!r}: expected a positive number of sockets")
    return int(text)


def _adopt(fd: int) -> socket.socket:
    """Wrap one inherited descriptor after checking it is a UDP socket over IPv4 or IPv6."""
    try:
        sock = socket.socket(fileno=fd)  # family and type are read from the descriptor
    except OSError as exc:
        raise ActivationError(f"inherited descriptor {fd} is not a socket: {exc.strerror}") from None
    if sock.family not in UDP_FAMILIES or sock.type != socket.SOCK_DGRAM:
        kind = f"{_name(sock.family)} {_name(sock.type)}"
        sock.detach()  # not ours to close: the error ends the process anyway
        raise ActivationError(f"inherited descriptor {fd} is {kind}, not a UDP socket (SOCK_DGRAM)")
    sock.setblocking(False)
    os.set_inheritable(fd, False)  # CLOEXEC: nothing the server runs may keep port 69 open
    return sock


def _name(value: object) -> str:
    return str(getattr(value, "name", value))


def describe(sockets: list[socket.socket]) -> str:
    """``udp 0.0.0.0:69, udp [::]:69`` for the start-up log line."""
    names = []
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        names.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return ", ".join(names)
