"""terraform/: one root per DNS provider, checked with the real terraform wherever the providers are here.

Layout: ``terraform/route53`` and ``terraform/cloudflare`` (roots, one DNS provider each) over
``terraform/modules/{fly-ipv4,fly-regions,dns-route53,dns-cloudflare}``.  The machine has a local
provider mirror (``/opt/tf-plugins``, or ``TF_PLUGIN_DIR``) and no registry: a root whose providers
are all in the mirror is initialised, validated and run through ``terraform test`` (mocked DNS
provider, a stand-in flyctl that records its calls); the others are skipped with that reason, and
their files are still checked statically (python-hcl2) and by ``terraform fmt``.
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
ROOTS = {"route53": "hashicorp/aws", "cloudflare": "cloudflare/cloudflare"}
MODULES = ("fly-ipv4", "fly-regions", "dns-route53", "dns-cloudflare")
PLUGIN_DIR = Path(os.environ.get("TF_PLUGIN_DIR", "/opt/tf-plugins"))
STAND_IN_IPV4 = "203.0.113.7"  # documentation range; what the stand-in flyctl allocates
HCL_METADATA = {"__is_block__", "__comments__", "__inline_comments__", "__start_line__", "__end_line__"}

# The stand-in flyctl: records every call; `ips list --json` shows a dedicated v4 once allocated.
STAND_IN_FLYCTL = """#!/bin/sh
here=$(dirname "$0")
echo "$*" >> "$here/flyctl.log"
case "$*" in
  "ips list"*)
    if [ -f "$here/allocated" ]; then
      echo '[{"Address":"2a09:8280:1::5","Type":"v6"},{"Address":"IPV4","Type":"v4","Region":"global"}]'
    else
      echo '[{"Address":"2a09:8280:1::5","Type":"v6"},{"Address":"66.241.124.1","Type":"shared_v4"}]'
    fi ;;
  "ips allocate-v4"*) touch "$here/allocated"; echo "v4 IPV4 public global" ;;
