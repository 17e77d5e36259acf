"""Real kernel paths in network namespaces this test makes: a 1420-byte MTU link and packet loss.

Two namespaces joined by a veth pair (MTU 1420, like a WireGuard tunnel): the server runs in one,
the clients in the other.  Nothing leaves the namespaces.  Skipped without root or iproute2.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ContentTree
from tests.serverproc import ServerProcess, edgetftp_command, probe_through

SERVER_IP, CLIENT_IP = "10.213.0.1", "10.213.0.2"
PORT = 6969
LINK_MTU = 1420


def _can_make_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "needs root for ip netns"
    if shutil.which("ip") is None:
        return "needs iproute2"
    probe = f"edgeprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


SKIP_REASON = _can_make_namespaces()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")]


@dataclass
class Link:
    server_ns: str
    client_ns: str

    def in_server(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.server_ns, *command]

    def in_client(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.client_ns, *command]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def link() -> Iterator[Link]:
    tag = uuid.uuid4().hex[:6]
    server_ns, client_ns = f"edgesrv{tag}", f"edgecli{tag}"
    _ip("netns", "add", server_ns)
    _ip("netns", "add", client_ns)
    try:
        _ip("link", "add", f"vs{tag}", "type", "veth", "peer", "name", f"vc{tag}")
        _ip("link", "set", f"vs{tag}", "netns", server_ns)
        _ip("link", "set", f"vc{tag}", "netns", client_ns)
        for ns, dev, address in ((server_ns, f"vs{tag}", SERVER_IP), (client_ns, f"vc{tag}", CLIENT_IP)):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "mtu", str(LINK_MTU), "up")
            _ip("-n", ns, "addr", "add", f"{address}/30", "dev", dev)
        yield Link(server_ns, client_ns)
    finally:
        _ip("netns", "del", server_ns)
        _ip("netns", "del", client_ns)


StartInNamespace = Callable[..., ServerProcess]


@pytest.fixture
def server_in_ns(link: Link, content: ContentTree, tmp_path: Path) -> Iterator[StartInNamespace]:
    with contextlib.ExitStack() as started:  # every server stopped (by PID), whatever happens

        def start(listen: str, *flags: str) -> ServerProcess:
            def command(host: str, port: int) -> list[str]:
                return link.in_server(*edgetftp_command([*flags, str(content.root)])(host, port))

            # ready when a client in the client namespace gets a TFTP answer from SERVER_IP
            host, probe = listen.rsplit(":", 1)[0], probe_through(link.in_client(), to=(SERVER_IP, PORT))
            server = ServerProcess(command=command, host=host, port=PORT, log_dir=tmp_path, probe=probe)
            return started.enter_context(server)

        yield start


def curl_fetch(link: Link, name: str, out: Path, blksize: int) -> None:
    command = link.in_client(
        "curl",
        "-sS",
        "--max-time",
        "120",
        "--tftp-blksize",
        str(blksize),
        "-o",
        str(out),
        f"tftp://{SERVER_IP}:{PORT}/{name}",
    )
    subprocess.run(command, check=True, capture_output=True, timeout=150)


@pytest.mark.parametrize("listen", [f"0.0.0.0:{PORT}", f"{SERVER_IP}:{PORT}"], ids=["wildcard", "bound"])
def test_blksize_is_clamped_to_the_interface_mtu(
    listen: str,
    link: Link,
    server_in_ns: StartInNamespace,
    content: ContentTree,
    tmp_path: Path,
) -> None:
    server = server_in_ns(listen)
    out = tmp_path / "big.bin"
    curl_fetch(link, "big.bin", out, blksize=1468)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == content.digests["big.bin"]
    log = server.wait_for_log("transfer completed", timeout=5)
    assert f"blksize={LINK_MTU - 32}" in log  # 1420 - 20 (IP) - 8 (UDP) - 4 (TFTP)


def test_transfers_survive_kernel_packet_loss(
    link: Link,
    server_in_ns: StartInNamespace,
    content: ContentTree,
    tmp_path: Path,
) -> None:
    """10% of the datagrams reaching the client are dropped by the kernel (iptables statistic)."""
    if shutil.which("iptables") is None:
        pytest.skip("needs iptables")
    rule = ["INPUT", "-p", "udp", "-m", "statistic", "--mode", "random", "--probability", "0.1", "-j", "DROP"]
    added = subprocess.run(link.in_client("iptables", "-A", *rule), capture_output=True, check=False)
    if added.returncode != 0:
        pytest.skip(f"iptables statistic unavailable: {added.stderr.decode().strip()}")
    try:
        server_in_ns(f"{SERVER_IP}:{PORT}", "--timeout", "0.2", "--max-timeout", "1", "--retries", "10")
        out = tmp_path / "big.bin"
        curl_fetch(link, "big.bin", out, blksize=1388)
        assert hashlib.sha256(out.read_bytes()).hexdigest() == content.digests["big.bin"]
    finally:
        subprocess.run(link.in_client("iptables", "-D", *rule), capture_output=True, check=False)
