"""Socket activation: the real ``systemd-socket-activate`` binds, edgetftp serves on what it inherits.

``systemd-socket-activate -d -l ADDRESS CMD`` binds a UDP socket, waits for the first datagram, then
execs CMD with the socket as fd 3 and LISTEN_FDS/LISTEN_PID set (the protocol of a ``.socket`` unit).
It passes on no environment of its own, hence ``-E PYTHONPATH`` (this checkout's code).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edgetftp.activation import ActivationError, inherited_udp_sockets
from tests.conftest import ContentTree, free_port, free_tcp_port
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.integration

ACTIVATE = shutil.which("systemd-socket-activate")
needs_activate = pytest.mark.skipif(
    ACTIVATE is None, reason="systemd-socket-activate is not installed (Debian: apt-get install systemd)"
)


# --- the protocol, on environments built by hand --------------------------------------------------


def test_no_variables_means_no_sockets() -> None:
    assert inherited_udp_sockets({}) == []


def test_variables_for_another_process_are_ignored_and_cleared() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "tftp", "HOME": "/"}
    assert inherited_udp_sockets(env) == []
    assert env == {"HOME": "/"}, "children must never see the variables"


@pytest.mark.parametrize("count", ["0", "two", "-1", ""])
def test_a_bad_count_is_an_error(count: str) -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": count}
    with pytest.raises(ActivationError, match="LISTEN_FDS"):
        inherited_udp_sockets(env)
    assert env == {}


# --- the real systemd-socket-activate ------------------------------------------------------------


def socket_activated(listen: str, port: int, *args: str, datagram: bool = True) -> ServerProcess:
    """``systemd-socket-activate [-d] -l LISTEN python -m edgetftp ARGS``, once it listens on ``port``.

    No readiness probe is sent: the test's own first datagram (or connection) starts edgetftp.
    """
    assert ACTIVATE is not None
    flags = ["-d"] if datagram else []

    def command(_host: str, _port: int) -> list[str]:  # the address is LISTEN, as the test wrote it
        return [ACTIVATE, *flags, "-E", "PYTHONPATH", "-l", listen, sys.executable, "-m", "edgetftp", *args]

    process = ServerProcess(command=command, name="socket-activate", port=port, wait=False)
    try:
        process.wait_for_log("Listening on")
    except BaseException:
        process.stop()
        raise
    return process


def curl(url: str) -> bytes:
    # curl's first RRQ wakes systemd-socket-activate, which then starts Python: allow for a slow start.
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "60", url], capture_output=True, timeout=90
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@needs_activate
def test_serves_curl_on_the_inherited_socket(
    content: ContentTree, server_processes: list[ServerProcess]
) -> None:
    port = free_port()
    process = socket_activated(f"127.0.0.1:{port}", port, str(content.root))
    server_processes.append(process)
    for name in ("big.bin", "s513.bin", "pxelinux.cfg/01-aa-bb-cc-dd-ee-ff"):
        assert digest(curl(f"tftp://127.0.0.1:{port}/{name}")) == content.digests[name]
    log = process.log()
    assert f"serving {content.root} on udp 127.0.0.1:{port}" in log, log
    assert process.stop() == 0


@needs_activate
def test_a_dual_stack_inherited_socket_serves_ipv4_and_ipv6(
    content: ContentTree, server_processes: list[ServerProcess]
) -> None:
    """``-l PORT`` hands over one [::] socket that takes IPv4 too (the issue's own command)."""
    port = free_port(socket.AF_INET6, "::")
    process = socket_activated(str(port), port, str(content.root))
    server_processes.append(process)
    assert digest(curl(f"tftp://127.0.0.1:{port}/s1024.bin")) == content.digests["s1024.bin"]
    assert digest(curl(f"tftp://[::1]:{port}/big.bin")) == content.digests["big.bin"]
    assert f"on udp [::]:{port}" in process.log()


@needs_activate
def test_per_transfer_mode_on_an_inherited_socket(
    content: ContentTree, server_processes: list[ServerProcess]
) -> None:
    port = free_port()
    process = socket_activated(f"127.0.0.1:{port}", port, "--port-mode", "per-transfer", str(content.root))
    server_processes.append(process)
    assert digest(curl(f"tftp://127.0.0.1:{port}/x1432.bin")) == content.digests["x1432.bin"]


@needs_activate
def test_listen_is_refused_with_inherited_sockets(
    content: ContentTree, server_processes: list[ServerProcess]
) -> None:
    port, other = free_port(), free_port()
    process = socket_activated(f"127.0.0.1:{port}", port, "--listen", f"127.0.0.1:{other}", str(content.root))
    server_processes.append(process)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wake:
        wake.sendto(b"\0\1boot\0octet\0", ("127.0.0.1", port))  # the first datagram starts the server
    assert process.wait_exit() == 2
    refusals = [line for line in process.log().splitlines() if line.startswith("edgetftp:")]
    assert refusals == [
        "edgetftp: invalid setting --listen (EDGETFTP_LISTEN): the system manager passed sockets "
        f"(127.0.0.1:{port}); serve on those and leave --listen unset"
    ], process.log()


@needs_activate
def test_an_inherited_tcp_socket_is_refused(
    content: ContentTree, server_processes: list[ServerProcess]
) -> None:
    port = free_tcp_port()
    process = socket_activated(f"127.0.0.1:{port}", port, str(content.root), datagram=False)
    server_processes.append(process)
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        assert process.wait_exit() == 2
    refusals = [line for line in process.log().splitlines() if line.startswith("edgetftp:")]
    assert refusals == [
        "edgetftp: socket activation: inherited descriptor 3 is AF_INET SOCK_STREAM, "
        "not a UDP socket (SOCK_DGRAM)"
    ], process.log()


UNITS = Path(__file__).resolve().parents[1] / "deploy" / "systemd"
SHIPPED_EXEC_START = "ExecStart=/opt/edgetftp/bin/edgetftp /srv/tftp"


def systemd_analyze() -> str:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return analyze


@pytest.fixture
def unit_copies(tmp_path: Path) -> Path:
    """The unit pair, with ExecStart pointed at a stand-in: verify checks the binary exists."""
    stand_in = tmp_path / "edgetftp"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    service = (UNITS / "edgetftp.service").read_text()
    assert SHIPPED_EXEC_START in service.splitlines()
    (tmp_path / "edgetftp.service").write_text(
        service.replace(SHIPPED_EXEC_START, f"ExecStart={stand_in} /srv/tftp")
    )
    (tmp_path / "edgetftp.socket").write_text((UNITS / "edgetftp.socket").read_text())
    return tmp_path


def test_the_unit_pair_verifies(unit_copies: Path) -> None:
    result = subprocess.run(
        [systemd_analyze(), "verify", "edgetftp.socket", "edgetftp.service"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=unit_copies,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == "", "verify reports nothing for a clean unit"


def test_the_service_is_hardened(unit_copies: Path) -> None:
    """systemd's own exposure score (0 = locked down, 10 = unprotected), and the settings the
    inherited socket makes possible: no user, no capability, no way to gain one."""
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", str(unit_copies / "edgetftp.service")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    overall = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    score = float(overall[0].split(":")[1].split()[0])
    print(f"\nsystemd-analyze security: exposure {score}")
    assert score <= 2.0, result.stdout
    settings = (UNITS / "edgetftp.service").read_text().splitlines()
    for line in (
        "DynamicUser=yes",
        "CapabilityBoundingSet=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
    ):
        assert line in settings, line
    assert not [line for line in settings if line.startswith("Environment=EDGETFTP_LISTEN")]
    socket_unit = (UNITS / "edgetftp.socket").read_text().splitlines()
    assert "ListenDatagram=69" in socket_unit and "BindIPv6Only=both" in socket_unit
