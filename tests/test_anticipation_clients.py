"""Real lock-step TFTP clients against edgetftp ``--anticipate N`` over a 50 ms round trip.

curl (default options and ``--tftp-no-options``), atftp, the tftp-hpa client and busybox never ask for a
windowsize, so the server sends up to N blocks ahead of their last ACK.  Each fetches a 1 MiB file
through the impairment relay (25 ms each way); the client must exit 0 and write the right sha256.
A representative subset of ``python -m bench.compat`` (the full client x 0/8/16/32 x loss table).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import compat, latency
from bench.peers import ServerProcess

pytestmark = pytest.mark.integration

ONE_WAY_DELAY_MS = 25.0
ANTICIPATIONS = (16, 32)
CLIENT_KEYS = ("curl", "curl-no-options", "atftp", "tftp-hpa", "busybox")


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> latency.Content:
    return latency.write_content(tmp_path_factory.mktemp("anticipation"), [compat.FILE_KIB])


@pytest.fixture(scope="module")
def anticipating_servers(
    content: latency.Content, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    started = latency.start_servers(
        compat.anticipation_modes(ANTICIPATIONS), content, tmp_path_factory.mktemp("logs")
    )
    yield started
    latency.stop_servers(started)


def fetch(
    key: str,
    anticipate: int,
    loss: float,
    started: dict[str, ServerProcess],
    content: latency.Content,
    tmp: Path,
) -> compat.Outcome:
    client = compat.CLIENTS_BY_KEY[key]
    if reason := client.unavailable():
        pytest.skip(reason)
    name = latency.Content.file_name(compat.FILE_KIB)
    server = started[f"edgetftp:{anticipate}"]
    return compat.run_cell(client, server, anticipate, content, name, ONE_WAY_DELAY_MS, loss, tmp, seed="1")


@pytest.mark.parametrize("anticipate", ANTICIPATIONS)
@pytest.mark.parametrize("key", CLIENT_KEYS)
def test_client_gets_the_file_with_anticipation(
    key: str,
    anticipate: int,
    anticipating_servers: dict[str, ServerProcess],
    content: latency.Content,
    tmp_path: Path,
) -> None:
    outcome = fetch(key, anticipate, 0.0, anticipating_servers, content, tmp_path)
    assert outcome.returncode == 0, outcome.note
    assert outcome.sha256_ok
    blocks = compat.FILE_KIB * 1024 // compat.CLIENTS_BY_KEY[key].blksize + 1
    assert outcome.server_datagrams >= blocks  # every block crossed the relay (+ OACK, retransmissions)


def test_lock_step_client_survives_loss_with_anticipation(
    anticipating_servers: dict[str, ServerProcess], content: latency.Content, tmp_path: Path
) -> None:
    """The BSD-derived tftp-hpa client discards its queued datagrams on any unexpected block (synchnet)."""
    outcome = fetch("tftp-hpa", 32, 0.01, anticipating_servers, content, tmp_path)
    assert outcome.returncode == 0, outcome.note
    assert outcome.sha256_ok
