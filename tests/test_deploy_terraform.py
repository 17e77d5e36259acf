"""terraform/: what must hold for UDP on Fly, checked on the parsed HCL and with the real terraform.

Provider downloads are not reachable here, so `terraform init/validate/plan` of the whole
configuration cannot run.  What can: python-hcl2 parses every file; `terraform fmt -check`; checkov;
and the region scaling (fly.tf + variables.tf use only Terraform's built-in terraform_data, which
needs no download) is applied for real, with a stand-in flyctl that records its arguments.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is not installed (pip install python-hcl2)")

TERRAFORM_DIR = Path(__file__).resolve().parents[1] / "terraform"
TF_FILES = sorted(TERRAFORM_DIR.glob("*.tf"))
HCL_METADATA = {"__is_block__", "__comments__", "__inline_comments__", "__start_line__", "__end_line__"}
FLY_IPV4 = "203.0.113.10"  # documentation range


def unquote(value: Any) -> Any:
    """python-hcl2 >= 7 keeps the quotes of strings and labels (and block markers); older ones don't."""
    if isinstance(value, dict):
        return {unquote(key): unquote(item) for key, item in value.items() if key not in HCL_METADATA}
    if isinstance(value, list):
        return [unquote(item) for item in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        parsed: dict[str, Any] = unquote(hcl2.load(handle))
        return parsed


@pytest.fixture(scope="module")
def config() -> dict[str, list[Any]]:
    """Every top-level block of every .tf file, merged by block type."""
    merged: dict[str, list[Any]] = {}
    for path in TF_FILES:
        for block_type, blocks in parse(path).items():
            merged.setdefault(block_type, []).extend(blocks)
    return merged


def resources(config: dict[str, list[Any]], resource_type: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for block in config.get("resource", []):
        found.update(block.get(resource_type, {}))
    return found


def named_blocks(config: dict[str, list[Any]], block_type: str) -> dict[str, dict[str, Any]]:
    return {name: body for block in config.get(block_type, []) for name, body in block.items()}


def all_strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from all_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from all_strings(item)
    elif isinstance(value, str):
        yield value


# --- parsed configuration -----------------------------------------------------------------------


def test_expected_files_parse() -> None:
    names = {path.name for path in TF_FILES}
    assert {"versions.tf", "variables.tf", "dns.tf", "fly.tf", "outputs.tf"} <= names
    for path in TF_FILES:
        assert parse(path), f"{path.name} parsed to nothing"


def test_no_aaaa_record_anywhere(config: dict[str, list[Any]]) -> None:
    """Fly carries UDP over the dedicated IPv4 only: an AAAA record would send clients nowhere."""
    assert "AAAA" not in {text.strip().upper() for text in all_strings(config)}
    for block in config.get("resource", []):
        for resource_type, instances in block.items():
            for name, body in instances.items():
                assert str(body.get("type", "A")).upper() != "AAAA", f"{resource_type}.{name}"


def test_cloudflare_record_is_a_dns_only_a_record(config: dict[str, list[Any]]) -> None:
    records = resources(config, "cloudflare_dns_record")
    assert list(records) == ["tftp"]
    record = records["tftp"]
    assert record["type"] == "A"
    assert record["proxied"] is False
    assert record["content"] == "${var.fly_ipv4}"
    assert record["count"] == "${local.use_cloudflare ? 1 : 0}"
    assert not resources(config, "cloudflare_record"), (
        "cloudflare_record is provider v4; v5 has cloudflare_dns_record"
    )


def test_route53_record_is_an_a_record(config: dict[str, list[Any]]) -> None:
    records = resources(config, "aws_route53_record")
    assert list(records) == ["tftp"]
    record = records["tftp"]
    assert record["type"] == "A"
    assert record["records"] == ["${var.fly_ipv4}"]
    assert record["count"] == "${local.use_route53 ? 1 : 0}"
    assert "alias" not in record


def test_dns_provider_variable_selects_exactly_one_record(config: dict[str, list[Any]]) -> None:
    locals_ = {key: value for block in config["locals"] for key, value in block.items()}
    assert locals_["use_cloudflare"] == '${var.dns_provider == "cloudflare"}'
    assert locals_["use_route53"] == '${var.dns_provider == "route53"}'
    validation = named_blocks(config, "variable")["dns_provider"]["validation"][0]
    assert validation["condition"] == '${contains(["cloudflare", "route53"], var.dns_provider)}'


def test_required_providers(config: dict[str, list[Any]]) -> None:
    providers = config["terraform"][0]["required_providers"][0]
    assert providers["cloudflare"]["source"] == "cloudflare/cloudflare"
    assert providers["cloudflare"]["version"].startswith("~> 5")
    assert providers["aws"]["source"] == "hashicorp/aws"


def test_variables_are_typed_and_documented(config: dict[str, list[Any]]) -> None:
    variables = named_blocks(config, "variable")
    assert {"fly_app", "fly_ipv4", "regions", "dns_provider", "zone_name", "record_name"} <= set(variables)
    for name, body in variables.items():
        assert body.get("description", "").strip(), f"variable {name} has no description"
        assert "type" in body, f"variable {name} has no type"
    assert variables["regions"]["type"] == "${map(number)}"


def test_outputs(config: dict[str, list[Any]]) -> None:
    outputs = named_blocks(config, "output")
    assert {"ipv4", "fqdn", "regions"} <= set(outputs)
    assert outputs["ipv4"]["value"] == "${var.fly_ipv4}"
    assert outputs["regions"]["value"] == "${var.regions}"
    for name, body in outputs.items():
        assert body.get("description", "").strip(), f"output {name} has no description"


def test_tfvars_example_sets_known_variables(config: dict[str, list[Any]]) -> None:
    example = parse(TERRAFORM_DIR / "terraform.tfvars.example")
    variables = named_blocks(config, "variable")
    assert set(example) <= set(variables), set(example) - set(variables)
    required = {name for name, body in variables.items() if "default" not in body}
    assert required <= set(example), f"the example misses required variables {required - set(example)}"
    assert isinstance(example["regions"], dict) and example["regions"]


# --- the real terraform -------------------------------------------------------------------------


def terraform_binary() -> str:
    binary = shutil.which("terraform")
    if binary is None:
        pytest.skip("terraform is not on PATH")
    return binary


def run_terraform(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
        "CHECKPOINT_DISABLE": "1",  # no version check call home
        "TF_CLI_CONFIG_FILE": os.devnull,
    }
    result = subprocess.run(
        [terraform_binary(), *args, "-no-color"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert result.returncode == 0, f"terraform {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def test_terraform_fmt_clean() -> None:
    run_terraform(TERRAFORM_DIR, "fmt", "-check", "-recursive", "-diff")


@pytest.fixture
def scaling_workdir(tmp_path: Path) -> Path:
    """fly.tf + variables.tf alone (built-in terraform_data only) and a flyctl that logs its arguments."""
    terraform_binary()
    for name in ("fly.tf", "variables.tf"):
        shutil.copy(TERRAFORM_DIR / name, tmp_path / name)
    fake_flyctl = tmp_path / "flyctl"
    fake_flyctl.write_text(f'#!/bin/sh\necho "$*" >> "{tmp_path / "flyctl.log"}"\n')
    fake_flyctl.chmod(0o755)
    run_terraform(tmp_path, "init", "-backend=false")
    run_terraform(tmp_path, "validate")
    return tmp_path


def apply_regions(
    workdir: Path, regions: dict[str, int], check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run_terraform(
        workdir,
        "apply",
        "-auto-approve",
        "-var=fly_app=edgetftp-test",
        f"-var=fly_ipv4={FLY_IPV4}",
        "-var=zone_name=example.com",
        f"-var=flyctl={workdir / 'flyctl'}",
        f"-var=regions={json.dumps(regions)}",
        check=check,
    )


def flyctl_calls(workdir: Path) -> list[str]:
    log = workdir / "flyctl.log"
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


def test_regions_scale_with_flyctl(scaling_workdir: Path) -> None:
    apply_regions(scaling_workdir, {"fra": 2, "iad": 1})
    assert sorted(flyctl_calls(scaling_workdir)) == [
        "scale count 1 --region iad --app edgetftp-test --yes",
        "scale count 2 --region fra --app edgetftp-test --yes",
    ]

    # A count change goes straight to the new count (never through 0); a removed region goes to 0.
    apply_regions(scaling_workdir, {"fra": 3, "sin": 1})
    assert sorted(flyctl_calls(scaling_workdir)) == [
        "scale count 0 --region iad --app edgetftp-test --yes",
        "scale count 1 --region sin --app edgetftp-test --yes",
        "scale count 3 --region fra --app edgetftp-test --yes",
    ]

    apply_regions(scaling_workdir, {"fra": 3, "sin": 1})
    assert flyctl_calls(scaling_workdir) == [], "an unchanged map must not call flyctl"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("regions", '{"fra": 0}'),
        ("regions", '{"frankfurt": 1}'),
        ("regions", "{}"),
        ("fly_ipv4", "2a09:8280:1::1"),
        ("fly_ipv4", "256.1.1.1"),
        ("dns_provider", "route66"),
    ],
)
def test_variable_validation_rejects(scaling_workdir: Path, variable: str, value: str) -> None:
    values = {"fly_app": "edgetftp-test", "fly_ipv4": FLY_IPV4, "zone_name": "example.com", variable: value}
    result = run_terraform(
        scaling_workdir, "plan", *(f"-var={key}={item}" for key, item in values.items()), check=False
    )
    assert result.returncode != 0
    assert "Invalid value for variable" in result.stderr, result.stderr


# --- checkov -------------------------------------------------------------------------------------


def test_checkov_finds_no_misconfiguration() -> None:
    checkov = os.environ.get("CHECKOV") or shutil.which("checkov")
    if checkov is None:
        pytest.skip("checkov not installed (a venv: pip install checkov; point CHECKOV at its binary)")
    result = subprocess.run(
        # --skip-download: no calls to Prisma Cloud for guidelines (no network here, and none needed).
        [checkov, "-d", str(TERRAFORM_DIR), "--framework", "terraform", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(result.stdout)
    summary = report["summary"]
    print(f"\ncheckov {summary['checkov_version']}: {summary}")
    failed = [(check["check_id"], check["resource"]) for check in report["results"]["failed_checks"]]
    assert failed == []
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 0
    skipped = {check["check_id"] for check in report["results"]["skipped_checks"]}
    assert skipped <= {"CKV2_AWS_23"}, "only the documented suppression (A record to a non-AWS address)"
