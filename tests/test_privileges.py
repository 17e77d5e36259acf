"""``--user``: bind as root, then serve as an unprivileged user; refuse when that cannot be done.

The serving process is a real ``python -m edgetftp``; its /proc/PID/status is read while a real
client's transfer is open, and real clients (curl) fetch files from it afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from edgetftp.privileges import Identity, PrivilegeError, resolve_identity
from tests.conftest import free_port
from tests.rawclient import RawClient
from tests.serverproc import Command, ServerProcess, listen_spec

from edgetftp.protocol import Data  # isort: skip

pytestmark = pytest.mark.integration

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
NOBODY = pwd.getpwnam("nobody")
BIG_FILE_BYTES = 300_000
RUN_AS = (
    # Everything the server imports lazily is imported while still root (/root is closed to others).
    "import os, sys, encodings.idna, uvloop, edgetftp.sources.local; from edgetftp import cli; "
    "os.setgroups([]); os.setgid({gid}); os.setuid({uid}); sys.exit(cli.main(sys.argv[1:]))"
)


# --- USER[:GROUP] resolution ---------------------------------------------------------------------


def test_user_name_takes_its_primary_group() -> None:
    assert resolve_identity("nobody") == Identity(NOBODY.pw_uid, NOBODY.pw_gid)


def test_numbers_need_no_passwd_entry_when_the_group_is_given() -> None:
    assert resolve_identity("65532:65532") == Identity(65532, 65532)
    assert resolve_identity(f"{NOBODY.pw_uid}") == Identity(NOBODY.pw_uid, NOBODY.pw_gid)


def test_group_by_name() -> None:
    group = __import__("grp").getgrgid(NOBODY.pw_gid).gr_name
    assert resolve_identity(f"root:{group}") == Identity(0, NOBODY.pw_gid)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no-such-user-here", "no such user"),
        ("nobody:no-such-group-here", "no such group"),
        (":65532", r"expected USER\[:GROUP\]"),
        ("4000123", "give the group too"),
    ],
)
def test_bad_specs_are_refused(spec: str, message: str) -> None:
    with pytest.raises(PrivilegeError, match=message):
        resolve_identity(spec)


# --- a real server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def public_content() -> Iterator[Path]:
    """Files every user may read (pytest's tmp dirs and TMPDIR are 0700, closed to the dropped user)."""
    root = Path(tempfile.mkdtemp(prefix="edgetftp-public-", dir="/var/tmp"))
    root.chmod(0o755)
    (root / "big.bin").write_bytes(os.urandom(BIG_FILE_BYTES))
    (root / "boot.ipxe").write_bytes(b"#!ipxe\necho served by an unprivileged user\n")
    for path in root.iterdir():
        path.chmod(0o644)
    yield root
    shutil.rmtree(root)


def edgetftp_as(run_as: Identity | None, args: Sequence[str]) -> Command:
    """``python -m edgetftp --listen HOST:PORT ARGS``; with ``run_as``, started as root and switched to
    that user before main() runs (the interpreter lives under /root, closed to other users)."""
    python = [sys.executable, "-m", "edgetftp"]
    if run_as is not None:
        python = [sys.executable, "-c", RUN_AS.format(uid=run_as.uid, gid=run_as.gid)]

    def command(host: str, port: int) -> list[str]:
        return [*python, "--drain-timeout", "1", "--listen", listen_spec(host, port), *args]

    return command


def start(
    server_processes: list[ServerProcess],
    *args: str,
    port: int,
    run_as: Identity | None = None,
    wait: bool = True,
) -> ServerProcess:
    """edgetftp on 127.0.0.1:``port``, stopped by the ``server_processes`` fixture; with ``wait``, once
    it answers TFTP, else at once (one that must refuse its settings)."""
    server = ServerProcess(command=edgetftp_as(run_as, args), port=port, wait=wait, ready_timeout=30.0)
    server_processes.append(server)
    return server


def privileged_free_port() -> int:
    """A free UDP port below 1024 on loopback: binding it proves the bind happened as root."""
    for port in range(990, 600, -1):
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", port))
            return port
    pytest.skip("no free UDP port below 1024 on loopback")


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def curl(port: int, name: str) -> bytes:
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "30", f"tftp://127.0.0.1:{port}/{name}"],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def assert_serving_as(server: ServerProcess, identity: Identity, content: Path) -> None:
    """Open a transfer (the server has read datagrams), read its ids, then let curl fetch files."""
    with RawClient(("127.0.0.1", server.port), timeout=10) as client:
        client.rrq("big.bin")
        packet, _ = client.receive()
        assert isinstance(packet, Data) and packet.block == 1, packet
        status = proc_status(server.proc.pid)  # mid-transfer: a datagram has been handled
    ids = (identity.uid, identity.gid)
    assert status["Uid"].split() == [str(ids[0])] * 4, status["Uid"]
    assert status["Gid"].split() == [str(ids[1])] * 4, status["Gid"]
    assert status["Groups"] == "", status["Groups"]
    assert status["CapEff"] == "0000000000000000"
    for name in ("big.bin", "boot.ipxe"):
        expected = hashlib.sha256((content / name).read_bytes()).hexdigest()
        assert hashlib.sha256(curl(server.port, name)).hexdigest() == expected


