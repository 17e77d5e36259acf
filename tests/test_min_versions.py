"""The lowest versions pyproject.toml allows really work: installed exactly, they serve a file.

A scratch venv gets ``pip install --constraint`` of every direct dependency at its lower bound (the
``>=`` of pyproject.toml), then this checkout's server runs from it, answers --help, serves a file
to a real client and logs JSON.  The same venv has no s3 extra, so an s3:// source must stop with
the one-line hint.  Skipped only when no package index can be reached.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import free_port
from tests.rawclient import Fetch, RawClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
NO_INDEX = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable")


def lower_bounds(requirements: list[str]) -> dict[str, str]:
    """``{"pydantic": "2.7", ...}`` for the requirements that apply here and have a ``>=``."""
    bounds = {}
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        (minimum,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        bounds[requirement.name] = minimum
    return bounds


def base_lower_bounds() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return lower_bounds(project["dependencies"])


def test_every_dependency_has_a_lower_bound() -> None:
    assert set(base_lower_bounds()) >= {"pydantic", "loguru", "prometheus-client", "cachetools"}
    assert set(s3_lower_bounds()) == {"aioboto3", "botocore", "aiohttp"}


def s3_lower_bounds() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return lower_bounds(project["optional-dependencies"]["s3"])


def make_venv(scratch: Path, bounds: dict[str, str]) -> Path:
    """A venv with exactly ``bounds`` installed (``pip install --constraint``); returns its python."""
    constraints = scratch / "minimums.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in bounds.items()))
    subprocess.run([sys.executable, "-m", "venv", str(scratch / "venv")], check=True)
    python = scratch / "venv/bin/python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--constraint",
            str(constraints),
            *bounds,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if install.returncode != 0 and any(text in install.stdout + install.stderr for text in NO_INDEX):
        pytest.skip(f"no package index reachable: {install.stderr[-300:]}")
    assert install.returncode == 0, f"the lower bounds do not install together:\n{install.stderr[-2000:]}"
    return python


@pytest.fixture(scope="module")
def min_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_venv(tmp_path_factory.mktemp("min-venv"), base_lower_bounds())


def test_the_minimums_are_what_got_installed(min_venv: Path) -> None:
    script = "import importlib.metadata as m, sys; print(*(m.version(n) for n in sys.argv[1:]))"
    bounds = base_lower_bounds()
    result = subprocess.run(
        [str(min_venv), "-c", script, *bounds], capture_output=True, text=True, check=True
    )
    installed = dict(zip(bounds, result.stdout.split(), strict=True))
    assert all(installed[name].startswith(version) for name, version in bounds.items()), installed


def fetch_once_started(
    proc: subprocess.Popen[str], port: int, name: str, *, attempts: int, timeout: float
) -> Fetch | None:
    """Fetch ``name`` from the server starting on 127.0.0.1:``port``, asking again while it is silent;
    None when it never answered or exited first."""
    for _ in range(attempts):
        with RawClient(("127.0.0.1", port), timeout=timeout) as client:
            try:
                return client.fetch(name)
            except TimeoutError:
                if proc.poll() is not None:
                    return None
    return None


def test_the_server_serves_a_file_with_the_lowest_versions(min_venv: Path) -> None:
    port = free_port()
    content = REPO / "content"
    env = {**os.environ, "PYTHONPATH": str(REPO / "server")}  # this checkout's code, the venv's libraries
    help_run = subprocess.run(
        [str(min_venv), "-m", "edgetftp", "--help"], capture_output=True, text=True, env=env
    )
    assert help_run.returncode == 0 and "--listen HOST:PORT" in help_run.stdout, help_run.stderr
    proc = subprocess.Popen(
        [str(min_venv), "-m", "edgetftp", "--log-json", "--listen", f"127.0.0.1:{port}", str(content)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        fetched = fetch_once_started(proc, port, "boot.ipxe", attempts=150, timeout=0.2)
        assert fetched is not None, f"no answer; exit {proc.poll()}"
        assert fetched.data == (content / "boot.ipxe").read_bytes()
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, output
    assert '"tftp.outcome":"completed"' in output, output


def test_an_s3_source_without_the_extra_is_one_line_and_exit_2(min_venv: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "server")}
    result = subprocess.run(
        [str(min_venv), "-m", "edgetftp", "--listen", f"127.0.0.1:{free_port()}", "s3://bucket/boot/"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "S3 source needs the s3 extra: pip install -e '.[s3]'" in lines[0], (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_an_s3_source_with_the_lowest_s3_extra_serves_a_file(tmp_path: Path) -> None:
    s3support = pytest.importorskip("tests.s3support", reason="moto[server] and boto3 are not installed")
    python = make_venv(tmp_path, {**base_lower_bounds(), **s3_lower_bounds()})
    data = (REPO / "content/boot.ipxe").read_bytes()
    port = free_port()
    with s3support.s3_endpoint() as endpoint:
        endpoint.create_bucket("bucket")
        endpoint.put("bucket", "boot/boot.ipxe", data)
        env = {**os.environ, "PYTHONPATH": str(REPO / "server")}
        proc = subprocess.Popen(
            [
                str(python),
                "-m",
                "edgetftp",
                "--listen",
                f"127.0.0.1:{port}",
                "--endpoint-url",
                endpoint.url,
                "--force-path-style",
                "s3://bucket/boot/",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        try:
            fetched = fetch_once_started(proc, port, "boot.ipxe", attempts=100, timeout=0.3)
        finally:
            proc.terminate()
            output, _ = proc.communicate(timeout=15)
    assert fetched is not None and fetched.data == data, output
    assert proc.returncode == 0, output
