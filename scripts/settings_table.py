"""Print the README's settings table from the Settings model (the README test keeps them in sync)."""

from __future__ import annotations

from edgetftp.settings import Settings, default_text, env_names, metavar, option_flag


def settings_rows() -> list[str]:
    rows = []
    for name, field in Settings.model_fields.items():
        if name == "source":
            continue
        flag = option_flag(name, field)
        if not isinstance(field.default, bool):
            flag += f" {metavar(name, field)}"
        envs = ", ".join(f"`{env}`" for env in env_names(name, field))
        rows.append(f"| `{flag}` | {envs} | {default_text(field)} | {field.description} |")
    return rows


if __name__ == "__main__":
    print("| flag | environment | default | meaning |\n|---|---|---|---|")
    print("\n".join(settings_rows()))
