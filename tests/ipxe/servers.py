"""Start real TFTP servers for the iPXE and impairment tests: tftpd-hpa (the classic reference) and
edgetftp, on free ports, through the one helper in tests/serverproc.py (ready when it answers TFTP,
stopped by its PID and process group).  A missing tftpd-hpa skips; a failing edgetftp fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.serverproc import (
    ServerProcess,
    answers_tftp,
    edgetftp_command,
    tftpd_hpa_command,
    tftpd_hpa_unavailable_reason,
)

__all__ = ["ServerProcess", "answers_tftp", "edgetftp", "tftpd_hpa", "tftpd_hpa_unavailable_reason"]


@contextlib.contextmanager
def tftpd_hpa(
    root: Path, extra_args: Sequence[str] = (), log_dir: Path | None = None
) -> Iterator[ServerProcess]:
    """tftpd-hpa serving ``root`` (chrooted, ``--secure``), classic RFC 1350: a new port per transfer."""
    root.chmod(0o755)  # it drops privileges to `nobody` after the chroot
    command = tftpd_hpa_command(root, extra_args)
    with ServerProcess(command=command, name="tftpd-hpa", log_dir=log_dir or root.parent) as server:
        yield server


@contextlib.contextmanager
def edgetftp(
    root: Path, extra_args: Sequence[str] = (), log_dir: Path | None = None
) -> Iterator[ServerProcess]:
    """edgetftp (``python -m edgetftp``) serving ``root`` with the given flags."""
    command = edgetftp_command([*extra_args, str(root)])
    with ServerProcess(command=command, log_dir=log_dir or root.parent) as server:
        yield server
