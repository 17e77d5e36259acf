"""The README's first command, copied from README.md, on a fresh Debian 12 as root.

A debootstrapped bookworm (minbase plus ``python3-venv``, the one package the README asks for) is
cached under /var/cache/edgetftp-tests (a minute or more to make, so it outlives the run); each run
gets a fresh copy-on-write view of it (overlayfs) in its own mount and PID namespace, so nothing of
a run survives it.  The command runs verbatim in that root with Debian's python3 (PEP 668: its pip
refuses to install into the system), then curl fetches boot.ipxe from the server it started.
Skipped only when the test cannot make the root (not root, no debootstrap, no Debian mirror).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_readme import first_command

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EDGETFTP_TEST_CACHE", "/var/cache/edgetftp-tests"))
ROOT = CACHE / "bookworm-python3-venv"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = "python3-venv,ca-certificates"  # what the README tells a Debian 12 user to install
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CHECKOUT_FILES = ("pyproject.toml", "README.md", "constraints.txt", "server", "content")
PORT = 6969  # the README's port, verbatim


def make_debian_root() -> Path:
    """The cached bookworm root, debootstrapped once (under a lock: parallel runs wait for it)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (ROOT / "usr/bin/python3").exists():
            return ROOT
        partial = CACHE / "bookworm.partial"
        shutil.rmtree(partial, ignore_errors=True)
        command = [
            "debootstrap",
            "--variant=minbase",
            f"--include={PACKAGES}",
            "bookworm",
            str(partial),
            MIRROR,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            pytest.skip(f"debootstrap bookworm from {MIRROR} failed: {result.stdout[-500:]}")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (partial / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        partial.rename(ROOT)
        return ROOT


@pytest.fixture(scope="module")
def debian_root() -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, chroot, overlayfs)")
    for tool in ("debootstrap", "unshare", "chroot", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    return make_debian_root()


def udp_port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def fresh_view(debian_root: Path) -> Iterator[Path]:
    """An empty upper layer for this run, with the checkout in /root/edgetftp and the host's DNS and
    CA bundle (pip may reach PyPI through a TLS-inspecting proxy the host trusts)."""
    work = Path(tempfile.mkdtemp(prefix="edgetftp-debian-", dir="/var/tmp"))
    upper = work / "upper"
    checkout = upper / "root/edgetftp"
    checkout.mkdir(parents=True)
    for name in CHECKOUT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(
                source, checkout / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy2(source, checkout / name)
    (upper / "etc").mkdir()
    shutil.copy(Path("/etc/resolv.conf").resolve(), upper / "etc/resolv.conf")
    if HOST_CA_BUNDLE.exists():
        (upper / "usr/local/share").mkdir(parents=True)
        shutil.copy(HOST_CA_BUNDLE, upper / "usr/local/share/host-ca.crt")
    yield work
    shutil.rmtree(work, ignore_errors=True)


def namespace_script(base: Path, work: Path, command: str) -> str:
    """Mount the overlay, /proc and /dev in the new namespaces, then run ``command`` in the root."""
    merged = work / "merged"
    return f"""set -e
mkdir -p {merged} {work}/overlay-work
mount -t overlay overlay -o lowerdir={base},upperdir={work}/upper,workdir={work}/overlay-work {merged}
mount -t proc proc {merged}/proc
mount --rbind /dev {merged}/dev
exec chroot {merged} /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PIP_CERT=/usr/local/share/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    /bin/sh -c 'cd /root/edgetftp && exec /bin/sh -c "$0"' {shell_quote(command)}
"""


def shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def test_readme_first_command_serves_boot_ipxe_on_stock_debian_12(
    debian_root: Path, fresh_view: Path
) -> None:
    command = first_command()
    assert f"--listen 127.0.0.1:{PORT}" in command
    assert (debian_root / "usr/lib/python3.11/EXTERNALLY-MANAGED").exists()  # Debian's PEP 668 marker
    if not udp_port_is_free(PORT):
        pytest.fail(f"UDP 127.0.0.1:{PORT} is taken by another process: the README's command needs it")
    expected = (REPO / "content/boot.ipxe").read_bytes()
    log_path = fresh_view / "command.log"
    with open(log_path, "wb") as log:
        # A PID namespace: when unshare dies, everything the command started dies with it.
        proc = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "bash",
                "-c",
                namespace_script(debian_root, fresh_view, command),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    output = fresh_view / "boot.ipxe"
    try:
        deadline = time.monotonic() + 900  # pip downloads pydantic & co. the first time
        fetched = False
        while time.monotonic() < deadline and proc.poll() is None:
            result = subprocess.run(
                [
                    "curl",
                    "--silent",
                    "--max-time",
                    "3",
                    "-o",
                    str(output),
                    f"tftp://127.0.0.1:{PORT}/boot.ipxe",
                ],
                check=False,
            )
            if result.returncode == 0:
                fetched = True
                break
            time.sleep(1)
        log_text = log_path.read_text(errors="replace")
        assert fetched, f"no boot.ipxe (command exit {proc.poll()}):\n{log_text[-3000:]}"
        assert output.read_bytes() == expected
        assert "serving" in log_text and "externally-managed-environment" not in log_text
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # unshare: --kill-child takes the namespace down
        proc.wait(30)
    deadline = time.monotonic() + 10
    while not udp_port_is_free(PORT) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert udp_port_is_free(PORT), "the server in the Debian root outlived the test"
