"""The one server helper (tests/serverproc.py): ready means answering TFTP, a failing server is an error
(never a skip), and stopping ends the server's whole process group."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from tests.serverproc import (
    ServerFailed,
    ServerProcess,
    answers_tftp,
    free_port,
    free_tcp_port,
    live_processes_in_sessions,
    reachable,
    tftpd_hpa_command,
    tftpd_hpa_unavailable_reason,
)

pytestmark = pytest.mark.integration

# A stand-in server that forks a long-lived child (as tftpd-hpa does per transfer), then answers every
# datagram with a TFTP ERROR 1; it prints the child's PID first.
FORKING_SERVER = """
import socket, subprocess, sys
child = subprocess.Popen(["sleep", "600"])
print(child.pid, flush=True)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.bind((sys.argv[1], int(sys.argv[2])))
    while True:
        _, peer = sock.recvfrom(2048)
        sock.sendto(b"\\x00\\x05\\x00\\x01no\\x00", peer)
"""


def test_free_ports_can_be_bound() -> None:
    for port, kind in ((free_port(), socket.SOCK_DGRAM), (free_tcp_port(), socket.SOCK_STREAM)):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize("port_mode", ["single", "per-transfer"])
def test_an_edgetftp_that_is_ready_answers_at_once(tmp_path: Path, port_mode: str) -> None:
    with ServerProcess(["--port-mode", port_mode, str(tmp_path)], log_dir=tmp_path) as server:
        assert answers_tftp(server.address, timeout=1.0)
        assert server.process.poll() is None


def test_a_server_that_is_listening_on_the_wildcard_is_probed_on_loopback(tmp_path: Path) -> None:
    with ServerProcess([str(tmp_path)], host="0.0.0.0", log_dir=tmp_path) as server:
        assert answers_tftp((reachable(server.host), server.port), timeout=1.0)


def test_an_edgetftp_that_cannot_start_is_an_error_with_its_log(tmp_path: Path) -> None:
    with pytest.raises(ServerFailed, match="exited with 2") as failed:
        ServerProcess(["--timeout", "-1", str(tmp_path)], log_dir=tmp_path)
    assert "timeout" in str(failed.value)  # the server's own one-line complaint names the setting


def test_a_server_not_waited_for_gives_its_exit_status(tmp_path: Path) -> None:
    server = ServerProcess(["--timeout", "-1", str(tmp_path)], log_dir=tmp_path, wait=False)
    try:
        assert server.wait_exit() == 2
    finally:
        server.stop()
    assert "timeout" in server.log()


def test_a_silent_server_is_an_error_and_is_stopped(tmp_path: Path) -> None:
    def silent(host: str, port: int) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(600)"]

    with pytest.raises(ServerFailed, match="did not answer TFTP"):
        ServerProcess(command=silent, name="silent", log_dir=tmp_path, ready_timeout=1.0)


def test_stop_ends_the_children_the_server_forked(tmp_path: Path) -> None:
    def forking(host: str, port: int) -> list[str]:
        return [sys.executable, "-c", FORKING_SERVER, host, str(port)]

    server = ServerProcess(command=forking, name="forking", log_dir=tmp_path)
    try:
        child = int(server.log().split()[0])
        assert live_processes_in_sessions([server.pid]) == sorted([server.pid, child])
    finally:
        server.stop(timeout=5)
    assert live_processes_in_sessions([server.pid]) == []


def test_tftpd_hpa_is_ready_when_it_answers(tmp_path: Path) -> None:
    if reason := tftpd_hpa_unavailable_reason():
        pytest.skip(reason)
    root = tmp_path / "root"
    root.mkdir()
    root.chmod(0o755)
    with ServerProcess(command=tftpd_hpa_command(root), name="tftpd-hpa", log_dir=tmp_path) as server:
        assert answers_tftp(server.address, timeout=1.0)