esac
""".replace("IPV4", STAND_IN_IPV4)


def unquote(value: Any) -> Any:
    """python-hcl2 >= 7 keeps the quotes of strings and labels (and block markers); older ones don't."""
    if isinstance(value, dict):
        return {unquote(key): unquote(item) for key, item in value.items() if key not in HCL_METADATA}
    if isinstance(value, list):
        return [unquote(item) for item in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse_dir(directory: Path) -> dict[str, list[Any]]:
    """Every top-level block of every .tf file in a directory, merged by block type."""
    merged: dict[str, list[Any]] = {}
    for path in sorted(directory.glob("*.tf")):
        with path.open() as handle:
            for block_type, blocks in unquote(hcl2.load(handle)).items():
                merged.setdefault(block_type, []).extend(blocks)
    return merged


def resources(config: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """``{"type.name": body}`` for every resource."""
    found: dict[str, dict[str, Any]] = {}
    for block in config.get("resource", []):
        for resource_type, instances in block.items():
            for name, body in instances.items():
                found[f"{resource_type}.{name}"] = body
    return found


def named_blocks(config: dict[str, list[Any]], block_type: str) -> dict[str, dict[str, Any]]:
    return {name: body for block in config.get(block_type, []) for name, body in block.items()}


def required_providers(config: dict[str, list[Any]]) -> dict[str, str]:
    providers: dict[str, str] = {}
    for block in config.get("terraform", []):
        for entry in block.get("required_providers", []):
            providers.update({name: spec["source"] for name, spec in entry.items()})
    return providers


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


# --- static checks, every root and module -------------------------------------------------------


@pytest.mark.parametrize("root", sorted(ROOTS))
def test_each_root_requires_only_its_own_dns_provider(root: str) -> None:
    """A Cloudflare user never downloads the AWS provider, and the other way round."""
    assert required_providers(parse_dir(TERRAFORM_DIR / root)) == {ROOTS[root].split("/")[1]: ROOTS[root]}
    sources = {
        str(body["source"]) for body in named_blocks(parse_dir(TERRAFORM_DIR / root), "module").values()
    }
    assert sources == {"../modules/fly-ipv4", "../modules/fly-regions", f"../modules/dns-{root}"}
    for module in ("fly-ipv4", "fly-regions"):
        assert required_providers(parse_dir(TERRAFORM_DIR / "modules" / module)) == {}, "built-ins only"


@pytest.mark.parametrize("directory", [*sorted(ROOTS), *(f"modules/{name}" for name in MODULES)])
def test_no_aaaa_record_anywhere(directory: str) -> None:
    """Fly carries UDP over the dedicated IPv4 only: an AAAA record would send clients nowhere."""
    config = parse_dir(TERRAFORM_DIR / directory)
    assert "AAAA" not in {text.strip().upper() for text in all_strings(config)}
    for name, body in resources(config).items():
        assert str(body.get("type", "A")).upper() != "AAAA", name


def test_route53_module_is_one_a_record() -> None:
    found = resources(parse_dir(TERRAFORM_DIR / "modules" / "dns-route53"))
    assert list(found) == ["aws_route53_record.tftp"]
    record = found["aws_route53_record.tftp"]
    assert record["type"] == "A"
    assert record["records"] == ["${var.ipv4}"]
    assert "count" not in record and "for_each" not in record and "alias" not in record


def test_cloudflare_module_is_one_dns_only_a_record() -> None:
    """Static, since the cloudflare provider is not in the local mirror (its terraform test is)."""
    found = resources(parse_dir(TERRAFORM_DIR / "modules" / "dns-cloudflare"))
    assert list(found) == ["cloudflare_dns_record.tftp"], "v5 resource (cloudflare_record is v4)"
    record = found["cloudflare_dns_record.tftp"]
    assert record["type"] == "A"
    assert record["proxied"] is False
    assert record["content"] == "${var.ipv4}"
    assert "count" not in record and "for_each" not in record


@pytest.mark.parametrize("root", sorted(ROOTS))
def test_the_record_points_at_the_address_terraform_read_back(root: str) -> None:
    modules = named_blocks(parse_dir(TERRAFORM_DIR / root), "module")
    assert modules["dns"]["ipv4"] == "${module.fly_ipv4.ipv4}", "no IPv4 pasted by hand"
    assert "fly_ipv4" not in named_blocks(parse_dir(TERRAFORM_DIR / root), "variable")


@pytest.mark.parametrize("directory", [*sorted(ROOTS), *(f"modules/{name}" for name in MODULES)])
def test_variables_and_outputs_are_documented(directory: str) -> None:
    config = parse_dir(TERRAFORM_DIR / directory)
    for name, body in named_blocks(config, "variable").items():
        assert str(body.get("description", "")).strip(), f"variable {name} has no description"
        assert "type" in body, f"variable {name} has no type"
    for name, body in named_blocks(config, "output").items():
        assert str(body.get("description", "")).strip(), f"output {name} has no description"


@pytest.mark.parametrize("root", sorted(ROOTS))
def test_tfvars_example_sets_known_variables(root: str) -> None:
    with (TERRAFORM_DIR / root / "terraform.tfvars.example").open() as handle:
        example = unquote(hcl2.load(handle))
    variables = named_blocks(parse_dir(TERRAFORM_DIR / root), "variable")
    assert set(example) <= set(variables), set(example) - set(variables)
    required = {name for name, body in variables.items() if "default" not in body}
    assert required <= set(example), f"the example misses required variables {required - set(example)}"


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
        timeout=300,
    )
    if check:
        assert result.returncode == 0, f"terraform {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def test_terraform_fmt_clean() -> None:
    run_terraform(TERRAFORM_DIR, "fmt", "-check", "-recursive", "-diff")


def local_provider(source: str) -> bool:
    return (PLUGIN_DIR / "registry.terraform.io" / source).is_dir()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of terraform/ (init and the tests write beside the root) with the stand-in flyctl."""
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM_DIR, copy, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*"))
    flyctl = tmp_path / "flyctl"
    flyctl.write_text(STAND_IN_FLYCTL)
    flyctl.chmod(0o755)
    return copy


def initialised_root(tree: Path, root: str) -> Path:
    source = ROOTS[root]
    if not local_provider(source):
        pytest.skip(f"provider {source} is not in the local mirror {PLUGIN_DIR} (no registry here)")
    workdir = tree / root
    run_terraform(workdir, "init", "-backend=false", f"-plugin-dir={PLUGIN_DIR}")
    return workdir


def flyctl_calls(tree: Path) -> list[str]:
    log = tree.parent / "flyctl.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("root", sorted(ROOTS))
def test_root_validates(tree: Path, root: str) -> None:
    workdir = initialised_root(tree, root)
    result = run_terraform(workdir, "validate", "-json")
    report = json.loads(result.stdout)
    assert report["valid"] is True and report["warning_count"] == 0, report


@pytest.mark.parametrize("root", sorted(ROOTS))
def test_committed_lock_file_matches_the_mirror(tree: Path, root: str) -> None:
    """init with the committed lock file must not change it (it would, were a hash or version off)."""
    committed = TERRAFORM_DIR / root / ".terraform.lock.hcl"
    workdir = initialised_root(tree, root)
    assert committed.is_file(), f"terraform/{root}/.terraform.lock.hcl is not committed"
    assert (workdir / ".terraform.lock.hcl").read_text() == committed.read_text()


@pytest.mark.parametrize("root", sorted(ROOTS))
def test_terraform_test_one_apply_gives_record_and_regions(tree: Path, root: str) -> None:
    """``terraform test`` (tests/apply.tftest.hcl): the DNS provider mocked, flyctl the stand-in."""
    workdir = initialised_root(tree, root)
    flyctl = tree.parent / "flyctl"
    result = run_terraform(workdir, "test", f"-var=flyctl={flyctl}", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed, 0 failed" in result.stdout, result.stdout

    calls = flyctl_calls(tree)
    app = "--app edgetftp-test"
    ips = [call for call in calls if call.startswith("ips ")]
    assert ips == [f"ips list {app} --json", f"ips allocate-v4 {app} --yes", f"ips list {app} --json"]
    scales = [call for call in calls if call.startswith("scale ")]
    # Run 1 {fra: 2, iad: 1}; run 2 {fra: 3, sin: 1} (iad removed -> 0); teardown: the rest to 0.
    assert sorted(scales[:2]) == [
        f"scale count 1 --region iad {app} --yes",
        f"scale count 2 --region fra {app} --yes",
    ]
    assert sorted(scales[2:5]) == [
        f"scale count 0 --region iad {app} --yes",
        f"scale count 1 --region sin {app} --yes",
        f"scale count 3 --region fra {app} --yes",
    ]
    assert sorted(scales[5:]) == [
        f"scale count 0 --region fra {app} --yes",
        f"scale count 0 --region sin {app} --yes",
    ]
    assert len(calls) == len(ips) + len(scales), calls


# --- fly-regions and fly-ipv4 on their own (built-ins only: they always run) ---------------------


@pytest.fixture
def scaling_workdir(tree: Path) -> Path:
    """A root holding only modules/fly-regions: terraform_data needs no provider at all."""
    workdir = tree / "scaling"
    workdir.mkdir()
    (workdir / "main.tf").write_text(
        """
variable "regions" { type = map(number) }
variable "flyctl" { type = string }
variable "fly_app" { type = string }
module "fly_regions" {
  source  = "../modules/fly-regions"
  fly_app = var.fly_app
  regions = var.regions
  flyctl  = var.flyctl
}
"""
    )
    run_terraform(workdir, "init", "-backend=false")
    return workdir


def apply_regions(workdir: Path, regions: dict[str, int], app: str = "edgetftp-test") -> None:
    run_terraform(
        workdir,
        "apply",
        "-auto-approve",
        f"-var=fly_app={app}",
        f"-var=flyctl={workdir.parent.parent / 'flyctl'}",
        f"-var=regions={json.dumps(regions)}",
    )


def take_calls(tree: Path) -> list[str]:
    calls = flyctl_calls(tree)
    (tree.parent / "flyctl.log").unlink(missing_ok=True)
    return calls


def test_regions_scale_with_flyctl(tree: Path, scaling_workdir: Path) -> None:
    apply_regions(scaling_workdir, {"fra": 2, "iad": 1})
    assert sorted(take_calls(tree)) == [
        "scale count 1 --region iad --app edgetftp-test --yes",
        "scale count 2 --region fra --app edgetftp-test --yes",
    ]
    # A count change goes straight to the new count (never through 0); a removed region goes to 0.
    apply_regions(scaling_workdir, {"fra": 3, "sin": 1})
    assert sorted(take_calls(tree)) == [
        "scale count 0 --region iad --app edgetftp-test --yes",
        "scale count 1 --region sin --app edgetftp-test --yes",
        "scale count 3 --region fra --app edgetftp-test --yes",
    ]
    apply_regions(scaling_workdir, {"fra": 3, "sin": 1})
    assert take_calls(tree) == [], "an unchanged map must not call flyctl"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("regions", '{"fra": 0}'),
        ("regions", '{"frankfurt": 1}'),
        ("regions", "{}"),
        ("fly_app", "Not_An_App"),
    ],
)
def test_variable_validation_rejects(scaling_workdir: Path, variable: str, value: str) -> None:
    values = {"fly_app": "edgetftp-test", "flyctl": "fly", "regions": '{"fra": 1}', variable: value}
    result = run_terraform(
        scaling_workdir, "plan", *(f"-var={key}={item}" for key, item in values.items()), check=False
    )
    assert result.returncode != 0
    assert "Invalid value for variable" in result.stderr, result.stderr


def test_ipv4_is_allocated_once_and_read_back(tree: Path) -> None:
    """fly-ipv4 alone: the first apply allocates, later plans read the same address and change nothing."""
    workdir = tree / "ipv4"
    workdir.mkdir()
    flyctl = tree.parent / "flyctl"
    (workdir / "main.tf").write_text(
        f"""
module "fly_ipv4" {{
  source  = "../modules/fly-ipv4"
  fly_app = "edgetftp-test"
  flyctl  = "{flyctl}"
}}
output "ipv4" {{ value = module.fly_ipv4.ipv4 }}
"""
    )
    run_terraform(workdir, "init", "-backend=false")
    run_terraform(workdir, "apply", "-auto-approve")
    assert run_terraform(workdir, "output", "-raw", "ipv4").stdout == STAND_IN_IPV4
    assert take_calls(tree) == [
        "ips list --app edgetftp-test --json",
        "ips allocate-v4 --app edgetftp-test --yes",
        "ips list --app edgetftp-test --json",
    ]
    plan = run_terraform(workdir, "plan", "-detailed-exitcode", check=False)
    assert plan.returncode == 0, plan.stdout + plan.stderr  # 0: no changes
    assert take_calls(tree) == [], "a plan reads the address file, not flyctl"

    # A fresh checkout (no address file): the precondition says how to read the address again.
    (workdir / "fly-ipv4.edgetftp-test.tfstate").unlink()
    plan = run_terraform(workdir, "plan", check=False)
    assert plan.returncode != 0
    assert "-replace=module.fly_ipv4.terraform_data.allocate" in plan.stderr, plan.stderr
    run_terraform(workdir, "apply", "-auto-approve", "-replace=module.fly_ipv4.terraform_data.allocate")
    assert run_terraform(workdir, "output", "-raw", "ipv4").stdout == STAND_IN_IPV4
    assert take_calls(tree) == ["ips list --app edgetftp-test --json"], "no second allocation"


# --- checkov -------------------------------------------------------------------------------------


def test_checkov_finds_no_misconfiguration(tmp_path: Path) -> None:
    checkov = os.environ.get("CHECKOV") or shutil.which("checkov")
    if checkov is None:
        pytest.skip("checkov not installed (a venv: pip install checkov; point CHECKOV at its binary)")
    result = subprocess.run(
        # --skip-download: no calls to Prisma Cloud for guidelines (no network here, and none needed).
        [checkov, "-d", str(TERRAFORM_DIR), "--framework", "terraform", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # its parser (lark) leaves a grammar cache there
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    for report in reports:
        summary = report["summary"]
        print(f"\ncheckov {summary['checkov_version']}: {summary}")
        failed = [(check["check_id"], check["resource"]) for check in report["results"]["failed_checks"]]
        assert failed == []
        assert summary["parsing_errors"] == 0
        skipped = {check["check_id"] for check in report["results"]["skipped_checks"]}
        assert skipped <= {"CKV2_AWS_23"}, "only the documented suppression (A record to a non-AWS address)"
