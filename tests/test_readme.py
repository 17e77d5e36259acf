"""README.md stays true: every setting is documented with its default, and the two commands are there."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.settings_table import settings_rows

pytestmark = pytest.mark.unit

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_setting_is_documented_with_its_default() -> None:
    missing = [row for row in settings_rows() if row not in README]
    assert not missing, "run scripts/settings_table.py and update README.md:\n" + "\n".join(missing)


def test_the_two_commands_are_there() -> None:
    assert "python3 -m pip install -e . && edgetftp --listen 127.0.0.1:6969 ./content" in README
    assert "scripts/test.sh" in README
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
