"""Print the README's settings table from the Settings model (the README test keeps them in sync)."""

from __future__ import annotations

from edgetftp.settings import Settings


def settings_rows() -> list[str]:
    rows = []
    for name, field in Settings.model_fields.items():
        if name == "source":
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(field.default, bool):
            shown = "on" if field.default else "off"
            flag = f"--no-{name.replace('_', '-')}" if field.default else flag
        else:
            shown = "unset" if field.default in (None, "") else str(field.default)
        rows.append(f"| `{flag}` | `EDGETFTP_{name.upper()}` | {shown} | {field.description} |")
    return rows


if __name__ == "__main__":
    print("| flag | environment | default | meaning |\n|---|---|---|---|")
    print("\n".join(settings_rows()))
