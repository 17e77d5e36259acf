"""Start-up checks of a local SOURCE (issue 12 items 7 and 10).

Before: ``EDGETFTP_SOURCE=''`` served the current directory (``Path("")`` is "."), a root of ``/``
started but denied everything (the ``root + "/"`` prefix check), and a root that could be listed but
not searched started, then refused every request.  Now the empty value is refused with one line, ``/``
serves what is beneath it, and an unsearchable root is refused at start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, free_port
from tests.rawclient import RawClient

pytestmark = pytest.mark.integration


def run_to_exit(
    *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    command = [*prefix, sys.executable, "-m", "edgetftp", "--listen", f"127.0.0.1:{free_port()}", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def assert_one_line_refusal(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgetftp: invalid SOURCE"), result.stderr
    assert all(word in lines[0] for word in words), lines[0]


def test_an_empty_source_is_refused_not_the_current_directory(tmp_path: Path) -> None:
    assert_one_line_refusal(run_to_exit(env={"EDGETFTP_SOURCE": ""}), "empty")
    assert_one_line_refusal(run_to_exit(""), "empty")


def test_a_root_of_slash_serves_what_is_beneath_it(tmp_path: Path) -> None:
    (tmp_path / "a.efi").write_bytes(b"beneath /")
    server = ServerProcess(["/"])
    try:
        with RawClient(server.address, timeout=5) as client:
            fetched = client.fetch(str(tmp_path / "a.efi").lstrip("/"))
    finally:
        server.stop()
    assert fetched.error is None and fetched.data == b"beneath /"


def test_a_root_that_cannot_be_searched_is_refused_at_start(tmp_path: Path) -> None:
    root = tmp_path / "listable-only"
    root.mkdir()
    (root / "a.efi").write_bytes(b"x")
    root.chmod(0o600)  # r without x: names can be listed, files cannot be opened
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root searches anything: drop the capabilities that let it
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing")
        prefix = (setpriv, "--bounding-set=-all", "--inh-caps=-all")
    try:
        result = run_to_exit(str(root), prefix=prefix)
    finally:
        root.chmod(0o700)
    assert_one_line_refusal(result, "cannot search")
