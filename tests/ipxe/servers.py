"""Start real TFTP servers for tests: tftpd-hpa (the classic reference) and edgetftp, on free ports.

Each runs as a subprocess we started; it is stopped by its own PID (SIGTERM, then SIGKILL).  A server
is ready when it answers a real RRQ (for a file that does not exist) with a TFTP ERROR, so no test
races the server's bind.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

TFTPD_HPA = "/usr/sbin/in.tftpd"
READY_PROBE_NAME = "readiness-probe-does-not-exist"
OPCODE_ERROR = 5


@dataclass
class ServerProcess:
    name: str
    address: tuple[str, int]
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM the process we started (by PID), then SIGKILL if it does not exit; return its code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the caller retries if someone takes it meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def answers_tftp(address: tuple[str, int], timeout: float = 0.3) -> bool:
    """True when a TFTP server at ``address`` answers an RRQ with an ERROR (or anything TFTP)."""
    request = b"\x00\x01" + READY_PROBE_NAME.encode() + b"\x00octet\x00"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(request, address)
        try:
            reply, _ = sock.recvfrom(2048)
        except (TimeoutError, ConnectionRefusedError):
            return False
    return len(reply) >= 4 and reply[1] == OPCODE_ERROR


def tftpd_hpa_unavailable_reason() -> str | None:
    if not os.access(TFTPD_HPA, os.X_OK):
        return f"tftpd-hpa is not installed ({TFTPD_HPA}; apt-get install tftpd-hpa)"
    if os.geteuid() != 0:
        return "tftpd-hpa --secure chroots and drops to `nobody`, which needs root"
    return None


def edgetftp_unavailable_reason() -> str | None:
    """None when ``python -m edgetftp`` can run; otherwise why not."""
    probe = subprocess.run(
        [sys.executable, "-m", "edgetftp", "--help"], capture_output=True, timeout=60, check=False
    )
    if probe.returncode != 0:
        last_line = (probe.stderr or probe.stdout).decode(errors="replace").strip().splitlines()[-1:]
        return f"`python -m edgetftp` is not runnable yet: {' '.join(last_line)}"
    return None


def _launch(
    name: str, command_for_port: Sequence[str], log_path: Path, port_placeholder: str = "{port}"
) -> ServerProcess:
    """Start the command on a free port; try another port if it dies at start (port taken)."""
    last_log = ""
    for _attempt in range(3):
        port = free_udp_port()
        command = [part.replace(port_placeholder, str(port)) for part in command_for_port]
        log = log_path.open("wb")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        server = ServerProcess(name, ("127.0.0.1", port), process, log_path)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and process.poll() is None:
            if answers_tftp(server.address):
                return server
        server.stop()
        last_log = server.log()
    raise RuntimeError(f"{name} did not start: {command_for_port}\n{last_log}")


@contextlib.contextmanager
def tftpd_hpa(
    root: Path, extra_args: Sequence[str] = (), log_dir: Path | None = None
) -> Iterator[ServerProcess]:
    """tftpd-hpa serving ``root`` (chrooted, ``--secure``), classic RFC 1350: a new port per transfer."""
    root.chmod(0o755)  # it drops privileges to `nobody` after the chroot
    command = [TFTPD_HPA, "--foreground", "--listen", "--address", "127.0.0.1:{port}"]
    command += [*extra_args, "--secure", str(root)]
    server = _launch("tftpd-hpa", command, (log_dir or root.parent) / "tftpd-hpa.log")
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def edgetftp(
    root: Path, extra_args: Sequence[str] = (), log_dir: Path | None = None
) -> Iterator[ServerProcess]:
    """edgetftp (``python -m edgetftp``) serving ``root`` with the given flags."""
    command = [sys.executable, "-m", "edgetftp", "--listen", "127.0.0.1:{port}", *extra_args, str(root)]
    server = _launch("edgetftp", command, (log_dir or root.parent) / "edgetftp.log")
    try:
        yield server
    finally:
        server.stop()
