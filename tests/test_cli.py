"""The command line as a user meets it: --help, --version, one-line errors, environment fallbacks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgetftp import __version__
from edgetftp.settings import ListenAddress, Settings, SettingsFailure, env_names, load_settings, option_flag
from tests.conftest import ContentTree, free_port
from tests.rawclient import RawClient

pytestmark = pytest.mark.integration

CONTENT = str(Path(__file__).parent.parent / "content")


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgetftp", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def help_entries(text: str) -> dict[str, str]:
    """``--flag [METAVAR]`` -> its help text (wrapped lines joined), from argparse's options list."""
    body = text.split("options:", 1)[1]
    entries: dict[str, str] = {}
    current = None
    for line in body.splitlines():
        match = re.match(r"^  (-[-\w]+(?:, -[-\w]+)*(?: \S+)?)(?:\s{2,}(.*))?$", line)
        if match:
            current = match.group(1)
            entries[current] = match.group(2) or ""
        elif current is not None and line.startswith(" " * 10):
            entries[current] += " " + line.strip()
    return entries


@pytest.fixture(scope="module")
def help_text() -> str:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_help_lists_exactly_the_settings_with_metavars_env_and_one_default(help_text: str) -> None:
    entries = help_entries(help_text)
    flags = {entry.split()[0].rstrip(",") for entry in entries}
    expected = {option_flag(name, field) for name, field in Settings.model_fields.items() if name != "source"}
    assert flags == expected | {"-h", "--version"}  # no alias flags (--aws-region, --edgetftp-region, ...)
    for name, field in Settings.model_fields.items():
        if name == "source":
            continue
        flag = option_flag(name, field)
        (entry,) = [key for key in entries if key.split()[0] == flag]
        text = " ".join(entries[entry].split())
        if not isinstance(field.default, bool):
            metavar = entry.split()[1]
            assert metavar.isupper() or metavar.startswith("{"), f"{flag}: metavar {metavar!r}"
            assert metavar not in ("STR", "INT", "FLOAT"), f"{flag}: a type, not a metavar"
        assert text.count("default:") == 1, f"{flag}: {text}"
        for env in env_names(name, field):
            assert env in text.replace(" ", ""), f"{flag} does not name {env}: {text}"
    assert "--listen HOST:PORT" in help_text and "--timeout SECONDS" in help_text
    assert "--max-blksize BYTES" in help_text
    assert "(default: )" not in help_text and "default: None" not in help_text


def test_aws_variables_are_documented_fallbacks_not_flags(help_text: str) -> None:
    assert "--aws" not in help_text and "--edgetftp-" not in help_text
    compact = " ".join(help_text.split())
    assert "EDGETFTP_REGION, AWS_REGION, AWS_DEFAULT_REGION" in compact
    assert "EDGETFTP_ENDPOINT_URL, AWS_ENDPOINT_URL" in compact
    result = run_cli("--aws-region", "eu-west-1", CONTENT)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr


def test_environment_fallbacks_for_the_aws_sdk_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EDGETFTP_REGION", "AWS_REGION", "AWS_DEFAULT_REGION", "EDGETFTP_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    settings = load_settings([CONTENT])
    assert (settings.region, settings.endpoint_url) == ("eu-central-1", "http://127.0.0.1:9")
    monkeypatch.setenv("EDGETFTP_REGION", "us-west-2")
    assert load_settings([CONTENT]).region == "us-west-2"  # ours first
    assert load_settings(["--region", "ap-south-1", CONTENT]).region == "ap-south-1"  # flags win


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"edgetftp {__version__}"


@pytest.mark.parametrize("level", ["debug", "Debug", "DEBUG"])
def test_log_levels_are_case_insensitive(level: str) -> None:
    assert load_settings(["--log-level", level, CONTENT]).log_level == "DEBUG"


def test_log_level_from_the_environment_in_lower_case_reaches_the_server(content: ContentTree) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgetftp", "--listen", f"127.0.0.1:{port}", str(content.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "EDGETFTP_LOG_LEVEL": "debug"},
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "DEBUG" in first and "settings parsed" in first, first
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("listen", ["127.0.0.1", "::1", "[::1]", "localhost"])
def test_listen_without_a_port_is_refused_with_one_line(listen: str) -> None:
    result = run_cli("--listen", listen, CONTENT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--listen (EDGETFTP_LISTEN)" in lines[0] and "missing port" in lines[0], lines


def test_listen_takes_a_list_of_addresses() -> None:
    settings = load_settings(["--listen", "127.0.0.1:6969,[::1]:6970", CONTENT])
    assert settings.listen_addresses == [ListenAddress("127.0.0.1", 6969), ListenAddress("::1", 6970)]
    with pytest.raises(SettingsFailure, match="--listen"):
        load_settings(["--listen", "127.0.0.1:6969,[::1]", CONTENT])


@pytest.mark.parametrize(
    "args",
    [["--no-such-flag", CONTENT], ["--lis", "127.0.0.1:69", CONTENT], [CONTENT, "extra"], ["--listen"]],
)
def test_command_line_mistakes_are_one_line(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgetftp: invalid command line:"), result.stderr
    assert "usage:" not in result.stderr


def test_a_flag_wins_over_its_variable_and_serves(content: ContentTree) -> None:
    port = free_port()
    env = {"EDGETFTP_LISTEN": "127.0.0.1:1", "EDGETFTP_LOG_JSON": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgetftp", "--listen", f"127.0.0.1:{port}", str(content.root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    try:
        fetched = None
        for _ in range(100):
            with RawClient(("127.0.0.1", port), timeout=0.2) as client:
                try:
                    fetched = client.fetch("s512.bin")
                    break
                except TimeoutError:
                    continue
        assert fetched is not None and len(fetched.data) == 512
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_serving_a_directory_loads_no_s3_library() -> None:
    """Start-up cost: the local path never imports aioboto3, botocore, aiohttp or pydantic-settings."""
    script = (
        "import sys, edgetftp.cli, edgetftp.sources.local\n"
        "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = set(result.stdout.split())
    assert "edgetftp" in loaded
    assert not loaded & {"aioboto3", "aiobotocore", "botocore", "boto3", "aiohttp", "pydantic_settings"}