@needs_root
@pytest.mark.parametrize("spec", ["nobody", f"{NOBODY.pw_uid}:{NOBODY.pw_gid}", "65532:65532"])
def test_binds_a_privileged_port_then_serves_as_the_user(
    public_content: Path, server_processes: list[ServerProcess], spec: str
) -> None:
    port = privileged_free_port()
    server = start(server_processes, "--user", spec, str(public_content), port=port)
    assert_serving_as(server, resolve_identity(spec), public_content)
    assert "switched to" in server.log()


@needs_root
def test_per_transfer_ports_work_after_the_drop(
    public_content: Path, server_processes: list[ServerProcess]
) -> None:
    """Each transfer binds a fresh ephemeral port: no privilege needed, so it works as nobody."""
    port = privileged_free_port()
    server = start(
        server_processes, "--port-mode", "per-transfer", "--user", "nobody", str(public_content), port=port
    )
    with RawClient(("127.0.0.1", port), timeout=10) as client:
        fetched = client.fetch("boot.ipxe")
    assert fetched.data == (public_content / "boot.ipxe").read_bytes()
    assert fetched.reply_addresses and all(address[1] != port for address in fetched.reply_addresses)
    assert_serving_as(server, Identity(NOBODY.pw_uid, NOBODY.pw_gid), public_content)


def test_user_needs_root(public_content: Path, server_processes: list[ServerProcess]) -> None:
    port = free_port()
    nobody = Identity(NOBODY.pw_uid, NOBODY.pw_gid)
    run_as = nobody if os.geteuid() == 0 else None
    server = start(
        server_processes, "--user", "65532:65532", str(public_content), port=port, run_as=run_as, wait=False
    )
    assert server.wait_exit(timeout=30) == 2
    lines = server.log().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("edgetftp: invalid setting --user (EDGETFTP_USER): ")
    assert "needs root" in lines[0]


def test_unknown_user_is_refused_at_start(
    public_content: Path, server_processes: list[ServerProcess]
) -> None:
    port = free_port()
    server = start(
        server_processes, "--user", "no-such-user-here", str(public_content), port=port, wait=False
    )
    assert server.wait_exit(timeout=30) == 2
    assert server.log().strip() == (
        "edgetftp: invalid setting --user (EDGETFTP_USER): no such user: no-such-user-here"
    )


@needs_root
def test_a_failed_drop_refuses_to_serve(public_content: Path) -> None:
    """Root without CAP_SETGID (setpriv drops it from the bounding set): the switch fails, no serving."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    port = free_port()
    result = subprocess.run(
        [
            setpriv,
            "--bounding-set=-setgid",
            "--inh-caps=-setgid",
            sys.executable,
            "-m",
            "edgetftp",
            "--listen",
            f"127.0.0.1:{port}",
            "--user",
            "nobody",
            str(public_content),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert "serving" not in result.stdout + result.stderr
    assert result.stderr.strip().endswith("Operation not permitted"), result.stderr
    assert "invalid setting --user (EDGETFTP_USER): cannot switch to" in result.stderr


@needs_root
def test_already_the_user_is_accepted(public_content: Path, server_processes: list[ServerProcess]) -> None:
    """``docker run --user 65532:65532`` with the image's EDGETFTP_USER=65532:65532: nothing to switch."""
    port = free_port()
    nobody = Identity(NOBODY.pw_uid, NOBODY.pw_gid)
    server = start(server_processes, "--user", "nobody", str(public_content), port=port, run_as=nobody)
    assert_serving_as(server, nobody, public_content)


def test_an_empty_user_setting_means_no_switch(public_content: Path) -> None:
    from edgetftp.settings import load_settings

    os.environ["EDGETFTP_USER"] = ""
    try:
        assert load_settings([str(public_content)]).user is None
    finally:
        del os.environ["EDGETFTP_USER"]
