"""One process, IPv4 and IPv6 at once: real clients (curl, atftp) over both, and how --listen parses."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edgetftp.settings import ListenAddress, load_settings
from tests.conftest import ContentTree, ServerProcess, free_port
from tests.test_clients import fetch_with, sha256_of

pytestmark = pytest.mark.integration

StartServer = Callable[..., ServerProcess]


def have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_curl_and_atftp_over_ipv4_and_ipv6_at_once(
    start_server: StartServer, content: ContentTree, tmp_path: Path
) -> None:
    missing = [tool for tool in ("curl", "atftp") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    if not have_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    port6 = free_port(socket.AF_INET6, "::1")
    server = start_server("--listen", f"[::1]:{port6}", "--mtu", "1300", str(content.root))
    assert f"127.0.0.1:{server.port}, [::1]:{port6}" in server.log()  # one process, both listeners
    jobs = [
        (client, address, blksize)
        for client in ("curl", "atftp")
        for address in (server.address, ("::1", port6))
        for blksize in (1428, None)
    ]

    def run(job: tuple[str, tuple[str, int], int | None]) -> tuple[str, int, str]:
        client, address, blksize = job
        out = tmp_path / f"{client}-{address[0].replace(':', '_')}-{blksize}.bin"
        result = fetch_with(client, address, "big.bin", out, blksize=blksize)
        return client, result.returncode, sha256_of(out) if out.exists() else "missing"

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(run, jobs))
    assert results == [(client, 0, content.digests["big.bin"]) for client, _, _ in jobs]
    log = server.log()
    assert log.count("transfer completed") == len(jobs)
    assert "blksize=1248" in log and "blksize=1268" in log  # each family's own overhead under --mtu 1300
    assert log.count("client=[::1]:") == len(jobs) // 2


def test_listen_is_repeatable_comma_separated_and_from_the_environment(
    content: ContentTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(content.root)
    expected = [ListenAddress("127.0.0.1", 6969), ListenAddress("::1", 6969)]
    repeated = load_settings(["--listen", "127.0.0.1:6969", "--listen", "[::1]:6969", root])
    assert repeated.listen_addresses == expected
    assert load_settings(["--listen", "127.0.0.1:6969,[::1]:6969", root]).listen_addresses == expected
    monkeypatch.setenv("EDGETFTP_LISTEN", "127.0.0.1:6969, [::1]:6969")
    assert load_settings([root]).listen_addresses == expected
