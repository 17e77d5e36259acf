"""README.md stays true: every setting is documented with its default, and the two commands are there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scripts.settings_table import settings_rows

pytestmark = pytest.mark.unit

REPO = Path(__file__).parent.parent
README = (REPO / "README.md").read_text()


def readme_commands() -> list[str]:
    """The shell blocks of the README's "The two commands" section, in order."""
    section = README.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)]


def first_command() -> str:
    return readme_commands()[0]


def test_every_setting_is_documented_with_its_default() -> None:
    missing = [row for row in settings_rows() if row not in README]
    assert not missing, "run scripts/settings_table.py and update README.md:\n" + "\n".join(missing)


def test_the_two_commands_use_a_project_venv_and_the_test_script() -> None:
    serve, test = readme_commands()
    assert serve.startswith("python3 -m venv .venv && .venv/bin/pip install -e . && ")
    assert ".venv/bin/edgetftp --listen 127.0.0.1:6969 ./content" in serve
    assert "\n" not in serve  # one line, pasted as is
    assert test == "scripts/test.sh"
    assert "exec scripts/test.sh" in (REPO / ".ci" / "run").read_text()


def test_no_pip_into_the_system_python() -> None:
    """PEP 668: Debian's python3 refuses `pip install`; the README and the test script use .venv."""
    script = (REPO / "scripts" / "test.sh").read_text()
    assert "python3 -m pip install" not in script and "python3 -m pip install" not in README
    assert "python3 -m venv .venv" in script and "--constraint constraints.txt" in script
    assert "pip install 'edgetftp[s3]'" not in README  # not on PyPI: from a checkout it is -e '.[s3]'
    assert ".venv/bin/pip install -e '.[s3]'" in README


def test_ci_installs_what_the_tests_need() -> None:
    script = (REPO / "scripts" / "test.sh").read_text()
    packages = script.split("APT_PACKAGES=(", 1)[1].split("\n)", 1)[0]
    names = {word for line in packages.splitlines() for word in line.split("#")[0].split()}
    assert {"python3-venv", "systemd", "debootstrap", "curl", "tftpd-hpa"} <= names


def test_the_image_installs_from_the_constraints_file() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "--constraint /src/constraints.txt" in dockerfile
    assert "!constraints.txt" in (REPO / ".dockerignore").read_text()
    pins = [line for line in (REPO / "constraints.txt").read_text().splitlines() if line and line[0] != "#"]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[^\s=]+", line) for line in pins), pins
    pinned = {line.split("==")[0].lower().replace("_", "-") for line in pins}
    imported = {"pydantic", "loguru", "prometheus-client", "aioboto3", "botocore", "aiohttp", "cachetools"}
    assert imported <= pinned
