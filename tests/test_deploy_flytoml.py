"""fly.toml: what UDP on Fly requires (field notes §4), checked on the parsed file.

Cross-checked against the server's own settings (every EDGETFTP_* name must be a setting, the drain
must fit in kill_timeout) and against the Dockerfile (the baked-in source directory).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from edgetftp.settings import Settings, parse_host_port

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
FLY_TOML = REPO / "fly.toml"
# reference/regions: a three-letter code
REGION_CODE = re.compile(r"^[a-z]{3}$")
KILL_TIMEOUT_MAX_S = 300


@pytest.fixture(scope="module")
def fly() -> dict[str, Any]:
    return tomllib.loads(FLY_TOML.read_text())


@pytest.fixture(scope="module")
def env(fly: dict[str, Any]) -> dict[str, str]:
    environment: dict[str, str] = fly["env"]
    return environment


def duration_seconds(value: int | str) -> float:
    """fly.toml durations: an integer (seconds) or "10s" / "2m" / "500ms"."""
    if isinstance(value, int):
        return float(value)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", value)
    assert match, f"not a duration: {value!r}"
    number, unit = float(match.group(1)), match.group(2)
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


def udp_services(fly: dict[str, Any]) -> list[dict[str, Any]]:
    return [service for service in fly.get("services", []) if service.get("protocol") == "udp"]


def test_udp_service_on_69_inside_and_out(fly: dict[str, Any]) -> None:
    (service,) = udp_services(fly)
    assert service["internal_port"] == 69
    assert [port["port"] for port in service["ports"]] == [69], "Fly rewrites addresses, never UDP ports"
    for port in service["ports"]:
        assert "handlers" not in port, "UDP services take no handlers"


def test_listens_on_fly_global_services(env: dict[str, str]) -> None:
    listen = parse_host_port(env["EDGETFTP_LISTEN"])
    assert listen.host == "fly-global-services"
    assert listen.port == 69


def test_machines_are_never_auto_stopped(fly: dict[str, Any]) -> None:
    """Autostop/autostart follow Fly Proxy traffic; UDP never passes it."""
    assert "http_service" not in fly
    for service in fly["services"]:
        assert service.get("auto_stop_machines") in ("off", False)
        assert service.get("auto_start_machines") is False
        assert service.get("min_machines_running", 0) >= 1


def test_health_check_on_internal_http_port(fly: dict[str, Any], env: dict[str, str]) -> None:
    http = parse_host_port(env["EDGETFTP_HTTP_LISTEN"], default_port=8080)
    assert http.host == "0.0.0.0", "top-level checks reach the port on 0.0.0.0"
    checks = fly["checks"]
    http_checks = [check for check in checks.values() if check["type"] == "http"]
    assert http_checks, "an HTTP health check is required"
    for check in http_checks:
        assert check["port"] == http.port
        assert check["path"] == "/healthz"
        assert duration_seconds(check["timeout"]) < duration_seconds(check["interval"])
    exposed = {port["port"] for service in fly["services"] for port in service["ports"]}
    exposed |= {service["internal_port"] for service in fly["services"] if service.get("protocol") == "tcp"}
    assert http.port not in exposed, "health and metrics stay internal"


def test_metrics_scraped_from_the_internal_port(fly: dict[str, Any], env: dict[str, str]) -> None:
    http = parse_host_port(env["EDGETFTP_HTTP_LISTEN"], default_port=8080)
    assert fly["metrics"] == {"port": http.port, "path": "/metrics"}


def test_kill_signal_and_timeout_match_the_drain(fly: dict[str, Any], env: dict[str, str]) -> None:
    assert fly["kill_signal"] == "SIGTERM"
    drain = float(env.get("EDGETFTP_DRAIN_TIMEOUT", Settings.model_fields["drain_timeout"].default))
    kill_timeout = duration_seconds(fly["kill_timeout"])
    assert drain < kill_timeout <= KILL_TIMEOUT_MAX_S
    assert kill_timeout - drain <= 5, "kill_timeout far above the drain only slows deploys"


def test_primary_region(fly: dict[str, Any]) -> None:
    assert REGION_CODE.match(fly["primary_region"])


def test_env_names_are_server_settings(env: dict[str, str]) -> None:
    settings = set(Settings.model_fields)
    for name in env:
        if name.startswith("EDGETFTP_"):
            assert name.removeprefix("EDGETFTP_").lower() in settings, f"{name} is no edgetftp setting"


def test_source_defaults_to_the_baked_in_content(env: dict[str, str]) -> None:
    dockerfile_env = dict(re.findall(r"(EDGETFTP_[A-Z_]+)=(\S+)", (REPO / "Dockerfile").read_text()))
    assert env["EDGETFTP_SOURCE"] == dockerfile_env["EDGETFTP_SOURCE"]
    text = FLY_TOML.read_text()
    assert "s3://" in text, "the S3 alternative is documented in fly.toml"
    assert "fly secrets set AWS_ACCESS_KEY_ID" in text


def test_mtu_fits_fly_udp_path(env: dict[str, str]) -> None:
    """WireGuard and Fly's UDP proxy leave ~1300 bytes; larger blocks would be dropped or fragmented."""
    assert int(env["EDGETFTP_MTU"]) <= 1300


def test_dedicated_ipv4_is_documented() -> None:
    assert "fly ips allocate-v4" in FLY_TOML.read_text()


def test_no_secrets_in_fly_toml(env: dict[str, str]) -> None:
    for name in env:
        assert not re.search(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY", name), f"{name} belongs in fly secrets"
