"""The datagram entry point under fuzzing: a bounded atheris run (coverage-guided) and a hypothesis run.

The long run is documented in docs/hardening.md (``python -m fuzz.run -runs=1000000 ...``).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fuzz.harness import run_one
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
FUZZ_SECONDS = 20


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (pip install atheris; wheels exist for CPython 3.11 on x86-64 Linux)",
)
def test_bounded_atheris_run_finds_no_crash(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    command = [
        sys.executable,
        "-m",
        "fuzz.run",
        f"-max_total_time={FUZZ_SECONDS}",
        "-max_len=512",
        "-print_final_stats=1",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
    ]
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=FUZZ_SECONDS + 60, check=False
    )
    crashes = list(tmp_path.glob("crash-*")) + list(tmp_path.glob("timeout-*"))
    assert result.returncode == 0 and not crashes, result.stderr[-4000:]
    done = re.search(r"Done (\d+) runs in (\d+) second", result.stderr)
    assert done is not None, result.stderr[-2000:]
    runs = int(done.group(1))
    print(f"atheris: {runs} inputs in {done.group(2)} s, corpus of {len(list(corpus.iterdir()))} inputs")
    assert runs > 1000
    assert any(corpus.iterdir())  # coverage guidance found new paths (the corpus grew)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_escape_the_entry_point(data: bytes) -> None:
    run_one(data)  # raises only on a bug: an escaped exception or a broken invariant


@pytest.mark.parametrize(
    "path", sorted((REPO / "fuzz" / "regressions").iterdir()), ids=lambda path: path.name
)
def test_inputs_the_fuzzer_once_failed_on_pass(path: Path) -> None:
    """Each file is an input an atheris run once stopped on, kept so the fix stays fixed.

    idle-timer-after-resends: after its resends were spent the session woke every RTO until its
    give-up time (76 wake-ups, 30 s); it now sleeps until the give-up time.
    netascii-restart-after-forgotten-marks: ACK 0 after progress restarted a netascii session, then a
    stale ACK 10 moved it to block 11, whose start had been forgotten (LocalProtocolError); netascii
    sessions no longer restart.
    """
    run_one(path.read_bytes())
